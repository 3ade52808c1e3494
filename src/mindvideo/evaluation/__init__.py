"""Evaluation (paper sections 4.3 and 5): N-way top-K identification, SSIM/PSNR, statistics.

Metrics take arrays and an explicit seeded ``numpy.random.Generator``; classifiers are loaded once
and batched; :func:`compute_metrics` turns reconstructions and ground truth into the stable-keyed
metrics dict (``video_50way_top1_strict``, ``frame_2way_top1_compat``, ``ssim``, ``psnr``, …),
every identification score carrying its chance level.
"""

from mindvideo.evaluation.classifiers import (
    ImageClassifier,
    ProbabilityModel,
    TorchClassifier,
    VideoClassifier,
)
from mindvideo.evaluation.metrics import (
    TRUE_MODE,
    MetricSamples,
    compute_metric_samples,
    compute_metrics,
    format_markdown_table,
    judge_accuracy_samples,
    judge_key,
    metric_key,
    metric_rng,
    parse_metric_key,
    summarise_metrics,
)
from mindvideo.evaluation.nway import (
    NWayResult,
    chance_level,
    ground_truth_classes,
    nway_shuffled_baseline,
    nway_topk,
    sample_distractors,
)
from mindvideo.evaluation.pixel import (
    PSNR_CAP_DB,
    clip_psnr,
    clip_ssim,
    frame_psnr,
    frame_ssim,
    resize_frames,
)
from mindvideo.evaluation.stats import (
    RankTest,
    Score,
    TTest,
    bootstrap_ci,
    bootstrap_wilcoxon,
    mean_se,
    paired_ttest,
    permutation_test,
    significance_label,
    welch_ttest,
    wilcoxon_test,
)

__all__ = [
    "PSNR_CAP_DB",
    "TRUE_MODE",
    "ImageClassifier",
    "MetricSamples",
    "NWayResult",
    "ProbabilityModel",
    "RankTest",
    "Score",
    "TTest",
    "TorchClassifier",
    "VideoClassifier",
    "bootstrap_ci",
    "bootstrap_wilcoxon",
    "chance_level",
    "clip_psnr",
    "clip_ssim",
    "compute_metric_samples",
    "compute_metrics",
    "format_markdown_table",
    "frame_psnr",
    "frame_ssim",
    "ground_truth_classes",
    "judge_accuracy_samples",
    "judge_key",
    "mean_se",
    "metric_key",
    "metric_rng",
    "nway_shuffled_baseline",
    "nway_topk",
    "paired_ttest",
    "parse_metric_key",
    "permutation_test",
    "resize_frames",
    "sample_distractors",
    "significance_label",
    "summarise_metrics",
    "welch_ttest",
    "wilcoxon_test",
]
