"""The performance suite in one command: every benchmark, then one JSON file and one table.

Runs, each in its own process and one after the other (so they do not share the CPU):

- ``prepare_full.py`` — `mindvideo prepare` of one subject at the full Wen 2018 scale (59,412
  cortical vertices, 86 runs); simulates the dataset first when ``--data`` holds none;
- ``detrend.py`` — detrending one cortex-sized run (245 volumes × 59,412 vertices; the
  target is under 0.5 s);
- ``encoder.py`` — a contrastive training step of the spatiotemporal encoder at the paper's
  shape (ViT-L, 6,016 voxels, w = 2) and the demo's, SDPA against plain attention;
- ``sampling.py`` — one denoising step of the inflated UNet at Stable Diffusion 1.5 size, and
  the sampling cost per clip the authors' way (DDIM 200, two UNet calls per step) against ours
  (batched guidance, the demo preset's sampler);
- ``threads.py`` — the tiny demo from scratch, idle and beside one competing busy thread, with
  torch's threads chosen automatically and fixed to every CPU (about 10 minutes);
- ``simulate.py`` — `mindvideo simulate` of the demo dataset with one render process and with
  one per CPU, and whether both builds are the same.

Each writes ``benchmarks/results/NAME.{json,md}``; this script then writes
``benchmarks/results/suite.json`` (every result, the machine, versions, the wall time of each
benchmark) and ``benchmarks/results/suite.md`` (the headline figures, with the peak memory of
each, followed by every benchmark's own table).

Run:  python benchmarks/run.py [--data DIR] [--only NAME,...]  (names: the files above)
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SUITE = ("prepare_full", "detrend", "encoder", "sampling", "threads", "simulate")


def _run(name: str, extra: list[str]) -> float:
    start = time.perf_counter()
    print(f"== {name}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], check=True)
    return time.perf_counter() - start


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def headline(results: dict) -> list[str]:
    """One row per headline figure: what, value, peak memory."""
    rows = []
    prep = results.get("prepare_full")
    if prep:
        rows.append(
            (
                f"prepare, full scale: fMRI of one subject ({prep['runs']} runs)",
                f"{prep['fmri_s']:.1f} s (target ≤ 30 s); frames {prep['frames_s']:.1f} s",
                f"{prep['peak_rss_gb']:.2f} GB (target ≤ 4)",
            )
        )
    sim = results.get("simulate")
    if sim:
        rows.append(
            (
                f"simulate, {sim['preset']} preset",
                ", ".join(
                    f"{r['workers']} process{'es' if r['workers'] > 1 else ''} "
                    f"{r['wall_s']:.0f} s" + (f" ({r['speedup']:.2f}×)" if r["workers"] > 1 else "")
                    for r in sim["rows"]
                )
                + ("; the same dataset" if sim["passed"] else "; **the datasets differ**"),
                "—",
            )
        )
    det = results.get("detrend")
    if det:
        rows.append(
            (
                f"detrend, one cortex-sized run ({det['shape'][0]} × {det['shape'][1]:,})",
                f"{det['best_s']:.3f} s best of {len(det['timings_s'])} "
                f"(target < {det['target_s']} s)",
                "—",
            )
        )
    enc = results.get("encoder")
    if enc:
        for row in enc["rows"]:
            if row.get("attention") != "sdpa":
                continue
            rows.append(
                (
                    f"encoder training step, {row['shape']} shape, {row['precision']}, "
                    f"batch {row['batch']}",
                    f"{row['samples_per_s']:.2f} samples/s"
                    if "samples_per_s" in row
                    else f"failed: {row.get('error')}",
                    f"{row['peak_rss_mb'] / 1024:.2f} GB" if "peak_rss_mb" in row else "—",
                )
            )
    samp = results.get("sampling")
    if samp:
        for row in samp.get("sd_step") or []:
            rows.append(
                (
                    f"inflated UNet step at SD-1.5 size (32² latents × 6 frames, batch 2), "
                    f"{row['precision']}",
                    f"{row['step_s']:.2f} s (a clip: authors' way {row['clip_authors_s']:.0f} s, "
                    f"ours {row['clip_ours_s']:.0f} s)"
                    + (
                        f"; diffusers' plain 2-D UNet on the same 12 frames "
                        f"{row['plain_2d_step_s']:.2f} s: inflated / plain "
                        f"{row['inflated_over_plain']:.2f}× (target ≤ 1.15×)"
                        if "plain_2d_step_s" in row
                        else ""
                    ),
                    f"{row['peak_rss_gib']:.2f} GiB",
                )
            )
        steps = {row["precision"]: row for row in samp.get("sd_step") or []}
        if {"fp32", "bf16 autocast"} <= set(steps):
            fp32, bf16 = steps["fp32"], steps["bf16 autocast"]
            plain = (
                f"; diffusers' plain 2-D UNet "
                f"{fp32['plain_2d_step_s'] / bf16['plain_2d_step_s']:.2f}×"
                if "plain_2d_step_s" in fp32 and "plain_2d_step_s" in bf16
                else ""
            )
            error = bf16.get("error_vs_fp32")
            checked = (
                f"; the noise prediction within relative L2 {error['relative_l2']:.4f} of fp32's"
                if error
                else ""
            )
            rows.append(
                (
                    "bf16 autocast / fp32, inflated UNet step at SD-1.5 size",
                    f"{fp32['step_s'] / bf16['step_s']:.2f}× (target ≥ 3×){plain}{checked}",
                    "—",
                )
            )
        tiny = samp.get("tiny_sampling")
        if tiny:
            rows.append(
                (
                    "sampling per clip, authors' way / ours (tiny model)",
                    f"{tiny['ratio_authors_over_ours']:.1f}× "
                    f"({tiny['authors_ddim200_two_calls_s']:.2f} s vs "
                    f"{tiny['ours_batched_s']:.2f} s, {tiny['ours_sampler']} "
                    f"{tiny['ours_steps']})",
                    "—",
                )
            )
            if "ratio_authors_over_ours_demo" in tiny:
                rows.append(
                    (
                        "sampling per clip, authors' way / ours as the demo samples (a start "
                        "video at the preset's strength; tiny model)",
                        f"{tiny['ratio_authors_over_ours_demo']:.1f}× "
                        f"({tiny['ours_demo_s']:.3f} s, {tiny['unet_calls']['ours_demo']} "
                        f"steps at strength {tiny['ours_demo_strength']})",
                        "—",
                    )
                )
    thr = results.get("threads")
    if thr:
        r = thr["ratios"]
        rows.append(
            (
                f"demo ({thr['preset']}) beside one busy thread / idle, threads chosen "
                "automatically",
                f"{r['auto_busy_over_idle']:.2f}× (target ≤ 2×; fixed at {thr['cpus']}: "
                f"{r['fixed_busy_over_idle']:.2f}×); idle, auto / fixed "
                f"{r['auto_over_fixed_idle']:.3f} (target ≤ 1)",
                "—",
            )
        )
    return rows


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "# mindvideo performance suite",
        "",
        f"{meta['machine']}; Python {meta['python']}; run {meta['date']}.",
        "",
        "| benchmark | result | peak memory |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in headline(results)),
        "",
    ]
    for name in SUITE:
        md = RESULTS / f"{name}.md"
        if name in results and md.is_file():
            lines += [md.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=RESULTS / "full_sim",
        help="full-scale simulated dataset for prepare_full (simulated there when missing)",
    )
    parser.add_argument("--only", default=",".join(SUITE), help="comma-separated benchmarks")
    args = parser.parse_args()
    chosen = [n for n in args.only.split(",") if n]
    unknown = sorted(set(chosen) - set(SUITE))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(SUITE)}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    # One torch thread where timings are per process: on a shared CPU more threads make them
    # erratic, and CPU seconds (sampling.py) would count the threads' spinning.
    extra = {
        "prepare_full": ["--data", str(args.data)],
        "detrend": [],
        "encoder": ["--threads", "1"],
        "sampling": ["--threads", "1", "--repeats", "2"],
        "threads": [],
        "simulate": [],
    }
    wall = {name: round(_run(name, extra[name]), 1) for name in chosen}
    results = {name: _load(name) for name in chosen}
    meta = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{__import__('os').cpu_count()} CPUs",
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": wall,
    }
    (RESULTS / "suite.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    text = markdown(results, meta)
    (RESULTS / "suite.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
