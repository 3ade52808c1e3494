"""The metric runner: reconstructions + ground truth → every score of Table 1 (section 4.3, 5).

``compute_metrics`` returns a dict with stable keys ``{level}_{N}way_top{K}_{mode}`` (level is
``frame`` or ``video``, mode ``compat`` or ``strict``; e.g. ``video_50way_top1_strict``) plus
``ssim`` and ``psnr``; each value is ``{"mean", "se", "chance", "n", "ci_low", "ci_high"}``.
Given the true labels of the ground truth (simulated data), mode ``true`` scores against the true
class instead of the judge's reading of the ground truth, and ``{level}_judge_accuracy`` is the
judge's own top-1 accuracy on the ground truth.

The sample unit is the clip (one test window of F frames) for every metric: frame-level scores are
computed per frame and averaged within the clip, so the mean equals the authors' mean over all
frames, while the standard error, the bootstrap interval and the t-tests of ``compare`` treat the
F frames of a window — which are not independent — as one sample.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mindvideo.evaluation import identification
from mindvideo.evaluation.classifiers import ProbabilityModel
from mindvideo.evaluation.identification import pattern_identification, shuffled_chance
from mindvideo.evaluation.nway import COMPAT_GT_CLASSES, MODES, nway_topk
from mindvideo.evaluation.pixel import clip_psnr, clip_ssim, resize_frames
from mindvideo.evaluation.stats import Score
from mindvideo.utils import UserError

logger = logging.getLogger(__name__)

LEVELS = ("video", "frame")
PIXEL_METRICS = ("ssim", "psnr")
TRUE_MODE = "true"
"""Identification against the true label: the strict rule with a one-hot ground truth."""
ALL_MODES: tuple[str, ...] = (*MODES, TRUE_MODE)
JUDGE_ACCURACY = "judge_accuracy"
LOWER_IS_BETTER = frozenset({"epe", "flow_angular_error", "fvd"})
"""Scores where the smaller value is the better reconstruction (optical-flow errors)."""


def judge_key(level: str) -> str:
    """The key of a judge's top-1 accuracy on the ground truth, e.g. ``frame_judge_accuracy``."""
    return f"{level}_{JUDGE_ACCURACY}"


def metric_key(level: str, n_way: int, top_k: int, mode: str) -> str:
    """The stable key of an identification score, e.g. ``video_50way_top1_strict``."""
    return f"{level}_{n_way}way_top{top_k}_{mode}"


def metric_rng(seed: int, key: str, stream: int = 0) -> np.random.Generator:
    """A generator for one metric, fixed by ``seed`` and the metric's key alone.

    Adding or removing other metrics never changes a metric's draws.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode()), stream]))


SHUFFLES = 5
"""Pairings of reconstructions with other windows' ground truth behind an empirical chance."""
PIXEL_ID_SIZE = 16
"""Side of the low-resolution mean frames compared by pixel identification."""


@dataclass(frozen=True)
class MetricSamples:
    """Per-sample values of one metric: ``per_sample: [S]`` (one per clip), its analytic chance
    level and, for identification, its empirical chance: the mean score with every
    reconstruction paired with another window's ground truth (``shuffled``, with the sd over
    :data:`SHUFFLES` such pairings in ``shuffled_sd``)."""

    per_sample: np.ndarray
    chance: float | None
    shuffled: float | None = None
    shuffled_sd: float | None = None
    ground_truth: float | None = None
    """The same score of the ground truth itself, for scores that read the reconstruction alone
    (CLIP-pcc): where real videos stand."""


def shuffled_pairings(
    score: Any, n: int, rng: np.random.Generator
) -> tuple[float | None, float | None]:
    """:func:`shuffled_chance` over :data:`SHUFFLES` pairings; ``(None, None)`` for one clip."""
    return (None, None) if n < 2 else shuffled_chance(score, n, SHUFFLES, rng)


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (int(x),) if isinstance(x, (int, np.integer)) else tuple(int(v) for v in x)


def _check_clips(pred: np.ndarray, gt: np.ndarray) -> None:
    for name, arr in (("reconstructions", pred), ("ground truth", gt)):
        if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise UserError(
                f"The {name} must be uint8 clips [S, F, H, W, 3], got {arr.dtype} {arr.shape}."
            )
    if pred.shape[:2] != gt.shape[:2]:
        raise UserError(
            f"There are {pred.shape[0]}×{pred.shape[1]} reconstructed clips×frames but "
            f"{gt.shape[0]}×{gt.shape[1]} ground-truth ones; pair every reconstruction with "
            "its ground-truth window."
        )


def _probabilities(model: ProbabilityModel, batch: np.ndarray, level: str) -> np.ndarray:
    probs = np.asarray(model.predict_proba(batch), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != batch.shape[0]:
        raise UserError(
            f"The {level} classifier returned shape {probs.shape} for {batch.shape[0]} inputs; "
            "predict_proba must return [N, classes]."
        )
    if not np.isfinite(probs).all() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise UserError(
            f"The {level} classifier's predict_proba did not return probabilities (rows must "
            "sum to 1); apply a softmax to its logits."
        )
    return probs


def _skipped(key: str, level: str, n_way: int, top_k: int, n_classes: int, n_gt: int) -> bool:
    """Whether a test cannot run (too few classes for the distractors, or K >= N); logged."""
    if n_way - 1 > n_classes - n_gt:
        logger.warning(
            "Skipping %s: %d-way needs %d distractor classes but the %s classifier "
            "has only %d classes outside the %d ground-truth classes.",
            key,
            n_way,
            n_way - 1,
            level,
            n_classes - n_gt,
            n_gt,
        )
        return True
    if not 1 <= top_k < n_way:
        logger.warning("Skipping %s: top-%d of %d classes is not a test.", key, top_k, n_way)
        return True
    return False


def _identification(
    level: str,
    pred_probs: np.ndarray,
    gt_probs: np.ndarray,
    frames_per_sample: int,
    n_ways: tuple[int, ...],
    top_ks: tuple[int, ...],
    trials: int,
    modes: tuple[str, ...],
    seed: int,
) -> dict[str, MetricSamples]:
    """N-way top-K scores of one level; rows of the probabilities are grouped per clip.

    Mode ``true`` is the strict rule (its ``gt_probs`` are one-hot true labels)."""
    n_classes = pred_probs.shape[1]
    # The empirical chance re-pairs whole clips: frame j of clip i with frame j of clip perm[i].
    gt_clips = gt_probs.reshape(-1, frames_per_sample, n_classes)
    out: dict[str, MetricSamples] = {}
    for mode in modes:
        rule = "strict" if mode == TRUE_MODE else mode
        n_gt = COMPAT_GT_CLASSES if rule == "compat" else 1
        for n_way in n_ways:
            for top_k in top_ks:
                key = metric_key(level, n_way, top_k, mode)
                if _skipped(key, level, n_way, top_k, n_classes, n_gt):
                    continue
                test = (n_way, top_k, trials, rule)
                res = nway_topk(pred_probs, gt_probs, *test, rng=metric_rng(seed, key))
                per_clip = res.per_sample.reshape(-1, frames_per_sample).mean(axis=1)

                def score(perm: np.ndarray, test=test, key=key) -> float:
                    gt = gt_clips[perm].reshape(gt_probs.shape)
                    rng = metric_rng(seed, key, stream=3)
                    return nway_topk(pred_probs, gt, *test, rng=rng).per_sample.mean()

                shuffled = shuffled_pairings(score, len(per_clip), metric_rng(seed, key, stream=2))
                out[key] = MetricSamples(per_clip, res.chance, *shuffled)
    return out


def _check_labels(
    labels: np.ndarray, shape: tuple[int, ...], level: str, n_classes: int
) -> np.ndarray:
    """The true labels of one level as int64 ``shape`` (``[S, F]`` frames, ``[S]`` clips)."""
    arr = np.asarray(labels)
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"The {level} labels must be integers of shape {list(shape)} (one per "
            f"{'frame' if len(shape) == 2 else 'clip'}), got {arr.dtype} {list(arr.shape)}."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise UserError(
            f"The {level} labels must index the {level} classifier's {n_classes} classes; "
            f"got values in {int(arr.min())}..{int(arr.max())}."
        )
    return arr.astype(np.int64)


def judge_accuracy_samples(
    gt_probs: np.ndarray, labels: np.ndarray, seed: int, key: str
) -> MetricSamples:
    """A judge's top-1 accuracy on the ground truth: ``gt_probs`` ``[S·F, C]``, ``labels``
    ``[S, F]`` true classes; per clip the fraction of its frames whose most probable class is
    the true one. Chance 1/C; the shuffled chance pairs the judge's readings with other clips'
    labels."""
    n_clips = labels.shape[0]
    top1 = gt_probs.argmax(axis=1).reshape(labels.shape)
    per_clip = (top1 == labels).mean(axis=1)

    def score(perm: np.ndarray) -> float:
        return float((top1 == labels[perm]).mean())

    shuffled = shuffled_pairings(score, n_clips, metric_rng(seed, key, stream=2))
    return MetricSamples(per_clip, 1.0 / gt_probs.shape[1], *shuffled)


def _level_samples(
    level: str,
    probs: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray | None,
    frames_per_sample: int,
    tests: tuple[tuple[int, ...], tuple[int, ...], int],
    modes: tuple[str, ...],
    seed: int,
) -> dict[str, MetricSamples]:
    """Every score of one level: the judges' modes and, given ``labels`` (``[S, F]`` or
    ``[S]``), the ``true`` mode and the judge's accuracy."""
    pred_probs, gt_probs = probs
    out = _identification(level, pred_probs, gt_probs, frames_per_sample, *tests, modes, seed)
    if labels is None:
        return out
    n_classes = gt_probs.shape[1]
    n_clips = gt_probs.shape[0] // frames_per_sample
    shape = (n_clips, frames_per_sample) if level == "frame" else (n_clips,)
    labels = _check_labels(labels, shape, level, n_classes).reshape(n_clips, frames_per_sample)
    one_hot = np.eye(n_classes)[labels.reshape(-1)]
    true_modes = (TRUE_MODE,)
    out.update(
        _identification(level, pred_probs, one_hot, frames_per_sample, *tests, true_modes, seed)
    )
    key = judge_key(level)
    out[key] = judge_accuracy_samples(gt_probs, labels, seed, key)
    return out


def pixel_identification_samples(
    pred: np.ndarray, gt: np.ndarray, n_ways: Sequence[int], trials: int, seed: int
) -> dict[str, MetricSamples]:
    """Classifier-free N-way identification of clips (``pixel_{N}way``): each clip's mean
    frame at 16 × 16 must correlate more with its own ground truth's than with those of N − 1
    other windows; N larger than the number of clips is skipped. Chance 1/N, and the shuffled
    chance (:class:`MetricSamples`)."""

    def low_res(clips: np.ndarray) -> np.ndarray:
        small = resize_frames(clips, (PIXEL_ID_SIZE, PIXEL_ID_SIZE)).astype(np.float64)
        return small.mean(axis=1).reshape(len(clips), -1)  # [S, 16·16·3]

    p, g = low_res(pred), low_res(gt)
    out: dict[str, MetricSamples] = {}
    for n_way in n_ways:
        if n_way > len(p):
            logger.warning("Skipping pixel_%dway: only %d clips to identify among.", n_way, len(p))
            continue
        key = f"pixel_{n_way}way"

        def score(perm: np.ndarray, n_way=n_way) -> float:
            return pattern_identification(p, g[perm], n_way, trials, seed)[0].mean()

        rate, chance = pattern_identification(p, g, n_way, trials, seed)
        out[key] = MetricSamples(
            rate, chance, *shuffled_pairings(score, len(p), metric_rng(seed, key))
        )
    return out


def compute_metric_samples(
    pred: np.ndarray,
    gt: np.ndarray,
    frame_model: ProbabilityModel | None = None,
    video_model: ProbabilityModel | None = None,
    *,
    n_ways: Sequence[int] = (2, 50),
    top_k: int | Sequence[int] = 1,
    trials: int = 100,
    modes: Sequence[str] = MODES,
    seed: int = 0,
    resize_to: tuple[int, int] | None = None,
    pixel: bool = True,
    progress: bool = True,
    frame_labels: np.ndarray | None = None,
    video_labels: np.ndarray | None = None,
) -> dict[str, MetricSamples]:
    """Per-clip values of every metric (what :func:`compute_metrics` summarises).

    Args:
        pred: ``[S, F, H, W, 3]`` uint8 reconstructed clips (S test windows of F frames).
        gt: ``[S, F, H', W', 3]`` uint8 ground-truth clips; H', W' may differ from H, W only when
            ``resize_to`` is given.
        frame_model: classifier of single frames (ViT in the paper) or None to skip frame-level
            identification.
        video_model: classifier of whole clips (VideoMAE in the paper) or None to skip video-level
            identification.
        n_ways: the N of the N-way tests (Table 1: 2 and 50). An N needing more distractors than
            the classifier has classes outside the ground-truth ones is skipped with a warning.
        top_k: K, or several.
        trials: distractor draws per sample (100 in the paper).
        modes: ``"compat"`` (top-3 ground truth, the authors' rule) and/or ``"strict"`` (top-1);
            ``"true"`` may be listed but changes nothing: the true-label scores come with labels.
        seed: seeds every metric's own generator (:func:`metric_rng`).
        resize_to: ``(H, W)`` to resize both reconstructions and ground truth to before scoring
            (the authors scored at the reconstruction's resolution).
        pixel: compute SSIM and PSNR.
        progress: progress bars for the slow parts.
        frame_labels: ``[S, F]`` int true class of every ground-truth frame, as indices into the
            frame classifier's classes; adds ``frame_{N}way_top{K}_true`` and
            ``frame_judge_accuracy``.
        video_labels: ``[S]`` int true class of every ground-truth clip (video classifier's
            classes); adds ``video_{N}way_top{K}_true`` and ``video_judge_accuracy``.

    Returns:
        ``{key: MetricSamples}``, each ``per_sample: [S]``; keys in the order video identification
        (judges' modes, ``true``, judge accuracy), the same for frames, pixel identification,
        ``ssim``, ``psnr``.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_clips(pred, gt)
    for mode in modes:
        if mode not in ALL_MODES:
            raise UserError(f"Unknown N-way mode {mode!r}; use 'compat' and/or 'strict'.")
    modes_t = tuple(m for m in modes if m != TRUE_MODE)
    n_ways_t, top_ks_t = _as_tuple(n_ways), _as_tuple(top_k)
    if any(n < 2 for n in n_ways_t) or any(k < 1 for k in top_ks_t) or trials < 1:
        raise UserError(
            f"n_ways={n_ways_t}, top_k={top_ks_t}, trials={trials} must be N >= 2, K >= 1 and at "
            "least one trial (the paper: N = 2 and 50, K = 1, 100 trials)."
        )
    if resize_to is not None:
        pred, gt = resize_frames(pred, resize_to), resize_frames(gt, resize_to)
    s, f = pred.shape[:2]
    tests = (n_ways_t, top_ks_t, trials)

    out: dict[str, MetricSamples] = {}
    if video_model is not None:
        logger.info("Video identification: classifying %d reconstructed and ground-truth clips", s)
        probs = (
            _probabilities(video_model, pred, "video"),
            _probabilities(video_model, gt, "video"),
        )
        out.update(_level_samples("video", probs, video_labels, 1, tests, modes_t, seed))
    if frame_model is not None:
        logger.info(
            "Frame identification: classifying %d reconstructed and ground-truth frames", s * f
        )
        frames_pred = pred.reshape(s * f, *pred.shape[2:])
        frames_gt = gt.reshape(s * f, *gt.shape[2:])
        probs = (
            _probabilities(frame_model, frames_pred, "frame"),
            _probabilities(frame_model, frames_gt, "frame"),
        )
        out.update(_level_samples("frame", probs, frame_labels, f, tests, modes_t, seed))
    if pixel:
        out.update(pixel_identification_samples(pred, gt, n_ways_t, trials, seed))
        out["ssim"] = MetricSamples(per_sample=clip_ssim(pred, gt, progress=progress), chance=None)
        out["psnr"] = MetricSamples(per_sample=clip_psnr(pred, gt), chance=None)
    return out


def summarise_metrics(
    samples: dict[str, MetricSamples], *, seed: int = 0, n_resamples: int = 10_000
) -> dict[str, dict]:
    """``{key: Score.to_dict()}``: mean, SE, chance, n and a bootstrap 95% CI per metric."""
    out: dict[str, dict] = {}
    for key, ms in samples.items():
        score = Score.from_samples(
            ms.per_sample,
            chance=ms.chance,
            rng=metric_rng(seed, key, stream=1),
            n_resamples=n_resamples,
        )
        out[key] = score.to_dict()
        if ms.shuffled is not None:
            out[key]["chance_shuffled"] = ms.shuffled
            out[key]["chance_shuffled_sd"] = ms.shuffled_sd
        if ms.ground_truth is not None:
            out[key]["ground_truth"] = ms.ground_truth
        if key in LOWER_IS_BETTER:
            out[key]["lower_is_better"] = True
        chance = "" if ms.chance is None else f" (chance {ms.chance:.3f})"
        logger.info("%s = %.4f ± %.4f%s, n=%d", key, score.mean, score.se, chance, score.n)
    return out


def compute_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    frame_model: ProbabilityModel | None = None,
    video_model: ProbabilityModel | None = None,
    *,
    seed: int = 0,
    n_resamples: int = 10_000,
    **settings: Any,
) -> dict[str, dict]:
    """Every metric of Table 1 for reconstructions against their ground truth.

    The arguments are those of :func:`compute_metric_samples`, which documents them (``settings``:
    ``n_ways``, ``top_k``, ``trials``, ``modes``, ``resize_to``, ``pixel``, ``progress``), plus
    ``n_resamples``, the bootstrap resamples for the confidence intervals.

    Returns:
        ``{key: {"mean", "se", "chance", "n", "ci_low", "ci_high"}}`` with keys
        ``{level}_{N}way_top{K}_{mode}``, ``{level}_judge_accuracy`` (with labels), ``ssim``,
        ``psnr`` (chance None for the last two).
    """
    samples = compute_metric_samples(pred, gt, frame_model, video_model, seed=seed, **settings)
    return summarise_metrics(samples, seed=seed, n_resamples=n_resamples)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if round(v, digits) == 0:
        v = 0.0  # print "0.000", not "-0.000"
    return f"{v:.{digits}f}"


_UNITS = {
    "psnr": "psnr (dB)",
    "epe": "epe (px)",
    "flow_angular_error": "flow_angular_error (°)",
    "fvd": "fvd (set level)",
}


def format_markdown_table(metrics: dict[str, dict]) -> str:
    """A markdown table of ``compute_metrics`` output, chance printed next to every score.

    Columns: metric, mean ± SE, 95% CI, chance, n. Pixel metrics have no chance level ("—").
    """
    lines = [
        "| metric | mean ± SE | 95% CI | chance | shuffled chance | n |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in metrics.items():
        digits = 2 if key in ("psnr", "flow_angular_error") else 3
        name = _UNITS.get(key, key)
        score = f"{_fmt(m.get('mean'), digits)} ± {_fmt(m.get('se'), digits)}"
        if not above_shuffled(m):
            score = f"**{score}** (not {'below' if m.get('lower_is_better') else 'above'})"
        lo, hi = m.get("ci_low"), m.get("ci_high")
        ci = "—" if lo is None or hi is None else f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
        shuffled = m.get("chance_shuffled")
        if shuffled is not None:
            sd = m.get("chance_shuffled_sd")
            shuffled = _fmt(shuffled, digits) + ("" if sd is None else f" ± {_fmt(sd, digits)}")
        elif m.get("ground_truth") is not None:
            shuffled = f"ground truth: {_fmt(m['ground_truth'])}"
        else:
            shuffled = "—"
        lines.append(
            f"| {name} | {score} | {ci} | {_fmt(m.get('chance'))} | {shuffled or '—'} | "
            f"{m.get('n')} |"
        )
    return "\n".join(lines) + "\n"


def above_shuffled(m: dict[str, Any]) -> bool:
    """Whether a summarised score beats its shuffled chance (:func:`~mindvideo.evaluation.
    identification.above_shuffled`; *below* it for a score marked ``lower_is_better``); True
    where there is no shuffled chance."""
    if m.get("chance_shuffled") is None or m.get("mean") is None:
        return True
    se, shuffled, sd = m.get("se") or 0.0, m["chance_shuffled"], m.get("chance_shuffled_sd")
    if m.get("lower_is_better"):
        return identification.above_shuffled(-m["mean"], se, -shuffled, sd or 0.0)
    return identification.above_shuffled(m["mean"], se, shuffled, sd or 0.0)


def parse_metric_key(key: str) -> tuple[str, int, int, str] | None:
    """``(level, N, K, mode)`` of an identification key (mode ``compat``, ``strict`` or
    ``true``); None for ``ssim``, ``psnr``, ``{level}_judge_accuracy`` and others."""
    parts = key.split("_")
    if len(parts) != 4 or parts[0] not in LEVELS or parts[3] not in ALL_MODES:
        return None
    if not (parts[1].endswith("way") and parts[2].startswith("top")):
        return None
    try:
        return parts[0], int(parts[1][: -len("way")]), int(parts[2][len("top") :]), parts[3]
    except ValueError:
        return None
