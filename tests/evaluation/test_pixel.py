"""SSIM and PSNR per frame and per clip, with the authors' scikit-image settings."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mindvideo.evaluation import (
    PSNR_CAP_DB,
    clip_psnr,
    clip_ssim,
    frame_psnr,
    frame_ssim,
    resize_frames,
)
from mindvideo.utils import UserError


def _clips(seed: int = 0, shape=(3, 4, 24, 32, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth random images (SSIM of pure noise against anything is ~0 and uninformative).
    base = rng.integers(0, 256, size=(*shape[:2], 6, 8, 3)).astype(np.float64)
    up = base.repeat(shape[2] // 6, axis=2).repeat(shape[3] // 8, axis=3)
    return up.astype(np.uint8)


def _noisy(x: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def test_identical_clips_have_ssim_one_and_capped_psnr():
    x = _clips()
    np.testing.assert_allclose(clip_ssim(x, x, progress=False), 1.0)
    np.testing.assert_array_equal(clip_psnr(x, x), PSNR_CAP_DB)
    assert clip_ssim(x, x, progress=False).shape == (3,)


def test_ssim_and_psnr_decrease_with_noise():
    x = _clips()
    ssim = [clip_ssim(x, _noisy(x, s), progress=False).mean() for s in (5, 20, 60)]
    psnr = [clip_psnr(x, _noisy(x, s)).mean() for s in (5, 20, 60)]
    assert ssim[0] > ssim[1] > ssim[2]
    assert psnr[0] > psnr[1] > psnr[2]


def test_frame_values_match_scikit_image_with_the_authors_settings():
    x = _clips()
    y = _noisy(x, 25)
    per_frame = frame_ssim(x, y, progress=False)
    assert per_frame.shape == (3, 4)
    for s in range(3):
        for f in range(4):
            ref = structural_similarity(x[s, f], y[s, f], data_range=255, channel_axis=-1)
            assert per_frame[s, f] == pytest.approx(ref, abs=1e-12)
            ref_psnr = peak_signal_noise_ratio(x[s, f], y[s, f], data_range=255)
            assert frame_psnr(x[s, f], y[s, f]) == pytest.approx(ref_psnr, abs=1e-9)
    # Per clip = mean over its frames.
    np.testing.assert_allclose(clip_ssim(x, y, progress=False), per_frame.mean(axis=1))


def test_shape_dtype_and_size_errors_are_user_errors():
    x = _clips()
    with pytest.raises(UserError, match="resize_to"):
        clip_ssim(x, x[:, :, :12], progress=False)
    with pytest.raises(UserError, match="resize_to"):
        clip_psnr(x, x[:2])
    with pytest.raises(UserError, match="uint8"):
        frame_psnr(x.astype(np.float32), x.astype(np.float32))
    with pytest.raises(UserError, match="SSIM window"):
        frame_ssim(x[..., :5, :5, :], x[..., :5, :5, :], progress=False)
    with pytest.raises(UserError, match=r"\[S, F, H, W, 3\]"):
        clip_ssim(x[0], x[0], progress=False)


def test_resize_frames_keeps_leading_axes_and_content():
    x = _clips(shape=(2, 3, 48, 64, 3))
    small = resize_frames(x, (24, 32))
    assert small.shape == (2, 3, 24, 32, 3) and small.dtype == np.uint8
    assert resize_frames(x, (48, 64)) is x
    # Block-constant images survive a 2× downscale nearly unchanged.
    assert clip_psnr(small, x[:, :, ::2, ::2]).min() > 25
    with pytest.raises(UserError, match="positive"):
        resize_frames(x, (0, 32))
