"""The field's scores against their references' definitions, on inputs small enough to work out
by hand: Hue-pcc and EPE / angle (Mind-Animator), VIFI-CLIP (Mind-Animator), CLIP-pcc
(Mind-Animator's gated adjacent frames; NEURONS' all pairs)."""

import math

import cv2
import numpy as np
import pytest
import torch
from helpers.run import write_reconstruction
from transformers import CLIPConfig, CLIPModel

from mindvideo.config import EvaluateConfig, PretrainedPaths
from mindvideo.evaluation.clip_similarity import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViFiCLIPProcessor,
    clip_architecture,
)
from mindvideo.evaluation.metrics import above_shuffled, format_markdown_table, summarise_metrics
from mindvideo.evaluation.runner import evaluate_reconstructions
from mindvideo.evaluation.video_metrics import (
    I3DFeatures,
    clip_pcc_mind_animator,
    clip_pcc_neurons,
    flow_errors,
    flow_samples,
    frechet_distance,
    hue_maps,
    hue_pcc_samples,
    optical_flow,
    vifi_clip_samples,
)
from mindvideo.utils import UserError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def frame(*pixels):
    """A 2 × 2 RGB frame from four colours, row by row."""
    return np.array(pixels, dtype=np.uint8).reshape(2, 2, 3)


def test_hue_is_opencvs_8bit_hue_reflected_as_the_reference_reads_rgb_as_bgr():
    f = frame(RED, GREEN, BLUE, (255, 255, 0))
    # Read as RGB: red 0°, green 120°, blue 240°, yellow 60° -> OpenCV halves the degrees.
    np.testing.assert_array_equal(hue_maps(f, swap_rb=False), [[0, 60], [120, 30]])
    # The reference hands RGB frames to COLOR_BGR2HSV: red is read as blue, blue as red,
    # yellow (R+G) as cyan (B+G): (120 - H) mod 180.
    np.testing.assert_array_equal(hue_maps(f), [[120, 60], [0, 90]])
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (1, 200, 1, 3), dtype=np.uint8)
    h_true = hue_maps(colours, swap_rb=False).astype(int)
    h_ref = hue_maps(colours).astype(int)
    saturated = colours.max(-1) - colours.min(-1) > 40  # hue well defined
    diff = (h_ref - (120 - h_true)) % 180
    assert np.all(np.minimum(diff, 180 - diff)[saturated] <= 1)


def test_hue_pcc_is_the_uncentred_cosine_of_the_hue_maps():
    pred = np.stack([frame(RED, GREEN, GREEN, BLUE)] * 2)[None]  # [1, 2, 2, 2, 3]
    gt = np.stack([frame(GREEN, GREEN, GREEN, GREEN)] * 2)[None]
    res = hue_pcc_samples(pred, gt, swap_rb=False)
    # hues 0, 60, 60, 120 against 60 everywhere: Σ h1 h2 / (‖h1‖ ‖h2‖).
    by_hand = (0 * 60 + 60 * 60 + 60 * 60 + 120 * 60) / (math.sqrt(0 + 3600 + 3600 + 14400) * 120)
    assert res.per_sample[0] == pytest.approx(by_hand)
    assert res.chance is None and res.shuffled is None  # one window: no other pairing
    # Not a Pearson correlation: a constant hue map correlates with nothing, yet scores 0.82.
    assert by_hand == pytest.approx(0.8165, abs=1e-4)
    # With the reference's channel order the hues are 120, 60, 60, 0 against 60: the same here.
    assert hue_pcc_samples(pred, gt).per_sample[0] == pytest.approx(by_hand)


def test_hue_pcc_shuffled_reference_pairs_other_windows():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    res = hue_pcc_samples(pred, gt)
    swapped = hue_pcc_samples(pred, gt[::-1].copy())  # the only derangement of two windows
    assert res.shuffled == pytest.approx(swapped.per_sample.mean())
    assert res.shuffled_sd == pytest.approx(0.0)
    same = hue_pcc_samples(gt, gt)
    np.testing.assert_allclose(same.per_sample, 1.0)
    grey = np.full((1, 2, 4, 4, 3), 128, np.uint8)  # no hue at all: two grey frames agree
    assert hue_pcc_samples(grey, grey).per_sample[0] == 1.0
    with pytest.raises(UserError, match="one shape"):
        hue_pcc_samples(pred, gt[:, :2])


def textured(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (Farnebäck needs gradients), uint8 RGB [size, size, 3]."""
    noise = np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)
    return (cv2.GaussianBlur(noise, (0, 0), 2.0) * 255 / noise.max()).clip(0, 255).astype(np.uint8)


def test_optical_flow_is_farneback_on_the_references_grey_frames():
    base = textured(48)
    clip = np.stack([base, np.roll(base, 2, axis=1), np.roll(base, 4, axis=1)])
    flow = optical_flow(clip, size=None)
    assert flow.shape == (2, 48, 48, 2) and flow.dtype == np.float32
    inner = flow[:, 12:-12, 12:-12]
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.15)  # dx: 2 pixels right
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.15)
    # The reference: COLOR_BGR2GRAY on RGB frames (grey = 0.299 B + 0.587 G + 0.114 R), then
    # calcOpticalFlowFarneback(prev, next, None, 0.5, 3, 15, 3, 5, 1.2, 0).
    grey = [
        np.rint(0.299 * f[..., 2] + 0.587 * f[..., 1] + 0.114 * f[..., 0]).astype(np.uint8)
        for f in clip.astype(np.float64)
    ]
    by_hand = cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    np.testing.assert_allclose(flow[0], by_hand, atol=0.05)
    # Resized first (cv2.resize, bilinear, as the reference brings frames to 512 x 512): the
    # flow is in pixels of the resized frame.
    big = optical_flow(clip[:2], size=96)
    assert big.shape == (1, 96, 96, 2)
    grey = [
        cv2.cvtColor(cv2.resize(f, (96, 96), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2GRAY)
        for f in clip[:2]
    ]
    by_hand = cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    np.testing.assert_array_equal(big[0], by_hand)
    with pytest.raises(UserError, match="at least 2 frames"):
        optical_flow(clip[:1])


def test_flow_errors_by_hand():
    gt = np.array([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    pred = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.0]])
    epe, ae = flow_errors(gt, pred)
    # End points: 5, √2, 1, 2. Angles: a still vector counts 90° (the 1e-8 guard), 90°,
    # 0° (up to the guard: arccos(1 − 5e-9)), 180°.
    assert epe == pytest.approx((5 + math.sqrt(2) + 1 + 2) / 4)
    assert ae == pytest.approx((90 + 90 + 0 + 180) / 4, abs=0.01)


def test_flow_samples_per_window_and_shuffled_reference():
    base = textured(40, 3)
    still = np.stack([base] * 3)
    moving = np.stack([base, np.roll(base, 2, axis=1), np.roll(base, 4, axis=1)])
    gt = np.stack([still, moving])
    pred = np.stack([still, moving])
    out = flow_samples(pred, gt, size=None)
    np.testing.assert_allclose(out["epe"].per_sample, 0.0, atol=1e-6)
    # Swapped (the only derangement of two windows): each flow against the other window's.
    swapped = flow_samples(pred, gt[::-1].copy(), size=None)
    assert out["epe"].shuffled == pytest.approx(swapped["epe"].per_sample.mean())
    assert out["epe"].shuffled > 1.0  # a 2-pixel motion against none
    assert out["flow_angular_error"].shuffled == pytest.approx(
        swapped["flow_angular_error"].per_sample.mean()
    )
    # The window's value is the mean over its flows and their pixels.
    f_gt, f_pred = optical_flow(gt[1], size=None), optical_flow(pred[0], size=None)
    epe, ae = flow_errors(f_gt, f_pred)
    assert swapped["epe"].per_sample[0] == pytest.approx(
        flow_errors(optical_flow(gt[1], size=None), optical_flow(pred[0], size=None))[0]
    )
    assert (epe, ae) == pytest.approx(
        (swapped["epe"].per_sample[0], swapped["flow_angular_error"].per_sample[0])
    )
    # Lower is better: a table marks an EPE that is not below its shuffled reference.
    summary = summarise_metrics(out, n_resamples=50)
    assert summary["epe"]["lower_is_better"] is True and above_shuffled(summary["epe"])
    bad = summarise_metrics(swapped, n_resamples=50)
    bad["epe"]["chance_shuffled"], bad["epe"]["chance_shuffled_sd"] = 0.0, 0.0
    assert not above_shuffled(bad["epe"])
    assert "(not below)" in format_markdown_table({"epe": bad["epe"]})


def test_vifi_clip_pools_frames_before_normalising():
    pred = np.array([[[10.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 0.0]]])  # [S=2, F=2, D=2]
    gt = np.array([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 1.0]]])
    res = vifi_clip_samples(pred, gt)
    # Window 0: mean (5, 0.5) against (0, 1): 0.5 / √25.25 — not the 0.707 of unit frames.
    assert res.per_sample[0] == pytest.approx(0.5 / math.sqrt(25.25))
    # Window 1: (2, 0) against (1, 1): 1/√2.
    assert res.per_sample[1] == pytest.approx(1 / math.sqrt(2))
    cross = [
        np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
        for a, b in (((5, 0.5), (1, 1)), ((2, 0), (0, 1)))
    ]
    assert res.shuffled == pytest.approx(np.mean(cross)) and res.shuffled_sd is None


def test_clip_pcc_both_definitions_by_hand():
    e = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])  # one window, 3 frames (norms ignored)
    c12, c13, c23 = 0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)
    # NEURONS: all ordered pairs i != j, the off-diagonal mean of the 3 x 3 cosine matrix.
    assert clip_pcc_neurons(e)[0] == pytest.approx(2 * (c12 + c13 + c23) / 6)
    # Mind-Animator: adjacent frames (1, 2) and (2, 3) only ...
    assert clip_pcc_mind_animator(e, None)[0] == pytest.approx((c12 + c23) / 2)
    # ... and 0 where the window's VIFI-CLIP score is at most 0.6 (kept in the mean).
    assert clip_pcc_mind_animator(e, np.array([0.6]))[0] == 0.0
    assert clip_pcc_mind_animator(e, np.array([0.61]))[0] == pytest.approx((c12 + c23) / 2)
    with pytest.raises(UserError, match="2 frames"):
        clip_pcc_neurons(e[:, :1])


def test_vifi_clip_input_pipeline():
    clip = np.zeros((64, 64, 3), np.uint8)
    clip[...] = (10, 20, 30)
    pixels = ViFiCLIPProcessor()([clip])["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    # Red and blue swapped (the reference's XVID round trip through OpenCV), then ImageNet
    # statistics on 0-255.
    expected = [
        (v - m) / s for v, m, s in zip((30, 20, 10), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    np.testing.assert_allclose(pixels[0, :, 100, 100].numpy(), expected, rtol=1e-5)
    straight = ViFiCLIPProcessor(swap_rb=False)([clip])["pixel_values"]
    assert straight[0, 0, 0, 0].item() == pytest.approx((10 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    # The longer side becomes 256: a 2:1 frame is 128 high, too small for the 224 crop.
    with pytest.raises(UserError, match="crop"):
        ViFiCLIPProcessor()([np.zeros((50, 100, 3), np.uint8)])


def test_clip_architecture_names():
    def tiny(width, patch):
        config = CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            },
            vision_config={
                "hidden_size": width,
                "intermediate_size": 37,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "patch_size": patch,
                "image_size": 64,
            },
            projection_dim=8,
        )
        return CLIPModel(config)

    assert clip_architecture(tiny(768, 32)) == "ViT-B/32"
    assert clip_architecture(tiny(1024, 14)) == "ViT-L/14"
    assert clip_architecture(tiny(32, 16)) == "ViT-32d/16"


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 2.0, (500, 1))
    b = rng.normal(-0.5, 0.5, (300, 1))
    # One dimension: (μa − μb)² + (σa − σb)², with sample (ddof=1) deviations.
    by_hand = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(by_hand)
    c = rng.normal(size=(200, 6))
    shift = np.array([1.0, 0, 2.0, 0, 0, 0])
    assert frechet_distance(c, c + shift) == pytest.approx(5.0, abs=1e-6)  # same covariance
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserError, match="N >= 2"):
        frechet_distance(c[:1], c)


class FakeI3D(torch.nn.Module):
    """The TorchScript I3D's call signature, on a linear map of the clip's mean colour."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = False,
        resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        return self.proj(x.mean(dim=(2, 3, 4)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_fvd_reads_a_torchscript_i3d(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "i3d"
    folder.mkdir()
    module = FakeI3D()
    torch.jit.script(module).save(str(folder / "i3d_torchscript.pt"))
    i3d = I3DFeatures.from_pretrained(folder, device="cpu", batch_size=3)
    clips = np.random.default_rng(3).integers(0, 256, (7, 6, 8, 8, 3), dtype=np.uint8)
    feats = i3d.features(clips)
    # Videos of 0-255 as [B, 3, T, H, W], rescaled to [-1, 1] inside the model.
    x = torch.from_numpy(clips).float().permute(0, 4, 1, 2, 3) / 127.5 - 1.0
    with torch.no_grad():
        np.testing.assert_allclose(feats, module.proj(x.mean(dim=(2, 3, 4))).numpy(), atol=1e-5)
    with pytest.raises(UserError, match="TorchScript I3D"):
        I3DFeatures.from_pretrained(tmp_path / "nowhere")
    # evaluate writes FVD as one set-level value when pretrained.i3d is given.
    gt = clips[:5]
    pred = np.clip(gt.astype(int) + 40, 0, 255).astype(np.uint8)
    recon = write_reconstruction(tmp_path / "recon", pred, gt)
    cfg = EvaluateConfig(
        reconstructions=str(recon),
        pretrained=PretrainedPaths(i3d=str(folder)),
        bootstrap=50,
        flow_size=None,
        device="cpu",
    )
    result = evaluate_reconstructions(cfg, tmp_path / "eval", progress=False)
    fvd = result.metrics["fvd"]
    assert fvd["set_level"] and fvd["lower_is_better"] and fvd["se"] is None and fvd["n"] == 5
    expected = frechet_distance(i3d.features(pred), i3d.features(gt))
    assert fvd["mean"] == pytest.approx(expected) and expected > 0
    assert "fvd" not in result.samples  # no per-window values: no t-test in compare
    assert result.meta["video_metrics"]["fvd"]["frames"] == 6
