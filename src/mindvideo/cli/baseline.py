"""``mindvideo baseline``: the linear ceiling of a prepared subject, every score beside its chance.

Ridge regression from the fMRI windows the pipeline sees to low-resolution frames (pixel
identification), the true labels where the dataset has them (the simulator's scene class and
motion) and, with ``--clip``, CLIP image and caption embeddings
(:func:`mindvideo.evaluation.baseline.baseline`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "baseline",
        run,
        "How much of the stimulus a linear model reads from the fMRI windows of a prepared "
        "subject: ridge regression (alpha per target, cross-validated over whole training "
        "segments) from the window of every test TR to its 16×16 mean frame (pixel "
        "identification), to its true scene class and motion where the data have labels "
        "(simulated data), and with --clip to CLIP image and caption embeddings. Every score "
        "is printed with its analytic chance and an empirical chance from shuffled pairings. "
        "Writes OUT/baseline.json, OUT/baseline.md and OUT/config.yaml.",
    )
    parser.add_key_option("--data", "prepared subject; sets config key data", type=Path)
    parser.add_key_option(
        "--scenes-json",
        "the simulator's scenes.json (true labels); found automatically for simulated data",
        type=Path,
    )
    parser.add_key_option(
        "--clip", "CLIP model folder; sets pretrained.clip", key="pretrained.clip", type=Path
    )
    parser.add_key_option("--window", "fMRI frames per window (default 4)", type=int)
    parser.add_stage_arguments()


def run(args: argparse.Namespace) -> int:
    from mindvideo.evaluation.baseline import BASELINE_JSON, baseline, format_baseline

    def table(result: Any) -> str:
        sys.stdout.write(format_baseline(result))
        return f"Wrote {Path(args.out) / BASELINE_JSON}"

    return run_stage(args, baseline, report=table, staged=True)
