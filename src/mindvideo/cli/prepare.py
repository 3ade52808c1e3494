"""``mindvideo prepare``: raw data → a prepared subject, or the HCP pre-training corpus."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, resolve_config
from mindvideo.data.prepare import DATASETS

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare",
        help="stage 1: raw Wen 2018 (or the authors' arrays, or HCP) → prepared data",
        description=(
            "Prepare one subject of Wen 2018 for training and evaluation (paper 3.2: drop, "
            "detrend, z-score, reproducibility ROI; frames at 3 FPS paired with TRs; captions), "
            "copy the authors' preprocessed arrays, or build the sharded HCP pre-training "
            "corpus of Glasser V1-V4. Re-running with the same inputs and config does nothing."
        ),
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="wen2018 (raw CIFTI + mp4; default), wen2018-preprocessed (the authors' arrays) or "
        "hcp (resting-state/task runs in HCP layout)",
    )
    parser.add_argument("--root", type=Path, help="folder of the raw dataset")
    parser.add_argument("--subject", type=int, help="Wen 2018 subject number (1-3)")
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import PrepareConfig
    from mindvideo.data.prepare import prepare, save_config_if_changed

    cfg = resolve_config(PrepareConfig, args)
    flags = {
        "dataset": args.dataset,
        "root": str(args.root) if args.root is not None else None,
        "subject": args.subject,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    out = Path(args.out)
    summary = prepare(cfg, out)
    save_config_if_changed(cfg, out)
    print(summary)
    return 0
