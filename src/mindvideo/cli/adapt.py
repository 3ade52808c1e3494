"""``mindvideo adapt``: a new subject from a few training segments.

The subject adapter maps the new subject's voxels into those of the subject a pipeline was
trained on, fitted by ridge on the training segments both watched; ``mindvideo reconstruct
adapter=OUT --data NEW`` then reads the new subject with that pipeline
(:mod:`mindvideo.training.adapt`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "adapt",
        run,
        "Fit a new subject's adapter: ridge regression (alpha per voxel, cross-validated over "
        "whole segments) from the new subject's fMRI to the reference subject's, TR by TR, on "
        "the first SEGMENTS training segments both watched. Reports how well the aligned test "
        "fMRI matches the reference's (voxel r, 50-way pattern identification beside its "
        "shuffled chance and the reference's own repeat). Then: mindvideo reconstruct "
        "adapter=OUT --data NEW --checkpoint PIPELINE. Writes OUT/adapter (save_pretrained), "
        "OUT/adapt.json and OUT/config.yaml.",
    )
    parser.add_key_option("--data", "the new subject's prepared folder", type=Path)
    parser.add_key_option(
        "--reference", "prepared folder of the subject the pipeline was trained on", type=Path
    )
    parser.add_key_option("--segments", "training segments to fit on (default 3)", type=int)
    parser.add_key_option(
        "--pipeline", "check that this pipeline's fMRI encoder reads the reference", type=Path
    )
    parser.add_stage_arguments(dry_run=True)
    parser.set_output(estimate=_estimate.adapt)


def run(args: argparse.Namespace) -> int:
    from mindvideo.training.adapt import adapt, plan_adapt

    def report(folder: object) -> str:
        return f"wrote {Path(args.out) / Path(str(folder)).name}"

    return run_stage(args, adapt, plan_adapt, report=report, staged=True)
