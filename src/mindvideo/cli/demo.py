"""``mindvideo demo``: every stage on the simulated dataset (:mod:`mindvideo.demo.run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mindvideo.cli import _estimate
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
    parser.set_output(estimate=_estimate.demo)
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=(
            "stages run side by side, each in its own process, where their inputs allow "
            "(default: one per usable CPU; 1 runs them one after another in this process)"
        ),
    )
    parser.add_argument(
        "--subjects",
        type=int,
        default=1,
        metavar="K",
        help=(
            "also simulate K subjects and train one model shared by all of them beside each "
            "subject's own, each subject scored by both (RUN/subjects/subjects.md); and subject "
            "K as a new subject, adapted from its first few training segments onto a model of "
            "the others (RUN/subjects/held-out.md)"
        ),
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help=(
            "also run the paper's ablations (window 1 and 2, no contrastive learning, plain "
            "classifier-free guidance) and compare them with the full run (RUN/compare)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    argv = ["--preset", args.preset, "--out", str(args.out), "--seed", str(args.seed)]
    if args.ablations:
        argv.append("--ablations")
    if args.subjects != 1:
        argv += ["--subjects", str(args.subjects)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    from mindvideo.demo.run import run_demo

    if args.jobs is not None:
        argv += ["--jobs", str(args.jobs)]
    report = run_demo(
        args.preset,
        args.out,
        args.seed,
        argv,
        ablations=args.ablations,
        subjects=args.subjects,
        jobs=args.jobs,
        threads=args.threads,
    )
    tables = (
        "baseline/baseline.md",
        "evaluate/metrics.md",
        "compare/comparison.md",
        "subjects/subjects.md",
        "subjects/held-out.md",
    )
    for table in (*tables, "information.md"):
        path = args.out / table
        if path.is_file():
            sys.stdout.write("\n" + path.read_text(encoding="utf-8") + "\n")
    sys.stdout.write(f"Report: {report}\n")
    return 0
