"""Training-step cost of the spatiotemporal fMRI encoder (paper 3.3): SDPA vs. plain attention.

One contrastive training step (eq. 3) of the encoder alone — forward of a batch of fMRI windows
``[B, w, V]`` to the pooled embedding, the CLIP loss against fixed random text and image
embeddings with the learnable temperature, backward, AdamW step — at two shapes:

- ``paper``: MinD-Video's encoder (ViT-L: depth 24, width 1024, 16 heads, MLP ratio 1.0;
  253.5 M parameters with the temporal attention and head), subject 1's 6,016 voxels (376
  patches), window w = 2, conditioning 77 × 768 (CLIP ViT-L/14), dropout 0.6;
- ``demo``: the ``demo`` preset (4 × 128, 4 heads), 1,024 voxels, w = 2, conditioning 77 × 768.

Each shape runs with attention through ``torch.nn.functional.scaled_dot_product_attention``
(``sdpa``, what training uses) and through the explicit ``softmax(QKᵀ/√d)·V`` path the encoder
keeps for recording attention maps (``plain``), in float32 and under bfloat16 autocast. Every
configuration runs in a fresh process: throughput = batch / median step time over the timed
steps (after one warm-up step); peak memory = that process's peak resident set size
(``ru_maxrss``) in total and above the resident size after building the model and its AdamW
state (that is: gradients, activations and workspace). FLOPs per step are counted once with
``torch.utils.flop_counter`` on the plain path (it does not count SDPA; the math is the same).

Writes ``benchmarks/results/encoder.{json,md}``.

Run:  python benchmarks/encoder.py [--shapes paper,demo] [--paper-batch 2] [--demo-batch 32]
          [--steps 3] [--paper-steps 2] [--precisions fp32,bf16] [--threads 1]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {
    "paper": dict(preset="paper", num_voxels=6016, window=2, cond_dim=768, dropout=0.6),
    "demo": dict(preset="demo", num_voxels=1024, window=2, cond_dim=768, dropout=0.6),
}


def _rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _plain_forward(self, x, return_attention=False):
    """Attention.forward through the explicit softmax(QKᵀ/√d)·V path, whatever is asked."""
    from mindvideo.encoder.layers import Attention

    out, weights = Attention.forward(self, x, return_attention=True)
    return out, (weights if return_attention else None)


def build(shape: dict, attention: str):
    from mindvideo.encoder import (
        LearnableTemperature,
        SpatiotemporalEncoder,
        mbm_demo,
        mbm_paper,
    )
    from mindvideo.encoder.layers import Attention
    from mindvideo.training.contrast import ContrastiveModel

    torch.manual_seed(0)
    factory = {"paper": mbm_paper, "demo": mbm_demo}[shape["preset"]]
    mbm = factory(shape["num_voxels"])
    encoder = SpatiotemporalEncoder.from_mbm(
        mbm, window=shape["window"], cond_dim=shape["cond_dim"], dropout=shape["dropout"]
    )
    del mbm
    if attention == "plain":
        for module in encoder.modules():
            if isinstance(module, Attention):
                module.forward = types.MethodType(_plain_forward, module)
    return ContrastiveModel(encoder, LearnableTemperature()).train()


def child(args: argparse.Namespace) -> None:
    """One configuration in this process; prints one JSON line."""
    from mindvideo.encoder import contrastive_loss
    from mindvideo.training import param_groups_weight_decay

    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    model = build(shape, args.attention)
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, None, 0.05), lr=2e-5, betas=(0.9, 0.95)
    )
    B, w, V, D = args.batch, shape["window"], shape["num_voxels"], shape["cond_dim"]
    generator = torch.Generator().manual_seed(0)
    fmri = torch.randn(B, w, V, generator=generator)
    text = torch.randn(B, D, generator=generator)
    image = torch.randn(B, D, generator=generator)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            emb, scale = model(fmri)
            loss = contrastive_loss(emb, text, image, scale, "both")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # the optimiser state exists before the baseline is taken (AdamW allocates it lazily)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rss_built = _rss_mb()
    step()  # warm-up
    flops = None
    if args.attention == "plain" and args.precision == "fp32":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            emb, scale = model(fmri)
            contrastive_loss(emb, text, image, scale, "both").backward()
        optimizer.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "shape": args.shape,
                "attention": args.attention,
                "precision": args.precision,
                "batch": B,
                "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "step_s": median,
                "step_s_min": min(times),
                "step_s_all": times,
                "samples_per_s": B / median,
                "peak_rss_mb": peak,
                "rss_after_build_mb": rss_built,
                "flops_per_step": flops,
            }
        )
    )


def run_child(shape: str, attention: str, precision: str, batch: int, steps: int, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--shape",
        shape,
        "--attention",
        attention,
        "--precision",
        precision,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--threads",
        str(args.threads),
    ]
    print(f"running {shape} {attention} {precision} batch {batch} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {
            "shape": shape,
            "attention": attention,
            "precision": precision,
            "batch": batch,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Spatiotemporal encoder: one contrastive training step",
        "",
        f"{meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); median of "
        f"{meta['steps']} (demo) / {meta['paper_steps']} (paper) steps after one warm-up step.",
        "",
        "| shape | params | batch | attention | precision | step (s), median | min | samples/s | "
        "peak RSS (MiB) | above model + AdamW state (MiB) | GFLOP/step | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    flops = {r["shape"]: r.get("flops_per_step") for r in rows if r.get("flops_per_step")}
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['shape']} | | {r['batch']} | {r['attention']} | {r['precision']} | "
                f"failed: {r['error']} | | | | | | |"
            )
            continue
        f = flops.get(r["shape"])
        lines.append(
            f"| {r['shape']} | {r['parameters_m']:.1f} M | {r['batch']} | {r['attention']} | "
            f"{r['precision']} | {r['step_s']:.3f} | {r['step_s_min']:.3f} | "
            f"{r['samples_per_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_after_build_mb']:.0f} | "
            f"{f / 1e9:.0f} | {f / 1e9 / r['step_s']:.0f} |"
            if f
            else f"| {r['shape']} | {r['parameters_m']:.1f} M | {r['batch']} | "
            f"{r['attention']} | {r['precision']} | {r['step_s']:.3f} | {r['step_s_min']:.3f} | "
            f"{r['samples_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb'] - r['rss_after_build_mb']:.0f} | | |"
        )
    lines += [
        "",
        "Samples/s = batch / median step. GFLOP/step is counted on the plain path in float32 "
        "(forward + backward of the encoder and loss; the optimiser step is not counted) and "
        "applies to every row of its shape; GFLOP/s uses the median step.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="paper,demo")
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--demo-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (demo)")
    parser.add_argument("--paper-steps", type=int, default=2, help="timed steps (paper)")
    # one thread by default: on a shared CPU, several threads per process make timings erratic
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16")
    # one configuration (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--attention", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    for shape in args.shapes.split(","):
        batch = args.paper_batch if shape == "paper" else args.demo_batch
        steps = args.paper_steps if shape == "paper" else args.steps
        for precision in args.precisions.split(","):
            for attention in ("plain", "sdpa"):
                rows.append(run_child(shape, attention, precision, batch, steps, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "steps": args.steps,
        "paper_steps": args.paper_steps,
        "shapes": {k: SHAPES[k] for k in args.shapes.split(",")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoder.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "encoder.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
