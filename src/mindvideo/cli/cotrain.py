"""``mindvideo cotrain``: stage 5, the fMRI encoder and the video UNet trained together."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from mindvideo.cli._stage import add_stage_arguments, print_plan, require_out, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cotrain",
        help="stage 5: train the fMRI encoder with the UNet's attention on fMRI-video pairs",
        description=(
            "Co-train the whole fMRI encoder and the UNet's self-, cross- and temporal "
            "attention on the training fMRI windows and their clips (paper 3.4). Writes the "
            "reconstruction pipeline to OUT/pipeline (for mindvideo reconstruct --checkpoint)."
        ),
    )
    parser.add_argument("--data", help="prepared subject folder (mindvideo prepare); key: data")
    parser.add_argument(
        "--encoder",
        metavar="DIR",
        help="fMRI encoder: contrast's output folder (or pretrain's MBM folder); key: encoder",
    )
    parser.add_argument(
        "--generator", metavar="DIR", help="tune-video's output folder; key: generator"
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue an interrupted run: 'latest' or OUT/checkpoints/step_N",
    )
    add_stage_arguments(parser, dry_run=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import CotrainConfig

    cfg = resolve_config(CotrainConfig, args)
    flags = {key: getattr(args, key) for key in ("data", "encoder", "generator")}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})

    if args.dry_run:
        from mindvideo.training.dry_run import plan_cotrain

        return print_plan(plan_cotrain(cfg, args.out, resume=args.resume))
    from mindvideo.training.cotrain import cotrain

    out = cotrain(cfg, require_out(args), resume=args.resume)
    log.info("wrote %s", out)
    return 0
