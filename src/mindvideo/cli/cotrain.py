"""``mindvideo cotrain``: stage 5, the fMRI encoder and the video UNet trained together."""

from __future__ import annotations

import argparse

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "cotrain",
        run,
        "Co-train the whole fMRI encoder and the UNet's self-, cross- and temporal "
        "attention on the training fMRI windows and their clips (paper 3.4). Writes the "
        "reconstruction pipeline to OUT/pipeline (for mindvideo reconstruct --checkpoint).",
    )
    parser.add_data_option(
        "prepared subject (mindvideo prepare); key: data. Several (S1 S2 ...): one model "
        "shared by all, in S1's voxel space, the others read through subject adapters (keys "
        "data and subjects)"
    )
    parser.add_key_option(
        "--encoder",
        "fMRI encoder: contrast's output folder (or pretrain's MBM folder); key: encoder",
        metavar="DIR",
    )
    parser.add_key_option(
        "--generator", "tune-video's output folder; key: generator", metavar="DIR"
    )
    parser.add_stage_arguments(dry_run=True, resume="OUT/checkpoints/step_N")
    parser.set_output(estimate=_estimate.training)


def run(args: argparse.Namespace) -> int:
    from mindvideo.training.cotrain import cotrain
    from mindvideo.training.dry_run import plan_cotrain

    return run_stage(args, cotrain, plan_cotrain, resume=args.resume)
