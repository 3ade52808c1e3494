"""``mindvideo tune-video``: stage 4, the inflated Stable Diffusion tuned on the training videos."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from mindvideo.cli._stage import add_stage_arguments, print_plan, require_out, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune-video",
        help="stage 4: tune the inflated Stable Diffusion on the training videos and captions",
        description=(
            "Inflate Stable Diffusion's UNet for video and train its self-, cross- and temporal "
            "attention on the training clips of a prepared subject, conditioned on their "
            "captions (paper 3.4, B). Writes OUT/unet, vae, text_encoder, tokenizer, scheduler."
        ),
    )
    parser.add_argument("--data", help="prepared subject folder (mindvideo prepare); key: data")
    parser.add_argument(
        "--stable-diffusion",
        metavar="DIR",
        help="Stable Diffusion 1.5 folder; key: pretrained.stable_diffusion",
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue an interrupted run: 'latest' or OUT/checkpoints/step_N",
    )
    add_stage_arguments(parser, dry_run=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import TuneVideoConfig

    cfg = resolve_config(TuneVideoConfig, args)
    if args.data is not None:
        cfg = dataclasses.replace(cfg, data=args.data)
    if args.stable_diffusion is not None:
        cfg = dataclasses.replace(
            cfg,
            pretrained=dataclasses.replace(cfg.pretrained, stable_diffusion=args.stable_diffusion),
        )

    if args.dry_run:
        from mindvideo.training.dry_run import plan_tune_video

        return print_plan(plan_tune_video(cfg, args.out, resume=args.resume))
    from mindvideo.training.tune_video import tune_video

    out = tune_video(cfg, require_out(args), resume=args.resume)
    log.info("wrote %s", out)
    return 0
