"""``mindvideo contrast``: spatiotemporal encoder + multimodal contrastive learning (stage 3)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, print_plan, require_out, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "contrast",
        help="stage 3: train the spatiotemporal fMRI encoder against frozen CLIP (eq. 3)",
        description=(
            "Inflate the MBM encoder over windows of fMRI frames (spatiotemporal attention, "
            "paper 3.3) and train it with the contrastive language-image-fMRI loss (eq. 3) "
            "against frozen CLIP text and image towers (pretrained.clip, a local folder). Writes "
            "OUT/fmri_encoder/ (config.json + safetensors), OUT/retrieval.json (fMRI → caption / "
            "image retrieval on the test windows, before and after), OUT/config.yaml, "
            "OUT/checkpoints/ and OUT/logs/metrics.jsonl."
        ),
    )
    parser.add_argument(
        "--data", type=Path, help="prepared subject (mindvideo prepare); sets config key data"
    )
    parser.add_argument(
        "--encoder",
        type=Path,
        help="MBM folder written by mindvideo pretrain (OUT/mbm); sets config key encoder",
    )
    parser.add_argument(
        "--clip", type=Path, help="local CLIP model folder; sets config key pretrained.clip"
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue an interrupted run: 'latest' or OUT/checkpoints/step_N",
    )
    add_stage_arguments(parser, dry_run=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import ContrastConfig

    cfg = resolve_config(ContrastConfig, args)
    flags = {"data": args.data, "encoder": args.encoder}
    cfg = dataclasses.replace(cfg, **{k: str(v) for k, v in flags.items() if v is not None})
    if args.clip is not None:
        cfg = dataclasses.replace(
            cfg, pretrained=dataclasses.replace(cfg.pretrained, clip=str(args.clip))
        )

    from mindvideo.training.contrast import check_contrast_config, contrast

    check_contrast_config(cfg)  # before anything heavy is loaded
    if args.dry_run:
        from mindvideo.training.dry_run import plan_contrast

        return print_plan(plan_contrast(cfg, args.out, resume=args.resume))
    result = contrast(cfg, require_out(args), resume=args.resume)
    after, chance = result.retrieval["after"], result.retrieval["chance"]
    log.info(
        "fMRI → caption top-1 on the test windows: %.3f (chance %.3f); wrote %s",
        after["caption_top1"],
        chance["caption_top1"],
        result.encoder_dir,
    )
    return 0
