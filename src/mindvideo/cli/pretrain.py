"""``mindvideo pretrain``: masked brain modeling on HCP, then the training fMRI (stage 2)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "pretrain",
        run,
        "Pre-train the MBM masked autoencoder (paper 3.3, B) on an unlabeled fMRI corpus "
        "(--data, from `mindvideo prepare --dataset hcp`), then fine-tune it on the training "
        "fMRI of a prepared subject (--finetune-data; its test fMRI is never trained on). "
        "Either phase may be left out. Writes OUT/mbm/ (config.json + safetensors), "
        "OUT/config.yaml, OUT/{pretrain,finetune}/ (checkpoints, logs/metrics.jsonl) and "
        "OUT/heldout.json.",
    )
    parser.add_key_option("--data", "HCP corpus for phase 1; sets config key data", type=Path)
    parser.add_data_option(
        "prepared subject for phase 2 (training fMRI only); key: finetune_data. Several (S1 S2 "
        "...): every subject's training fMRI in S1's voxel space through subject adapters (keys "
        "finetune_data and finetune_subjects)",
        flag="--finetune-data",
        first="finetune_data",
        rest="finetune_subjects",
    )
    parser.add_stage_arguments(dry_run=True, resume="OUT/{pretrain,finetune}/checkpoints/step_N")
    parser.set_output(estimate=_estimate.pretrain)


def run(args: argparse.Namespace) -> int:
    from mindvideo.training.dry_run import plan_pretrain
    from mindvideo.training.pretrain import pretrain

    return run_stage(args, pretrain, plan_pretrain, report=_heldout, resume=args.resume)


def _heldout(result: Any) -> str:
    if result.heldout is not None:
        logging.getLogger(__name__).info(
            "held-out masked MSE on the test fMRI: %.4f before fine-tuning, %.4f after "
            "(predicting zeros: %.4f)",
            result.heldout["masked_mse_before"],
            result.heldout["masked_mse_after"],
            result.heldout["masked_mse_zero"],
        )
    return f"wrote {result.mbm_dir}"
