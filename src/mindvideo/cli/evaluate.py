"""``mindvideo evaluate``: reconstructions + ground truth → metrics with chance levels (stage 7)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="stage 7: SSIM, PSNR and N-way top-K identification, each with its chance level",
        description=(
            "Score the clips of `mindvideo reconstruct` against their ground truth (paper 4.3, "
            "5): SSIM and PSNR, frame- and video-level N-way top-K identification in compat "
            "(the authors' top-3 rule) and strict mode with the classifiers in "
            "pretrained.image_classifier / pretrained.video_classifier, and the CLIP image "
            "similarity with pretrained.clip. Writes OUT/metrics.json, OUT/metrics.md, "
            "OUT/samples.json (per-window values for `mindvideo compare`) and OUT/config.yaml."
        ),
    )
    parser.add_argument(
        "--reconstructions",
        type=Path,
        help="output folder of mindvideo reconstruct; sets config key reconstructions",
    )
    parser.add_argument(
        "--image-classifier",
        type=Path,
        help="frame classifier folder (ViT ImageNet); sets pretrained.image_classifier",
    )
    parser.add_argument(
        "--video-classifier",
        type=Path,
        help="video classifier folder (VideoMAE Kinetics-400); sets pretrained.video_classifier",
    )
    parser.add_argument(
        "--clip", type=Path, help="CLIP model folder; sets pretrained.clip (CLIP similarity)"
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import EvaluateConfig

    cfg = resolve_config(EvaluateConfig, args)
    if args.reconstructions is not None:
        cfg = dataclasses.replace(cfg, reconstructions=str(args.reconstructions))
    paths = {
        "image_classifier": args.image_classifier,
        "video_classifier": args.video_classifier,
        "clip": args.clip,
    }
    paths = {k: str(v) for k, v in paths.items() if v is not None}
    if paths:
        cfg = dataclasses.replace(cfg, pretrained=dataclasses.replace(cfg.pretrained, **paths))

    from mindvideo.evaluation.metrics import format_markdown_table
    from mindvideo.evaluation.runner import evaluate_reconstructions

    result = evaluate_reconstructions(cfg, args.out)  # also writes OUT/config.yaml
    print(format_markdown_table(result.metrics), end="")
    log.info("Wrote %s", Path(args.out) / "metrics.json")
    return 0
