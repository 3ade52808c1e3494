"""What video tuning and co-training share (paper 3.4, B): the denoising loss and the caches.

Both generator stages train the inflated UNet (:class:`~mindvideo.generator.VideoUNet`) with
Stable Diffusion's objective on the latents of the training clips:

    z0 = scaling_factor · (x ~ VAE posterior of the clip)          [B, 4, F, h, w]
    t ~ U{0, …, T−1},  ε ~ N(0, I)
    z_t = √ᾱ_t · z0 + √(1 − ᾱ_t) · ε
    loss = ‖ UNet(z_t, t, c) − target ‖²,   target = ε  (epsilon)  or  √ᾱ_t·ε − √(1 − ᾱ_t)·z0  (v)

with ᾱ the noise schedule of the Stable Diffusion folder's ``scheduler/`` (read as a
``DDPMScheduler``; SD-1.5: ``scaled_linear`` betas 0.00085 → 0.012, T = 1000, epsilon
prediction) and ``c`` the condition: the caption's text embedding (video tuning) or the fMRI
encoder's ``[77, d]`` tokens (co-training).

**Latent cache.** The VAE is frozen in both stages, so every training clip is encoded once and
its posterior ``N(mean, std²)`` is stored (``cache/latents_mean.npy`` and
``cache/latents_std.npy``, float32 ``[N, 4, F, h, w]``, N = segments × TRs, memory-mapped). Each
training step draws a fresh ``x = mean + std · ε'`` from the global torch RNG and scales it by the
VAE's ``scaling_factor`` — exactly Tune-A-Video's ``latent_dist.sample() · 0.18215`` per step,
without running the VAE again. ``cache/latents.json`` records what the cache was made from
(prepared data, VAE weights, size, frames); a cache that matches is reused (on resume, and by
co-training from video tuning's folder), one that does not is rebuilt.

**Text cache.** Video tuning conditions each clip on one caption (:func:`clip_caption`) through
the frozen text encoder; every unique caption is encoded once into
``cache/text_embeddings.npy`` (float32 ``[U, 77, d]``) with the list in ``cache/text.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.data.captions import clip_caption  # re-exported: it lives with the captions
from mindvideo.data.prepared import data_fingerprint
from mindvideo.pipeline.oracle import encode_captions
from mindvideo.utils import UserError, atomic_path
from mindvideo.utils.freshness import fingerprint, module_fingerprint, read_marker, write_marker
from mindvideo.utils.io import open_memmap_allocated

__all__ = [
    "CACHE_DIR",
    "PREDICTION_TYPES",
    "DenoisingProbe",
    "LatentCache",
    "TextEmbeddingCache",
    "VideoDenoiser",
    "build_latent_cache",
    "build_text_cache",
    "check_clip_frames",
    "check_model_folder",
    "clip_caption",
    "data_fingerprint",
    "frames_to_pixels",
    "latent_loss_fn",
    "load_noise_scheduler",
    "module_fingerprint",
    "open_latent_cache",
    "probe_eval_fn",
    "sample_latents",
]

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
"""Sub-folder of a stage's output directory holding the latent and text caches."""
LATENTS_META = "latents.json"
TEXT_META = "text.json"
CACHE_VERSION = 1
PREDICTION_TYPES = ("epsilon", "v_prediction")


# --------------------------------------------------------------------------------------------
# Noise schedule and loss
# --------------------------------------------------------------------------------------------


def load_noise_scheduler(path: str | os.PathLike, subfolder: str | None = "scheduler") -> Any:
    """The training noise schedule: a ``DDPMScheduler`` from a folder's scheduler config.

    Stable Diffusion 1.5 ships a ``PNDMScheduler`` config; only its noise schedule (betas,
    ``num_train_timesteps``, ``prediction_type``) matters for training, and ``DDPMScheduler``
    reads it from any diffusers scheduler config (as diffusers' training scripts do). ``path``
    is a local folder (or a hub id when online).
    """
    from diffusers import DDPMScheduler

    folder = Path(path) / subfolder if subfolder else Path(path)
    if Path(path).is_dir() and not (folder / "scheduler_config.json").is_file():
        raise UserError(
            f"{folder} has no scheduler_config.json; pass a Stable Diffusion folder (with "
            "scheduler/) or a folder written by `mindvideo tune-video`."
        )
    scheduler = DDPMScheduler.from_pretrained(str(Path(path)), subfolder=subfolder)
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"{folder / 'scheduler_config.json'} has prediction_type "
            f"{scheduler.config.prediction_type!r}; training supports "
            f"{', '.join(PREDICTION_TYPES)}."
        )
    return scheduler


class VideoDenoiser(nn.Module):
    """The module the generator stages train: the video UNet's denoising loss (paper 3.4, B).

    Holds the UNet and, for co-training, the fMRI encoder, so one ``nn.Module`` carries every
    trained parameter and its ``forward`` is the loss (the training engine's DDP rule).

    Args:
        unet: the inflated video UNet.
        noise_scheduler: a diffusers scheduler with the training noise schedule
            (:func:`load_noise_scheduler`); only ``alphas_cumprod``,
            ``num_train_timesteps`` and ``prediction_type`` are used.
        fmri_encoder: co-training's :class:`~mindvideo.encoder.SpatiotemporalEncoder`; its
            ``[N, 77, d]`` output replaces the text embedding.
    """

    def __init__(
        self, unet: nn.Module, noise_scheduler: Any, fmri_encoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.unet = unet
        self.fmri_encoder = fmri_encoder
        config = noise_scheduler.config
        if config.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"The noise scheduler's prediction_type is {config.prediction_type!r}; training "
                f"supports {', '.join(PREDICTION_TYPES)}."
            )
        self.prediction_type = config.prediction_type
        self.num_train_timesteps = int(config.num_train_timesteps)
        # A buffer, so it follows the model to its device; not saved in checkpoints.
        self.register_buffer(
            "alphas_cumprod",
            torch.as_tensor(noise_scheduler.alphas_cumprod, dtype=torch.float32).clone(),
            persistent=False,
        )

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations of the UNet (and encoder) blocks in the backward pass."""
        self.unet.enable_gradient_checkpointing()
        if self.fmri_encoder is not None:
            self.fmri_encoder.enable_gradient_checkpointing()

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε``; latents, noise ``[B, C, F, h, w]``, timesteps ``[B]``."""
        alpha = self._alpha(timesteps, latents)
        return alpha.sqrt() * latents + (1 - alpha).sqrt() * noise

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the UNet predicts: ε (``epsilon``) or ``v = √ᾱ_t ε − √(1−ᾱ_t) z0``."""
        if self.prediction_type == "epsilon":
            return noise
        alpha = self._alpha(timesteps, latents)
        return alpha.sqrt() * noise - (1 - alpha).sqrt() * latents

    def _alpha(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        alpha = self.alphas_cumprod.to(like.device)[timesteps.to(like.device).long()]
        return alpha.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # [B, 1, 1, 1, 1]

    def condition(
        self, encoder_hidden_states: torch.Tensor | None, fmri: torch.Tensor | None
    ) -> torch.Tensor:
        """The UNet's condition ``[B, 77, d]``: given text embeddings, or encoded fMRI."""
        if fmri is not None:
            if self.fmri_encoder is None:
                raise ValueError("fmri given to a VideoDenoiser without an fmri_encoder")
            return self.fmri_encoder(fmri).embeddings  # [B, 77, d]
        if encoder_hidden_states is None:
            raise ValueError("pass encoder_hidden_states or fmri")
        return encoder_hidden_states

    def forward(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        fmri: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean denoising loss of a batch of clips.

        Args:
            latents: ``[B, 4, F, h, w]`` clean latents z0 (already × ``scaling_factor``).
            encoder_hidden_states: ``[B, 77, d]`` text embeddings (video tuning), or
            fmri: ``[B, w, V]`` fMRI windows (co-training; encoded by ``fmri_encoder``).
            noise: ``[B, 4, F, h, w]`` ε; drawn from the global torch RNG when ``None``.
            timesteps: ``[B]`` integer timesteps; drawn uniformly when ``None``.

        Returns: the scalar MSE between the UNet's prediction and the target, in float32.
        """
        batch = latents.shape[0]
        if noise is None:
            noise = torch.randn_like(latents)
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (batch,), device=latents.device)
        condition = self.condition(encoder_hidden_states, fmri)
        noisy = self.add_noise(latents, noise, timesteps)  # [B, 4, F, h, w]
        unet_dtype = next(self.unet.parameters()).dtype
        pred = self.unet(noisy.to(unet_dtype), timesteps, condition.to(unet_dtype)).sample
        target = self.target(latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float())


def sample_latents(
    mean: torch.Tensor,
    std: torch.Tensor | None,
    scaling_factor: float,
    shift_factor: float | None = None,
) -> torch.Tensor:
    """z0 from a cached VAE posterior: ``(mean + std · ε − shift) · scaling_factor``.

    ``std=None`` uses the mean (deterministic, for evaluation). ε comes from the global torch
    RNG, which the training engine's checkpoints restore.
    """
    x = mean if std is None else mean + std * torch.randn_like(mean)
    if shift_factor:
        x = x - shift_factor
    return x * scaling_factor


def latent_loss_fn(cache: LatentCache):
    """``loss_fn(model, batch)`` for the engine: sample z0 from the cached posterior, then the
    denoising loss (the model computes it in its forward)."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        z0 = sample_latents(
            batch["latents_mean"], batch["latents_std"], cache.scaling_factor, cache.shift_factor
        )
        condition = {k: batch[k] for k in ("encoder_hidden_states", "fmri") if k in batch}
        return model(z0, **condition), {}

    return loss_fn


def probe_eval_fn(probe: DenoisingProbe, batch_size: int):
    """``eval_fn(model, step)`` for the engine: the probe's denoising loss as ``probe_loss``."""

    def eval_fn(model: torch.nn.Module, step: int) -> dict[str, float]:
        loss = probe.loss(model, batch_size)
        logger.info("step %d: probe denoising loss %.5f", step, loss)
        return {"probe_loss": loss}

    return eval_fn


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def frames_to_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames ``[..., H, W, 3]`` → float32 ``[..., 3, size, size]`` in ``[-1, 1]``.

    Frames that are not ``size × size`` are resized (short side to ``size``, bilinear with
    antialiasing) and centre-cropped; prepared frames are square already.
    """
    lead, (height, width) = frames.shape[:-3], frames.shape[-3:-1]
    x = frames.reshape(-1, height, width, 3).permute(0, 3, 1, 2).float()  # [M, 3, H, W]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new = (max(size, round(height * scale)), max(size, round(width * scale)))
        x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    x = (x / 127.5 - 1.0).clamp(-1.0, 1.0)
    return x.reshape(*lead, 3, size, size)


def check_model_folder(
    path: str | os.PathLike, parts: tuple[str, ...], what: str, fix: str
) -> bool:
    """Whether ``path`` is a local folder (checked to hold ``parts``) rather than a hub id.

    A local folder missing a part, or a path that is neither a folder nor an ``owner/name`` hub
    id, is a :class:`UserError` starting with ``what`` and ending with ``fix``.
    """
    local = Path(path)
    if local.is_dir():
        missing = [p for p in parts if not (local / p).is_dir()]
        if missing:
            raise UserError(
                f"{what} {local} has no {', '.join(p + '/' for p in missing)} folder(s); {fix}"
            )
        return True
    if str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        return False  # an owner/name hub id: diffusers and transformers download it
    raise UserError(f"{what} {local} does not exist; {fix}")


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


# ``module_fingerprint`` (a model's weights and config) and ``data_fingerprint`` (a prepared
# subject's manifest) key the caches; they live in mindvideo.utils.freshness and
# mindvideo.data.prepared and are re-exported here.


# --------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------


@dataclass
class LatentCache:
    """VAE posteriors of the training clips, memory-mapped (see the module docstring).

    ``mean``, ``std``: float32 ``[N, C, F, h, w]``, clip ``n`` = segment ``n // T``, TR
    ``n % T``; ``meta``: what it was made from, plus ``scaling_factor`` and ``shift_factor``.
    """

    root: Path
    mean: np.ndarray
    std: np.ndarray
    meta: dict[str, Any]

    @property
    def scaling_factor(self) -> float:
        return float(self.meta["scaling_factor"])

    @property
    def shift_factor(self) -> float | None:
        shift = self.meta.get("shift_factor")
        return float(shift) if shift is not None else None

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of clip ``index``, each ``[C, F, h, w]``."""
        return torch.from_numpy(np.array(self.mean[index])), torch.from_numpy(
            np.array(self.std[index])
        )


def _latents_key(prepared: Any, vae: nn.Module, split: str, size: int, frames: int) -> dict:
    return {
        "version": CACHE_VERSION,
        "data": data_fingerprint(prepared),
        "split": split,
        "vae": module_fingerprint(vae),
        "size": int(size),
        "frames": int(frames),
    }


def open_latent_cache(root: str | os.PathLike, key: Mapping[str, Any] | None = None):
    """The latent cache in ``root`` if it is complete (and matches ``key``), else ``None``."""
    root = Path(root)
    meta = read_marker(root / LATENTS_META, key)
    if meta is None:
        return None
    try:
        mean = np.load(root / "latents_mean.npy", mmap_mode="r")
        std = np.load(root / "latents_std.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if list(mean.shape) != meta.get("shape") or mean.shape != std.shape:
        return None
    return LatentCache(root, mean, std, meta)


def check_clip_frames(prepared: Any, frames: int, split: str = "train") -> np.ndarray:
    """``prepared``'s clips ``[S, T, F0, H, W, 3]`` of ``split``; a :class:`UserError` when a
    TR has fewer than ``frames`` frames."""
    clips = prepared.frames(split)
    if clips.shape[2] < frames:
        raise UserError(
            f"The prepared data has {clips.shape[2]} frames per TR but the config asks for "
            f"frames={frames}; set frames to at most {clips.shape[2]}."
        )
    return clips


def build_latent_cache(
    vae: nn.Module,
    prepared: Any,
    root: str | os.PathLike,
    *,
    size: int,
    frames: int,
    split: str = "train",
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    reuse: Sequence[str | os.PathLike] = (),
) -> LatentCache:
    """Encode every clip of ``prepared``'s ``split`` with the frozen VAE, once.

    Args:
        vae: the Stable Diffusion ``AutoencoderKL``.
        prepared: a :class:`~mindvideo.data.PreparedData`; its ``frames_{split}``
            ``[S, T, F0, H, W, 3]`` uint8, of which the first ``frames`` frames of each TR are
            used, resized to ``size``.
        root: the cache folder (``OUT/cache``).
        batch_size: clips per VAE call (``batch_size × frames`` images).
        device: where the VAE runs.
        reuse: other cache folders to use instead when they match (e.g. video tuning's).

    Returns: the cache in ``root`` (or the matching one from ``reuse``); an existing cache made
    from the same data, VAE weights, size and frames is reused without encoding anything.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    clips = check_clip_frames(prepared, frames, split)  # [S, T, F0, H, W, 3], memory-mapped
    key = _latents_key(prepared, vae, split, size, frames)
    for folder in (root, *map(Path, reuse)):
        cache = open_latent_cache(folder, key)
        if cache is not None:
            logger.info("Reusing the latent cache in %s (%d clips).", folder, len(cache))
            return cache

    n_seg, n_tr = clips.shape[:2]
    n = n_seg * n_tr
    vae = vae.to(device).eval()
    param = next(vae.parameters())
    with torch.no_grad():
        probe = vae.encode(
            frames_to_pixels(torch.from_numpy(np.array(clips[0, 0, :1])), size).to(param)
        ).latent_dist.mean
    shape = [n, probe.shape[1], frames, probe.shape[2], probe.shape[3]]
    root.mkdir(parents=True, exist_ok=True)
    (root / LATENTS_META).unlink(missing_ok=True)  # the meta file marks a complete cache
    logger.info("Encoding %d training clips with the VAE into %s.", n, root)
    with (
        atomic_path(root / "latents_mean.npy") as mean_tmp,
        atomic_path(root / "latents_std.npy") as std_tmp,
    ):
        mean_out = open_memmap_allocated(mean_tmp, np.float32, tuple(shape))
        std_out = open_memmap_allocated(std_tmp, np.float32, tuple(shape))
        with torch.no_grad(), tqdm(total=n, desc="VAE latents", unit="clip") as bar:
            for start in range(0, n, batch_size):
                idx = range(start, min(start + batch_size, n))
                batch = np.stack([clips[i // n_tr, i % n_tr, :frames] for i in idx])
                pixels = frames_to_pixels(torch.from_numpy(batch), size)  # [b, F, 3, H, W]
                posterior = vae.encode(pixels.flatten(0, 1).to(param)).latent_dist
                for arr, value in ((mean_out, posterior.mean), (std_out, posterior.std)):
                    value = value.float().unflatten(0, (len(idx), frames))  # [b, F, C, h, w]
                    arr[start : start + len(idx)] = value.transpose(1, 2).cpu().numpy()
                bar.update(len(idx))
        mean_out.flush()
        std_out.flush()
        del mean_out, std_out
    shift = vae.config.get("shift_factor")
    meta = {
        **key,
        "shape": shape,
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": shift,
    }
    write_marker(root / LATENTS_META, meta)
    cache = open_latent_cache(root, key)
    assert cache is not None
    return cache


# --------------------------------------------------------------------------------------------
# Text-embedding cache
# --------------------------------------------------------------------------------------------


@dataclass
class TextEmbeddingCache:
    """Text-encoder outputs of the unique captions: ``embeddings [U, 77, d]`` (memory-mapped),
    ``captions`` (U str, row order), ``index`` (caption → row)."""

    root: Path
    embeddings: np.ndarray
    captions: list[str]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.captions)}

    def __len__(self) -> int:
        return len(self.captions)


def _open_text_cache(root: Path, key: Mapping[str, Any]) -> TextEmbeddingCache | None:
    meta = read_marker(root / TEXT_META, key)
    if meta is None:
        return None
    try:
        embeddings = np.load(root / "text_embeddings.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if embeddings.shape[0] != len(meta["captions"]):
        return None
    return TextEmbeddingCache(root, embeddings, list(meta["captions"]), meta)


def build_text_cache(
    text_encoder: nn.Module,
    tokenizer: Any,
    captions: Sequence[str],
    root: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> TextEmbeddingCache:
    """Encode each unique caption once with the frozen text encoder (SD-1.5's way).

    Tokens are padded to the tokenizer's ``model_max_length`` (77) and the condition is the text
    encoder's last hidden state ``[77, d]`` (no attention mask, as Stable Diffusion 1.5).
    A cache made by the same encoder and tokenizer for the same captions is reused.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    unique = list(dict.fromkeys(captions))
    key = {
        "version": CACHE_VERSION,
        "text_encoder": module_fingerprint(text_encoder),
        "tokenizer": fingerprint(
            [type(tokenizer).__name__, tokenizer.model_max_length, len(tokenizer)]
        ),
        "captions_sha256": fingerprint(unique),
    }
    cache = _open_text_cache(root, key)
    if cache is not None:
        logger.info("Reusing the text-embedding cache in %s (%d captions).", root, len(cache))
        return cache

    text_encoder = text_encoder.to(device).eval()
    root.mkdir(parents=True, exist_ok=True)
    (root / TEXT_META).unlink(missing_ok=True)
    chunks = []
    for start in tqdm(
        range(0, len(unique), batch_size), desc="text embeddings", unit="batch", leave=False
    ):
        batch = unique[start : start + batch_size]
        hidden = encode_captions(text_encoder, tokenizer, batch, device)  # [b, 77, d]
        chunks.append(hidden.float().cpu().numpy())
    embeddings = np.concatenate(chunks).astype(np.float32)
    with atomic_path(root / "text_embeddings.npy") as tmp:
        np.save(tmp, embeddings)
    meta = {**key, "shape": list(embeddings.shape), "captions": unique}
    write_marker(root / TEXT_META, meta, indent=None, ensure_ascii=False)
    cache = _open_text_cache(root, key)
    assert cache is not None
    return cache


# --------------------------------------------------------------------------------------------
# A fixed probe of the denoising loss
# --------------------------------------------------------------------------------------------


@dataclass
class DenoisingProbe:
    """A fixed set of (clean latents, condition, noise, timestep) for a comparable loss.

    The training loss of a diffusion model is noisy (random t and ε per step); the mean loss on
    a fixed probe is not, so it shows whether training helps. The stages log it as
    ``probe_loss`` (before training in the log, then at every evaluation).

    ``latents``: ``[n, C, F, h, w]`` (posterior means × scaling factor); ``noise`` likewise;
    ``timesteps``: ``[n]``; one of ``encoder_hidden_states [n, 77, d]`` / ``fmri [n, w, V]``.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    encoder_hidden_states: torch.Tensor | None = None
    fmri: torch.Tensor | None = None

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        scaling_factor: float,
        shift_factor: float | None = None,
        n: int = 16,
        seed: int = 0,
        num_train_timesteps: int = 1000,
    ) -> DenoisingProbe:
        """``n`` samples spread evenly over ``dataset`` (items with ``latents_mean`` and
        ``encoder_hidden_states`` or ``fmri``), noise and timesteps from ``seed``."""
        n = max(1, min(n, len(dataset)))
        indices = np.linspace(0, len(dataset) - 1, n).round().astype(int)
        items = [dataset[int(i)] for i in indices]
        means = torch.stack([item["latents_mean"] for item in items])
        latents = sample_latents(means, None, scaling_factor, shift_factor)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, num_train_timesteps, (n,), generator=generator)
        stack = {
            key: torch.stack([item[key] for item in items])
            for key in ("encoder_hidden_states", "fmri")
            if key in items[0]
        }
        return cls(latents, noise, timesteps, **stack)

    def loss(self, model: VideoDenoiser, batch_size: int = 8) -> float:
        """The mean denoising loss of ``model`` on the probe (no gradients)."""
        device = next(model.parameters()).device
        total = 0.0
        n = self.latents.shape[0]
        with torch.no_grad():
            for start in range(0, n, batch_size):
                part = slice(start, start + batch_size)
                kwargs = {
                    key: getattr(self, key)[part].to(device)
                    for key in ("encoder_hidden_states", "fmri")
                    if getattr(self, key) is not None
                }
                loss = model(
                    self.latents[part].to(device),
                    noise=self.noise[part].to(device),
                    timesteps=self.timesteps[part].to(device),
                    **kwargs,
                )
                total += float(loss) * self.latents[part].shape[0]
        return total / n
