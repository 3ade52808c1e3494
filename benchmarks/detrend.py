"""Benchmark: detrending one cortex-sized run (paper 3.2: a 4th-order polynomial per vertex).

One Wen 2018 run is 245 volumes × 59,412 cortical vertices (float32). `prepare` detrends 86 of
them per subject, so one run should take well under half a second on a 2-core machine (target:
the best of ``--repeats`` under 0.5 s; the machine may be busy with other work, hence the best).

Usage::

    python benchmarks/detrend.py [--repeats 5] [--volumes 245] [--vertices 59412]

Results go to ``benchmarks/results/detrend.{json,md}``; the exit code is 1 when the target is
missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (the best counts)")
    parser.add_argument("--volumes", type=int, default=245, help="time points of the run")
    parser.add_argument("--vertices", type=int, default=59_412, help="cortical vertices")
    args = parser.parse_args()

    from mindvideo.data.preprocess import detrend

    x = np.random.default_rng(2).standard_normal((args.volumes, args.vertices)).astype(np.float32)
    detrend(x[:, :10])  # warm the basis cache
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        detrend(x)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{__import__('os').cpu_count()} CPUs",
        "shape": [args.volumes, args.vertices],
        "timings_s": [round(t, 4) for t in timings],
        "best_s": round(best, 4),
        "median_s": round(statistics.median(timings), 4),
        "target_s": TARGET_S,
        "passed": best < TARGET_S,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "detrend.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(
        [
            "# detrend, one cortex-sized run",
            "",
            f"float32 [{args.volumes}, {args.vertices}], order 4; {result['machine']}.",
            "",
            "| runs | best | median | target |",
            "|---|---|---|---|",
            f"| {args.repeats} | **{best:.3f} s** | {result['median_s']:.3f} s | < {TARGET_S} s |",
            "",
        ]
    )
    (RESULTS / "detrend.md").write_text(md)
    print(md)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
