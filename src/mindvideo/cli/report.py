"""``mindvideo report``: one self-contained HTML page for a run directory."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from mindvideo.cli._stage import CommandParser


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "report",
        run,
        "Write a single HTML file (everything inline, works offline) for a run directory, "
        "the folder holding the stages' --out folders (RUN/reconstruct, RUN/evaluate, "
        "RUN/explain, RUN/compare, ...; docs/report.md): ground truth and reconstruction "
        "side by side as animated clips, the "
        "metrics with chance levels, the ablation table, the attention charts and flat maps, "
        "and every stage's config.yaml. Missing stages are skipped with a note. Prints the "
        "path of the page.",
        help="write one self-contained HTML page: clips, metrics, ablations, attention, configs",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    parser.add_argument(
        "--out", type=Path, help="the HTML file to write (default: RUN_DIR/report.html)"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="test windows shown as clips (default 8)"
    )
    parser.add_argument(
        "--media",
        choices=["gif", "mp4"],
        default="gif",
        help="embed clips as animated GIFs (default) or H.264 mp4 videos (smaller)",
    )
    parser.set_output(path=lambda args: args.out or args.run_dir / "report.html", is_file=True)


def run(args: argparse.Namespace) -> int:
    from mindvideo.report import build_report

    # The command as parsed (not sys.argv, which is the host program's when called in-process).
    words = ["mindvideo", "report", str(args.run_dir), "--samples", str(args.samples)]
    words += ["--media", args.media] + (["--out", str(args.out)] if args.out else [])
    command = shlex.join(words)
    path = build_report(
        args.run_dir, args.out, samples=args.samples, media=args.media, command=command
    )
    print(path)
    return 0
