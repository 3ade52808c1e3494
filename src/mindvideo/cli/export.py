"""``mindvideo export``: a light pipeline or tune-video folder → a standalone copy."""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli._stage import CommandParser


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "export",
        run,
        "Write a standalone copy of a pipeline folder (mindvideo cotrain) or a tune-video "
        "folder. Those hold only what was trained and read the frozen parts (VAE, text encoder, "
        "the UNet's other weights) from the Stable Diffusion folder they name in base.json; the "
        "copy holds everything and needs nothing else.",
        help="write a standalone copy of a light pipeline or tune-video folder",
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="the pipeline or tune-video folder to export",
    )
    parser.add_argument("--out", type=Path, required=True, help="new folder for the copy")


def run(args: argparse.Namespace) -> int:
    from mindvideo.pipeline.export import export_folder

    print(export_folder(args.source, args.out).summary())
    return 0
