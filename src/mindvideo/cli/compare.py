"""``mindvideo compare``: evaluated runs side by side with tests against a reference."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mindvideo.cli._stage import CommandParser

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "compare",
        run,
        "Compare the metrics of two or more runs, as the paper's Table 1 compares ablations "
        "with the full model: every score with its standard error and 95% bootstrap "
        "interval (identification scores also with their shuffled chance), and three tests of "
        "every run against the reference, each with its significance band: a t-test, "
        "Wilcoxon's test and a permutation test of the mean difference (paired when both runs "
        "scored the same windows; two-sample tests otherwise). A RUN is an evaluate output "
        "folder or a run directory containing evaluate/. Writes OUT/comparison.json and "
        "OUT/comparison.md.",
        help="put evaluated runs side by side (ablations) with tests against a reference",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="runs to compare")
    parser.add_argument(
        "--reference", help="the run the others are tested against (default: the first RUN)"
    )
    parser.add_argument(
        "--name",
        action="append",
        dest="names",
        metavar="NAME",
        help="display name of each RUN, in order (repeat once per RUN; default: folder names)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=10_000,
        metavar="N",
        help="resamples of each permutation test (default: 10000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the permutation tests (default: 0)"
    )
    parser.add_argument(
        "--published",
        action="store_true",
        help="also put every run beside the published cc2017 results computed under the same "
        "definitions (docs/results.md)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from mindvideo.evaluation.compare import compare_runs, write_comparison

    comparison = compare_runs(
        args.runs,
        reference=args.reference,
        names=args.names,
        permutations=args.permutations,
        seed=args.seed,
        published=args.published,
    )
    paths = write_comparison(comparison, args.out)
    print(comparison.to_markdown(), end="")
    log.info("Wrote %s", paths["json"])
    return 0
