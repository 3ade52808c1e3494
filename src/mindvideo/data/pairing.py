"""Pairing fMRI volumes with video frames, fMRI windows, voxel padding and scene ids.

Paper sections 3.3 (fMRI frame windows) and 4.2 (3 FPS, 6 frames per fMRI frame):

- TR ``t`` (0-based, after dropping the lead-in volumes) is paired with the frames *shown* during
  ``[t * tr_s, (t + 1) * tr_s)`` seconds of the movie; at 3 FPS and TR 2 s these are frames
  ``6t .. 6t + 5`` (:func:`frames_for_tr`). Frame ``k`` of the resampled video is the picture on
  screen at time ``k / fps``.
- The fMRI window of TR ``t`` is TRs ``t .. t + w - 1`` (paper: ``x_t = {x_t, ..., x_{t+w-1}}``),
  clamped at the segment end: near the end the last TR repeats (:func:`window_indices`), as in the
  authors' data loader.
- The voxel axis is padded to a multiple of the encoder's patch size (:func:`pad_voxels`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from mindvideo.utils import UserError

PadMode = Literal["zero", "wrap_compat"]


def frames_per_tr(fps: float = 3, tr_s: float = 2.0) -> int:
    """Number of frames shown during one TR (3 FPS × 2 s = 6); ``fps * tr_s`` must be whole."""
    n = fps * tr_s
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise UserError(
            f"fps × TR = {fps} × {tr_s} s = {n} is not a whole number of frames per fMRI volume; "
            "choose an fps that divides evenly (e.g. 3 FPS at TR 2 s gives 6)."
        )
    return round(n)


def frames_for_tr(t: int, fps: float = 3, tr_s: float = 2.0) -> np.ndarray:
    """Indices of the frames (at ``fps``) shown during TR ``t``, i.e. in ``[t·tr, (t+1)·tr)`` s.

    At 3 FPS and TR 2 s: ``[6t, 6t + 1, ..., 6t + 5]``. Returns int64 ``[frames_per_tr]``.
    """
    if t < 0:
        raise ValueError(f"TR index must be >= 0, got {t}")
    # Frame k is shown at k / fps; the first frame at or after t·tr is ceil(t·tr·fps).
    start = math.ceil(t * tr_s * fps - 1e-9)
    stop = math.ceil((t + 1) * tr_s * fps - 1e-9)
    return np.arange(start, stop, dtype=np.int64)


def window_indices(t: int, w: int, n_trs: int) -> np.ndarray:
    """The TRs of the fMRI window of TR ``t``: ``t .. t + w - 1``, clamped to ``n_trs - 1``.

    At the end of a segment the last TR repeats: ``window_indices(239, 2, 240) == [239, 239]``.
    Returns int64 ``[w]``.
    """
    if w < 1:
        raise UserError(f"The fMRI window size must be at least 1, got {w}.")
    if not 0 <= t < n_trs:
        raise IndexError(f"TR {t} is outside a segment of {n_trs} TRs")
    return np.minimum(np.arange(t, t + w, dtype=np.int64), n_trs - 1)


def padded_size(n_voxels: int, patch_size: int, mode: PadMode = "zero") -> int:
    """Number of voxels after :func:`pad_voxels`.

    ``"zero"``: the next multiple of ``patch_size`` (unchanged when already a multiple).
    ``"wrap_compat"``: ``V + patch_size - V % patch_size`` — the authors' formula, which adds a
    whole extra patch when V is already a multiple.
    """
    if patch_size < 1:
        raise UserError(f"patch_size must be at least 1, got {patch_size}.")
    if mode == "zero":
        return -(-n_voxels // patch_size) * patch_size
    if mode == "wrap_compat":
        return n_voxels + patch_size - n_voxels % patch_size
    raise UserError(f"Unknown voxel padding mode {mode!r}; choose 'zero' or 'wrap_compat'.")


def pad_voxels(x: Any, patch_size: int, mode: PadMode = "zero") -> Any:
    """Pad the last (voxel) axis of ``x: [..., V]`` to ``[..., padded_size(V)]``.

    ``mode="zero"`` appends zeros up to the next multiple of ``patch_size`` and pads nothing when
    V is already a multiple. ``mode="wrap_compat"`` reproduces the authors' padding (MinD-Vis /
    MinD-Video ``pad_to_patch_size``)::

        np.pad(x, ((0, 0), ..., (0, patch_size - V % patch_size)), "wrap")

    i.e. the first voxels are repeated at the end, and a whole extra patch of repeats is added
    when V is already a multiple of ``patch_size``. Use it only with the authors' checkpoints,
    whose encoders expect that many voxels. Works on numpy arrays and torch tensors.
    """
    n = x.shape[-1]
    if n < 1:
        raise UserError("Cannot pad an fMRI array with no voxels; check the ROI selection.")
    target = padded_size(n, patch_size, mode)
    if target == n:
        return x
    if mode == "wrap_compat":
        idx = np.arange(target) % n  # np.pad 'wrap' semantics, also when pad > V
        if isinstance(x, np.ndarray):
            return x[..., idx]
        import torch

        return x[..., torch.as_tensor(idx, device=x.device)]
    if isinstance(x, np.ndarray):
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, target - n)])
    import torch.nn.functional as F

    return F.pad(x, (0, target - n))


def scene_ids_from_times(
    scene_starts_s: np.ndarray | list[float],
    n_trs: int,
    fps: float = 3,
    tr_s: float = 2.0,
    first_id: int = 0,
    source_fps: float | None = None,
) -> np.ndarray:
    """Per-frame scene ids of one segment from the start times of its scenes.

    ``scene_starts_s``: increasing start times in seconds (movie time, the first one <= 0 s).
    Frame ``k`` (shown at ``k / fps``) belongs to the last scene starting at or before it. With
    ``source_fps`` (e.g. 30, the stimulus file's rate) each start is first snapped to that frame
    grid, ``round(start * source_fps) / source_fps``, which is where the cut is in the file.
    Ids are ``first_id + scene number`` so they can be made unique across segments. Returns int32
    ``[n_trs, frames_per_tr]``.
    """
    starts = np.asarray(scene_starts_s, dtype=np.float64)
    if starts.ndim != 1 or starts.size == 0 or np.any(np.diff(starts) < 0):
        raise UserError("Scene start times must be a non-empty increasing list of seconds.")
    if source_fps is not None:
        starts = np.round(starts * source_fps) / source_fps
    fpt = frames_per_tr(fps, tr_s)
    times = np.arange(n_trs * fpt) / fps
    scene = np.searchsorted(starts, times + 1e-9, side="right") - 1
    scene = np.maximum(scene, 0)
    return (scene + first_id).astype(np.int32).reshape(n_trs, fpt)


def frame_change(frames: np.ndarray, bins: int = 16, stride: int = 4) -> np.ndarray:
    """Histogram distance between consecutive frames, in [0, 1].

    ``frames: [N, H, W, 3]`` uint8 → ``[N - 1]``: half the L1 distance between the per-channel
    ``bins``-bin colour histograms (every ``stride``-th pixel), averaged over channels. A cut to
    another scene changes the colour distribution; motion within a scene mostly does not.
    """
    f = np.asarray(frames)[:, ::stride, ::stride, :]
    n = f.shape[0]
    q = (f.astype(np.int64) * bins) >> 8  # [N, h, w, 3] in 0..bins-1
    flat = (q + np.arange(3) * bins).reshape(n, -1)  # channel c uses bins c*bins..
    hist = np.stack([np.bincount(row, minlength=3 * bins) for row in flat]).astype(np.float64)
    hist /= flat.shape[1] / 3
    return 0.5 * np.abs(np.diff(hist, axis=0)).sum(axis=1) / 3


def scene_ids_from_frames(
    frames: np.ndarray, threshold: float = 0.35, first_id: int = 0, **kwargs: Any
) -> np.ndarray:
    """Per-frame scene ids of one segment estimated from the frames themselves.

    ``frames: [n_trs, F, H, W, 3]`` uint8 (F frames per TR). A new scene starts where
    :func:`frame_change` between consecutive frames exceeds ``threshold``. Used for real videos,
    which come without scene annotations. Returns int32 ``[n_trs, F]`` starting at ``first_id``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise UserError(
            f"Frames for scene detection must be [TRs, frames, H, W, 3], got {frames.shape}."
        )
    n_trs, fpt = frames.shape[:2]
    flat = frames.reshape(n_trs * fpt, *frames.shape[2:])
    cuts = frame_change(flat, **kwargs) > threshold
    ids = np.concatenate([[0], np.cumsum(cuts)]) + first_id
    return ids.astype(np.int32).reshape(n_trs, fpt)
