"""TR ↔ frame pairing, fMRI windows, voxel padding and scene ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mindvideo.data.pairing import (
    frame_change,
    frames_for_tr,
    frames_per_tr,
    pad_voxels,
    padded_size,
    scene_ids_from_frames,
    scene_ids_from_times,
    window_indices,
)
from mindvideo.utils import UserError


def test_tr_t_pairs_with_the_six_frames_shown_during_it():
    np.testing.assert_array_equal(frames_for_tr(0), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(frames_for_tr(10), np.arange(60, 66))
    assert frames_per_tr() == 6
    # Every frame time k / fps lies in [2t, 2t + 2) s, and the TRs tile the frames exactly.
    all_frames = np.concatenate([frames_for_tr(t) for t in range(240)])
    np.testing.assert_array_equal(all_frames, np.arange(1440))
    for t in (0, 7, 239):
        times = frames_for_tr(t) / 3
        assert np.all((times >= 2 * t) & (times < 2 * t + 2))
    # Other rates: 30 FPS → 60 frames per TR; TR 0.72 s at 25 FPS → 18 frames (ceil rule).
    np.testing.assert_array_equal(frames_for_tr(1, fps=30), np.arange(60, 120))
    assert len(frames_for_tr(3, fps=25, tr_s=0.72)) == 18
    with pytest.raises(UserError, match="whole number"):
        frames_per_tr(fps=4, tr_s=0.7)


def test_window_is_clamped_at_the_segment_end():
    np.testing.assert_array_equal(window_indices(0, 2, 240), [0, 1])
    np.testing.assert_array_equal(window_indices(238, 2, 240), [238, 239])
    np.testing.assert_array_equal(window_indices(239, 2, 240), [239, 239])
    np.testing.assert_array_equal(window_indices(237, 5, 240), [237, 238, 239, 239, 239])
    with pytest.raises(IndexError):
        window_indices(240, 2, 240)
    with pytest.raises(UserError, match="at least 1"):
        window_indices(0, 0, 240)


def test_zero_padding_to_a_multiple_of_the_patch_size():
    x = np.arange(2 * 20, dtype=np.float32).reshape(2, 20)
    y = pad_voxels(x, 16)
    assert y.shape == (2, 32)
    np.testing.assert_array_equal(y[:, :20], x)
    assert np.all(y[:, 20:] == 0)
    # Already a multiple: nothing added (unlike the authors' wrap padding).
    x32 = np.ones((3, 32))
    assert pad_voxels(x32, 16) is x32
    assert padded_size(32, 16) == 32 and padded_size(33, 16) == 48


def test_wrap_compat_reproduces_the_authors_padding_including_the_extra_patch():
    rng = np.random.default_rng(0)
    for v in (20, 32, 3, 3731):
        x = rng.standard_normal((2, 5, v))
        authors = np.pad(x, [(0, 0), (0, 0), (0, 16 - v % 16)], "wrap")
        y = pad_voxels(x, 16, mode="wrap_compat")
        np.testing.assert_array_equal(y, authors)
        assert y.shape[-1] == padded_size(v, 16, "wrap_compat")
    assert padded_size(32, 16, "wrap_compat") == 48  # the whole extra patch
    assert padded_size(3731, 16, "wrap_compat") == 3744  # subject 3's count in the paper
    t = torch.arange(20.0).reshape(1, 20)
    np.testing.assert_array_equal(
        pad_voxels(t, 16, "wrap_compat").numpy(), pad_voxels(t.numpy(), 16, "wrap_compat")
    )
    np.testing.assert_array_equal(pad_voxels(t, 16).numpy(), pad_voxels(t.numpy(), 16))
    with pytest.raises(UserError, match="padding mode"):
        pad_voxels(x, 16, mode="reflect")


def test_scene_ids_from_start_times():
    ids = scene_ids_from_times([0.0, 3.0, 4.5, 9.9], n_trs=5, first_id=10)
    assert ids.shape == (5, 6) and ids.dtype == np.int32
    times = np.arange(30) / 3
    expected = 10 + np.searchsorted([0.0, 3.0, 4.5, 9.9], times, side="right") - 1
    np.testing.assert_array_equal(ids.ravel(), expected)
    # TR 1 covers [2, 4) s: frames at 2, 2.33, 2.67 s (scene 0), 3, 3.33, 3.67 s (scene 1).
    np.testing.assert_array_equal(ids[1], [10, 10, 10, 11, 11, 11])
    # Snapped to a 30 FPS file: a cut at 2.99 s lands on frame 90 = 3.0 s; at 3.02 s on 3.033 s.
    np.testing.assert_array_equal(
        scene_ids_from_times([0.0, 2.99], 2, source_fps=30)[1], [0, 0, 0, 1, 1, 1]
    )
    np.testing.assert_array_equal(
        scene_ids_from_times([0.0, 3.02], 2, source_fps=30)[1], [0, 0, 0, 0, 1, 1]
    )


def _synthetic_scenes(rng, n_trs=20, size=24):
    """Frames [n_trs, 6, H, W, 3]: scenes with a distinct background colour and a moving square."""
    n = n_trs * 6
    cut_at = np.sort(rng.choice(np.arange(3, n - 3), 5, replace=False))
    scene = np.searchsorted(cut_at, np.arange(n), side="right")
    colours = rng.permutation(
        np.array(
            [
                [200, 30, 30],
                [30, 200, 30],
                [30, 30, 200],
                [200, 200, 30],
                [30, 200, 200],
                [120, 120, 120],
            ]
        )
    )
    frames = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        img = np.broadcast_to(colours[scene[k]], (size, size, 3)).astype(np.int16)
        img = img + rng.integers(-12, 13, size=img.shape)  # sensor noise
        x = (3 * k) % (size - 6)
        img[8:14, x : x + 6] = 255 - colours[scene[k]]  # motion within the scene
        frames[k] = np.clip(img, 0, 255)
    return frames.reshape(n_trs, 6, size, size, 3), scene.reshape(n_trs, 6)


def test_scene_cuts_from_frames_find_the_cuts():
    frames, truth = _synthetic_scenes(np.random.default_rng(1))
    ids = scene_ids_from_frames(frames, first_id=100)
    assert ids.shape == truth.shape and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, truth + 100)
    change = frame_change(frames.reshape(-1, *frames.shape[2:]))
    cuts = np.diff(truth.ravel()) > 0
    assert change[cuts].min() > 0.35 > change[~cuts].max()
    with pytest.raises(UserError, match="TRs, frames"):
        scene_ids_from_frames(frames[0])


def test_tr_frame_pairing_matches_the_simulators_scenes(simulated_dataset):
    """Scene cuts in scenes.json fall exactly where the decoded 3 FPS frames change most."""
    import json

    from mindvideo.data.video import read_video

    meta = json.loads((simulated_dataset / "scenes.json").read_text())
    for seg in ("seg1", "test1"):
        frames = read_video(simulated_dataset / "stimuli" / f"{seg}.mp4", fps=3)
        assert frames.shape[0] == 240 * frames_per_tr()
        by_tr = frames.reshape(240, 6, *frames.shape[1:])
        np.testing.assert_array_equal(by_tr[17], frames[frames_for_tr(17)])
        starts = [s["start_s"] for s in meta["segments"][seg]]
        ids = scene_ids_from_times(starts, 240, source_fps=meta["fps"]).ravel()
        cuts = np.flatnonzero(np.diff(ids))  # a new scene starts at frame c + 1
        change = frame_change(frames, stride=1)

        assert _peak_fraction(change, cuts) >= 0.9
        # One frame off would be noticed.
        assert _peak_fraction(change, cuts - 1) <= 0.2 and _peak_fraction(change, cuts + 1) <= 0.2


def _peak_fraction(change: np.ndarray, at: np.ndarray) -> float:
    """Fraction of positions ``at`` where ``change`` is the largest within ±2 frames."""
    c = np.clip(at, 2, len(change) - 3)
    window = np.stack([change[c + d] for d in range(-2, 3)])
    return float(np.mean(change[c] == window.max(axis=0)))
