"""Pixel-level metrics: SSIM and PSNR per frame, averaged per clip (paper section 4.3).

SSIM uses exactly the settings of the authors' released evaluation code:
``skimage.metrics.structural_similarity(pred, gt, data_range=255, channel_axis=-1)`` on uint8 RGB
frames — scikit-image's defaults otherwise: a 7×7 uniform window (no Gaussian weights), sample
covariance, K1 = 0.01, K2 = 0.03, the SSIM of each colour channel averaged.

PSNR is ``10 log10(255² / MSE)`` over all pixels and channels of a frame (as
``skimage.metrics.peak_signal_noise_ratio`` with ``data_range=255``); identical frames have infinite
PSNR, which we cap at :data:`PSNR_CAP_DB` so that means and JSON stay finite.
"""

from __future__ import annotations

import numpy as np

from mindvideo.utils import UserError

PSNR_CAP_DB = 100.0
"""PSNR reported for identical frames (and anything above it): 8-bit frames this close differ by
well under one grey level on average."""

SSIM_WIN_SIZE = 7
"""scikit-image's default SSIM window; frames must be at least this many pixels on each side."""


def _check_frames(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise UserError(
            f"{name} must be uint8 RGB frames in 0..255, got dtype {arr.dtype}; convert with "
            "np.clip(x, 0, 255).astype(np.uint8)."
        )
    if arr.ndim < 3 or arr.shape[-1] != 3:
        raise UserError(f"{name} must be RGB frames [..., H, W, 3], got shape {arr.shape}.")
    return arr


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise a UserError unless reconstructions and ground truth have the same shape."""
    if pred.shape != gt.shape:
        raise UserError(
            f"Reconstructions {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in "
            "shape; pixel metrics compare frames of equal size, so pass resize_to=(H, W) (the "
            "authors compared at the reconstruction's resolution)."
        )


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB frames ``[..., H, W, 3]`` to ``[..., h, w, 3]`` with ``size = (h, w)``.

    Bicubic with Pillow's antialiasing when shrinking; frames already of that size are returned
    unchanged.
    """
    from PIL import Image

    arr = _check_frames(frames, "frames")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise UserError(f"resize_to={size} must be two positive sizes (height, width).")
    if arr.shape[-3:-1] == (h, w):
        return arr
    flat = arr.reshape(-1, *arr.shape[-3:])
    out = np.empty((flat.shape[0], h, w, 3), dtype=np.uint8)
    for i, frame in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))
    return out.reshape(*arr.shape[:-3], h, w, 3)


def frame_ssim(pred: np.ndarray, gt: np.ndarray, *, progress: bool = True) -> np.ndarray:
    """SSIM of each reconstructed frame against its ground-truth frame.

    Args:
        pred: ``[..., H, W, 3]`` uint8 reconstructed frames.
        gt: the same shape, ground truth.
        progress: show a progress bar (SSIM takes ~20 ms per 256² frame).

    Returns:
        ``[...]`` float64 SSIM per frame (1 for identical frames).
    """
    from skimage.metrics import structural_similarity
    from tqdm.auto import tqdm

    pred, gt = _check_frames(pred, "reconstructions"), _check_frames(gt, "ground truth")
    check_same_shape(pred, gt)
    if min(pred.shape[-3:-1]) < SSIM_WIN_SIZE:
        raise UserError(
            f"Frames of {pred.shape[-3]}×{pred.shape[-2]} pixels are smaller than the "
            f"{SSIM_WIN_SIZE}×{SSIM_WIN_SIZE} SSIM window; pass resize_to=(H, W) with H, W >= 7."
        )
    lead = pred.shape[:-3]
    p = pred.reshape(-1, *pred.shape[-3:])
    g = gt.reshape(-1, *gt.shape[-3:])
    out = np.empty(p.shape[0])
    disable = None if progress else True  # None: no bar when stderr is not a terminal
    bar = tqdm(range(p.shape[0]), desc="SSIM", unit="frame", disable=disable, leave=False)
    for i in bar:
        # The authors' settings: data_range=255 over RGB, scikit-image defaults otherwise.
        out[i] = structural_similarity(p[i], g[i], data_range=255, channel_axis=-1)
    return out.reshape(lead)


def frame_psnr(pred: np.ndarray, gt: np.ndarray, *, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """PSNR (dB) of each reconstructed frame against its ground-truth frame, capped at ``cap_db``.

    Args:
        pred: ``[..., H, W, 3]`` uint8 reconstructed frames.
        gt: the same shape, ground truth.
        cap_db: value for identical frames (whose PSNR is infinite) and the maximum reported.

    Returns:
        ``[...]`` float64 PSNR per frame.
    """
    pred, gt = _check_frames(pred, "reconstructions"), _check_frames(gt, "ground truth")
    check_same_shape(pred, gt)
    diff = pred.astype(np.float64) - gt.astype(np.float64)
    mse = np.mean(diff * diff, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(psnr, cap_db)


def _check_clips(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _check_frames(pred, "reconstructions"), _check_frames(gt, "ground truth")
    if pred.ndim != 5:
        raise UserError(
            f"Clips must be [S, F, H, W, 3], got reconstructions of shape {pred.shape}."
        )
    check_same_shape(pred, gt)
    return pred, gt


def clip_ssim(pred: np.ndarray, gt: np.ndarray, *, progress: bool = True) -> np.ndarray:
    """Per-clip SSIM: the mean of :func:`frame_ssim` over the F frames of each clip.

    Args:
        pred: ``[S, F, H, W, 3]`` uint8 reconstructions; gt: the same shape.

    Returns:
        ``[S]`` mean SSIM per clip (the mean over clips equals the mean over all frames).
    """
    pred, gt = _check_clips(pred, gt)
    return frame_ssim(pred, gt, progress=progress).mean(axis=1)


def clip_psnr(pred: np.ndarray, gt: np.ndarray, *, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-clip PSNR: the mean of :func:`frame_psnr` (dB) over the F frames of each clip.

    Args:
        pred: ``[S, F, H, W, 3]`` uint8 reconstructions; gt: the same shape.

    Returns:
        ``[S]`` mean PSNR per clip.
    """
    pred, gt = _check_clips(pred, gt)
    return frame_psnr(pred, gt, cap_db=cap_db).mean(axis=1)
