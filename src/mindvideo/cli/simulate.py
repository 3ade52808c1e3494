"""``mindvideo simulate``: write the simulated dataset (Wen 2018 layout) or rest corpus (HCP)."""

from __future__ import annotations

import argparse

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, resolve_config, save_resolved
from mindvideo.config import STAGES


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "simulate",
        run,
        "Write a simulated dataset in the exact raw layout of Wen 2018 (CIFTI-2 runs and mp4 "
        "stimuli) with its ground truth, or with --rest an HCP-style resting-state corpus.",
    )
    parser.add_argument(
        "--preset",
        choices=STAGES["simulate"].presets,
        default="demo",
        help="scale: tiny (tests, seconds), demo (minutes), full (the real scale)",
    )
    parser.add_key_option("--seed", "random seed (same seed, same dataset)", type=int)
    parser.add_key_option("--subjects", "number of subjects", type=int)
    parser.add_argument(
        "--rest", action="store_true", help="write the HCP-style resting-state corpus instead"
    )
    parser.add_stage_arguments()
    parser.set_output(estimate=_estimate.simulate)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import simulate_preset
    from mindvideo.utils import UserError

    cfg = resolve_config(args, base=simulate_preset(args.preset))
    if cfg.subjects < 1:  # the rest corpus counts its own subjects (rest.subjects)
        raise UserError(f"--subjects must be at least 1, not {cfg.subjects}.")

    from mindvideo.sim.simulate import simulate_hcp_rest, simulate_wen2018

    simulate = simulate_hcp_rest if args.rest else simulate_wen2018
    simulate(cfg, args.out)
    save_resolved(cfg, args.out)
    return 0
