"""``mindvideo lowlevel``: the low-level decoder, fMRI window → a low-resolution video.

Ridge from the window of every training TR to its frames at ``frame_size`` (and optionally a
convolutional refiner to ``out_size``, trained on the map's held-out predictions); the video it
decodes starts the sampler with ``mindvideo reconstruct lowlevel=DIR strength=S``
(:mod:`mindvideo.training.lowlevel`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "lowlevel",
        run,
        "Fit the low-level decoder on the training split of a prepared subject: ridge "
        "regression (alpha per target, cross-validated over whole training segments) from the "
        "fMRI window of every training TR to its frames at frame_size × frame_size, and with "
        "refiner_steps > 0 a small convolutional refiner to out_size, trained on the map's "
        "held-out predictions (with semantic_channels > 0 also reading a ridge decoding of the "
        "CLIP image embedding, --clip). Its video sets the layout and colours of the "
        "reconstructions: mindvideo reconstruct lowlevel=OUT strength=0.3. Writes OUT/decoder "
        "(save_pretrained), OUT/lowlevel.json and OUT/config.yaml.",
    )
    parser.add_key_option("--data", "prepared subject; sets config key data", type=Path)
    parser.add_key_option("--window", "fMRI frames per window (default 4)", type=int)
    parser.add_key_option(
        "--clip",
        "CLIP model folder (the semantic map's targets, semantic_channels > 0); sets "
        "pretrained.clip",
        key="pretrained.clip",
        type=Path,
    )
    parser.add_stage_arguments(dry_run=True)
    parser.set_output(estimate=_estimate.lowlevel)


def run(args: argparse.Namespace) -> int:
    from mindvideo.pipeline.lowlevel_video import DECODER_DIR
    from mindvideo.training.lowlevel import lowlevel, plan_lowlevel

    def report(_: object) -> str:
        return f"wrote {Path(args.out) / DECODER_DIR}"

    return run_stage(args, lowlevel, plan_lowlevel, report=report, staged=True)
