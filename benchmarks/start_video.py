"""Measurement: reconstructions started from a low-resolution video decoded from the fMRI.

On a finished demo run (``mindvideo demo --out RUN``), a plain ridge decoder maps each 4-TR
fMRI window to the 6 frames of its TR at 16 × 16 (the penalty chosen by leave-segments-out
cross-validation on the training split, :class:`mindvideo.data.ridge.RidgeDecoder`; the test
split is only predicted). Its test videos are then the start of the run's own pipeline
(``MindVideoPipeline(video=..., strength=s)``, SDEdit) with the run's windows, seeds, sampler and
guidance. Printed and written for every strength: pixel identification 50-way (with its shuffled
chance) and SSIM against the ground truth, beside the run's own reconstructions and the ridge
video alone.

Usage::

    python benchmarks/start_video.py --run RUN [--strengths 0.3,0.5,0.75]

Results go to ``benchmarks/results/start_video.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 16


def small_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., F, H, W, 3]`` → float ``[..., F·16·16·3]`` in 0..1, area-averaged."""
    from mindvideo.data.video import area_frames

    frames = np.asarray(frames)
    return area_frames(frames, SIZE).reshape(*frames.shape[:-4], -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished demo run directory")
    parser.add_argument("--strengths", default="0.3,0.5,0.75")
    args = parser.parse_args()

    from mindvideo.config import ReconstructConfig, load_config
    from mindvideo.data.datasets import FMRIWindowDataset
    from mindvideo.data.prepared import PreparedData
    from mindvideo.data.ridge import RidgeDecoder, window_features
    from mindvideo.evaluation.metrics import pixel_identification_samples
    from mindvideo.evaluation.pixel import clip_ssim
    from mindvideo.pipeline import MindVideoPipeline
    from mindvideo.pipeline.guidance import negative_fmri_from_prepared
    from mindvideo.pipeline.schedulers import sampler_for

    recon_dir = args.run / "reconstruct"
    cfg = load_config(ReconstructConfig, recon_dir / "config.yaml")
    prepared = PreparedData.open(cfg.data)
    index = json.loads((recon_dir / "index.json").read_text())
    windows = index["windows"]
    gt = np.load(recon_dir / "ground_truth.npy")
    frames = gt.shape[1]

    # The ridge decoder: fitted on the training split, predicting the test windows.
    x_train = window_features(prepared.fmri_train, cfg.window)
    y_train = np.stack([small_frames(seg) for seg in prepared.frames_train])
    groups = np.repeat(np.arange(x_train.shape[0]), x_train.shape[1])
    ridge = RidgeDecoder(folds=5).fit(
        x_train.reshape(-1, x_train.shape[-1]), y_train.reshape(-1, y_train.shape[-1]), groups
    )
    x_test = window_features(np.asarray(prepared.fmri_test), cfg.window)
    x = np.stack([x_test[w["segment"], w["tr"]] for w in windows])
    low = np.clip(ridge.predict(x), 0, 1).reshape(len(windows), frames, SIZE, SIZE, 3)
    low_u8 = (low * 255).round().astype(np.uint8)
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(low).permute(0, 1, 4, 2, 3).flatten(0, 1),
        size=gt.shape[2:4],
        mode="bilinear",
        align_corners=False,
    )
    upsampled_u8 = (
        (upsampled.unflatten(0, (len(windows), frames)).permute(0, 1, 3, 4, 2) * 255)
        .round()
        .clamp(0, 255)
        .byte()
        .numpy()
    )

    rows = []

    def score(name: str, clips: np.ndarray) -> None:
        pixel = pixel_identification_samples(clips, gt, [50], 100, 0)["pixel_50way"]
        ssim = clip_ssim(clips, gt, progress=False)
        rows.append(
            {
                "clips": name,
                "pixel_50way": float(pixel.per_sample.mean()),
                "pixel_50way_shuffled": float(pixel.shuffled),
                "ssim": float(ssim.mean()),
                "ssim_se": float(ssim.std(ddof=1) / np.sqrt(len(ssim))),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    score("the run's reconstructions", np.load(recon_dir / "reconstructions.npy"))
    score("the ridge video alone, upsampled", upsampled_u8)

    pipe = MindVideoPipeline.from_pretrained(cfg.checkpoint)
    pipe.scheduler = sampler_for(pipe.scheduler, cfg.scheduler)
    pipe.set_progress_bar_config(disable=True)
    enc = pipe.fmri_encoder.config
    pad, normalize = pipe.config.fmri_pad_mode, pipe.config.fmri_normalize
    dataset = FMRIWindowDataset(
        prepared,
        "test",
        window=cfg.window,
        patch_size=enc.patch_size,
        pad_mode=pad,
        normalize=normalize,
        with_captions=False,
    )
    negative = negative_fmri_from_prepared(
        prepared, cfg.negative, enc.window, enc.patch_size, pad, normalize
    )
    for strength in (float(s) for s in args.strengths.split(",")):
        clips = []
        for i in range(0, len(windows), cfg.batch_size):
            batch = windows[i : i + cfg.batch_size]
            fmri = np.stack([dataset.fmri_window(w["segment"], w["tr"]) for w in batch])
            clips.append(
                pipe(
                    torch.from_numpy(fmri),
                    negative_fmri=negative,
                    guidance_scale=cfg.guidance_scale,
                    num_inference_steps=cfg.num_inference_steps,
                    generator=[torch.Generator().manual_seed(w["seed"]) for w in batch],
                    video=low_u8[i : i + cfg.batch_size],
                    strength=strength,
                ).frames
            )
        score(f"started from the ridge video, strength {strength:g}", np.concatenate(clips))

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(args.run),
        "windows": len(windows),
        "ridge_median_alpha": float(np.median(ridge.alphas_)),
        "sampler": f"{cfg.scheduler or 'saved'}, {cfg.num_inference_steps} steps, "
        f"guidance {cfg.guidance_scale}",
        "rows": rows,
    }
    (RESULTS / "start_video.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| clips | pixel identification 50-way (shuffled) | SSIM ± SE |",
        "|---|---|---|",
        *(
            f"| {r['clips']} | {r['pixel_50way']:.3f} ({r['pixel_50way_shuffled']:.3f}) | "
            f"{r['ssim']:.3f} ± {r['ssim_se']:.3f} |"
            for r in rows
        ),
    ]
    (RESULTS / "start_video.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
