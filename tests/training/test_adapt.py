"""`mindvideo adapt`: a new subject's adapter, fitted on a few segments both subjects watched."""

import json

import numpy as np
import pytest

from mindvideo.config import AdaptConfig
from mindvideo.data import atlas
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.aligned import aligned_data, load_adapter
from mindvideo.training.adapt import ADAPT_JSON, adapt, pattern_identification, plan_adapt
from mindvideo.utils import UserError

TRS, FEATURES, TRAIN, TEST = 40, 6, 4, 2


def write_subject(root, stimulus, test_stimulus, frames, voxels, seed, repeats=None, gray=None):
    """A subject whose voxels mix the shared stimulus features ``[S, T, FEATURES]`` by its own
    random map, plus noise; test repetitions ``[S, R, T, V]`` when ``repeats``."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(FEATURES, voxels))

    def respond(features):
        return (features @ mixing + 0.3 * rng.normal(size=(*features.shape[:-1], voxels))).astype(
            np.float32
        )

    w = PreparedWriter(root)
    w.write_array("fmri_train", respond(stimulus))
    if repeats:
        test = np.stack([respond(test_stimulus) for _ in range(repeats)], axis=1)
    else:
        test = respond(test_stimulus)
    w.write_array("fmri_test", test)
    w.write_array("frames_train", frames[0])
    w.write_array("frames_test", frames[1])
    if gray is not None:
        w.write_array("voxel_grayordinates", gray.astype(np.int32))
    names = {"train": [f"seg{k + 1}" for k in range(TRAIN)], "test": ["test1", "test2"]}
    w.finish(subject=seed, segments=names)
    return root


def shown(features):
    """Frames ``[S, T, 6, 4, 4, 3]`` the stimulus features describe: the left half's colour
    from features 0-2, the right half's from 3-5."""
    colour = (255 / (1 + np.exp(-features))).round().astype(np.uint8)  # [S, T, 6]
    frames = np.empty((*features.shape[:2], 6, 4, 4, 3), np.uint8)
    frames[..., :2, :] = colour[:, :, None, None, None, :3]
    frames[..., 2:, :] = colour[:, :, None, None, None, 3:]
    return frames


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    rng = np.random.default_rng(0)
    stimulus = rng.normal(size=(TRAIN, TRS, FEATURES))
    test_stimulus = rng.normal(size=(TEST, TRS, FEATURES))
    frames = (shown(stimulus), shown(test_stimulus))
    reference = write_subject(root / "s1", stimulus, test_stimulus, frames, 30, 1, repeats=2)
    new = write_subject(root / "s2", stimulus, test_stimulus, frames, 45, 2)
    other = (rng.integers(0, 256, frames[0].shape, dtype=np.uint8), frames[1])
    elsewhere = write_subject(root / "s3", stimulus, test_stimulus, other, 45, 3)
    v1 = np.flatnonzero(atlas.area_mask(["V1"], "left"))[::10]
    on_surface = {
        "reference": write_subject(
            root / "g1", stimulus, test_stimulus, frames, 30, 1, gray=v1[:30]
        ),
        "new": write_subject(root / "g2", stimulus, test_stimulus, frames, 45, 2, gray=v1[5:50]),
    }
    return {
        "reference": reference,
        "new": new,
        "other_stimuli": elsewhere,
        "on_surface": on_surface,
    }


def cfg(subjects, **changes) -> AdaptConfig:
    base = dict(
        data=str(subjects["new"]),
        reference=str(subjects["reference"]),
        segments=2,
        alphas=[0.1, 1.0, 10.0, 100.0],
    )
    return AdaptConfig(**{**base, **changes})


def test_the_new_subject_lands_on_the_reference_on_unseen_test_fmri(subjects, tmp_path):
    folder = adapt(cfg(subjects), tmp_path / "out")
    adapter = SubjectAdapter.from_pretrained(folder)
    assert (adapter.config.in_voxels, adapter.config.out_voxels) == (45, 30)
    assert list(adapter.config.segments) == [0, 1]
    report = json.loads((tmp_path / "out" / ADAPT_JSON).read_text())
    assert report["subject"] == "subject2" and report["reference"] == "subject1"
    assert report["training_trs"] == 2 * TRS and report["voxels"] == [45, 30]
    assert report["held_out_voxel_r"] > 0.8 and report["test_voxel_r"] > 0.8
    pattern = report["test_pattern"]
    assert pattern["n_way"] == 50 and pattern["chance"] == 0.02
    assert pattern["aligned"] > 0.9 and pattern["shuffled"] < 0.15
    assert 0.9 < pattern["reference_repeat"] <= 1.0  # the reference's own halves: the ceiling
    # The linear decoding of the new subject's test frames, through the reference's decoder and
    # by its own two segments alone; no scene labels here, so no class score.
    decoding = report["decoding"]
    assert decoding["window"] == 4 and "class_50way" not in decoding["adapted"]
    for how in ("adapted", "alone"):
        pixel = decoding[how]["pixel_50way"]
        assert pixel["score"] > 0.8 and pixel["shuffled"] < 0.2 and pixel["chance"] == 0.02

    # The aligned test fMRI is the adapter applied to the new subject's: what reconstruct reads.
    new, reference = PreparedData.open(subjects["new"]), PreparedData.open(subjects["reference"])
    aligned = aligned_data(new, load_adapter(tmp_path / "out"))
    assert aligned.n_voxels == 30 and aligned.fmri_train.shape == (2, TRS, 30)
    assert aligned.frames_train.shape[0] == 2 and aligned.root is None
    assert aligned.manifest["segments"]["train"] == ["seg1", "seg2"]  # labels stay paired
    target = np.asarray(reference.fmri_test).mean(axis=1)
    r = np.corrcoef(aligned.fmri_test.ravel(), target.ravel())[0, 1]
    assert r > 0.85


def test_with_grayordinates_the_local_stage_runs_first(subjects, tmp_path):
    surface = subjects["on_surface"]
    changes = dict(data=str(surface["new"]), reference=str(surface["reference"]))
    adapt(cfg(subjects, **changes, neighbours=8), tmp_path / "local")
    report = json.loads((tmp_path / "local" / ADAPT_JSON).read_text())
    assert report["method"] == "local + global" and report["neighbours"] == 8
    assert report["local_alpha_median"] > 0 and report["test_voxel_r"] > 0.8
    adapt(cfg(subjects, **changes, neighbours=0), tmp_path / "global")
    report = json.loads((tmp_path / "global" / ADAPT_JSON).read_text())
    assert report["method"] == "global" and report["local_alpha_median"] is None
    with pytest.raises(UserError, match="fewer than neighbours=46"):
        adapt(cfg(subjects, **changes, neighbours=46), tmp_path / "many")


def test_only_the_training_segments_are_fitted(subjects, tmp_path):
    """The adapter is the same whatever the test split or the later training segments hold."""
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(subjects["new"], changed)
    for name in ("fmri_test", "fmri_train"):
        array = np.load(changed / f"{name}.npy", mmap_mode="r+")
        rows = slice(None) if name == "fmri_test" else slice(2, None)  # segments 3.. unused
        array[rows] = np.random.default_rng(5).normal(size=array[rows].shape)
        array.flush()
        del array
    a = SubjectAdapter.from_pretrained(adapt(cfg(subjects), tmp_path / "a"))
    b = SubjectAdapter.from_pretrained(adapt(cfg(subjects, data=str(changed)), tmp_path / "b"))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(reference=None), "needs the new subject's prepared folder"),
        (dict(segments=1), "segments must be at least 2"),
        (dict(segments=5), "has 4 training segments, fewer than segments=5"),
        (dict(folds=1), "folds must be 0"),
        (dict(alphas=[]), "positive ridge penalties"),
        (dict(neighbours=-1), "neighbours must be 0"),
    ],
)
def test_bad_settings_are_refused(subjects, tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        adapt(cfg(subjects, **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subjects_that_saw_other_stimuli_are_refused(subjects, tmp_path):
    with pytest.raises(UserError, match=r"Training segment 1 of .* shows other frames"):
        adapt(cfg(subjects, data=str(subjects["other_stimuli"])), tmp_path / "out")


def test_a_pipeline_that_reads_other_voxels_is_refused(subjects, tmp_path):
    from helpers.pipeline import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipeline")  # reads 64 voxels (60 padded)
    with pytest.raises(UserError, match=r"has 30 voxels, but the fMRI encoder .* reads 64"):
        adapt(cfg(subjects, pipeline=str(tmp_path / "pipeline")), tmp_path / "out")


def test_an_adapter_for_another_subject_is_refused(subjects, tmp_path):
    folder = adapt(cfg(subjects), tmp_path / "out")
    reference = PreparedData.open(subjects["reference"])
    with pytest.raises(UserError, match=r"maps 45 voxels but .* has 30"):
        aligned_data(reference, SubjectAdapter.from_pretrained(folder))


def test_pattern_identification_against_a_reference():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(60, 20))
    assert pattern_identification(target, target, 50, 3, 0) == 1.0
    noise = rng.normal(size=(60, 20))
    assert pattern_identification(noise, target, 2, 20, 0) == pytest.approx(0.5, abs=0.08)
    with pytest.raises(UserError, match="needs at least 50 patterns"):
        pattern_identification(target[:10], target[:10], 50, 1, 0)


def test_cli_dry_run_and_run(subjects, tmp_path, capsys):
    from mindvideo.cli.main import main

    args = ["--data", subjects["new"], "--reference", subjects["reference"], "segments=2"]
    assert main(["-q", "adapt", *map(str, args), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "45 (new subject) → 30 (reference)" in out and "80 = 2 segments × 40 TRs" in out
    assert not (tmp_path / "o").exists()
    assert main(["-q", "adapt", *map(str, args), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "adapter" / "config.json").is_file()
    assert "subject adapter" in plan_adapt(cfg(subjects)).format()


def test_on_labelled_data_the_scene_class_is_scored_too(prepared_dataset, tmp_path):
    """The simulated subject aligned onto itself: its scene class, read by its own decoder
    through the (near-identity) adapter, is identified far above chance and the shuffled
    pairing; decoders from 2 segments alone do worse."""
    cfg = AdaptConfig(
        data=str(prepared_dataset), reference=str(prepared_dataset), segments=2, trials=3
    )
    adapt(cfg, tmp_path / "out")
    decoding = json.loads((tmp_path / "out" / ADAPT_JSON).read_text())["decoding"]
    adapted, alone = decoding["adapted"]["class_50way"], decoding["alone"]["class_50way"]
    assert adapted["score"] > max(0.3, 3 * adapted["shuffled"], alone["score"])
    assert 0.02 <= adapted["chance"] < 0.5  # 50-way, or fewer where fewer classes are shown
