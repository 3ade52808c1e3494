"""``mindvideo demo``: every stage on the simulated dataset (:mod:`mindvideo.demo.run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mindvideo.cli._stage import CommandParser


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "demo",
        run,
        "Simulate a Wen 2018-style dataset, prepare it, train small stand-ins for the "
        "pretrained models (CLIP, Stable Diffusion, classifiers), then pretrain, contrast, "
        "tune-video, cotrain, reconstruct, evaluate, explain and write an HTML report. "
        "Finished stages are reused when the command is run again.",
        help="run every stage on the simulated dataset (CPU, minutes) and write a report",
    )
    parser.add_argument(
        "--preset",
        choices=["tiny", "demo"],
        default="demo",
        help="tiny (about a minute; numbers are meaningless) or demo (the default, minutes)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated dataset")
    parser.set_output(estimate=_estimate)
    parser.add_argument(
        "--ablations",
        action="store_true",
        help=(
            "also run the paper's ablations (window 1 and 2, no contrastive learning, plain "
            "classifier-free guidance) and compare them with the full run (RUN/compare)"
        ),
    )


MODELS_SHARE = 0.5
"""The demo's models, caches and clips, as a share of its datasets (measured on the default
preset: about 0.4 GB next to 0.9 GB of simulated and prepared data)."""
HCP_VISUAL_VOXELS = 5000
"""About how many voxels the HCP corpus keeps per volume (Glasser V1–V4)."""


def _estimate(args: argparse.Namespace) -> int:
    """The demo's datasets from its preset (simulated runs, stimuli, prepared frames and fMRI,
    the HCP corpus) and a share for its models; the finished stages it reuses are counted too."""
    from mindvideo.config import prepare_preset, simulate_preset
    from mindvideo.sim.simulate import TR_S, estimate_simulate_bytes

    sim = simulate_preset(args.preset)
    prepare = prepare_preset(args.preset)
    segments = sim.train_segments + sim.test_segments
    frames = segments * 240 * round(prepare.fps * TR_S) * prepare.frame_size**2 * 3
    rest = sim.rest.subjects * len(sim.rest.runs) * sim.rest.volumes * HCP_VISUAL_VOXELS * 4
    data = estimate_simulate_bytes(sim) + estimate_simulate_bytes(sim, rest=True) + frames + rest
    return int(data * (1 + MODELS_SHARE))


def run(args: argparse.Namespace) -> int:
    argv = ["--preset", args.preset, "--out", str(args.out), "--seed", str(args.seed)]
    if args.ablations:
        argv.append("--ablations")
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    from mindvideo.demo.run import run_demo

    report = run_demo(args.preset, args.out, args.seed, argv, ablations=args.ablations)
    tables = ("baseline/baseline.md", "evaluate/metrics.md", "compare/comparison.md")
    for table in (*tables, "information.md"):
        path = args.out / table
        if path.is_file():
            sys.stdout.write("\n" + path.read_text(encoding="utf-8") + "\n")
    sys.stdout.write(f"Report: {report}\n")
    return 0
