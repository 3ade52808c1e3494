"""The low-level decoder's model: area frames, the SSIM loss, the linear map, the refiner."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from mindvideo.data.video import area_frames
from mindvideo.encoder.lowlevel import LowLevelDecoder, identification_loss, ssim_loss
from mindvideo.utils import UserError


def test_area_frames_is_the_block_mean_in_unit_range():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 3, 8, 12, 3), dtype=np.uint8)
    small = area_frames(frames, 4)
    assert small.shape == (2, 3, 4, 4, 3) and small.dtype == np.float32
    expected = frames[0, 1, 2:4, 6:9].astype(np.float64).mean(axis=(0, 1)) / 255
    np.testing.assert_allclose(small[0, 1, 1, 2], expected, rtol=1e-6)
    with pytest.raises(UserError, match="cannot be area-averaged to 5×5"):
        area_frames(frames, 5)


def test_ssim_loss_is_one_minus_the_evaluations_ssim():
    """The refiner's loss measures what `mindvideo evaluate` reports (scikit-image's SSIM with
    its defaults, per channel, data range 1)."""
    rng = np.random.default_rng(1)
    a = rng.random((20, 24, 3))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    expected = structural_similarity(a, b, data_range=1.0, channel_axis=-1)
    as_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    got = 1 - float(ssim_loss(as_t(a), as_t(b)))
    assert got == pytest.approx(expected, abs=1e-6)
    assert float(ssim_loss(as_t(a), as_t(a))) == pytest.approx(0.0, abs=1e-9)


def test_identification_loss_is_cross_entropy_over_the_mean_frames_correlations():
    """The refiner's identification term scores what pixel identification compares: the
    Pearson correlation of each video's mean frame (pooled to 16 × 16) with every target's."""
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(6, 3, 3, 32, 32, generator=gen)
    pred = target + 0.3 * torch.randn(target.shape, generator=gen)
    mean16 = lambda v: torch.nn.functional.avg_pool2d(v.mean(1), 2).flatten(1).numpy()  # noqa: E731
    corr = np.corrcoef(mean16(pred), mean16(target))[:6, 6:]
    logits = corr / 0.2
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    got = float(identification_loss(pred, target, temperature=0.2))
    assert got == pytest.approx(expected, rel=1e-5)
    # a correlation: any positive gain and offset of the prediction leaves it unchanged
    assert float(identification_loss(3 * pred + 1, target, 0.2)) == pytest.approx(got, rel=1e-5)
    # each video nearest its own target scores below chance's log(6); paired wrongly, above
    assert got < np.log(6) < float(identification_loss(pred.roll(1, 0), target, 0.2))


def decoder(refiner_channels=0, out_size=None, **semantic) -> LowLevelDecoder:
    torch.manual_seed(0)
    return LowLevelDecoder(
        num_voxels=5,
        window=2,
        frames=3,
        frame_size=4,
        out_size=out_size,
        refiner_channels=refiner_channels,
        **semantic,
    )


def test_the_linear_map_decodes_x_w_plus_b_as_frames():
    model = decoder()
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(10, 3 * 4 * 4 * 3)).astype(np.float32) * 0.1
    bias = np.full(3 * 4 * 4 * 3, 0.5, np.float32)
    model.set_linear_map(weight, bias)
    x = rng.normal(size=(2, 2, 5)).astype(np.float32)  # [N, window, V]
    video = model(torch.from_numpy(x))
    assert video.shape == (2, 3, 3, 4, 4)  # [N, F, 3, s, s]
    expected = (x.reshape(2, 10) @ weight + bias).reshape(2, 3, 4, 4, 3).transpose(0, 1, 4, 2, 3)
    np.testing.assert_allclose(video.detach().numpy(), np.clip(expected, 0, 1), atol=1e-5)
    with pytest.raises(UserError, match=r"\[10, 144\]"):
        model.set_linear_map(weight[:5], bias)
    with pytest.raises(UserError, match=r"fMRI windows \[N, 2, 5\]"):
        model(torch.zeros(2, 3, 5))


def test_an_untrained_refiner_is_bilinear_upsampling():
    """The refiner's residual starts at zero, so before training it upsamples and nothing else."""
    plain, refined = decoder(), decoder(refiner_channels=8, out_size=8)
    refined.linear.load_state_dict(plain.linear.state_dict())
    x = torch.randn(2, 10)
    low = plain.linear_video(x)
    up = torch.nn.functional.interpolate(
        low.flatten(1, 2), scale_factor=2, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(refined(x), up.unflatten(1, (3, 3)).clamp(0, 1))
    with pytest.raises(UserError, match="multiple of frame_size 4"):
        decoder(refiner_channels=8, out_size=6)


def test_save_pretrained_and_back_decodes_the_same(tmp_path):
    model = decoder(refiner_channels=8, out_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "decoder")
    back = LowLevelDecoder.from_pretrained(tmp_path / "decoder")
    x = torch.randn(3, 10)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert back.config.refiner_channels == 8 and back.config.out_size == 8


def test_the_semantic_map_feeds_the_refiner_and_is_saved(tmp_path):
    """With a semantic map the refiner reads the decoded embedding beside the video: the map is
    ``x W + b``, the output changes with it, and the folder round-trips bit for bit."""
    model = decoder(refiner_channels=8, out_size=8, semantic_dim=5, semantic_channels=2)
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(10, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    model.set_semantic_map(weight, bias)
    with torch.no_grad():  # a trained refiner: its residual and templates are not zero
        for p in model.refiner.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.from_numpy(rng.normal(size=(3, 10)).astype(np.float32))
    np.testing.assert_allclose(
        model.semantic_embedding(x).detach().numpy(), x.numpy() @ weight + bias, atol=1e-5
    )
    video = model(x)
    assert video.shape == (3, 3, 3, 8, 8)
    other = model.refine(model.linear_video(x), model.semantic_embedding(x) + 1.0)
    assert (other - video).abs().max() > 1e-3  # the refiner reads the embedding
    with pytest.raises(ValueError, match="reads a condition vector"):
        model.refiner(model.linear_video(x).flatten(1, 2))
    with pytest.raises(UserError, match=r"\[10, 5\]"):
        model.set_semantic_map(weight[:4], bias)
    model.save_pretrained(tmp_path / "decoder")
    back = LowLevelDecoder.from_pretrained(tmp_path / "decoder")
    torch.testing.assert_close(back(x), video, rtol=0, atol=0)
    assert back.config.semantic_dim == 5 and back.config.semantic_channels == 2
    # without a refiner nothing could read it
    with pytest.raises(UserError, match="read by the refiner"):
        decoder(semantic_dim=5, semantic_channels=2)
    assert decoder(refiner_channels=8, out_size=8).semantic is None
