"""Torch datasets over a prepared subject: windows, clips, captions, scenes, batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mindvideo.data.datasets import (
    FMRIFramesDataset,
    FMRINormalizer,
    FMRIWindowDataset,
    SceneAwareBatchSampler,
    collate_windows,
)
from mindvideo.data.pairing import scene_ids_from_times
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.utils import UserError

S_TR, S_TE, T, F, H, V = 3, 2, 12, 6, 8, 20


def scene_ids(n_seg, rng, first=0):
    """[S, T, F] scene ids from random scene starts, unique across segments."""
    out = []
    for _ in range(n_seg):
        starts = np.concatenate([[0.0], np.sort(rng.uniform(1, 2 * T, 5))])
        ids = scene_ids_from_times(starts, T, first_id=first)
        first = int(ids.max()) + 1
        out.append(ids)
    return np.stack(out)


def make_prepared(root, test_reps=None, with_scenes=True, test_scale=1.0):
    rng = np.random.default_rng(0)
    w = PreparedWriter(root)
    w.write_array("fmri_train", (3.0 + 2.0 * rng.standard_normal((S_TR, T, V))).astype(np.float32))
    shape = (S_TE, T, V) if test_reps is None else (S_TE, test_reps, T, V)
    w.write_array("fmri_test", (test_scale * rng.standard_normal(shape)).astype(np.float32))
    for split, s in (("train", S_TR), ("test", S_TE)):
        w.write_array(f"frames_{split}", rng.integers(0, 256, (s, T, F, H, H, 3), dtype=np.uint8))
        w.write_captions(
            split,
            [[[f"{split} {i} {t} {f}" for f in range(F)] for t in range(T)] for i in range(s)],
        )
        if with_scenes:
            w.write_array(f"scene_ids_{split}", scene_ids(s, rng))
    w.finish({"config": {}}, subject=3)
    return PreparedData.open(root)


@pytest.fixture
def prepared(tmp_path):
    return make_prepared(tmp_path / "sub3")


def test_window_items_have_the_documented_shapes_and_fields(prepared):
    ds = FMRIWindowDataset(prepared, split="train", window=2, patch_size=16)
    assert len(ds) == S_TR * T
    item = ds[T + 4]  # segment 1, TR 4
    assert item["fmri"].shape == (2, 32) and item["fmri"].dtype == torch.float32
    assert item["frames"].shape == (F, H, H, 3) and item["frames"].dtype == torch.uint8
    np.testing.assert_array_equal(item["frames"].numpy(), prepared.frames_train[1, 4])
    assert item["captions"] == [f"train 1 4 {f}" for f in range(F)]
    assert (item["subject"], item["segment"], item["tr"], item["repetition"]) == (3, 1, 4, -1)
    ids = prepared.scene_ids_train[1, 4]
    assert item["scene_cut"] == (len(set(ids.tolist())) > 1)
    assert item["scene_id"] == ids[0]
    assert any(ds[i]["scene_cut"] for i in range(len(ds)))  # the flag is not constant
    assert not all(ds[i]["scene_cut"] for i in range(len(ds)))
    # fMRI: TRs 4 and 5 of segment 1, normalised with training statistics, zero padded.
    norm = ds.normalizer
    expected = (prepared.fmri_train[1, 4:6] - norm.mean_) / norm.std_
    np.testing.assert_allclose(item["fmri"][:, :V].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(item["fmri"][:, V:] == 0)


def test_window_is_clamped_at_the_segment_end(prepared):
    ds = FMRIWindowDataset(prepared, window=3, normalize="none", patch_size=4)
    last = ds[T - 1]  # segment 0, last TR
    assert last["tr"] == T - 1
    x = prepared.fmri_train[0, T - 1]
    for k in range(3):
        np.testing.assert_array_equal(last["fmri"][k].numpy(), x)
    before = ds[T - 2]["fmri"].numpy()
    np.testing.assert_array_equal(before, prepared.fmri_train[0, [T - 2, T - 1, T - 1]])
    # The window never reaches into the next segment.
    assert not np.allclose(last["fmri"][1].numpy(), prepared.fmri_train[1, 0])


def test_normalisation_uses_training_statistics_only(tmp_path):
    a = make_prepared(tmp_path / "a", test_scale=1.0)
    b = make_prepared(tmp_path / "b", test_scale=100.0)  # same training data, other test data
    na = FMRIWindowDataset(a, split="test").normalizer
    nb = FMRIWindowDataset(b, split="test").normalizer
    assert na.mean_ == nb.mean_ and na.std_ == nb.std_
    train = np.asarray(a.fmri_train, dtype=np.float64)
    assert na.mean_ == pytest.approx(train.mean()) and na.std_ == pytest.approx(train.std())
    # Test items are normalised with those training statistics (not their own).
    item = FMRIWindowDataset(b, split="test", window=1)[0]
    np.testing.assert_allclose(
        item["fmri"][0, :V].numpy(), (b.fmri_test[0, 0] - na.mean_) / na.std_, rtol=1e-5
    )
    assert item["fmri"].abs().max() > 10  # test data are not re-standardised
    per_voxel = FMRINormalizer("train_voxel").fit(a.fmri_train)
    np.testing.assert_allclose(per_voxel.mean_, train.reshape(-1, V).mean(axis=0))
    np.testing.assert_allclose(per_voxel.std_, train.reshape(-1, V).std(axis=0))
    with pytest.raises(UserError, match="not fitted"):
        FMRINormalizer().transform(train)


def test_test_repetitions_average_or_each(tmp_path):
    data = make_prepared(tmp_path / "r", test_reps=3)
    avg = FMRIWindowDataset(data, split="test", window=2, normalize="none")
    assert len(avg) == S_TE * T
    np.testing.assert_allclose(
        avg[T + 1]["fmri"][:, :V].numpy(), data.fmri_test[1, :, 1:3].mean(axis=0), rtol=1e-5
    )
    each = FMRIWindowDataset(
        data, split="test", window=2, normalize="none", test_repetitions="each"
    )
    assert len(each) == S_TE * 3 * T
    item = each[3 * T + 2 * T + 5]  # segment 1, repetition 2, TR 5
    assert (item["segment"], item["repetition"], item["tr"]) == (1, 2, 5)
    np.testing.assert_array_equal(item["fmri"][:, :V].numpy(), data.fmri_test[1, 2, 5:7])


def test_wrap_compat_padding_and_errors(prepared, tmp_path):
    ds = FMRIWindowDataset(prepared, patch_size=10, pad_mode="wrap_compat", normalize="none")
    x = ds[0]["fmri"].numpy()
    assert x.shape == (2, 30)  # V = 20 is a multiple of 10: the authors add a whole patch
    np.testing.assert_array_equal(x[:, 20:], x[:, :10])
    with pytest.raises(UserError, match="split"):
        FMRIWindowDataset(prepared, split="val")
    w = PreparedWriter(tmp_path / "nocap")
    for name in ("fmri_train", "fmri_test", "frames_train", "frames_test"):
        w.write_array(name, getattr(prepared, name))
    w.finish()
    with pytest.raises(UserError, match=r"no captions_train.json"):
        FMRIWindowDataset(tmp_path / "nocap")
    item = FMRIWindowDataset(tmp_path / "nocap", with_captions=False)[0]
    assert item["captions"] == [] and item["subject"] == 1


def test_scene_ids_are_detected_from_frames_when_not_saved(tmp_path):
    root = tmp_path / "noscenes"
    w = PreparedWriter(root)
    rng = np.random.default_rng(1)
    # Train frames: flat colours that change every 4 TRs (a cut at TR 4 and TR 8).
    colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250]], np.uint8)
    frames = np.zeros((S_TR, T, F, H, H, 3), np.uint8)
    for s in range(S_TR):
        for t in range(T):
            frames[s, t] = colours[(t // 4 + s) % 3]
    w.write_array("frames_train", frames)
    w.write_array("frames_test", frames[:S_TE])
    w.write_array("fmri_train", rng.standard_normal((S_TR, T, V)).astype(np.float32))
    w.write_array("fmri_test", rng.standard_normal((S_TE, T, V)).astype(np.float32))
    w.finish()
    ds = FMRIWindowDataset(root, with_captions=False)
    expected = np.repeat(np.arange(3), 4)
    np.testing.assert_array_equal(ds.scene_ids[0, :, 0], expected)
    np.testing.assert_array_equal(ds.scene_ids[1, :, 0], expected + 3)  # unique across segments
    assert not any(ds[i]["scene_cut"] for i in range(len(ds)))  # cuts fall between TRs here


def test_frames_dataset_is_training_fmri_only(prepared):
    ds = FMRIFramesDataset(prepared, patch_size=16)
    assert len(ds) == S_TR * T
    x = ds[T + 3]
    assert x.shape == (32,) and x.dtype == torch.float32
    norm = ds.normalizer
    np.testing.assert_allclose(
        x[:V].numpy(), (prepared.fmri_train[1, 3] - norm.mean_) / norm.std_, rtol=1e-5
    )
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError):
        FMRIFramesDataset(prepared, split="test")  # there is no way to ask for test fMRI


def test_scene_aware_batches_have_no_duplicate_scene_and_cover_every_index(prepared):
    ds = FMRIWindowDataset(prepared, window=2)
    sampler = SceneAwareBatchSampler(ds, batch_size=4, seed=7)
    n_batches = len(sampler)
    batches = list(sampler)
    assert len(batches) == n_batches
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ds)))  # each index exactly once
    for b in batches:
        assert len(b) <= 4
        scenes = [s for i in b for s in ds.scene_keys[i]]
        assert len(scenes) == len(set(scenes)), b
    # Only the partial batches left at the end are short: a sample opens a new batch only when
    # every open batch holds one of its (at most 2) scenes, so at most 2 × (largest scene) remain.
    per_scene = {}
    for keys in ds.scene_keys:
        for k in keys:
            per_scene[k] = per_scene.get(k, 0) + 1
    assert sum(len(b) < 4 for b in batches) <= 2 * max(per_scene.values())
    assert len(batches) < len(ds) / 2
    # Deterministic per (seed, epoch); epochs differ.
    again = SceneAwareBatchSampler(ds, batch_size=4, seed=7)
    assert list(again) == batches
    assert list(again) != batches  # epoch 1 now
    again.set_epoch(0)
    assert list(again) == batches
    dropped = SceneAwareBatchSampler(ds, batch_size=4, seed=7, drop_last=True)
    assert all(len(b) == 4 for b in dropped)
    # Works as a DataLoader batch sampler with the window collate function.
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_windows)
    batch = next(iter(loader))
    assert batch["fmri"].shape[1:] == (2, 32) and batch["frames"].shape[1:] == (F, H, H, 3)
    assert len(batch["captions"]) == batch["fmri"].shape[0] and len(batch["captions"][0]) == F
    assert batch["scene_id"].dtype == torch.long and batch["scene_cut"].dtype == torch.bool
    assert len(set(batch["scene_id"].tolist())) == batch["fmri"].shape[0]


def test_a_plain_random_batch_would_have_duplicate_scenes(prepared):
    """The scene-aware sampler is needed: shuffled batches of this data repeat scenes."""
    ds = FMRIWindowDataset(prepared)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(ds))
    dup = 0
    for k in range(0, len(perm), 4):
        scenes = [s for i in perm[k : k + 4] for s in ds.scene_keys[i]]
        dup += len(scenes) != len(set(scenes))
    assert dup > 0


def test_datasets_pickle_by_reopening_not_by_copying_frames(prepared):
    """DataLoader workers started with "spawn" pickle the dataset: it must stay small."""
    ds = FMRIWindowDataset(prepared)
    blob = pickle.dumps(ds)
    assert len(blob) < prepared.frames_train.nbytes / 2
    clone = pickle.loads(blob)
    assert isinstance(clone.frames, np.memmap)
    a, b = ds[17], clone[17]
    assert torch.equal(a["fmri"], b["fmri"]) and torch.equal(a["frames"], b["frames"])
    assert a["captions"] == b["captions"] and a["scene_id"] == b["scene_id"]
    frames_ds = pickle.loads(pickle.dumps(FMRIFramesDataset(prepared)))
    assert torch.equal(frames_ds[5], FMRIFramesDataset(prepared)[5])


def test_compat_normalises_training_fmri_and_leaves_the_test_fmri_as_the_authors_do(tmp_path):
    """The authors' evaluation loader normalises test fMRI with mean 0 and std 1 (a no-op)."""
    data = make_prepared(tmp_path / "c", test_scale=100.0)
    train = FMRIWindowDataset(data, split="train", window=1, normalize="compat")
    plain = FMRIWindowDataset(data, split="train", window=1, normalize="train")
    np.testing.assert_array_equal(train[4]["fmri"].numpy(), plain[4]["fmri"].numpy())
    test = FMRIWindowDataset(data, split="test", window=1, normalize="compat")
    np.testing.assert_allclose(test[0]["fmri"][0, :V].numpy(), data.fmri_test[0, 0], rtol=1e-6)
    restored = FMRINormalizer.from_state_dict(train.normalizer.state_dict())
    x = np.asarray(data.fmri_train[1, 2])
    np.testing.assert_array_equal(restored.transform(x), train.normalizer.transform(x))
    np.testing.assert_array_equal(restored.transform(x, "test"), x.astype(np.float32))
    with pytest.raises(UserError, match="choose one of none, train, train_voxel, compat"):
        FMRINormalizer("zscore")
