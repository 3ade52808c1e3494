"""Stage 4, video tuning: the inflated Stable Diffusion trained on the training videos (3.4, B).

Paper B, "Training of Augmented Stable Diffusion": the Stable Diffusion UNet, augmented with
temporal attention, is trained on the target dataset's training videos (3 FPS, 256 × 256) with
their captions; only the self-attention (``attn1``), cross-attention (``attn2``) and temporal
attention (``attn_temp``) are updated (lr 2e-5, batch 14, 800 steps).

Here: the UNet of the Stable Diffusion folder is inflated (:meth:`VideoUNet.from_pretrained_2d`);
each training clip (the ``frames`` frames shown during one TR) is conditioned on one caption
(:func:`~mindvideo.training.diffusion.clip_caption`) through the frozen CLIP text encoder; the
frozen VAE's latents and the text embeddings are cached once
(:mod:`mindvideo.training.diffusion`); the shared engine trains with the denoising loss.

Output folder::

    OUT/
      unet/          the tuned VideoUNet, light: config.json, trained.safetensors (the trained
                     attention and the temporal layers only) and base.json
      base.json      the Stable Diffusion folder the VAE, text encoder and tokenizer are read
                     from (by relative path first, then absolute): they are left unchanged
      scheduler/     the Stable Diffusion scheduler config, unchanged
      config.yaml    the resolved configuration
      cache/         latents_mean.npy, latents_std.npy, latents.json, text_embeddings.npy, text.json
      checkpoints/   resumable training state; logs/metrics.jsonl

With its base, the folder is a complete text-to-video generator in Stable Diffusion's folder
layout (:mod:`mindvideo.utils.base_folder`); ``mindvideo cotrain --generator OUT`` reads it, and
``mindvideo export`` writes a standalone copy (``unet/`` in full, ``vae/``, ``text_encoder/``,
``tokenizer/``). A hub id as the base (no local folder) gives a standalone folder directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mindvideo.config import TrainConfig, TuneVideoConfig, save_config
from mindvideo.generator import VideoUNet, trainable_parameters, trained_keys
from mindvideo.training.checkpoints import CHECKPOINTS_DIR, list_checkpoints
from mindvideo.training.diffusion import (
    CACHE_DIR,
    DenoisingProbe,
    LatentCache,
    TextEmbeddingCache,
    VideoDenoiser,
    build_latent_cache,
    build_text_cache,
    check_model_folder,
    clip_caption,
    latent_loss_fn,
    load_noise_scheduler,
    probe_eval_fn,
)
from mindvideo.training.engine import Trainer, check_engine_config, reset_accelerate_state
from mindvideo.utils import UserError, atomic_dir, atomic_write_text
from mindvideo.utils.base_folder import write_base

__all__ = [
    "SD_SUBFOLDERS",
    "ClipTextDataset",
    "StableDiffusionParts",
    "check_fresh_output",
    "check_generator_size",
    "check_tune_video_config",
    "load_stable_diffusion",
    "open_captioned_data",
    "record_trained_size",
    "tune_video",
]

logger = logging.getLogger(__name__)

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: The parts video tuning leaves as they were: a tune-video folder reads them from its base.
FROZEN_PARTS = ("vae", "text_encoder", "tokenizer")
"""The parts of a Stable Diffusion 1.5 folder video tuning reads (``feature_extractor/`` and
``safety_checker/`` are not needed)."""


@dataclass
class StableDiffusionParts:
    """What video tuning takes from a Stable Diffusion folder.

    ``unet``: the inflated :class:`VideoUNet`; ``vae``, ``text_encoder``, ``tokenizer``: as
    stored; ``noise_scheduler``: a ``DDPMScheduler`` with the folder's noise schedule;
    ``scheduler_config``: the folder's ``scheduler_config.json`` as stored.
    """

    unet: VideoUNet
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    scheduler_config: dict[str, Any]


def load_stable_diffusion(
    path: str | os.PathLike, empty_weights: bool = False
) -> StableDiffusionParts:
    """Load a Stable Diffusion 1.5 folder (``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``; or a hub id when online), the UNet inflated for video.

    ``empty_weights``: the models are built from their configs on the meta device (a dry run).
    """
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    check_model_folder(
        path,
        SD_SUBFOLDERS,
        "The Stable Diffusion folder",
        "set pretrained.stable_diffusion (--stable-diffusion) to a local copy of "
        "stable-diffusion-v1-5 with unet/, vae/, text_encoder/, tokenizer/ and scheduler/.",
    )
    path = str(path)
    if empty_weights:
        from mindvideo.utils.dry_run import empty_model

        unet = empty_model(VideoUNet, path, "unet")
        vae = empty_model(AutoencoderKL, path, "vae")
        text_encoder = empty_model(CLIPTextModel, path, "text_encoder")
    else:
        unet = VideoUNet.from_pretrained_2d(path, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler_config = dict(DDPMScheduler.load_config(path, subfolder="scheduler"))
    noise_scheduler = load_noise_scheduler(path)
    for module in (vae, text_encoder):
        module.requires_grad_(False).eval()
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise UserError(
            f"In {path}, the text encoder's hidden_size ({text_encoder.config.hidden_size}) "
            f"differs from the UNet's cross_attention_dim ({unet.config.cross_attention_dim}); "
            "use a Stable Diffusion folder whose parts belong together."
        )
    return StableDiffusionParts(
        unet, vae, text_encoder, tokenizer, noise_scheduler, scheduler_config
    )


def check_generator_size(size: int, unet: Any, vae: Any, key: str = "size") -> int:
    """``size`` must give latents the UNet can halve down to its lowest resolution; returns the
    latent size (``size`` / the VAE scale factor)."""
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
    if size < multiple or size % multiple:
        raise UserError(
            f"Config key {key!r} is {size}; frames must be a positive multiple of {multiple} "
            f"pixels for this VAE and UNet (e.g. 256 for Stable Diffusion 1.5)."
        )
    return size // vae_scale


def check_fresh_output(out: Path, resume: str | os.PathLike | None) -> None:
    """A new run (no ``resume``) must not start in a folder holding an earlier run's checkpoints
    — checked before ``config.yaml`` is written, so the earlier run's configuration survives."""
    if resume is None and list_checkpoints(out):
        raise UserError(
            f"{out / CHECKPOINTS_DIR} already holds checkpoints of an earlier run; pass --resume "
            "latest to continue it, or use a new output directory."
        )


def record_trained_size(unet: Any, latent_size: int) -> None:
    """Set the UNet's ``sample_size`` to the latent size it was trained at, so pipelines default
    to that resolution (Stable Diffusion's 64 means 512², the paper trains at 256²)."""
    if unet.config.sample_size != latent_size:
        logger.info(
            "unet sample_size %s → %d (the trained resolution)",
            unet.config.sample_size,
            latent_size,
        )
        unet.register_to_config(sample_size=latent_size)


class ClipTextDataset(Dataset):
    """Video tuning's samples: clip ``n``'s cached VAE posterior and its caption's embedding.

    Item: ``latents_mean``, ``latents_std`` float32 ``[C, F, h, w]``;
    ``encoder_hidden_states`` float32 ``[77, d]``; ``index`` int. Deterministic (the random
    latent sample is drawn in the loss from the global RNG, which checkpoints restore).
    """

    def __init__(
        self, latents: LatentCache, text: TextEmbeddingCache, caption_rows: np.ndarray
    ) -> None:
        if len(caption_rows) != len(latents):
            raise ValueError("one caption row per cached clip is needed")
        self.latents = latents
        self.text = text
        self.caption_rows = np.asarray(caption_rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mean, std = self.latents.item(index)
        row = int(self.caption_rows[index])
        return {
            "latents_mean": mean,
            "latents_std": std,
            "encoder_hidden_states": torch.from_numpy(np.array(self.text.embeddings[row])),
            "index": index,
        }


def check_tune_video_config(cfg: TuneVideoConfig) -> None:
    """Raise a :class:`UserError` naming the key for settings the stage cannot run with (the
    training keys are checked by :func:`~mindvideo.training.engine.check_engine_config`)."""
    if not cfg.data:
        raise UserError(
            "tune-video needs the prepared data: pass --data DIR or set data in the config."
        )
    if not cfg.pretrained.stable_diffusion:
        raise UserError(
            "tune-video needs Stable Diffusion 1.5: pass --stable-diffusion DIR or set "
            "pretrained.stable_diffusion in the config."
        )
    if cfg.frames < 1:
        raise UserError(f"Config key 'frames' must be at least 1, not {cfg.frames}.")


def open_captioned_data(data: str | os.PathLike) -> tuple[Any, list[list[list[str]]]]:
    """The prepared subject at ``data`` and its training captions ``[S][T][F]`` (required)."""
    from mindvideo.data.prepared import PreparedData

    prepared = PreparedData.open(data)
    captions = prepared.captions("train")
    if captions is None:
        raise UserError(
            f"The prepared data {data} has no captions_train.json; video tuning conditions "
            "on captions: run `mindvideo prepare` with captions first."
        )
    return prepared, captions


def _save_scheduler_config(config: dict[str, Any], folder: Path) -> None:
    with atomic_dir(folder) as tmp:
        atomic_write_text(tmp / "scheduler_config.json", json.dumps(config, indent=2) + "\n")


def train_video_denoiser(
    model: VideoDenoiser,
    dataset: Dataset,
    latents: LatentCache,
    params: list[torch.nn.Parameter],
    train: TrainConfig,
    out: Path,
    save_fn: Callable[[torch.nn.Module, Path], None],
    resume: str | os.PathLike | None,
    project_name: str,
    state: Any,
) -> None:
    """Train ``model`` with the latent denoising loss, its held-out probe loss logged.

    The probe's loss before training is logged on a fresh run; ``state`` is accelerate's
    ``PartialState``. The video-tuning and co-training stages share this.
    """
    probe = DenoisingProbe.from_dataset(
        dataset,
        latents.scaling_factor,
        latents.shift_factor,
        seed=train.seed,
        num_train_timesteps=model.num_train_timesteps,
    )
    if state.is_main_process and resume is None:
        model.to(state.device).eval()
        logger.info("probe denoising loss before training: %.5f", probe.loss(model))
        model.train()
    trainer = Trainer(
        model,
        dataset,
        latent_loss_fn(latents),
        train,
        out,
        trainable_params=params,
        eval_fn=probe_eval_fn(probe, train.batch_size),
        save_fn=save_fn,
        project_name=project_name,
    )
    trainer.train(resume=resume)


def tune_video(
    cfg: TuneVideoConfig, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None
) -> Path:
    """Run video tuning (stage 4); returns the output folder (see the module docstring).

    ``resume``: ``None`` (a fresh run), ``"latest"`` or a ``checkpoints/step_N`` folder. The
    caches in ``OUT/cache`` are reused when they match the data and models.
    """
    from accelerate import PartialState

    check_tune_video_config(cfg)
    check_engine_config(cfg.train)
    out = Path(out_dir)
    prepared, captions = open_captioned_data(cfg.data)  # type: ignore[arg-type]
    check_fresh_output(out, resume)

    state = PartialState(cpu=cfg.train.cpu or not torch.cuda.is_available())
    try:
        sd = load_stable_diffusion(cfg.pretrained.stable_diffusion)
        sd.unet.set_cross_frame_norm(cfg.cross_frame_norm)
        latent_size = check_generator_size(cfg.size, sd.unet, sd.vae)
        # Written once every input has been checked: a refused run leaves no output folder.
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        clip_captions = [clip_caption(tr[: cfg.frames]) for seg in captions for tr in seg]

        # The main process encodes; the others wait, then find the caches complete.
        with state.main_process_first():
            latents = build_latent_cache(
                sd.vae,
                prepared,
                out / CACHE_DIR,
                size=cfg.size,
                frames=cfg.frames,
                device=state.device,
            )
            text = build_text_cache(
                sd.text_encoder,
                sd.tokenizer,
                clip_captions,
                out / CACHE_DIR,
                device=state.device,
            )
        state.wait_for_everyone()
        sd.vae.to("cpu")
        sd.text_encoder.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        dataset = ClipTextDataset(latents, text, np.array([text.index[c] for c in clip_captions]))
        model = VideoDenoiser(sd.unet, sd.noise_scheduler)
        params = trainable_parameters(sd.unet, cfg.trainable)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()

        base = Path(str(cfg.pretrained.stable_diffusion))

        def save(trained: torch.nn.Module, folder: Path) -> None:
            record_trained_size(trained.unet, latent_size)
            _save_scheduler_config(sd.scheduler_config, folder / "scheduler")
            if base.is_dir():
                # Only what was trained (and the new temporal layers), plus a reference to the
                # Stable Diffusion folder for the frozen VAE, text encoder and tokenizer.
                keys = trained_keys(trained.unet, cfg.trainable)
                with atomic_dir(folder / "unet") as tmp:
                    trained.unet.save_trained(tmp, base, keys)
                write_base(folder, base, list(FROZEN_PARTS))
                for name in FROZEN_PARTS:  # copies an earlier standalone save left behind
                    shutil.rmtree(folder / name, ignore_errors=True)
                logger.info(
                    "wrote the tuned video generator to %s (%d trained tensors; the rest read "
                    "from %s)",
                    folder,
                    len(keys),
                    base,
                )
                return
            with atomic_dir(folder / "unet") as tmp:  # a hub id: a standalone folder
                trained.unet.save_pretrained(tmp)
            # The tokenizer as loaded: one that has encoded captions saves its last padding
            # and truncation settings too, so the folder would depend on the caption cache.
            tokenizer = type(sd.tokenizer).from_pretrained(
                str(cfg.pretrained.stable_diffusion), subfolder="tokenizer"
            )
            for name, part in (
                ("vae", sd.vae),
                ("text_encoder", sd.text_encoder),
                ("tokenizer", tokenizer),
            ):
                with atomic_dir(folder / name) as tmp:
                    part.save_pretrained(tmp)
            logger.info("wrote the tuned video generator to %s", folder)

        train_video_denoiser(
            model, dataset, latents, params, cfg.train, out, save, resume, "tune-video", state
        )
    finally:
        reset_accelerate_state()
    return out
