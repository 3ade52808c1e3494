"""``mindvideo simulate``: write the simulated dataset (Wen 2018 layout) or rest corpus (HCP)."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from mindvideo.cli._stage import add_stage_arguments, resolve_config, save_resolved

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="stage 0: write a simulated fMRI-video dataset in the raw Wen 2018 layout",
        description=(
            "Write a simulated dataset in the exact raw layout of Wen 2018 (CIFTI-2 runs and mp4 "
            "stimuli) with its ground truth, or with --rest an HCP-style resting-state corpus."
        ),
    )
    parser.add_argument(
        "--preset",
        choices=["tiny", "demo", "full"],
        default="demo",
        help="scale: tiny (tests, seconds), demo (minutes), full (the real scale)",
    )
    parser.add_argument("--seed", type=int, help="random seed (same seed, same dataset)")
    parser.add_argument("--subjects", type=int, help="number of subjects")
    parser.add_argument(
        "--rest", action="store_true", help="write the HCP-style resting-state corpus instead"
    )
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import SimulateConfig, simulate_preset
    from mindvideo.utils import UserError

    cfg = resolve_config(SimulateConfig, args, base=simulate_preset(args.preset))
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.subjects is not None:
        cfg = dataclasses.replace(cfg, subjects=args.subjects)
    if cfg.subjects < 1:
        raise UserError(f"--subjects must be at least 1, not {cfg.subjects}.")

    from mindvideo.sim.simulate import simulate_hcp_rest, simulate_wen2018

    if args.rest:
        simulate_hcp_rest(cfg, args.out)
    else:
        simulate_wen2018(cfg, args.out)
    save_resolved(cfg, args.out)
    return 0
