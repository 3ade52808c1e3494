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


def test_fine_tuning_pulls_the_conditions_towards_the_references(setup, tmp_path):
    """adapt with finetune_steps: the frozen encoder's conditions of the new subject's training
    windows move towards the reference's (the loss falls), the map stays near its ridge start,
    and the adapter still reconstructs; the low-level decoder is matched too when given."""
    from mindvideo.config import AdaptConfig, LowLevelConfig
    from mindvideo.training.adapt import adapt, plan_adapt
    from mindvideo.training.lowlevel import lowlevel

    lowlevel(
        LowLevelConfig(data=str(setup / "reference"), window=2, frame_size=4, folds=2),
        tmp_path / "lowlevel",
    )
    base = dict(
        data=str(setup / "new"),
        reference=str(setup / "reference"),
        segments=2,
        alphas=[10.0, 100.0, 1000.0],  # a ridge fit far from the exact inverse
        pipeline=str(setup / "checkpoint"),
        finetune_lr=1e-3,
    )
    ridge = SubjectAdapter.from_pretrained(adapt(AdaptConfig(**base), tmp_path / "ridge"))
    tuned_dir = adapt(
        AdaptConfig(**base, finetune_steps=40, lowlevel=str(tmp_path / "lowlevel")),
        tmp_path / "tuned",
    )
    report = json.loads((tmp_path / "tuned" / "adapt.json").read_text())["finetune"]
    assert report["steps"] == 40 and report["lowlevel"] is True
    assert report["loss_last"] < 0.7 * report["loss_first"]
    tuned = SubjectAdapter.from_pretrained(tuned_dir)
    held = SubjectAdapter.from_pretrained(
        adapt(AdaptConfig(**base, finetune_steps=40, finetune_anchor=100.0), tmp_path / "held")
    )

    def moved(adapter):
        return (adapter.linear.weight - ridge.linear.weight).norm().item()

    assert 0 < moved(held) < 0.5 * moved(tuned)  # the anchor keeps it near the ridge fit
    plan = plan_adapt(AdaptConfig(**base, finetune_steps=40, lowlevel=str(tmp_path / "lowlevel")))
    text = plan.format()
    assert "fine-tune the adapter through the frozen encoder" in text
    assert "40 optimiser steps" in text and "lowlevel" in text
    reconstruct(config(setup, adapter=str(tmp_path / "tuned")), tmp_path / "clips")
    assert np.load(tmp_path / "clips" / "reconstructions.npy").shape[0] == 3


def test_fine_tuning_needs_the_pipeline(setup, tmp_path):
    from mindvideo.config import AdaptConfig
    from mindvideo.training.adapt import adapt

    cfg = AdaptConfig(
        data=str(setup / "new"), reference=str(setup / "reference"), segments=2, finetune_steps=5
    )
    with pytest.raises(UserError, match="pass --pipeline"):
        adapt(cfg, tmp_path / "out")
    with pytest.raises(UserError, match="lowlevel is matched only while fine-tuning"):
        adapt(AdaptConfig(**{**cfg.__dict__, "finetune_steps": 0, "lowlevel": "x"}), tmp_path)


def test_the_low_level_path_reads_the_voxel_space_its_decoder_was_fitted_in(setup, tmp_path):
    """Through an adapter, a decoder fitted on the subject's own prepared folder reads its own
    voxels; the reference's decoder reads the aligned fMRI."""
    from mindvideo.config import LowLevelConfig
    from mindvideo.pipeline.reconstruct import _lowlevel_data, open_data
    from mindvideo.training.lowlevel import lowlevel

    for who in ("new", "reference"):
        cfg = LowLevelConfig(data=str(setup / who), window=2, frame_size=4, folds=2)
        lowlevel(cfg, tmp_path / f"lowlevel-{who}")
    cfg = config(setup, lowlevel=str(tmp_path / "lowlevel-new"))
    aligned = open_data(cfg)
    assert _lowlevel_data(cfg, aligned, 70).n_voxels == 70  # its own decoder, its own voxels
    cfg = config(setup, lowlevel=str(tmp_path / "lowlevel-reference"))
    assert _lowlevel_data(cfg, aligned, 60) is aligned
    reconstruct(
        config(setup, lowlevel=str(tmp_path / "lowlevel-new"), strength=1.0), tmp_path / "own"
    )
    assert np.load(tmp_path / "own" / "reconstructions.npy").shape[0] == 3
