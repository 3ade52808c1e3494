"""Sampling cost of MinD-Video reconstruction (paper B "Inference"): the authors' way vs ours.

Two measurements, written to ``benchmarks/results/sampling.{json,md}``:

1. **Cost per clip on a tiny model** (random weights: the cost does not depend on them). The
   authors' way: DDIM, 200 steps, the positive and the negative condition evaluated by two
   separate UNet calls per step (400 calls). Ours: the demo preset's sampler and step count
   (``configs/demo/reconstruct.yaml``), both branches in ONE batched UNet call per step. Both
   include encoding the fMRI and decoding the frames. The intermediate "DDIM 200, batched"
   separates the gain from batching and from fewer steps. Last, ours **as the demo samples**:
   the same sampler started from a low-resolution video (the low-level decoder's output,
   VAE-encoded) at the preset's ``strength`` and guidance, so only that fraction of the steps
   runs — whether its clips score at least as well as the authors' way is measured on a demo
   run (docs/pipeline.md, "Samplers and step counts").
2. **One denoising step at Stable Diffusion 1.5 size**: the inflated UNet
   (``UNet2DConditionModel(cross_attention_dim=768)`` inflated by ``VideoUNet``, random weights)
   on 256² videos → 32² latents, 6 frames, batch 2 (the two guidance branches), in float32 and
   under bfloat16 autocast. Each precision runs in a fresh process; peak memory is that process's
   peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), reported in total and
   above the resident size right after building the model (activations and workspace).

Run:  python benchmarks/sampling.py [--threads N] [--skip-sd]
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# bf16 autocast's UNet noise prediction may differ from float32's by this relative L2 norm:
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.002 per value), accumulated over the
# UNet's ~100 layers.
BF16_TOLERANCE = 0.02

# The tiny components of the pipeline tests (tests/helpers/pipeline.py), repeated here so the
# benchmark does not import test code.
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
TINY_VAE = dict(
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def tiny_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler

    from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
    from mindvideo.generator import VideoUNet
    from mindvideo.pipeline import MindVideoPipeline

    torch.manual_seed(0)
    pipe = MindVideoPipeline(
        vae=AutoencoderKL(**TINY_VAE).eval(),
        unet=VideoUNet(**TINY_UNET).eval(),
        fmri_encoder=SpatiotemporalEncoder.from_mbm(mbm_tiny(64), window=2, cond_dim=32).eval(),
        scheduler=DDIMScheduler(**SD_SCHEDULE),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def authors_way(pipe, fmri, negative, steps: int = 200, scale: float = 12.5) -> None:
    """DDIM, two UNet calls per step (positive and negative separately), then decode."""
    from mindvideo.pipeline import adversarial_guidance, make_scheduler

    scheduler = make_scheduler("ddim", pipe.scheduler.config)
    condition = pipe.encode_fmri(fmri)[:, 0]
    negative = pipe.encode_fmri(negative)[:, 0]
    scheduler.set_timesteps(steps)
    latents = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        noise_pos = pipe.unet(model_input, t, condition).sample
        noise_neg = pipe.unet(model_input, t, negative).sample
        noise = adversarial_guidance(noise_pos, noise_neg, scale)
        latents = scheduler.step(noise, t, latents).prev_sample
    pipe.to_uint8(pipe.decode_latents(latents))


def ours(pipe, fmri, negative, scheduler: str, steps: int, **start) -> None:
    """Batched guidance; ``start``: ``video``, ``strength`` and ``guidance_scale`` of the demo's
    low-level start (none: from noise at the pipeline's default guidance)."""
    from mindvideo.pipeline import make_scheduler

    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe(
        fmri,
        negative_fmri=negative,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        **start,
    )


def timed(fn, repeats: int) -> float:
    """Best CPU time (seconds) of ``repeats`` runs after a warm-up.

    CPU time of this process (``time.process_time``) rather than wall time: on a machine shared
    with other jobs it does not count the time the process waited for a core. With one torch
    thread it is the wall time the run would take on an idle core; with more threads it is the
    sum over threads. The best wall time is kept in ``timed.wall`` for reference.
    """
    fn()  # warm-up
    best, best_wall = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_wall = time.process_time(), time.perf_counter()
        fn()
        best = min(best, time.process_time() - start)
        best_wall = min(best_wall, time.perf_counter() - start_wall)
    timed.wall = best_wall
    return best


def demo_recipe() -> Any:
    """The demo preset's reconstruct recipe: ours."""
    from mindvideo.config import reconstruct_preset

    return reconstruct_preset("demo")


def demo_sampler() -> tuple[str, int]:
    """The sampler and step count of the demo preset's reconstruct recipe."""
    cfg = demo_recipe()
    return cfg.scheduler, cfg.num_inference_steps


def demo_steps_run() -> int:
    """The denoising steps the demo runs from its start video: ``int(steps × strength)``, as
    diffusers' video-to-video pipelines count them."""
    from mindvideo.pipeline import steps_from_video

    cfg = demo_recipe()
    return steps_from_video(cfg.num_inference_steps, cfg.strength)


def demo_start() -> dict:
    """The demo's low-level start: its strength and guidance, and a 16 × 16 start video of the
    clip's 6 frames (the low-level decoder's size; its content does not change the cost)."""
    cfg = demo_recipe()
    g = torch.Generator().manual_seed(2)
    video = torch.randint(0, 256, (1, 6, 16, 16, 3), generator=g, dtype=torch.uint8).numpy()
    return {"video": video, "strength": cfg.strength, "guidance_scale": cfg.guidance_scale}


def tiny_sampling(repeats: int) -> dict:
    pipe = tiny_pipeline()
    sampler, steps = demo_sampler()
    g = torch.Generator().manual_seed(1)
    fmri, negative = torch.randn(1, 2, 64, generator=g), torch.randn(1, 2, 64, generator=g)
    authors = timed(lambda: authors_way(pipe, fmri, negative), repeats)
    wall = {"authors": timed.wall}
    ddim_batched = timed(lambda: ours(pipe, fmri, negative, "ddim", 200), repeats)
    wall["ddim200_batched"] = timed.wall
    mine = timed(lambda: ours(pipe, fmri, negative, sampler, steps), repeats)
    wall["ours"] = timed.wall
    start = demo_start()
    demo = timed(lambda: ours(pipe, fmri, negative, sampler, steps, **start), repeats)
    wall["ours_demo"] = timed.wall
    run_steps = demo_steps_run()
    return {
        "time": "best CPU seconds of the process (time.process_time)",
        "wall_s": wall,
        "clip": "1 fMRI window -> 6 frames of 16x16 (latents 8x8), tiny model",
        "authors_ddim200_two_calls_s": authors,
        "ddim200_batched_s": ddim_batched,
        "ours_sampler": sampler,
        "ours_steps": steps,
        "ours_batched_s": mine,
        "ratio_authors_over_ours": authors / mine,
        "ratio_from_batching_alone": authors / ddim_batched,
        "ours_demo_strength": start["strength"],
        "ours_demo_guidance": start["guidance_scale"],
        "ours_demo_s": demo,
        "ratio_authors_over_ours_demo": authors / demo,
        "unet_calls": {
            "authors": 400,
            "ddim200_batched": 200,
            "ours": steps,
            "ours_demo": run_steps,
        },
    }


def sd_step_worker(precision: str, repeats: int) -> dict:
    """One denoising step of the SD-1.5-size inflated UNet (run in a fresh process)."""
    from mindvideo.generator import VideoUNet

    torch.manual_seed(0)
    build = time.perf_counter()
    unet = VideoUNet(cross_attention_dim=768, sample_size=32).eval()
    build = time.perf_counter() - build
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 6, 32, 32, generator=g)  # [c̄; c] × 6 frames, 256² → 32²
    cond = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor(500)

    def step(batch: int, bf16: bool = precision == "bf16") -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return unet(latents[:batch], t, cond[:batch]).sample.float()

    seconds = timed(lambda: step(2), repeats)
    wall = timed.wall
    single = timed(lambda: step(1), repeats)  # one branch: the authors' way calls this twice
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    error = None
    if precision == "bf16":  # the noise prediction against float32's, untimed
        out, ref = step(2), step(2, bf16=False)
        error = {
            "relative_l2": float((out - ref).norm() / ref.norm()),
            "max_abs": float((out - ref).abs().max()),
            "reference_std": float(ref.std()),
        }
    plain = plain_unet_step(precision, repeats)  # after the peak: its own model is not counted
    return {
        "precision": "bf16 autocast" if precision == "bf16" else "fp32",
        "time": "best CPU seconds of the process (time.process_time)",
        "step_s": seconds,
        "step_wall_s": wall,
        "step_batch1_s": single,
        "clip_authors_s": 200 * 2 * single,  # DDIM 200, two calls per step (UNet only)
        "clip_ours_s": demo_sampler()[1] * seconds,  # the demo's steps, one batched call each
        "clip_ours_demo_s": demo_steps_run() * seconds,  # from the low-level start video
        "plain_2d_step_s": plain,  # diffusers' UNet on the same 12 frames, one call
        "inflated_over_plain": seconds / plain,
        "error_vs_fp32": error,  # bf16: relative L2 and max |difference| of the noise prediction
        "parameters": sum(p.numel() for p in unet.parameters()),
        "build_s": build,
        "peak_rss_gib": rss_peak / 2**20,
        "peak_above_model_gib": (rss_peak - rss_model) / 2**20,
    }


def plain_unet_step(precision: str, repeats: int) -> float:
    """Best CPU seconds of one step of diffusers' plain 2-D SD-1.5 UNet on the same frames: the
    2 × 6 frames as a batch of 12 images, 77 condition tokens each (the inflated UNet's overhead
    is its temporal layers and the sparse-causal attention's doubled keys)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=32).eval()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(12, 4, 32, 32, generator=g)
    cond = torch.randn(12, 77, 768, generator=g)
    t = torch.tensor(500)

    def step():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            unet(latents, t, cond)

    return timed(step, repeats)


def sd_step(precision: str, repeats: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", precision, "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _tiny_table(t: dict) -> list[str]:
    return [
        "",
        "## Cost per clip (tiny model, 6 frames)",
        "",
        "| sampler | UNet calls | CPU seconds per clip |",
        "|---|---|---|",
        f"| authors: DDIM 200, two calls per step | 400 | {t['authors_ddim200_two_calls_s']:.2f} |",
        f"| DDIM 200, batched guidance | 200 | {t['ddim200_batched_s']:.2f} |",
        f"| ours: {t['ours_sampler']} {t['ours_steps']}, batched guidance | {t['ours_steps']} | "
        f"{t['ours_batched_s']:.2f} |",
        f"| ours as the demo samples: the same from a start video, strength "
        f"{t['ours_demo_strength']}, guidance {t['ours_demo_guidance']} | "
        f"{t['unet_calls']['ours_demo']} | {t['ours_demo_s']:.2f} |",
        "",
        f"Authors' way / ours: **{t['ratio_authors_over_ours']:.1f}x** from noise, "
        f"**{t['ratio_authors_over_ours_demo']:.1f}x** as the demo samples; batching alone: "
        f"{t['ratio_from_batching_alone']:.2f}x.",
    ]


def _sd_table(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## One denoising step, SD-1.5-size inflated UNet (batch 2 x 6 frames, 32² latents)",
        "",
        "| precision | CPU s / step (batch 2) | CPU s / step (batch 1) | peak RSS (GiB) | "
        "above the model (GiB) | UNet s / clip, authors | UNet s / clip, ours | "
        "UNet s / clip, ours as the demo samples | plain 2-D UNet, same 12 frames | "
        "inflated / plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['step_s']:.2f} | {r['step_batch1_s']:.2f} | "
            f"{r['peak_rss_gib']:.2f} | {r['peak_above_model_gib']:.2f} | "
            f"{r['clip_authors_s']:.0f} | {r['clip_ours_s']:.0f} | "
            f"{r.get('clip_ours_demo_s', float('nan')):.0f} | "
            f"{r.get('plain_2d_step_s', float('nan')):.2f} | "
            f"{r.get('inflated_over_plain', float('nan')):.2f} |"
        )
    if len(rows) == 2:
        fp32, bf16 = rows
        lines += [
            "",
            f"bf16 autocast / fp32 per step: inflated UNet "
            f"**{fp32['step_s'] / bf16['step_s']:.2f}x**"
            + (
                f", plain 2-D UNet {fp32['plain_2d_step_s'] / bf16['plain_2d_step_s']:.2f}x."
                if "plain_2d_step_s" in fp32 and "plain_2d_step_s" in bf16
                else "."
            ),
        ]
        error = bf16.get("error_vs_fp32")
        if error:
            verdict = "within" if error["relative_l2"] <= BF16_TOLERANCE else "OUTSIDE"
            lines.append(
                f"bf16's noise prediction against fp32's: relative L2 {error['relative_l2']:.4f} "
                f"({verdict} the tolerance {BF16_TOLERANCE}), max |difference| "
                f"{error['max_abs']:.4f} (the prediction's std {error['reference_std']:.3f})."
            )
    return [
        *lines,
        "",
        f"{rows[0]['parameters']:,} parameters; peak memory = ru_maxrss of a fresh process per "
        "row; times are CPU seconds (time.process_time), which equal wall seconds on an idle "
        "machine with one torch thread. Per clip: authors = 200 steps x 2 calls at batch 1, "
        f"ours = {demo_sampler()[1]} steps x 1 call at batch 2, as the demo samples "
        f"{demo_steps_run()} of them from its start video (UNet time only, projected from the "
        "step times).",
    ]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Sampling benchmark",
        "",
        f"CPU: {m['cpu']}, torch threads: {m['threads']}, torch {m['torch']}.",
    ]
    if results["tiny_sampling"]:
        lines += _tiny_table(results["tiny_sampling"])
    if results["sd_step"]:
        lines += _sd_table(results["sd_step"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best is kept")
    parser.add_argument("--skip-sd", action="store_true", help="skip the SD-size UNet step")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny-model sampling")
    parser.add_argument("--worker", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(sd_step_worker(args.worker, args.repeats)))
        return

    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "tiny_sampling": None if args.skip_tiny else tiny_sampling(args.repeats),
        "sd_step": []
        if args.skip_sd
        else [sd_step(p, max(args.repeats, 2), args.threads) for p in ("fp32", "bf16")],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampling.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "sampling.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
