"""Train every stand-in on a prepared simulated subject (the folder layout is in
:mod:`mindvideo.demo.standins`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mindvideo.data.labels import load_scene_labels
from mindvideo.data.prepared import PreparedData
from mindvideo.demo.standins import classifiers, clip, sd
from mindvideo.demo.standins.base import (
    STANDINS_VERSION,
    StandinData,
    StandinJob,
    StandinPaths,
    data_fingerprint,
    is_complete,
    json_default,
    read_marker,
    resolve_device,
    standin_preset,
    weights_digest,
)
from mindvideo.utils import atomic_write_text
from mindvideo.utils.errors import UserError
from mindvideo.utils.freshness import fingerprint
from mindvideo.utils.threads import fixed_threads

__all__ = ["MODELS", "README", "train_standins"]

logger = logging.getLogger(__name__)

MODELS = ("clip", "stable_diffusion", "image_classifier", "video_classifier")
"""The stand-ins, in training order: Stable Diffusion's text encoder is CLIP's text tower."""

README = """# Stand-in models (trained on the simulator's labels)

These folders are **small stand-ins** for the pretrained models of the paper, trained by
`mindvideo` in minutes on the *simulated* dataset, so that the CPU demo runs every stage with
the code a GPU user runs with the real models. Each is in exactly the real model's folder
format and loads with the same calls:

- `clip/` replaces openai/clip-vit-large-patch14 (config key `pretrained.clip`): trained with
  CLIP's loss on (frame, caption) pairs of the training segments.
- `stable_diffusion/` replaces runwayml/stable-diffusion-v1-5 (`pretrained.stable_diffusion`):
  the VAE trained on training frames, the UNet on their latents with their captions, the text
  encoder is `clip/`'s text tower.
- `image_classifier/` replaces google/vit-base-patch16-224 (`pretrained.image_classifier`):
  training frames → the simulator's {n_classes} scene classes; a ResNet, which loads with the
  same `AutoModelForImageClassification` call as the real ViT.
- `video_classifier/` replaces MCG-NJU/videomae-base-finetuned-kinetics
  (`pretrained.video_classifier`): training clips → {n_video} class × motion labels.

**The classifiers' labels are the simulator's scene classes (colour × shape, or the source of a
real scene) and motions, not ImageNet or Kinetics classes.** N-way identification scores
computed with them measure how well reconstructions keep the simulated scenes' class and
motion; they are not comparable with the paper's ImageNet/Kinetics numbers.

Preset `{preset}`, seed {seed}. Quality on the held-out test segments (`standins.json` has
all numbers and the training time of each model):

{quality}

To use the real models instead, set the config keys above to local folders of the real models.
"""


def _quality_lines(summary: Mapping[str, Any]) -> str:
    m = summary["models"]
    lines = []
    if "clip" in m:
        q = m["clip"]["metrics"]
        lines.append(
            f"- CLIP: test frame → caption of its class, top-1 {q['retrieval_class_top1']:.3f} "
            f"over {q['retrieval_class_n']} classes (chance {q['retrieval_class_chance']:.3f})"
        )
    if "stable_diffusion" in m:
        q = m["stable_diffusion"]["metrics"]
        lines.append(
            f"- VAE: test PSNR {q['vae_psnr_db']:.1f} dB; UNet: probe denoising loss "
            f"{q['unet_probe_loss_before']:.3f} → {q['unet_probe_loss_after']:.3f}; "
            f"text-to-image colour match {q['t2i_colour_accuracy']:.2f} "
            f"(chance {q['t2i_colour_chance']:.2f})"
        )
    for name in ("image_classifier", "video_classifier"):
        if name in m:
            q = m[name]["metrics"]
            lines.append(
                f"- {name.replace('_', ' ')}: test top-1 {q['test_top1']:.3f} "
                f"(chance {q['chance_top1']:.4f}), top-5 {q['test_top5']:.3f} "
                f"(chance {q['chance_top5']:.4f}), {q['n_classes']} labels"
            )
    return "\n".join(lines)


def train_standins(
    prepared_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    scenes_json: str | os.PathLike | None = None,
    preset: str = "demo",
    seed: int = 0,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    models: Sequence[str] | None = None,
) -> StandinPaths:
    """Train every stand-in on a prepared simulated subject; returns where each one is.

    Args:
        prepared_dir: a folder written by ``mindvideo prepare`` from a simulated dataset.
        out_dir: where the stand-ins go (the layout is in the module docstring).
        scenes_json: the simulator's ``scenes.json`` (the ground-truth labels); default: found
            through the prepared manifest's dataset root.
        preset: ``demo`` (the CPU demo, a few minutes) or ``tiny`` (tests, well under a minute).
        seed: the same seed gives the same models (on the same device and thread count).
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        num_threads: torch intra-op threads while training, left alone by the automatic choice
            (``None``: the process's count; :mod:`mindvideo.utils.threads`).
        models: train only these (names from :data:`MODELS`; ``None``: all). Stable Diffusion
            needs a finished CLIP. ``standins.json`` and the README are written once all four
            are finished, so separate processes can train the models side by side.

    A folder whose ``standin.json`` records the same preset, seed, prepared data and the model's
    own sizes and budgets is reused; only the missing or outdated ones are trained.
    """
    spec = standin_preset(preset)
    wanted = MODELS if models is None else tuple(models)
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        raise ValueError(f"no stand-in called {unknown[0]!r}; choose from {', '.join(MODELS)}")
    prepared = PreparedData.open(prepared_dir)
    paths = StandinPaths.under(out_dir)
    dev = resolve_device(device)
    key = {
        "version": STANDINS_VERSION,
        "preset": preset,
        "seed": int(seed),
        "data": data_fingerprint(prepared),
    }
    steps = [
        ("clip", paths.clip, clip.train_clip_standin),
        ("stable_diffusion", paths.stable_diffusion, sd.train_sd_standin),
        ("image_classifier", paths.image_classifier, classifiers.train_image_standin),
        ("video_classifier", paths.video_classifier, classifiers.train_video_standin),
    ]
    assert tuple(name for name, _, _ in steps) == MODELS

    # Each model's own sizes and budgets: a stand-in trained with other ones is retrained.
    shared = (spec.frames_per_tr, spec.eval_frames)
    specs = {
        "clip": (spec.clip,),
        "stable_diffusion": (spec.vae, spec.unet),
        "image_classifier": (spec.image_classifier,),
        "video_classifier": (spec.video_classifier,),
    }

    def step_key(name: str) -> dict[str, Any]:
        own = {**key, "spec": fingerprint([*map(dataclasses.asdict, specs[name]), *shared])}
        # Stable Diffusion's text encoder is CLIP's text tower: a new CLIP makes it stale.
        if name == "stable_diffusion":
            return {**own, "clip": weights_digest(paths.clip)}
        return own

    summary_ok = paths.summary.is_file() and (paths.root / "README.md").is_file()
    if summary_ok and all(is_complete(folder, step_key(name)) for name, folder, _ in steps):
        logger.info("All stand-ins in %s are up to date; reusing them.", paths.root)
        return paths
    labels = load_scene_labels(prepared, scenes_json)
    paths.root.mkdir(parents=True, exist_ok=True)
    data = None
    with fixed_threads(num_threads):
        for name, folder, train in steps:
            if name not in wanted:
                continue
            if name == "stable_diffusion" and not is_complete(paths.clip, step_key("clip")):
                raise UserError(
                    f"The Stable Diffusion stand-in needs a finished CLIP stand-in in "
                    f"{paths.clip}: train the CLIP stand-in first."
                )
            if is_complete(folder, step_key(name)):
                logger.info("Reusing the %s stand-in in %s.", name, folder)
                continue
            paths.summary.unlink(missing_ok=True)  # stale until every model is finished again
            if data is None:
                data = StandinData.build(prepared, labels, spec)
            start = time.perf_counter()
            logger.info("Training the %s stand-in (preset %s) ...", name, preset)
            train(
                StandinJob(
                    data=data,
                    folder=folder,
                    spec=spec,
                    key=step_key(name),
                    seed=seed,
                    device=dev,
                    log_dir=paths.root / "logs" / name,
                    paths=paths,
                )
            )
            logger.info("%s stand-in done in %.1f s.", name, time.perf_counter() - start)
    if not all(is_complete(folder, step_key(name)) for name, folder, _ in steps):
        return paths  # the summary waits for the others (trained by another call)
    summary = {
        "what": "stand-ins trained on the simulator's labels; not the paper's pretrained models",
        "preset": preset,
        "seed": int(seed),
        "prepared": str(prepared.root),
        "pretrained": paths.pretrained,
        "models": {name: read_marker(folder) for name, folder, _ in steps},
    }
    atomic_write_text(paths.summary, json.dumps(summary, indent=2, default=json_default) + "\n")
    readme = README.format(
        n_classes=len(labels.classes),
        n_video=len(labels.video_labels),
        preset=preset,
        seed=seed,
        quality=_quality_lines(summary),
    )
    atomic_write_text(paths.root / "README.md", readme)
    return paths
