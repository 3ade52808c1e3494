"""``mindvideo pretrain``: masked brain modeling on HCP, then the training fMRI (stage 2)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, print_plan, require_out, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain",
        help="stage 2: masked brain modeling (MBM) on HCP, then the subject's training fMRI",
        description=(
            "Pre-train the MBM masked autoencoder (paper 3.3, B) on an unlabeled fMRI corpus "
            "(--data, from `mindvideo prepare --dataset hcp`), then fine-tune it on the training "
            "fMRI of a prepared subject (--finetune-data; its test fMRI is never trained on). "
            "Either phase may be left out. Writes OUT/mbm/ (config.json + safetensors), "
            "OUT/config.yaml, OUT/{pretrain,finetune}/ (checkpoints, logs/metrics.jsonl) and "
            "OUT/heldout.json."
        ),
    )
    parser.add_argument("--data", type=Path, help="HCP corpus for phase 1; sets config key data")
    parser.add_argument(
        "--finetune-data",
        type=Path,
        help="prepared subject for phase 2 (training fMRI only); sets config key finetune_data",
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue an interrupted run: 'latest' or OUT/{pretrain,finetune}/checkpoints/step_N",
    )
    add_stage_arguments(parser, dry_run=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import PretrainConfig

    cfg = resolve_config(PretrainConfig, args)
    flags = {"data": args.data, "finetune_data": args.finetune_data}
    cfg = dataclasses.replace(cfg, **{k: str(v) for k, v in flags.items() if v is not None})

    if args.dry_run:
        from mindvideo.training.dry_run import plan_pretrain

        return print_plan(plan_pretrain(cfg, args.out, resume=args.resume))
    from mindvideo.training.pretrain import pretrain

    result = pretrain(cfg, require_out(args), resume=args.resume)
    if result.heldout is not None:
        log.info(
            "held-out masked MSE on the test fMRI: %.4f before fine-tuning, %.4f after "
            "(predicting zeros: %.4f)",
            result.heldout["masked_mse_before"],
            result.heldout["masked_mse_after"],
            result.heldout["masked_mse_zero"],
        )
    log.info("wrote %s", result.mbm_dir)
    return 0
