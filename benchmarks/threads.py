"""The demo on a shared CPU: torch's automatic thread choice against a fixed count.

``mindvideo demo --jobs 1`` runs four times from scratch, each into a fresh folder and one after
the other (one stage at a time, so that only the thread choice differs between the runs; side by
side stages are measured in docs/benchmarks.md):

- idle, threads chosen automatically (``mindvideo.utils.threads``);
- idle, threads fixed to every usable CPU (``--threads N``: torch's own default, the behaviour
  before the automatic choice);
- then both again beside one competing busy single-threaded process (``python -c "while True:
  pass"``), started before the demo and killed after it.

Written to ``benchmarks/results/threads.{json,md}``: every stage's time, the totals, and the
ratios the targets are about — the slowdown a competing thread causes (target: at most 2× with
the automatic choice) and the automatic choice against the fixed count on an idle machine
(target: no slower; this compares two runs, so a few per cent either way is noise).

Run:  python benchmarks/threads.py [--preset tiny|demo]
The tiny preset takes about 10 minutes on a 2-core CPU, the demo preset about an hour.
Not part of the test suite. Run it alone: anything else running is a competitor too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mindvideo.utils.threads import usable_cpus

RESULTS = Path(__file__).resolve().parent / "results"
DONE = ".mindvideo-stage.json"


def run_demo(preset: str, out: Path, threads: int | None, busy: bool) -> dict:
    """One demo from scratch; the wall time, every stage's seconds and the thread line."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for var in ("MINDVIDEO_THREADS", "OMP_NUM_THREADS"):
        env.pop(var, None)
    command = [sys.executable, "-m", "mindvideo", "demo", "--preset", preset, "--out", str(out)]
    command += ["--jobs", "1"]
    if threads is not None:
        command += ["--threads", str(threads)]
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    stages = {}
    for marker in sorted(out.rglob(DONE), key=lambda m: m.stat().st_mtime):  # run order
        name = marker.parent.relative_to(out).as_posix()
        stages[name] = round(json.loads(marker.read_text())["seconds"], 1)
    first = next((line for line in done.stderr.splitlines() if "torch threads" in line), "")
    return {"wall_s": round(wall, 1), "stages_s": stages, "threads_line": first.strip()}


def markdown(result: dict) -> str:
    runs = result["runs"]
    names = list(runs["auto_idle"]["stages_s"])
    lines = [
        f"# Threads on a shared CPU: `mindvideo demo --preset {result['preset']}`",
        "",
        f"{result['machine']}; {result['cpus']} usable CPUs; fixed = `--threads {result['cpus']}`"
        " (torch's default); busy = one competing single-threaded busy process.",
        "",
        "| stage | auto, idle | fixed, idle | auto, busy | fixed, busy |",
        "|---|---|---|---|---|",
    ]
    order = ("auto_idle", "fixed_idle", "auto_busy", "fixed_busy")
    for name in names:
        cells = [f"{runs[k]['stages_s'].get(name, float('nan')):.1f}" for k in order]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"{runs[k]['wall_s']:.1f}" for k in order)
    lines.append(f"| **total (wall)** | {totals} |")
    r = result["ratios"]
    lines += [
        "",
        "- slowdown from one competing thread, automatic choice: "
        f"**{r['auto_busy_over_idle']:.2f}×** (target ≤ 2×)",
        f"- the same with the fixed count: {r['fixed_busy_over_idle']:.2f}×",
        f"- automatic / fixed on an idle machine: **{r['auto_over_fixed_idle']:.3f}** (target ≤ 1,"
        " within run-to-run noise)",
        "",
        "First lines: " + "; ".join(f"{k}: `{runs[k]['threads_line']}`" for k in order),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "demo"], default="tiny")
    args = parser.parse_args()
    cpus = usable_cpus()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="mindvideo-threads-") as tmp:
        for name, threads, busy in (
            ("auto_idle", None, False),
            ("fixed_idle", cpus, False),
            ("auto_busy", None, True),
            ("fixed_busy", cpus, True),
        ):
            print(f"== {name}", file=sys.stderr, flush=True)
            runs[name] = run_demo(args.preset, Path(tmp) / name, threads, busy)
            print(f"   {runs[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    wall = {k: v["wall_s"] for k, v in runs.items()}
    result = {
        "preset": args.preset,
        "cpus": cpus,
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "runs": runs,
        "ratios": {
            "auto_busy_over_idle": wall["auto_busy"] / wall["auto_idle"],
            "fixed_busy_over_idle": wall["fixed_busy"] / wall["fixed_idle"],
            "auto_over_fixed_idle": wall["auto_idle"] / wall["fixed_idle"],
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "threads.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
