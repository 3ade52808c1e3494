"""`mindvideo reconstruct adapter=DIR`: a new subject read through its subject adapter."""

import json

import numpy as np
import pytest
from helpers.pipeline import tiny_pipeline, write_window_prepared

from mindvideo.config import ReconstructConfig
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline import reconstruct
from mindvideo.pipeline.aligned import aligned_data
from mindvideo.pipeline.dry_run import plan_reconstruct
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny pipeline (60 voxels), its subject, a new subject of 70 voxels whose fMRI is a
    fixed linear map of the first's (the same frames), and that map's inverse as its adapter."""
    root = tmp_path_factory.mktemp("adapter-path")
    tiny_pipeline().save_pretrained(root / "checkpoint")
    reference = PreparedData.open(write_window_prepared(root / "reference", 60, seed=0))
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(60, 70)).astype(np.float32)  # reference → new subject
    unmix = np.linalg.pinv(mix).astype(np.float32)  # the adapter: new subject → reference
    w = PreparedWriter(root / "new")
    for name in ("fmri_train", "fmri_test"):
        w.write_array(name, np.asarray(getattr(reference, name)) @ mix)
    for name in ("frames_train", "frames_test", "scene_ids_train", "scene_ids_test"):
        w.write_array(name, np.asarray(getattr(reference, name)))  # the same stimuli
    w.finish()
    adapter = SubjectAdapter(70, 60, subject="new", reference="reference", segments=[0, 1])
    adapter.set_linear_map(unmix, np.zeros(60, np.float32))
    adapter.save_pretrained(root / "adapt" / "adapter")
    return root


def config(root, **changes) -> ReconstructConfig:
    base = dict(
        checkpoint=str(root / "checkpoint"),
        data=str(root / "new"),
        adapter=str(root / "adapt"),
        num_inference_steps=2,
        batch_size=2,
        seed=3,
        gif=False,
    )
    return ReconstructConfig(**{**base, **changes})


def test_the_new_subject_reconstructs_as_the_subject_it_maps_onto(setup, tmp_path):
    """The adapter inverts the new subject's mixing exactly, so its clips are the reference
    subject's clips; the index records the adapter."""
    reconstruct(config(setup), tmp_path / "new")
    reconstruct(config(setup, data=str(setup / "reference"), adapter=None), tmp_path / "ref")
    new = np.load(tmp_path / "new" / "reconstructions.npy")
    ref = np.load(tmp_path / "ref" / "reconstructions.npy")
    assert new.shape == ref.shape
    diff = np.abs(new.astype(int) - ref.astype(int))  # float32 round-off, through the sampler
    assert diff.mean() < 0.3 and np.quantile(diff, 0.99) <= 2
    np.testing.assert_array_equal(
        np.load(tmp_path / "new" / "ground_truth.npy"),
        np.load(tmp_path / "ref" / "ground_truth.npy"),
    )
    index = json.loads((tmp_path / "new" / "index.json").read_text())
    assert index["settings"]["adapter"] == str((setup / "adapt").resolve())
    import shutil

    shutil.copytree(setup / "adapt", tmp_path / "another")
    with pytest.raises(UserError, match=r"\(adapter differ\)"):
        reconstruct(config(setup, adapter=str(tmp_path / "another")), tmp_path / "new")


def test_the_aligned_training_split_is_the_adapters_segments(setup):
    new = PreparedData.open(setup / "new")
    aligned = aligned_data(new, SubjectAdapter.from_pretrained(setup / "adapt" / "adapter"))
    reference = PreparedData.open(setup / "reference")
    np.testing.assert_allclose(aligned.fmri_test, reference.fmri_test, atol=1e-4)
    assert aligned.fmri_train.shape == (2, 4, 60) and aligned.n_voxels == 60


def test_without_it_the_new_subject_is_refused_and_raw_runs_never_take_it(setup, tmp_path):
    with pytest.raises(UserError, match=r"has 70 voxels .* or a new subject's adapter"):
        reconstruct(config(setup, adapter=None), tmp_path / "a")
    with pytest.raises(UserError, match="cannot run on raw runs"):
        reconstruct(config(setup, data=None, fmri=["run.dtseries.nii"]), tmp_path / "b")
    with pytest.raises(UserError, match="holds no subject adapter"):
        reconstruct(config(setup, adapter=str(tmp_path)), tmp_path / "c")
    with pytest.raises(UserError, match="maps 70 voxels but"):
        reconstruct(config(setup, data=str(setup / "reference")), tmp_path / "d")


def test_dry_run_names_the_adapter(setup):
    text = plan_reconstruct(config(setup)).format()
    assert "through the subject adapter" in text and "60 (padded to 64)" in text
