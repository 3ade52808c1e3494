"""``mindvideo prepare``: raw data → a prepared subject, or the HCP pre-training corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, resolve_config
from mindvideo.data.prepare import DATASETS


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "prepare",
        run,
        "Prepare one subject of Wen 2018 for training and evaluation (paper 3.2: drop, "
        "detrend, z-score, reproducibility ROI; frames at 3 FPS paired with TRs; captions), "
        "copy the authors' preprocessed arrays, or build the sharded HCP pre-training "
        "corpus of Glasser V1-V4. Re-running with the same inputs and config does nothing.",
    )
    parser.add_key_option(
        "--dataset",
        choices=DATASETS,
        help="wen2018 (raw CIFTI + mp4; default), wen2018-preprocessed (the authors' arrays) or "
        "hcp (resting-state/task runs in HCP layout)",
    )
    parser.add_key_option("--root", "folder of the raw dataset", type=Path)
    parser.add_key_option("--subject", "Wen 2018 subject number (1-3)", type=int)
    parser.add_key_option(
        "--allow-duration-mismatch",
        "accept stimuli that last more than one TR longer than their runs (the rest is unused)",
        action="store_true",
        default=None,
    )
    parser.add_stage_arguments()
    parser.set_output(estimate=_estimate.prepare)


def run(args: argparse.Namespace) -> int:
    from mindvideo.data.prepare import prepare, save_config_if_changed

    cfg = resolve_config(args)
    summary = prepare(cfg, args.out)
    save_config_if_changed(cfg, args.out)  # a re-run with the same config touches nothing
    print(summary)
    return 0
