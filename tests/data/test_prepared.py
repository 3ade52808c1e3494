"""The prepared-subject format: atomic incremental writing, memory-mapped reading, up-to-date
detection, and the authors' preprocessed arrays as input."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from mindvideo.data.prepared import (
    PreparedData,
    PreparedWriter,
    data_fingerprint,
    hash_sources,
    is_up_to_date,
    load_authors_arrays,
    sha256_file,
    write_first_segments,
    write_prepared,
)
from mindvideo.utils import UserError

S_TR, S_TE, T, F, H, V, G = 3, 2, 10, 6, 8, 20, 50


def _captions(n_seg, prefix):
    return [[[f"{prefix} {s} {t} {f}" for f in range(F)] for t in range(T)] for s in range(n_seg)]


def write_small(out, inputs=None, test_reps=None, seed=0):
    """A small prepared subject written the way `prepare` writes one (segment by segment)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "fmri_train": rng.standard_normal((S_TR, T, V)).astype(np.float32),
        "fmri_test": rng.standard_normal(
            (S_TE, T, V) if test_reps is None else (S_TE, test_reps, T, V)
        ).astype(np.float32),
        "frames_train": rng.integers(0, 256, (S_TR, T, F, H, H, 3), dtype=np.uint8),
        "frames_test": rng.integers(0, 256, (S_TE, T, F, H, H, 3), dtype=np.uint8),
    }
    mask = np.zeros(G, dtype=bool)
    mask[rng.choice(G, V, replace=False)] = True
    w = PreparedWriter(out)
    for split in ("train", "test"):
        arr = arrays[f"frames_{split}"]
        with w.open_array(f"frames_{split}", arr.shape, np.uint8) as mm:
            for s in range(arr.shape[0]):
                mm[s] = arr[s]
        w.write_array(f"fmri_{split}", arrays[f"fmri_{split}"])
        w.write_captions(split, _captions(arr.shape[0], split))
    w.write_array("roi_mask", mask)
    w.finish(
        inputs or {"sources": {"a.nii": "0" * 64}, "config": {"alpha": 0.01}},
        subject=1,
        volumes_dropped={"seg1_1": [1, 4]},
    )
    arrays["roi_mask"] = mask
    return arrays


def test_write_then_open_round_trip_with_memmaps(tmp_path):
    arrays = write_small(tmp_path / "sub1")
    data = PreparedData.open(tmp_path / "sub1")
    for name, arr in arrays.items():
        got = getattr(data, name)
        assert isinstance(got, np.memmap), name
        np.testing.assert_array_equal(got, arr)
        with pytest.raises(ValueError):
            got[(0,) * got.ndim] = 1  # read-only
    assert data.captions_train[2][9][5] == "train 2 9 5"
    assert data.captions("test")[1][0] == [f"test 1 0 {f}" for f in range(F)]
    assert (data.n_voxels, data.n_trs, data.frames_per_tr, data.subject) == (V, T, F, 1)
    assert data.scene_ids_train is None and data.test_seg_id is None
    m = json.loads((tmp_path / "sub1" / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["n_voxels"] == V
    assert m["arrays"]["frames_train"] == {
        "file": "frames_train.npy",
        "shape": [S_TR, T, F, H, H, 3],
        "dtype": "|u1",
    }
    assert m["volumes_dropped"] == {"seg1_1": [1, 4]} and m["config"] == {"alpha": 0.01}
    # Nothing but the final files is left behind (no temporary files).
    assert sorted(p.name for p in (tmp_path / "sub1").iterdir()) == sorted(
        [f"{n}.npy" for n in arrays]
        + ["captions_train.json", "captions_test.json"]
        + ["manifest.json"]
    )


def test_first_segments_keep_the_training_segments_asked_for_and_the_rest_as_it_is(tmp_path):
    """A subject with less data: the first k training segments (fMRI, frames, captions, scene
    ids), the test split, voxels and ROI unchanged; the manifest names the source and k."""
    arrays = write_small(tmp_path / "full")
    source = PreparedData.open(tmp_path / "full")
    scenes = np.arange(S_TR * T * F, dtype=np.int32).reshape(S_TR, T, F)
    w = PreparedWriter(tmp_path / "labelled")
    for name in ("fmri_train", "fmri_test", "frames_train", "frames_test", "roi_mask"):
        w.write_array(name, arrays[name])
    w.write_array("scene_ids_train", scenes)
    w.write_captions("train", source.captions("train"))
    w.finish(None, segments={"train": ["seg1", "seg2", "seg3"], "test": ["test1", "test2"]})
    labelled = PreparedData.open(tmp_path / "labelled")
    for src in (source, labelled):
        cut = write_first_segments(src.root, tmp_path / f"cut-{src.root.name}", 2)
        for name in ("fmri_train", "frames_train"):
            np.testing.assert_array_equal(getattr(cut, name), arrays[name][:2])
        for name in ("fmri_test", "frames_test", "roi_mask"):
            np.testing.assert_array_equal(getattr(cut, name), arrays[name])
        assert cut.captions("train") == src.captions("train")[:2]
        assert cut.captions("test") == src.captions("test")
        assert cut.manifest["first_segments"] == {"source": data_fingerprint(src), "segments": 2}
    np.testing.assert_array_equal(cut.scene_ids_train, scenes[:2])
    assert cut.manifest["segments"] == {"train": ["seg1", "seg2"], "test": ["test1", "test2"]}
    assert PreparedData.open(tmp_path / "cut-full").manifest["subject"] == 1
    for bad in (0, S_TR + 1):
        with pytest.raises(UserError, match=f"has {S_TR} training segments: segments must be"):
            write_first_segments(tmp_path / "full", tmp_path / f"bad{bad}", bad)
        assert not (tmp_path / f"bad{bad}").exists()


def test_test_repetitions_can_be_kept(tmp_path):
    write_small(tmp_path / "d", test_reps=3)
    assert PreparedData.open(tmp_path / "d").fmri_test.shape == (S_TE, 3, T, V)


def test_up_to_date_detection(tmp_path):
    inputs = {"sources": {"seg1_1.nii": "ab" * 32}, "config": {"alpha": 0.01, "fps": 3}}
    out = tmp_path / "sub1"
    assert not is_up_to_date(out, inputs)  # nothing there yet
    write_small(out, inputs)
    assert is_up_to_date(out, inputs)
    assert is_up_to_date(out, json.loads(json.dumps(inputs)))  # a json round trip is equal
    assert not is_up_to_date(out, {**inputs, "config": {"alpha": 0.05, "fps": 3}})
    assert not is_up_to_date(out, {**inputs, "sources": {"seg1_1.nii": "cd" * 32}})
    assert not is_up_to_date(out, {})
    (out / "frames_test.npy").unlink()
    assert not is_up_to_date(out, inputs)


def test_incomplete_directories_are_rejected_clearly(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        PreparedData.open(tmp_path / "nope")
    out = tmp_path / "sub1"
    write_small(out)
    # A writer starting on the directory invalidates it until finish() succeeds.
    w = PreparedWriter(out)
    with pytest.raises(UserError, match=r"no manifest.json.*interrupted"):
        PreparedData.open(out)
    with pytest.raises(UserError, match="missing fmri_test, frames_test"):
        w.write_array("fmri_train", np.zeros((1, T, V), np.float32))
        w.write_array("frames_train", np.zeros((1, T, F, H, H, 3), np.uint8))
        w.finish()
    write_small(out)
    (out / "fmri_test.npy").unlink()
    with pytest.raises(UserError, match=r"fmri_test\.npy is listed .* but missing"):
        PreparedData.open(out)
    write_small(out)
    np.save(out / "fmri_test.npy", np.zeros((S_TE, T, V + 1), np.float32))
    with pytest.raises(UserError, match=r"records float32 \[2, 10, 20\]"):
        PreparedData.open(out)
    write_small(out)
    (out / "captions_test.json").write_text(json.dumps([[["a"]]]))
    with pytest.raises(UserError, match=r"captions_test.json does not have the shape"):
        PreparedData.open(out)


def test_an_interrupted_array_leaves_nothing(tmp_path):
    w = PreparedWriter(tmp_path)
    with pytest.raises(RuntimeError), w.open_array("frames_train", (2, T, F, H, H, 3), np.uint8):
        raise RuntimeError("decoding failed")
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_arrays_fail_at_finish(tmp_path):
    w = PreparedWriter(tmp_path)
    w.write_array("fmri_train", np.zeros((S_TR, T, V), np.float32))
    w.write_array("fmri_test", np.zeros((S_TE, T, V), np.float32))
    w.write_array("frames_train", np.zeros((S_TR + 1, T, F, H, H, 3), np.uint8))
    w.write_array("frames_test", np.zeros((S_TE, T, F, H, H, 3), np.uint8))
    with pytest.raises(UserError, match="frames_train has 4 segments × 10 TRs but fmri_train"):
        w.finish()
    with pytest.raises(UserError, match="ragged"):
        w.write_captions("train", [[["a", "b"], ["c"]]])
    assert not (tmp_path / "manifest.json").exists()


def test_hashes_of_the_inputs(tmp_path):
    (tmp_path / "fmri").mkdir()
    a = tmp_path / "fmri" / "seg1_1.nii"
    a.write_bytes(b"abc" * 1000)
    assert sha256_file(a) == hashlib.sha256(b"abc" * 1000).hexdigest()
    hashes = hash_sources([a, "fmri/seg1_1.nii"], tmp_path)
    assert hashes == {"fmri/seg1_1.nii": hashlib.sha256(b"abc" * 1000).hexdigest()}


# -- the authors' preprocessed arrays ----------------------------------------------------------


def write_authors(root, s_tr=2, s_te=1, v=37, caption_dtype=str):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {}
    for split, s in (("train", s_tr), ("test", s_te)):
        files[f"video_{split}_256_3hz.npy"] = rng.integers(
            0, 256, (s, 240, 6, 8, 8, 3), dtype=np.uint8
        )
        files[f"text_{split}_256_3hz.npy"] = np.array(
            [
                [[f"a {split} caption {i} {t} {f}" for f in range(6)] for t in range(240)]
                for i in range(s)
            ]
        ).astype(caption_dtype)
        files[f"fmri_{split}_subject2.npy"] = rng.standard_normal((s, 240, v))
    files["test_seg_id_3hz.npy"] = np.repeat(np.arange(s_te), 240).reshape(s_te, 240)
    for name, arr in files.items():
        np.save(root / name, arr, allow_pickle=arr.dtype == object)
    return files


def test_authors_arrays_load_with_validated_shapes(tmp_path):
    files = write_authors(tmp_path / "preprocessed")
    data = load_authors_arrays(tmp_path, subject=2)  # finds the preprocessed/ subfolder
    assert data.frames_train.shape == (2, 240, 6, 8, 8, 3)
    assert data.fmri_test.shape == (1, 240, 37) and data.n_voxels == 37
    np.testing.assert_array_equal(data.fmri_train, files["fmri_train_subject2.npy"])
    assert data.captions_train[1][239][5] == "a train caption 1 239 5"
    assert data.subject == 2 and data.roi_mask is None
    np.testing.assert_array_equal(data.test_seg_id, files["test_seg_id_3hz.npy"])
    # Pickling re-opens the files (memory-mapped) instead of copying them.
    clone = pickle.loads(pickle.dumps(data))
    assert isinstance(clone.frames_train, np.memmap)
    np.testing.assert_array_equal(clone.fmri_test, data.fmri_test)
    # Converted into a prepared directory, it opens like any other.
    out = write_prepared(data, tmp_path / "prepared", {"sources": {"x": "y"}})
    np.testing.assert_array_equal(out.frames_test, data.frames_test)
    assert out.captions_test == data.captions_test and out.manifest["source"] == "authors_arrays"
    assert is_up_to_date(tmp_path / "prepared", {"sources": {"x": "y"}})
    # Byte-string captions work too.
    write_authors(tmp_path / "bytes", caption_dtype=bytes)
    assert load_authors_arrays(tmp_path / "bytes", "subject2").captions_test[0][0][0] == (
        "a test caption 0 0 0"
    )


def test_authors_arrays_errors(tmp_path):
    with pytest.raises(UserError, match=r"video_train_256_3hz.npy was not found"):
        load_authors_arrays(tmp_path, 1)
    write_authors(tmp_path)
    with pytest.raises(UserError, match=r"fmri_train_subject1.npy was not found"):
        load_authors_arrays(tmp_path, 1)
    np.save(tmp_path / "fmri_test_subject2.npy", np.zeros((1, 239, 37)))
    with pytest.raises(UserError, match=r"fmri_test_subject2\.npy should be .*\[1, 240\]"):
        load_authors_arrays(tmp_path, 2)
    np.save(tmp_path / "fmri_test_subject2.npy", np.zeros((1, 240, 36)))
    with pytest.raises(UserError, match=r"37 voxels but fmri_test_subject2.npy has 36"):
        load_authors_arrays(tmp_path, 2)
    write_authors(tmp_path)
    np.save(tmp_path / "test_seg_id_3hz.npy", np.zeros((5, 240)))
    with pytest.raises(UserError, match=r"test_seg_id_3hz\.npy should be \[1, 240\]"):
        load_authors_arrays(tmp_path, 2)
    write_authors(tmp_path)
    np.save(tmp_path / "video_train_256_3hz.npy", np.zeros((2, 240, 6, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="should be uint8"):
        load_authors_arrays(tmp_path, 2)
    write_authors(tmp_path, caption_dtype=object)
    with pytest.raises(UserError, match=r"pickle.*convert it once"):
        load_authors_arrays(tmp_path, 2)
