"""``mindvideo evaluate``: reconstructions + ground truth → metrics with chance levels (stage 7)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "evaluate",
        run,
        "Score the clips of `mindvideo reconstruct` against their ground truth (paper 4.3, "
        "5): SSIM and PSNR, frame- and video-level N-way top-K identification in compat "
        "(the authors' top-3 rule) and strict mode with the classifiers in "
        "pretrained.image_classifier / pretrained.video_classifier, and the CLIP image "
        "similarity with pretrained.clip; on simulated data also against the true labels and "
        "each judge's own accuracy on the ground truth. Writes OUT/metrics.json, OUT/metrics.md, "
        "OUT/samples.json (per-window values for `mindvideo compare`) and OUT/config.yaml.",
    )
    parser.add_key_option(
        "--reconstructions",
        "output folder of mindvideo reconstruct; sets config key reconstructions",
        type=Path,
    )
    parser.add_key_option(
        "--image-classifier",
        "frame classifier folder (ViT ImageNet); sets pretrained.image_classifier",
        key="pretrained.image_classifier",
        type=Path,
    )
    parser.add_key_option(
        "--video-classifier",
        "video classifier folder (VideoMAE Kinetics-400); sets pretrained.video_classifier",
        key="pretrained.video_classifier",
        type=Path,
    )
    parser.add_key_option(
        "--clip",
        "CLIP model folder; sets pretrained.clip (CLIP similarity)",
        key="pretrained.clip",
        type=Path,
    )
    parser.add_key_option(
        "--scenes-json",
        "the simulator's scenes.json for the true-label scores; found automatically for "
        "simulated data",
        type=Path,
    )
    parser.add_stage_arguments()


def run(args: argparse.Namespace) -> int:
    from mindvideo.evaluation.metrics import format_markdown_table
    from mindvideo.evaluation.runner import evaluate_reconstructions

    def table(result: Any) -> str:
        print(format_markdown_table(result.metrics), end="")
        return f"Wrote {Path(args.out) / 'metrics.json'}"

    # evaluate_reconstructions() also writes OUT/config.yaml
    return run_stage(args, evaluate_reconstructions, report=table, staged=True)
