"""Benchmark: `mindvideo prepare` of one subject at the full Wen 2018 scale.

The simulator's ``full`` preset has the real dataset's shape: 59,412 cortical vertices, 18
training segments x 2 repetitions + 5 test segments x 10 repetitions = 86 runs of 245 (246)
volumes, and 23 stimuli of 480 s at 30 FPS (128 x 128). The target for the fMRI part (hashing,
reading, preprocessing, ROI, writing) is at most 30 s and 4 GB peak memory on a 2-core
machine; decoding the videos is timed separately.

Usage::

    python benchmarks/prepare_full.py --data /path/full_sim [--work DIR] [--frame-size 128]

``--data`` is reused when it already holds a simulated dataset; otherwise ``mindvideo simulate
--preset full --subjects 1`` writes it there first (about 5 GB, several minutes; timed too).
Results go to ``benchmarks/results/prepare_full.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FMRI_STEPS = ("hash", "fmri", "write")
"""The fMRI part's wall time: hashing the inputs, reading + preprocessing every run + the ROI
(several runs at a time), writing. "read" and "preprocess" are each run's own times added up."""


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def simulate(data: Path) -> float | None:
    """Write the full-scale dataset to ``data`` unless it is already there; seconds or None."""
    if (data / "subject1" / "fmri").is_dir():
        return None
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mindvideo", "simulate", "--preset", "full", "--subjects", "1",
         "--out", str(data)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="full simulated dataset")
    parser.add_argument("--work", type=Path, help="prepared output (default: a temp folder)")
    parser.add_argument("--frame-size", type=int, default=128, help="prepared frame size")
    parser.add_argument("--keep", action="store_true", help="keep the prepared output")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from mindvideo.config import PrepareConfig
    from mindvideo.data.wen2018 import prepare_wen2018

    sim_s = simulate(args.data)
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-full-"))
    out = work / "subject1"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrepareConfig(root=str(args.data), subject=1, frame_size=args.frame_size)  # paper ROI

    timings: dict[str, float] = {}
    start = time.perf_counter()
    prepare_wen2018(cfg, out, timings=timings)
    wall = time.perf_counter() - start
    peak = peak_rss_gb()
    again: dict[str, float] = {}
    prepare_wen2018(cfg, out, timings=again)  # the no-op re-run

    manifest = json.loads((out / "manifest.json").read_text())
    fmri_s = sum(timings[k] for k in FMRI_STEPS)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{__import__('os').cpu_count()} CPUs",
        "simulate_s": sim_s,
        "runs": len(manifest["volumes_dropped"]),
        "cortex_vertices": manifest["cortex_vertices"],
        "roi": manifest["roi"],
        "frame_size": args.frame_size,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "fmri_s": round(fmri_s, 2),
        "frames_s": round(timings["frames"], 2),
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(peak, 2),
        "rerun_s": round(again["total"], 2),
        "targets": {"fmri_s": 30, "peak_rss_gb": 4},
        "passed": fmri_s <= 30 and peak <= 4,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prepare_full.json").write_text(json.dumps(result, indent=2) + "\n")
    t = result["timings_s"]
    md = "\n".join(
        [
            "# prepare, full scale (one subject)",
            "",
            f"{result['runs']} runs, {result['cortex_vertices']} cortical vertices; "
            f"{result['machine']}.",
            "",
            "| step | seconds |",
            "|---|---|",
            f"| hash | {t.get('hash', 0):.1f} |",
            f"| read + preprocess + ROI (wall) | {t.get('fmri', 0):.1f} |",
            f"| of which: read, preprocess (each run's time, added up) | {t.get('read', 0):.1f}, "
            f"{t.get('preprocess', 0):.1f} |",
            f"| of which: ROI | {t.get('roi', 0):.1f} |",
            *(f"| {k} | {t.get(k, 0):.1f} |" for k in ("write", "frames", "captions")),
            f"| **fMRI total** (target ≤ 30) | **{fmri_s:.1f}** |",
            f"| wall, everything | {wall:.1f} |",
            f"| re-run (no-op) | {again['total']:.1f} |",
            "",
            f"Peak RSS {peak:.2f} GB (target ≤ 4). ROI: {result['roi']['n_significant']} of "
            f"{result['roi']['n_vertices']} vertices significant, {result['roi']['n_kept']} kept.",
            f"Simulating the dataset took {sim_s:.0f} s." if sim_s else "Dataset reused.",
            "",
        ]
    )
    (RESULTS / "prepare_full.md").write_text(md)
    print(md)
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
