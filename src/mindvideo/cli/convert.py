"""``mindvideo convert``: the authors' released pipeline folder → a mindvideo pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli._stage import CommandParser


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "convert",
        run,
        "Convert the authors' released pipeline folder (unet/ with Tune-A-Video UNet3D "
        "weights, fmri_encoder/, vae/, scheduler/) into a mindvideo pipeline folder, reading "
        "weights without running pickle code. Writes OUT/conversion.json with the key report.",
        help="convert the authors' released MinD-Video checkpoint into a pipeline folder",
    )
    parser.add_argument(
        "--authors", type=Path, required=True, help="the authors' released pipeline folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="new pipeline folder to write")
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="video size the model was tuned at, the default output size (paper: 256)",
    )
    parser.add_argument(
        "--frames-per-tr", type=int, default=6, help="frames generated per fMRI window (6)"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="load what fits when the checkpoint has unexpected or missing keys (see the report)",
    )


def run(args: argparse.Namespace) -> int:
    from mindvideo.pipeline.convert import convert_authors_pipeline

    report = convert_authors_pipeline(
        args.authors,
        args.out,
        resolution=args.resolution,
        frames_per_tr=args.frames_per_tr,
        strict=not args.allow_missing,
    )
    print(report.summary())
    print(f"report: {Path(args.out) / 'conversion.json'}")
    return 0
