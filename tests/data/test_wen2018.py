"""`prepare` for Wen 2018: raw CIFTI + mp4 (the simulator's tiny set) → a prepared subject."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.datasets import copy_dataset

from mindvideo.config import PrepareConfig, RoiConfig
from mindvideo.data.cifti import read_dtseries, write_dtseries
from mindvideo.data.pairing import frame_change
from mindvideo.data.prepared import PreparedData, load_authors_arrays
from mindvideo.data.video import read_video
from mindvideo.data.wen2018 import find_wen2018_runs, prepare_wen2018
from mindvideo.data.wen2018_preprocessed import prepare_wen2018_preprocessed
from mindvideo.utils import UserError

SIZE = 32  # the tiny stimuli are 32 x 32


def tiny_config(root, **kwargs) -> PrepareConfig:  # as configs/tiny/prepare.yaml
    """The tiny recipe: only 4 training segments (DOF 3), so Bonferroni over 2,300 vertices
    would keep almost nothing; the uncorrected test at P < 0.01 is used instead."""
    return PrepareConfig(
        root=str(root), subject=1, frame_size=SIZE, roi=RoiConfig(correction="none"), **kwargs
    )


def run_path(root: Path, name: str, r: int) -> Path:
    return root / "subject1/fmri" / name / "cifti" / f"{name}_{r}_Atlas.dtseries.nii"


def _authors_preprocessing(path: Path) -> np.ndarray:
    """Independent reference: nibabel, drop, per-vertex polyfit of order 4, z-score (float64)."""
    x = np.asarray(nib.load(path).get_fdata(), np.float64)
    first = {245: 1, 246: 2}[len(x)]
    x = x[first : len(x) - 4]
    t = np.arange(len(x))
    coef = np.polynomial.polynomial.polyfit(t, x, 4)  # all vertices in one least-squares call
    x = x - np.polynomial.polynomial.polyval(t, coef).T
    return (x - x.mean(0)) / x.std(0)


# --------------------------------------------------------------------------------------------
# the prepared subject


def test_prepare_writes_the_documented_arrays(prepared_dataset, simulated_dataset):
    data = PreparedData.open(prepared_dataset)
    v = data.n_voxels
    assert 100 < v < 2300
    assert data.fmri_train.shape == (4, 240, v) and data.fmri_train.dtype == np.float32
    assert data.fmri_test.shape == (2, 240, v)
    assert data.frames_train.shape == (4, 240, 6, SIZE, SIZE, 3)
    assert data.frames_test.shape == (2, 240, 6, SIZE, SIZE, 3)
    assert np.array(data.captions_train).shape == (4, 240, 6)
    assert data.scene_ids_train.shape == (4, 240, 6) and data.scene_ids_test.shape == (2, 240, 6)
    assert data.roi_mask.shape == (2300,) and data.roi_mask.sum() == v

    truth = np.load(simulated_dataset / "ground_truth.npz")
    voxel_gray = np.load(prepared_dataset / "voxel_grayordinates.npy")
    assert voxel_gray.dtype == np.int32 and voxel_gray.shape == (v,)
    np.testing.assert_array_equal(voxel_gray, truth["grayordinate_index"][data.roi_mask])

    m = data.manifest
    assert m["subject"] == 1 and m["n_voxels"] == v and m["tr_s"] == 2.0
    assert m["arrays"]["voxel_grayordinates"]["shape"] == [v]
    assert len(m["sources"]) == 14 + 6 + 1  # runs, stimuli, scenes.json
    assert all(len(h) == 64 for h in m["sources"].values())
    dropped = m["volumes_dropped"]
    assert len(dropped) == 14
    assert dropped["subject1/fmri/seg1/cifti/seg1_2_Atlas.dtseries.nii"] == {
        "volumes": 245,
        "start": 1,
        "end": 4,
    }
    assert dropped["subject1/fmri/test2/cifti/test2_3_Atlas.dtseries.nii"]["start"] == 2
    roi = m["roi"]
    assert roi["n_kept"] == v and roi["n_vertices"] == 2300 and roi["n_segments"] == 4
    assert roi["n_kept"] == -(-roi["n_significant"] // 2)  # top 50% of the significant ones
    assert roi["threshold_p"] == 0.01 and m["prepare_config"]["roi"]["correction"] == "none"


def test_fmri_values_match_an_independent_reference(prepared_dataset, simulated_dataset):
    """Training: repetitions averaged; test: 3 repetitions averaged; ROI columns in file order."""
    data = PreparedData.open(prepared_dataset)
    cols = np.flatnonzero(data.roi_mask)
    for split, name, s, reps in (("train", "seg2", 1, 2), ("test", "test2", 1, 3)):
        ref = np.mean(
            [
                _authors_preprocessing(run_path(simulated_dataset, name, r))
                for r in range(1, reps + 1)
            ],
            axis=0,
        )[:, cols]
        np.testing.assert_allclose(data.fmri(split)[s], ref, atol=2e-4)


def test_roi_recovers_the_responsive_voxels(prepared_dataset, simulated_dataset):
    responsive = np.load(simulated_dataset / "ground_truth.npz")["responsive"]
    mask = np.load(prepared_dataset / "roi_mask.npy")
    precision = (mask & responsive).sum() / mask.sum()
    recall = (mask & responsive).sum() / responsive.sum()
    assert precision >= 0.9
    # Half of the significant vertices are kept, so recall is at most about one half.
    assert 0.35 <= recall <= 0.55


def test_frames_are_paired_with_trs_as_scenes_json_says(prepared_dataset, simulated_dataset):
    """Frame j of TR t is the picture at movie time 2t + j/3 and shows the scene active then."""
    data = PreparedData.open(prepared_dataset)
    meta = json.loads((simulated_dataset / "scenes.json").read_text())
    for split, s, name in (("train", 2, "seg3"), ("test", 1, "test2")):
        video = read_video(simulated_dataset / "stimuli" / f"{name}.mp4", fps=3, size=SIZE)
        np.testing.assert_array_equal(data.frames(split)[s].reshape(video.shape), video)

        scenes = meta["segments"][name]
        starts = np.round(np.array([sc["start_s"] for sc in scenes]) * meta["fps"]) / meta["fps"]
        ids = data.scene_ids(split)[s]
        captions = data.captions(split)[s]
        active = np.empty((240, 6), int)
        for t in range(240):
            for j in range(6):
                time_s = 2 * t + j / 3
                active[t, j] = np.flatnonzero(starts <= time_s + 1e-9)[-1]
                assert captions[t][j] == scenes[active[t, j]]["caption"]
        # Scene ids are the scene numbers shifted: the same partition of the frames.
        assert len(np.unique(ids - active)) == 1
        # ... and the decoded frames change most exactly where the scene id changes.
        flat = data.frames(split)[s].reshape(-1, SIZE, SIZE, 3)
        change = frame_change(flat, stride=1)
        cuts = np.flatnonzero(np.diff(ids.ravel()))
        assert np.mean(change[cuts] > np.median(change) * 3) >= 0.9
    # Scene ids are unique within a split: segments do not share ids.
    train_ids = data.scene_ids_train
    assert not set(np.unique(train_ids[0])) & set(np.unique(train_ids[1]))


def test_rerun_is_a_no_op(prepared_dataset, simulated_dataset, caplog):
    files = sorted(prepared_dataset.iterdir())
    before = {p: p.stat().st_mtime_ns for p in files}
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="mindvideo.data.wen2018"):
        prepare_wen2018(tiny_config(simulated_dataset), prepared_dataset)
    assert time.perf_counter() - start < 2.0
    assert "up to date" in caplog.text
    assert sorted(prepared_dataset.iterdir()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_changed_config_prepares_again(prepared_dataset, simulated_dataset, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(prepared_dataset, out)
    cfg = tiny_config(simulated_dataset, test_repetitions="keep")
    cfg.roi.top_fraction = 0.25
    prepare_wen2018(cfg, out)
    old, new = PreparedData.open(prepared_dataset), PreparedData.open(out)
    assert new.n_voxels == -(-new.manifest["roi"]["n_significant"] // 4) < old.n_voxels
    assert new.fmri_test.shape == (2, 3, 240, new.n_voxels)  # each repetition kept
    assert not (new.roi_mask & ~old.roi_mask).any()  # the top quarter lies in the top half
    np.testing.assert_allclose(
        new.fmri_test.mean(axis=1),
        old.fmri_test[..., np.isin(np.flatnonzero(old.roi_mask), np.flatnonzero(new.roi_mask))],
        atol=1e-6,
    )


def test_test_fmri_never_enters_a_fitted_statistic(prepared_dataset, simulated_dataset, tmp_path):
    """Replace every test run by data that is perfectly reproducible across repetitions at every
    vertex: if test fMRI reached the ROI fit (or any training statistic), the mask would grow to
    all vertices and the training arrays would change."""
    root = copy_dataset(simulated_dataset, tmp_path / "altered")
    rng = np.random.default_rng(7)
    for k in (1, 2):
        data, axis, tr = read_dtseries(run_path(root, f"test{k}", 1))
        fake = rng.normal(1e4, 100, data.shape).astype(np.float32)
        for r in (1, 2, 3):
            write_dtseries(run_path(root, f"test{k}", r), fake, axis, tr)
    out = prepare_wen2018(tiny_config(root), tmp_path / "prepared")
    ref, alt = PreparedData.open(prepared_dataset), PreparedData.open(out)
    np.testing.assert_array_equal(alt.roi_mask, ref.roi_mask)
    np.testing.assert_array_equal(alt.fmri_train, ref.fmri_train)
    np.testing.assert_array_equal(alt.frames_train, ref.frames_train)
    assert alt.manifest["roi"] == ref.manifest["roi"]
    assert not np.allclose(alt.fmri_test, ref.fmri_test)


# --------------------------------------------------------------------------------------------
# errors: nothing is written


def test_missing_repetition_or_stimulus_names_the_path(simulated_dataset, tmp_path):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2, 3), test=(1,))
    missing = run_path(root, "seg2", 2)
    missing.unlink()
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"^{re.escape(str(missing))} is missing;"):
        prepare_wen2018(tiny_config(root), out)
    assert not (out / "manifest.json").exists()

    shutil.copy(run_path(root, "seg2", 1), missing)
    (root / "stimuli" / "test1.mp4").unlink()
    with pytest.raises(UserError, match=re.escape(str(root / "stimuli" / "test1.mp4"))):
        find_wen2018_runs(root, 1)
    assert not out.exists()


def test_empty_or_wrong_root_describes_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"subjectN/fmri/seg\{k\}/cifti"):
        find_wen2018_runs(tmp_path / "empty", 1)
    with pytest.raises(UserError, match="does not exist"):
        find_wen2018_runs(tmp_path / "nowhere", 1)


def test_layout_lists_segments_and_repetitions_in_order(simulated_dataset):
    layout = find_wen2018_runs(simulated_dataset, 1)
    assert list(layout.train) == ["seg1", "seg2", "seg3", "seg4"]
    assert list(layout.test) == ["test1", "test2"]
    assert [p.name for p in layout.test["test2"]] == [
        f"test2_{r}_Atlas.dtseries.nii" for r in (1, 2, 3)
    ]
    assert layout.scenes == simulated_dataset / "scenes.json"
    with pytest.raises(UserError, match="subject1"):
        find_wen2018_runs(simulated_dataset, 2)


def test_wrong_volume_count_is_a_user_error(simulated_dataset, tmp_path):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,))
    path = run_path(root, "seg2", 1)
    data, axis, tr = read_dtseries(path)
    write_dtseries(path, data[:244], axis, tr)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))} has 244 volumes"):
        prepare_wen2018(tiny_config(root), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_other_grayordinates_are_a_user_error(simulated_dataset, tmp_path):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,))
    path = run_path(root, "seg2", 2)
    data, axis, tr = read_dtseries(path)
    write_dtseries(path, data[:, :-10], axis[:-10], tr)
    with pytest.raises(
        UserError, match=rf"{re.escape(str(path))} has 2290 grayordinates but .* has 2300"
    ):
        prepare_wen2018(tiny_config(root), tmp_path / "out")


def test_nan_voxels_raise_or_are_zeroed(simulated_dataset, tmp_path, caplog):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2, 3), test=(1,))
    path = run_path(root, "seg3", 1)
    data, axis, tr = read_dtseries(path)
    data[10:20, :5] = np.nan
    write_dtseries(path, data, axis, tr)
    out = tmp_path / "out"
    with pytest.raises(
        UserError, match=rf"{re.escape(str(path))} has 5 of 2300 cortical vertices with NaN"
    ):
        prepare_wen2018(tiny_config(root), out)
    assert not (out / "manifest.json").exists()

    with caplog.at_level(logging.WARNING):
        prepare_wen2018(tiny_config(root, nan_policy="zero"), out)
    assert f"{path}: 5 vertices with NaN or Inf values set to 0" in caplog.text
    prepared = PreparedData.open(out)
    assert np.isfinite(prepared.fmri_train).all()
    assert prepared.manifest["prepare_config"]["nan_policy"] == "zero"


def test_real_data_without_blip_asks_for_it(simulated_dataset, tmp_path):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,), scenes=False)
    with pytest.raises(UserError, match=r"set pretrained\.blip .* wen2018-preprocessed"):
        prepare_wen2018(tiny_config(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_short_stimulus_is_a_user_error(simulated_dataset, tmp_path):
    from mindvideo.data.video import write_video

    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,))
    mp4 = root / "stimuli" / "seg1.mp4"
    write_video(mp4, np.zeros((30 * 10, SIZE, SIZE, 3), np.uint8), 30)  # 10 s, not 480 s
    with pytest.raises(UserError, match=rf"{re.escape(str(mp4))} lasts 10\.00 s .* 480 s"):
        prepare_wen2018(tiny_config(root), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_runs_whose_tr_leaves_half_the_stimulus_unpaired_are_refused_unless_allowed(
    simulated_dataset, tmp_path
):
    """Every run saying TR 1 s while the stimuli last 480 s: 240 s of each stimulus would never
    be paired with fMRI. An error with both figures before any fMRI work, unless the user says
    the stimulus did run on (then the first 240 s are paired, at 1 s per TR)."""
    from mindvideo.data.cifti import read_dtseries, write_dtseries

    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,))
    for path in sorted(root.glob("subject1/fmri/*/cifti/*.dtseries.nii")):
        data, axis, _ = read_dtseries(path)
        write_dtseries(path, data, axis, 1.0)
    run = root / "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii"
    message = (
        rf"{re.escape(str(root / 'stimuli' / 'seg1.mp4'))} lasts 480\.00 s but the fMRI run "
        rf"{re.escape(str(run))} covers 240 TRs of 1 s = 240 s \(its header's TR\): 240\.0 s of "
        r"the stimulus would never be paired with fMRI\..*--allow-duration-mismatch"
    )
    with pytest.raises(UserError, match=message):
        prepare_wen2018(tiny_config(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    prepare_wen2018(tiny_config(root, allow_duration_mismatch=True), tmp_path / "out")
    prepared = PreparedData.open(tmp_path / "out")
    assert prepared.frames_train.shape[1:3] == (240, 3)  # 3 FPS x 1 s: 3 frames per TR


# --------------------------------------------------------------------------------------------
# BLIP captions


def test_blip_captions_every_frame_with_a_cache(simulated_dataset, tmp_path, blip_dir):
    from mindvideo.data.video import write_video

    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2), test=(1,))
    # Stimuli of 12 still shots (480 s at 3 FPS): few distinct frames keep the tiny BLIP quick.
    rng = np.random.default_rng(3)
    for name in ("seg1", "seg2", "test1"):
        shots = rng.integers(0, 256, (12, 1, 1, 3), dtype=np.uint8)
        frames = np.broadcast_to(np.repeat(shots, 120, axis=0), (1440, SIZE, SIZE, 3))
        write_video(root / "stimuli" / f"{name}.mp4", np.ascontiguousarray(frames), 3)
    cfg = tiny_config(root)
    cfg.pretrained.blip = str(blip_dir)
    cfg.captions.batch_size = 512  # fewer generate calls: the tiny model is overhead-bound
    out = prepare_wen2018(cfg, tmp_path / "out")
    data = PreparedData.open(out)
    assert data.manifest["captions_source"] == "blip"
    caps = np.array(data.captions_train)
    assert caps.shape == (2, 240, 6) and all(isinstance(c, str) and c for c in caps.ravel())
    # Identical frames (a still scene) get identical captions; the cache holds each frame once.
    frames = data.frames_train.reshape(-1, SIZE * SIZE * 3)
    _, first, inverse = np.unique(frames, axis=0, return_index=True, return_inverse=True)
    assert (caps.ravel() == caps.ravel()[first][inverse.ravel()]).all()
    lines = (out / "captions.jsonl").read_text().splitlines()
    n_unique = len(
        np.unique(np.concatenate([frames, data.frames_test.reshape(-1, frames.shape[1])]), axis=0)
    )
    assert len(lines) == n_unique
    # Scene ids still come from scenes.json.
    assert data.scene_ids_train is not None


# --------------------------------------------------------------------------------------------
# the authors' arrays


def write_authors_arrays(root: Path, subject=2, size=8, v=37, seed=0) -> dict[str, np.ndarray]:
    """Small arrays in the authors' format (2 training and 2 test segments of 240 TRs)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 2), ("test", 2)):
        arrays[f"video_{split}_{size}_3hz"] = rng.integers(
            0, 256, (n, 240, 6, size, size, 3), dtype=np.uint8
        )
        arrays[f"text_{split}_{size}_3hz"] = np.array(
            [
                [[f"{split} caption {s} {t} {f}" for f in range(6)] for t in range(240)]
                for s in range(n)
            ]
        )
        arrays[f"fmri_{split}_subject{subject}"] = rng.standard_normal((n, 240, v)).astype(
            np.float32
        )
    arrays["test_seg_id_3hz"] = np.repeat(np.arange(2)[:, None], 240, axis=1)
    (root / "preprocessed").mkdir(parents=True)
    for name, a in arrays.items():
        np.save(root / "preprocessed" / f"{name}.npy", a)
    return arrays


def test_authors_arrays_become_a_prepared_subject(tmp_path, caplog):
    arrays = write_authors_arrays(tmp_path / "authors")
    cfg = PrepareConfig(
        dataset="wen2018-preprocessed", root=str(tmp_path / "authors"), subject=2, frame_size=8
    )
    out = prepare_wen2018_preprocessed(cfg, tmp_path / "out")
    data = PreparedData.open(out)
    np.testing.assert_array_equal(data.fmri_train, arrays["fmri_train_subject2"])
    np.testing.assert_array_equal(data.frames_test, arrays["video_test_8_3hz"])
    np.testing.assert_array_equal(data.test_seg_id, arrays["test_seg_id_3hz"])
    assert data.captions_test[1][239][5] == "test caption 1 239 5"
    assert data.roi_mask is None and not (out / "voxel_grayordinates.npy").exists()
    assert data.subject == 2 and data.manifest["source"] == "wen2018-preprocessed"
    assert len(data.manifest["sources"]) == 7
    # the same arrays as the loader gives, and a re-run does nothing
    direct = load_authors_arrays(tmp_path / "authors", 2, size=8)
    np.testing.assert_array_equal(data.fmri_test, direct.fmri_test)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="mindvideo.data.wen2018"):
        prepare_wen2018_preprocessed(cfg, out)
    assert "up to date" in caplog.text and (out / "manifest.json").stat().st_mtime_ns == mtime


def test_authors_arrays_missing_file_is_a_user_error(tmp_path):
    write_authors_arrays(tmp_path / "authors")
    (tmp_path / "authors/preprocessed/fmri_test_subject2.npy").unlink()
    cfg = PrepareConfig(
        dataset="wen2018-preprocessed", root=str(tmp_path / "authors"), subject=2, frame_size=8
    )
    with pytest.raises(UserError, match=r"fmri_test_subject2\.npy was not found"):
        prepare_wen2018_preprocessed(cfg, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# a new subject's ROI from other subjects' (roi.reference)


def test_a_subject_with_one_segment_takes_its_roi_from_the_reference_subjects(
    prepared_dataset, simulated_dataset, tmp_path
):
    """One training segment is too few for the t-test (it needs 2); the reference's ROI is
    taken whole, so the voxels and their values are the reference's own on that segment."""
    root = copy_dataset(simulated_dataset, tmp_path / "one", train=(1,))
    with pytest.raises(UserError, match="at least 2 training segments"):
        prepare_wen2018(tiny_config(root), tmp_path / "tested")
    cfg = tiny_config(root)
    cfg.roi.reference = [str(prepared_dataset)]
    out = prepare_wen2018(cfg, tmp_path / "prepared")
    new, ref = PreparedData.open(out), PreparedData.open(prepared_dataset)
    np.testing.assert_array_equal(new.roi_mask, ref.roi_mask)
    np.testing.assert_array_equal(new.voxel_grayordinates, ref.voxel_grayordinates)
    np.testing.assert_allclose(new.fmri_train[0], ref.fmri_train[0], atol=1e-6)
    np.testing.assert_allclose(new.fmri_test, ref.fmri_test, atol=1e-6)
    roi = new.manifest["roi"]
    assert roi["rule"] == "reference" and roi["n_kept"] == ref.n_voxels
    [info] = roi["references"]
    assert info["path"] == str(prepared_dataset) and info["subject"] == 1

    # the reference's ROI is part of the inputs: a reference re-prepared with another
    # selection (its top quarter) prepares this subject again
    other = tmp_path / "other"
    shutil.copytree(prepared_dataset, other)
    quarter = tiny_config(simulated_dataset)
    quarter.roi.top_fraction = 0.25
    prepare_wen2018(quarter, other)
    kept = PreparedData.open(other).voxel_grayordinates
    assert len(kept) < ref.n_voxels
    cfg.roi.reference = [str(other)]
    prepare_wen2018(cfg, out)
    assert PreparedData.open(out).n_voxels == len(kept)


def test_bad_reference_settings_fail_before_anything_is_written(
    prepared_dataset, simulated_dataset, tmp_path
):
    cfg = tiny_config(simulated_dataset)
    cfg.roi.reference = [str(prepared_dataset)]
    cfg.roi.reference_min = 2
    with pytest.raises(UserError, match=r"reference_min must be between 1 and .* \(1\), not 2"):
        prepare_wen2018(cfg, tmp_path / "a")
    cfg.roi.reference, cfg.roi.reference_min = [str(tmp_path)], 1
    with pytest.raises(UserError, match=f"roi.reference {tmp_path} is not a prepared subject"):
        prepare_wen2018(cfg, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_reference_roi_is_refused_for_datasets_that_fit_no_roi(prepared_dataset, tmp_path):
    from mindvideo.data.prepare import prepare

    for dataset in ("wen2018-preprocessed", "hcp"):
        cfg = PrepareConfig(root=str(tmp_path), dataset=dataset)
        cfg.roi.reference = [str(prepared_dataset)]
        with pytest.raises(UserError, match=f"--dataset {dataset} fits no ROI"):
            prepare(cfg, tmp_path / "out")


def test_train_segments_prepares_the_first_segments_alone(
    prepared_dataset, simulated_dataset, tmp_path
):
    """A subject recorded for less: the first 2 of the 4 training segments, with the reference
    subject's ROI (2 segments would give the t-test 1 degree of freedom). Arrays, captions and
    the manifest's segments are the first two; the test split is whole."""
    cfg = tiny_config(simulated_dataset, train_segments=2)
    cfg.roi.reference = [str(prepared_dataset)]
    new = PreparedData.open(prepare_wen2018(cfg, tmp_path / "two"))
    ref = PreparedData.open(prepared_dataset)
    np.testing.assert_allclose(new.fmri_train, ref.fmri_train[:2], atol=1e-6)
    np.testing.assert_array_equal(new.frames_train, ref.frames_train[:2])
    np.testing.assert_array_equal(new.frames_test, ref.frames_test)
    np.testing.assert_allclose(new.fmri_test, ref.fmri_test, atol=1e-6)
    assert new.captions("train") == ref.captions("train")[:2]
    assert new.manifest["segments"]["train"] == ["seg1", "seg2"]
    assert new.manifest["segments"]["test"] == ref.manifest["segments"]["test"]
    for bad in (0, 5):
        cfg.train_segments = bad
        with pytest.raises(UserError, match=f"between 1 and the 4 training segments .*, not {bad}"):
            prepare_wen2018(cfg, tmp_path / f"bad{bad}")
        assert not (tmp_path / f"bad{bad}").exists()
