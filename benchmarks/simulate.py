"""Benchmark: `mindvideo simulate` with one render process and with several.

Builds the same simulated dataset (the ``demo`` preset by default) once per worker count, each
in its own temporary folder, and reports the wall time of each build, the speed-up over one
process, and whether every file is the same (the mp4s compared by their encoded stream, whose
container header holds a timestamp). Time it on an otherwise idle machine.

Usage::

    python benchmarks/simulate.py [--preset demo] [--workers 1,2]

Results go to ``benchmarks/results/simulate.{json,md}``; the exit code is 1 when the builds
differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file but ``config.yaml``; an mp4 by its encoded packets."""
    import av

    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == "config.yaml":
            continue
        if path.suffix == ".mp4":
            with av.open(str(path)) as container:
                data = b"".join(bytes(p) for p in container.demux(video=0) if p.size)
        else:
            data = path.read_bytes()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="simulate preset (tiny, demo, full)")
    parser.add_argument(
        "--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated process counts"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n]

    from mindvideo.config import simulate_preset
    from mindvideo.sim.simulate import simulate_wen2018

    cfg = simulate_preset(args.preset)
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            start = time.perf_counter()
            out = simulate_wen2018(cfg, Path(tmp) / f"workers{n}", workers=n)
            seconds = time.perf_counter() - start
            found = digests(out)
            reference = reference or found
            rows.append({"workers": n, "wall_s": round(seconds, 1), "same": found == reference})
    base = rows[0]["wall_s"]
    for row in rows:
        row["speedup"] = round(base / row["wall_s"], 2)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, {os.cpu_count()} CPUs",
        "preset": args.preset,
        "rows": rows,
        "passed": all(row["same"] for row in rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "simulate.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(
        [
            f"# simulate, `{args.preset}` preset, by render processes",
            "",
            f"{result['machine']}.",
            "",
            "| processes | wall | speed-up | the same dataset |",
            "|---|---|---|---|",
            *(
                f"| {r['workers']} | {r['wall_s']:.1f} s | {r['speedup']:.2f}× | "
                f"{'yes' if r['same'] else '**no**'} |"
                for r in rows
            ),
            "",
        ]
    )
    (RESULTS / "simulate.md").write_text(md)
    print(md)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
