"""``mindvideo tune-video``: stage 4, the inflated Stable Diffusion tuned on the training videos."""

from __future__ import annotations

import argparse

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "tune-video",
        run,
        "Inflate Stable Diffusion's UNet for video and train its self-, cross- and temporal "
        "attention on the training clips of a prepared subject, conditioned on their "
        "captions (paper 3.4, B). Writes OUT/unet, vae, text_encoder, tokenizer, scheduler.",
    )
    parser.add_key_option("--data", "prepared subject folder (mindvideo prepare); key: data")
    parser.add_key_option(
        "--stable-diffusion",
        "Stable Diffusion 1.5 folder; key: pretrained.stable_diffusion",
        key="pretrained.stable_diffusion",
        metavar="DIR",
    )
    parser.add_stage_arguments(dry_run=True, resume="OUT/checkpoints/step_N")
    parser.set_output(estimate=_estimate.training)


def run(args: argparse.Namespace) -> int:
    from mindvideo.training.dry_run import plan_tune_video
    from mindvideo.training.tune_video import tune_video

    return run_stage(args, tune_video, plan_tune_video, resume=args.resume)
