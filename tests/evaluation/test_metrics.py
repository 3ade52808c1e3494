"""The metric runner: stable keys, chance levels, per-clip samples, skips, table."""

import json
import logging

import numpy as np
import pytest
import torch
from transformers import (
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessorPil,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from mindvideo.evaluation import (
    ImageClassifier,
    VideoClassifier,
    compute_metric_samples,
    compute_metrics,
    format_markdown_table,
    metric_rng,
    nway_topk,
    parse_metric_key,
)
from mindvideo.utils import UserError

S, F, H, W = 4, 6, 32, 32
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _vit(path, num_labels):
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_labels=num_labels, **TINY)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return ImageClassifier.from_pretrained(path, device="cpu", batch_size=16)


def _videomae(path, num_labels):
    torch.manual_seed(0)
    config = VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=F, tubelet_size=2, num_labels=num_labels, **TINY
    )
    VideoMAEForVideoClassification(config).save_pretrained(path)
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return VideoClassifier.from_pretrained(path, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def models100(tmp_path_factory):
    return (
        _vit(tmp_path_factory.mktemp("vit100"), 100),
        _videomae(tmp_path_factory.mktemp("vmae100"), 100),
    )


def _clips(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (S, F, H, W, 3), dtype=np.uint8)


EXPECTED_CHANCE = {
    "2way_top1_strict": 0.5,
    "50way_top1_strict": 0.02,
    "2way_top1_compat": 0.75,
    "50way_top1_compat": 3 / 52,
}


def test_all_keys_with_chance_levels(models100):
    frame_model, video_model = models100
    metrics = compute_metrics(
        _clips(1), _clips(2), frame_model, video_model, n_resamples=200, progress=False
    )
    expected = [f"{lvl}_{k}" for lvl in ("video", "frame") for k in EXPECTED_CHANCE]
    assert sorted(metrics) == sorted([*expected, "pixel_2way", "ssim", "psnr"])
    for key, m in metrics.items():
        assert {"mean", "se", "chance", "n"} <= set(m)
        assert m["n"] == S
        if key in ("ssim", "psnr"):
            assert m["chance"] is None
        elif key == "pixel_2way":  # classifier-free, chance 1/N, with its shuffled chance
            assert m["chance"] == 0.5 and 0.0 <= m["chance_shuffled"] <= 1.0
        else:
            assert m["chance_shuffled_sd"] >= 0.0
            assert m["chance"] == pytest.approx(EXPECTED_CHANCE[key.split("_", 1)[1]])
            assert 0.0 <= m["mean"] <= 1.0
    json.dumps(metrics, allow_nan=False)


def test_perfect_reconstructions_score_one(models100):
    frame_model, video_model = models100
    x = _clips(3)
    metrics = compute_metrics(x, x, frame_model, video_model, n_resamples=100, progress=False)
    for key, m in metrics.items():
        if key == "psnr":
            assert m["mean"] == 100.0
        else:
            assert m["mean"] == pytest.approx(1.0), key


def test_frame_level_mean_is_over_all_frames_and_n_counts_clips(models100):
    frame_model, _ = models100
    pred, gt = _clips(4), _clips(5)
    samples = compute_metric_samples(
        pred, gt, frame_model, None, n_ways=(5,), modes=("compat",), seed=3, pixel=False
    )
    assert list(samples) == ["frame_5way_top1_compat"]
    per_clip = samples["frame_5way_top1_compat"].per_sample
    assert per_clip.shape == (S,)
    pf = frame_model.predict_proba(pred.reshape(-1, H, W, 3))
    gf = frame_model.predict_proba(gt.reshape(-1, H, W, 3))
    direct = nway_topk(pf, gf, 5, rng=metric_rng(3, "frame_5way_top1_compat"))
    np.testing.assert_allclose(per_clip, direct.per_sample.reshape(S, F).mean(axis=1))
    assert per_clip.mean() == pytest.approx(direct.mean)


class PixelProjection:
    """A plain ProbabilityModel: softmax of a fixed random projection of the pixels."""

    def __init__(self, n_pixels: int, n_classes: int = 100, seed: int = 0):
        self.weight = np.random.default_rng(seed).normal(size=(n_pixels, n_classes))

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        logits = (batch.reshape(batch.shape[0], -1) / 255.0 - 0.5) @ self.weight
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_seeded_results_reproduce_and_seeds_differ():
    # An untrained ViT rates the same classes highest on every input, so it "identifies" random
    # frames perfectly; an input-dependent classifier shows the draws.
    frame_model = PixelProjection(H * W * 3)
    pred, gt = _clips(6), _clips(7)
    kw = dict(n_ways=(20,), modes=("compat",), pixel=False, n_resamples=100, progress=False)
    a = compute_metrics(pred, gt, frame_model, seed=0, **kw)
    b = compute_metrics(pred, gt, frame_model, seed=0, **kw)
    c = compute_metrics(pred, gt, frame_model, seed=1, **kw)
    assert a == b
    assert a["frame_20way_top1_compat"]["mean"] != c["frame_20way_top1_compat"]["mean"]


def test_too_large_n_is_skipped_with_a_warning(tmp_path, caplog):
    frame_model = _vit(tmp_path / "vit10", 10)
    with caplog.at_level(logging.WARNING, logger="mindvideo.evaluation.metrics"):
        metrics = compute_metrics(
            _clips(1), _clips(2), frame_model, pixel=False, n_resamples=50, progress=False
        )
    assert sorted(metrics) == ["frame_2way_top1_compat", "frame_2way_top1_strict"]
    assert "Skipping frame_50way_top1_compat" in caplog.text
    assert "Skipping frame_50way_top1_strict" in caplog.text


def test_input_errors_and_resize(models100):
    frame_model, _ = models100
    pred = _clips(1)
    with pytest.raises(UserError, match="pair every reconstruction"):
        compute_metrics(pred, _clips(2)[:3], progress=False)
    big_gt = np.repeat(np.repeat(_clips(2), 2, axis=2), 2, axis=3)
    with pytest.raises(UserError, match="resize_to"):
        compute_metrics(pred, big_gt, progress=False)
    metrics = compute_metrics(pred, big_gt, resize_to=(H, W), n_resamples=50, progress=False)
    assert sorted(metrics) == ["pixel_2way", "psnr", "ssim"]

    class NotProbabilities:
        def predict_proba(self, batch):
            return np.ones((batch.shape[0], 7))

    with pytest.raises(UserError, match="softmax"):
        compute_metrics(pred, pred, NotProbabilities(), pixel=False, progress=False)
    with pytest.raises(UserError, match="N >= 2"):
        compute_metrics(pred, pred, frame_model, n_ways=(1,), progress=False)


def test_markdown_table_prints_chance_next_to_every_score():
    metrics = {
        "video_2way_top1_compat": {
            "mean": 0.853,
            "se": 0.03,
            "chance": 0.75,
            "n": 1200,
            "ci_low": 0.8,
            "ci_high": 0.9,
        },
        "ssim": {"mean": 0.171, "se": 0.004, "chance": None, "n": 1200},
    }
    table = format_markdown_table(metrics)
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | mean ± SE | 95% CI | chance | shuffled chance | n |"
    assert lines[2] == (
        "| video_2way_top1_compat | 0.853 ± 0.030 | [0.800, 0.900] | 0.750 | — | 1200 |"
    )
    assert lines[3] == "| ssim | 0.171 ± 0.004 | — | — | — | 1200 |"


def test_parse_metric_key():
    assert parse_metric_key("video_50way_top1_strict") == ("video", 50, 1, "strict")
    assert parse_metric_key("frame_2way_top5_compat") == ("frame", 2, 5, "compat")
    assert parse_metric_key("ssim") is None
    assert parse_metric_key("frame_xway_top1_compat") is None


def test_table_marks_a_score_not_above_its_shuffled_chance():
    metrics = {
        "frame_2way_top1_strict": {
            "mean": 0.90,
            "se": 0.01,
            "chance": 0.5,
            "n": 100,
            "chance_shuffled": 0.51,
            "chance_shuffled_sd": 0.01,
        },
        "video_2way_top1_compat": {
            "mean": 0.73,
            "se": 0.02,
            "chance": 0.75,
            "n": 100,
            "chance_shuffled": 0.74,
            "chance_shuffled_sd": 0.02,
        },
    }
    lines = format_markdown_table(metrics).strip().splitlines()
    assert "| 0.900 ± 0.010 |" in lines[2] and "| 0.510 ± 0.010 |" in lines[2]
    assert "**0.730 ± 0.020** (not above)" in lines[3]


def test_shuffled_chance_and_pixel_identification_on_random_and_true_pairs():
    """Unrelated clips score at chance and at their shuffled chance; identical clips at 1."""
    from mindvideo.evaluation.metrics import compute_metric_samples

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, size=(40, 2, 16, 16, 3), dtype=np.uint8)
    same = compute_metric_samples(gt, gt, n_ways=(2, 10), trials=20, progress=False)
    assert same["pixel_10way"].per_sample.mean() == 1.0
    assert same["pixel_10way"].chance == pytest.approx(0.1)
    assert same["pixel_10way"].shuffled < 0.3  # a wrong pairing is no better than chance
    other = rng.integers(0, 256, size=gt.shape, dtype=np.uint8)
    rand = compute_metric_samples(other, gt, n_ways=(2,), trials=50, progress=False)
    assert abs(rand["pixel_2way"].per_sample.mean() - 0.5) < 0.1
    assert abs(rand["pixel_2way"].shuffled - 0.5) < 0.1


# --------------------------------------------------------------------------------------------
# Against the true labels
# --------------------------------------------------------------------------------------------

N_TRUE = 60  # classes of the colour judges: enough for 50-way


class ColourJudge:
    """A ProbabilityModel that reads a label off the pixels: channel 0 of the first pixel of a
    frame (frame judge) or channel 1 of a clip's first frame (video judge), mapped through
    ``mapping``; the identity mapping makes a perfect judge."""

    def __init__(self, video: bool = False, mapping: np.ndarray | None = None):
        self.video = video
        self.mapping = np.arange(N_TRUE) if mapping is None else mapping
        self.labels = [f"class {i}" for i in range(N_TRUE)]

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        read = batch[:, 0, 0, 0, 1] if self.video else batch[:, 0, 0, 0]
        return np.eye(N_TRUE)[self.mapping[read.astype(np.int64)]]


def _labelled_clips(s: int, f: int = 4, seed: int = 0):
    """Clips ``[s, f, 4, 4, 3]`` whose pixels carry their labels (see :class:`ColourJudge`),
    with the frame labels ``[s, f]`` and the video labels ``[s]``."""
    rng = np.random.default_rng(seed)
    frame_labels = rng.integers(0, N_TRUE, (s, f))
    video_labels = rng.integers(0, N_TRUE, s)
    clips = np.zeros((s, f, 4, 4, 3), np.uint8)
    clips[..., 0] = frame_labels[:, :, None, None]
    clips[..., 1] = video_labels[:, None, None, None]
    return clips, frame_labels, video_labels


TRUE_KW = dict(n_ways=(2, 50), trials=20, pixel=False, progress=False)


def test_a_perfect_judge_scores_one_against_the_true_labels():
    clips, frame_labels, video_labels = _labelled_clips(8)
    samples = compute_metric_samples(
        clips,
        clips,
        ColourJudge(),
        ColourJudge(video=True),
        frame_labels=frame_labels,
        video_labels=video_labels,
        **TRUE_KW,
    )
    for level in ("video", "frame"):
        for n_way in (2, 50):
            ms = samples[f"{level}_{n_way}way_top1_true"]
            assert ms.per_sample.shape == (8,) and ms.per_sample.mean() == 1.0
            assert ms.chance == pytest.approx(1 / n_way)
        judge = samples[f"{level}_judge_accuracy"]
        assert judge.per_sample.mean() == 1.0 and judge.chance == pytest.approx(1 / N_TRUE)
        assert judge.shuffled < 0.2  # other clips' labels: hardly ever the same
    assert list(samples)[:4] == [
        "video_2way_top1_compat",
        "video_50way_top1_compat",
        "video_2way_top1_strict",
        "video_50way_top1_strict",
    ]
    assert list(samples)[4:7] == [
        "video_2way_top1_true",
        "video_50way_top1_true",
        "video_judge_accuracy",
    ]
    # The judges' own modes do not change with labels given.
    plain = compute_metric_samples(clips, clips, ColourJudge(), ColourJudge(video=True), **TRUE_KW)
    assert not any(k.endswith(("_true", "_judge_accuracy")) for k in plain)
    for key, ms in plain.items():
        np.testing.assert_array_equal(samples[key].per_sample, ms.per_sample)


def test_a_judge_with_shuffled_labels_is_at_chance():
    clips, frame_labels, _ = _labelled_clips(50, seed=1)
    mapping = np.random.default_rng(2).permutation(N_TRUE)
    metrics = compute_metrics(
        clips,
        clips,
        ColourJudge(mapping=mapping),
        frame_labels=frame_labels,
        n_resamples=100,
        **TRUE_KW,
    )
    judge = metrics["frame_judge_accuracy"]
    assert judge["chance"] == pytest.approx(1 / N_TRUE)
    assert abs(judge["mean"] - 1 / N_TRUE) < 0.05
    assert abs(judge["chance_shuffled"] - 1 / N_TRUE) < 0.05
    table = format_markdown_table(metrics)
    assert "| frame_judge_accuracy |" in table and "| frame_50way_top1_true |" in table


def test_random_reconstructions_are_at_chance_against_the_true_labels():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 256, (40, 2, 16, 16, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, pred.shape, dtype=np.uint8)
    labels = rng.integers(0, 100, (40, 2))
    samples = compute_metric_samples(
        pred,
        gt,
        PixelProjection(16 * 16 * 3),
        n_ways=(2, 10),
        trials=50,
        pixel=False,
        progress=False,
        frame_labels=labels,
    )
    for n_way in (2, 10):
        ms = samples[f"frame_{n_way}way_top1_true"]
        assert ms.chance == pytest.approx(1 / n_way)
        assert abs(ms.per_sample.mean() - 1 / n_way) < 0.08
        assert abs(ms.shuffled - 1 / n_way) < 0.08
    assert samples["frame_judge_accuracy"].per_sample.mean() < 0.06


def test_true_labels_are_checked_and_true_mode_is_accepted():
    clips, frame_labels, video_labels = _labelled_clips(3)
    kw = dict(pixel=False, progress=False, n_ways=(2,), trials=5)
    with pytest.raises(UserError, match=r"frame labels must be integers of shape \[3, 4\]"):
        compute_metric_samples(clips, clips, ColourJudge(), frame_labels=video_labels, **kw)
    with pytest.raises(UserError, match="60 classes"):
        compute_metric_samples(clips, clips, ColourJudge(), frame_labels=frame_labels + 60, **kw)
    # Listing "true" without labels is no error and adds nothing.
    samples = compute_metric_samples(clips, clips, ColourJudge(), modes=("strict", "true"), **kw)
    assert list(samples) == ["frame_2way_top1_strict"]


def test_parse_true_and_judge_keys():
    assert parse_metric_key("frame_50way_top1_true") == ("frame", 50, 1, "true")
    assert parse_metric_key("video_2way_top1_true") == ("video", 2, 1, "true")
    assert parse_metric_key("frame_judge_accuracy") is None
    assert parse_metric_key("video_judge_accuracy") is None
