"""The Stable Diffusion stand-in: a small text-to-image latent diffusion model in SD-1.5's folder.

Replaces runwayml/stable-diffusion-v1-5 (paper 3.4: the model video tuning inflates and
co-training conditions on fMRI). The folder is a ``StableDiffusionPipeline`` folder::

    stable_diffusion/
      model_index.json   StableDiffusionPipeline; safety_checker and feature_extractor null
      vae/               AutoencoderKL, 4 latent channels, downsampling factor 4, trained on the
                         training frames (L1 reconstruction + a small KL term), then its encoder
                         alone on blurred, low-contrast ones too; its ``scaling_factor`` makes
                         the latents unit-variance (SD's 0.18215)
      text_encoder/      the CLIP stand-in's text tower as a CLIPTextModel (frozen)
      tokenizer/         its CLIPTokenizer (vocab.json, merges.txt, ...)
      unet/              UNet2DConditionModel, cross_attention_dim = the text encoder's width,
                         trained with SD's objective (epsilon prediction) on the VAE latents of
                         training frames conditioned on their captions (10 % empty captions)
      scheduler/         SD-1.5's scheduler config as it ships (PNDM, scaled_linear betas
                         0.00085 → 0.012, 1000 steps)

so ``StableDiffusionPipeline.from_pretrained`` and the stages' ``from_pretrained(path,
subfolder=...)`` calls load it as they load the real one. The UNet's ``sample_size`` is the
latent size of the prepared frames (the real one's 64 is SD's 512² images).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.demo.standins.base import (
    MAX_TOKENS,
    EpochDataset,
    StandinData,
    StandinJob,
    TrainBudget,
    UnetPreset,
    VaePreset,
    epoch_rng,
    final_loss,
    fit,
    is_complete,
    read_marker,
    seeded,
    weights_digest,
    write_marker,
)
from mindvideo.utils import atomic_dir, atomic_path

__all__ = [
    "SCHEDULER_CONFIG",
    "build_unet",
    "build_vae",
    "colour_of",
    "draw_timesteps",
    "latent_scaling_factor",
    "train_sd_standin",
]

logger = logging.getLogger(__name__)

#: Stable Diffusion 1.5's ``scheduler/scheduler_config.json`` (a ``PNDMScheduler``).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
)
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------


def build_vae(spec: VaePreset, frame_size: int) -> Any:
    """A randomly initialised ``AutoencoderKL``: 4 latent channels, factor ``2**(blocks−1)``."""
    from diffusers import AutoencoderKL

    n = len(spec.channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(spec.channels),
        layers_per_block=spec.layers_per_block,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=frame_size,
    )


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, H, W]`` in [−1, 1] (the VAE's input range)."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float ``[N, 3, H, W]`` in [−1, 1] → uint8 ``[N, H, W, 3]``."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


class VaeObjective(nn.Module):
    """The VAE's training objective as a module (the engine calls the model, DDP-safe).

    ``forward(x: [N, 3, h, w]) -> (reconstruction [N, 3, h, w], kl [N])`` with a posterior sample.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


class FrameCrops(EpochDataset):
    """Random ``crop`` × ``crop`` crops (and horizontal flips) of training frames, uint8
    ``[crop, crop, 3]``; the crop of item ``i`` depends only on (seed, epoch, i)."""

    purpose = 2
    """The :func:`epoch_rng` stream of the crops."""

    def __init__(self, frames: np.ndarray, crop: int, seed: int) -> None:
        self.frames = frames
        self.crop = min(crop, frames.shape[1])
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    def _draw(self, index: int) -> tuple[np.random.Generator, int, int, bool]:
        """Item ``index``'s generator (for further draws), its crop's top-left corner and its
        flip."""
        rng = epoch_rng(self.seed, self.epoch, index, self.purpose)
        top, left = rng.integers(0, self.frames.shape[1] - self.crop + 1, size=2)
        return rng, int(top), int(left), bool(rng.random() < 0.5)

    def __getitem__(self, index: int) -> torch.Tensor:
        _, top, left, flip = self._draw(index)
        crop = self.frames[index, top : top + self.crop, left : left + self.crop]
        if flip:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop))


def smooth_frames(
    frames: torch.Tensor, mean_image: torch.Tensor, block: int, mix: float
) -> torch.Tensor:
    """Float frames ``[N, 3, h, w]`` box-blurred in ``block`` × ``block`` pixels (area
    downsampling, bilinear back up) and mixed with weight ``mix`` toward ``mean_image``
    (``[3, h, w]``): the blurry, low-contrast kind of image a regression decoder of fMRI gives."""
    h, w = frames.shape[-2:]
    small = F.avg_pool2d(frames, block, ceil_mode=True)
    blurred = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return (1 - mix) * blurred + mix * mean_image


def smooth_uint8(
    frames: torch.Tensor, mean_image: torch.Tensor, block: int, mix: float
) -> torch.Tensor:
    """:func:`smooth_frames` of uint8 frames ``[N, h, w, 3]`` toward a mean image ``[h, w, 3]``
    (0–255), back to uint8 ``[N, h, w, 3]``."""
    x = smooth_frames(frames.permute(0, 3, 1, 2).float(), mean_image.permute(2, 0, 1), block, mix)
    return x.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)


class SmoothedCrops(FrameCrops):
    """The crops (and flips) of :class:`FrameCrops`, half of them smoothed
    (:func:`smooth_frames`: a block of ``blocks``, a mix up to ``max_mix`` toward the same crop
    of ``mean_image``), uint8 ``[crop, crop, 3]``; item ``i`` depends only on (seed, epoch, i)."""

    purpose = 5

    def __init__(
        self,
        frames: np.ndarray,
        crop: int,
        seed: int,
        mean_image: np.ndarray,
        blocks: tuple[int, ...],
        max_mix: float,
    ) -> None:
        super().__init__(frames, crop, seed)
        self.mean_image = torch.from_numpy(np.ascontiguousarray(mean_image)).float()
        self.blocks = tuple(int(b) for b in blocks)
        self.max_mix = float(max_mix)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng, top, left, flip = self._draw(index)
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        crop = torch.from_numpy(np.array(self.frames[index][window]))
        if rng.random() < 0.5:
            block = self.blocks[int(rng.integers(len(self.blocks)))]
            mix = float(rng.uniform(0.0, self.max_mix))
            crop = smooth_uint8(crop[None], self.mean_image[window], block, mix)[0]
        if flip:
            crop = crop.flip(1)
        return crop.contiguous()


class VaeEncoderObjective(nn.Module):
    """The VAE's round trip through its posterior mean, ``forward(x) -> reconstruction``: what
    the encoder phase trains (the decoder frozen)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.vae.encode(x).latent_dist.mean).sample


def _vae_encoder_loss(model: nn.Module, frames: torch.Tensor):
    x = to_pixels(frames)
    mse = (model(x).float() - x).pow(2).mean()
    return mse, {"mse": mse.detach()}


def _vae_loss_fn(kl_weight: float):
    def loss_fn(model: nn.Module, frames: torch.Tensor):
        x = to_pixels(frames)
        rec, kl = model(x)
        l1 = (rec.float() - x).abs().mean()
        # KL summed over latent elements, per pixel like the L1 term (SD's VAE loss, scaled).
        kl_term = kl.float().mean() / x[0].numel()
        return l1 + kl_weight * kl_term, {"l1": l1.detach(), "kl": kl.detach().mean()}

    return loss_fn


@torch.no_grad()
def encode_frames(
    vae: Any, frames: np.ndarray, device: torch.device, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior of uint8 frames ``[N, H, W, 3]``: ``(mean, std)`` float32 ``[N, 4, h, w]``
    (unscaled), on the CPU."""
    vae = vae.to(device).eval()
    means, stds = [], []
    for start in range(0, len(frames), batch_size):
        x = to_pixels(torch.from_numpy(np.array(frames[start : start + batch_size])))
        dist = vae.encode(x.to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_psnr(vae: Any, frames: np.ndarray, device: torch.device) -> float:
    """Mean PSNR (dB, data range 255) of uint8 frames ``[N, H, W, 3]`` through the VAE
    (posterior mean → decoder → uint8), per frame then averaged."""
    scores = []
    for start in range(0, len(frames), 128):
        batch = np.array(frames[start : start + 128])  # a writable copy for torch
        x = to_pixels(torch.from_numpy(batch)).to(device)
        rec = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample)
        mse = ((rec.astype(np.float64) - batch) ** 2).reshape(len(batch), -1).mean(1)
        scores.append(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))
    return float(np.concatenate(scores).mean())


def latent_scaling_factor(means: torch.Tensor) -> float:
    """``1 / std`` of the latents (posterior means over all frames and elements): what SD's
    0.18215 is for its VAE, so that scaled latents have unit variance like the noise."""
    return float(1.0 / means.float().std().clamp_min(1e-6))


def train_vae(
    data: StandinData, spec: VaePreset, seed: int, device: torch.device, log_dir: Path
) -> Any:
    """Train the VAE on random crops of the training frames; returns it (eval mode) with its
    ``scaling_factor`` set from the training frames' latents."""
    seeded(seed, 2)
    vae = build_vae(spec, data.frame_size)
    objective = fit(
        "VAE",
        VaeObjective(vae),
        FrameCrops(data.train_frames, spec.crop, seed),
        _vae_loss_fn(spec.kl_weight),
        spec.train,
        log_dir,
        seed,
        device,
    )
    vae = objective.vae
    if spec.encoder_steps > 0:
        vae = _train_vae_encoder(vae, data, spec, seed, device, log_dir / "encoder")
    vae = vae.eval()
    means, _ = encode_frames(
        vae, data.train_frames[:: max(1, len(data.train_frames) // 2048)], device
    )
    vae.register_to_config(scaling_factor=latent_scaling_factor(means))
    return vae.cpu()


def _train_vae_encoder(
    vae: Any, data: StandinData, spec: VaePreset, seed: int, device: torch.device, log_dir: Path
) -> Any:
    """The encoder phase (:attr:`VaePreset.encoder_steps`): the encoder and its ``quant_conv``
    fine-tuned on :class:`SmoothedCrops` (MSE of the posterior mean's reconstruction); the
    decoder's weights are left exactly as they are, so the latent space does not move."""
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    trainable = [*vae.encoder.parameters(), *vae.quant_conv.parameters()]
    for p in decoder:
        p.requires_grad_(False)
    budget = TrainBudget(
        spec.encoder_steps, spec.train.batch_size, learning_rate=spec.train.learning_rate / 2
    )
    crops = SmoothedCrops(
        data.train_frames,
        spec.crop,
        seed,
        mean_image(data.train_frames),
        spec.smooth_blocks,
        spec.smooth_mix,
    )
    objective = fit(
        "VAE encoder",
        VaeEncoderObjective(vae),
        crops,
        _vae_encoder_loss,
        budget,
        log_dir,
        seed,
        device,
        trainable_params=trainable,
    )
    for p in decoder:
        p.requires_grad_(True)
    return objective.vae


def mean_image(frames: np.ndarray, max_frames: int = 4096) -> np.ndarray:
    """The mean of uint8 frames ``[N, H, W, 3]`` (at most ``max_frames``, evenly spaced) as
    float ``[H, W, 3]`` in 0–255."""
    step = max(1, len(frames) // max_frames)
    return np.asarray(frames[::step], dtype=np.float64).mean(axis=0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------


def build_unet(spec: UnetPreset, latent_size: int, cross_attention_dim: int) -> Any:
    """A randomly initialised ``UNet2DConditionModel``: SD-1.5's blocks, with cross-attention
    in every block but the highest-resolution one (SD: but the lowest) and in the mid block —
    attention over 16² latent tokens costs 3× the whole step on a CPU, over 8² little."""
    from diffusers import UNet2DConditionModel

    n = len(spec.channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(spec.channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=spec.heads,  # diffusers' name for the number of heads (SD: 8)
        norm_num_groups=8,
    )


class LatentCaptions(EpochDataset):
    """Item ``i``: the VAE posterior (``mean``, ``std`` ``[4, h, w]``) of training frame ``i``
    and the row of its caption's text embedding."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, rows: np.ndarray) -> None:
        self.mean, self.std = mean, std
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"mean": self.mean[index], "std": self.std[index], "row": self.rows[index]}


def noise_schedule(config: dict[str, Any]) -> torch.Tensor:
    """``ᾱ_t`` float32 ``[T]`` of a scheduler config (as DDPM reads any SD scheduler config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.float()


def draw_timesteps(sampling: str, n: int, num_timesteps: int, device: torch.device) -> torch.Tensor:
    """``n`` training timesteps in ``0 .. num_timesteps − 1`` (int64 ``[n]``), drawn from the
    global torch RNG: ``uniform``, or ``logit-normal`` — ``⌊sigmoid(z) · T⌋`` with ``z ~ N(0, 1)``
    (:attr:`UnetPreset.timesteps`)."""
    if sampling == "uniform":
        return torch.randint(0, num_timesteps, (n,), device=device)
    if sampling == "logit-normal":
        u = torch.sigmoid(torch.randn(n, device=device))
        return (u * num_timesteps).long().clamp_(0, num_timesteps - 1)
    raise ValueError(f"unknown timestep sampling {sampling!r}")


def _unet_loss_fn(
    text: torch.Tensor,
    empty_row: int,
    alphas: torch.Tensor,
    scale: float,
    dropout: float,
    timesteps: str = "uniform",
):
    """SD's objective: ``‖ UNet(√ᾱ z0 + √(1−ᾱ) ε, t, c) − ε ‖²`` with ``z0 = scale · (mean +
    std · ε')``, the caption ``c`` replaced by the empty one with probability ``dropout`` and
    ``t`` drawn by :func:`draw_timesteps` (``timesteps``)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        mean, std, rows = batch["mean"], batch["std"], batch["row"]
        device = mean.device
        z0 = (mean + std * torch.randn_like(std)) * scale
        drop = torch.rand(len(rows), device=device) < dropout
        rows = torch.where(drop, torch.full_like(rows, empty_row), rows)
        cond = text[rows.cpu()].to(device)
        t = draw_timesteps(timesteps, len(z0), len(alphas), device)
        a = alphas.to(device)[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(z0)
        pred = model(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, cond).sample
        return F.mse_loss(pred.float(), noise), {"dropped": drop.float().mean()}

    return loss_fn


@torch.no_grad()
def encode_text(
    text_encoder: Any, tokenizer: Any, captions: list[str], device: torch.device
) -> torch.Tensor:
    """Captions → the frozen text encoder's last hidden state, float32 ``[N, 77, d]`` (padded
    to 77 tokens, no attention mask: Stable Diffusion 1.5's conditioning)."""
    text_encoder = text_encoder.to(device).eval()
    out = []
    for start in range(0, len(captions), 256):
        ids = tokenizer(
            captions[start : start + 256],
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out.append(text_encoder(ids.to(device))[0].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def probe_loss(
    unet: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    alphas: torch.Tensor,
    seed: int,
    device: torch.device,
) -> float:
    """The denoising loss on a fixed probe (held-out latents ``[n, 4, h, w]`` × scale, their
    captions ``[n, 77, d]``, fixed noise and timesteps spread over the schedule): comparable
    before and after training, unlike the noisy training loss."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.linspace(0, len(alphas) - 1, len(latents)).round().long()
    a = alphas[t].view(-1, 1, 1, 1)
    unet = unet.to(device).eval()
    total = 0.0
    for s in range(0, len(latents), 64):
        x = (
            a[s : s + 64].sqrt() * latents[s : s + 64]
            + (1 - a[s : s + 64]).sqrt() * noise[s : s + 64]
        )
        pred = unet(x.to(device), t[s : s + 64].to(device), cond[s : s + 64].to(device)).sample
        total += F.mse_loss(pred.float().cpu(), noise[s : s + 64], reduction="sum").item()
    return total / noise.numel()


# --------------------------------------------------------------------------------------------
# Text-to-image check
# --------------------------------------------------------------------------------------------


def colour_of(image: np.ndarray, min_fraction: float = 0.01) -> str | None:
    """The simulator's colour (``stimuli.COLOURS``) that most of an image's saturated pixels
    (saturation > 0.5, value > 0.35) are closest to in hue — a vote, so stray speckles of
    other colours do not move it; ``None`` when under ``min_fraction`` of the pixels are
    saturated (an achromatic image). ``image``: float ``[H, W, 3]`` in [0, 1]."""
    from matplotlib.colors import rgb_to_hsv

    from mindvideo.sim.stimuli import COLOURS

    hsv = rgb_to_hsv(np.clip(image, 0, 1))
    mask = (hsv[..., 1] > 0.5) & (hsv[..., 2] > 0.35)
    if mask.mean() < min_fraction:
        return None
    names = list(COLOURS)
    hues = rgb_to_hsv(np.array([COLOURS[n] for n in names]))[:, 0]  # [6] in [0, 1)
    turn = hsv[..., 0][mask][:, None] - hues[None, :]  # [P, 6]
    distance = np.abs((turn + 0.5) % 1.0 - 0.5)  # circular hue distance
    votes = np.bincount(distance.argmin(1), minlength=len(names))
    return names[int(votes.argmax())]


def colour_prompts(data: StandinData) -> list[tuple[str, str]]:
    """One (colour, caption) per simulator colour: a held-out test caption of a procedural
    scene of that colour (else a training one)."""
    from mindvideo.sim.stimuli import COLOURS, SHAPES

    classes = data.labels.classes
    order = [*data.test_caption.tolist(), *data.train_caption.tolist()]
    cls_of = dict(
        zip(
            order,
            [*data.test_class.tolist(), *data.train_class.tolist()],
            strict=True,
        )
    )
    out = []
    for colour in COLOURS:
        for cap in order:
            name = classes[cls_of[cap]]
            if name.split(" ")[0] == colour and name.split(" ")[-1] in SHAPES:
                out.append((colour, data.captions[cap]))
                break
    return out


@torch.no_grad()
def text_to_image_check(
    folder: Path, data: StandinData, seed: int, device: torch.device, per_prompt: int
) -> dict[str, Any]:
    """Load ``folder`` with diffusers' ``StableDiffusionPipeline`` (offline) and sample with
    DDIM (20 steps, guidance 5) for one caption per colour; the fraction of images whose
    saturated pixels have the caption's colour (chance 1/6)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    # DDIM must not clip latents to [-1, 1] (its default; SD's PNDM config leaves it unsaid).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = colour_prompts(data)
    size = data.frame_size
    images = pipe(
        [p for _, p in prompts for _ in range(per_prompt)],
        height=size,
        width=size,
        num_inference_steps=20,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images
    wanted = [c for c, _ in prompts for _ in range(per_prompt)]
    found = [colour_of(im) for im in images]
    hits = [w == f for w, f in zip(wanted, found, strict=True)]
    return {
        "t2i_colour_accuracy": float(np.mean(hits)),
        "t2i_colour_chance": 1.0 / 6,
        "t2i_images": len(images),
        "t2i_mean_rgb": {
            c: np.asarray(images[i * per_prompt : (i + 1) * per_prompt])
            .mean((0, 1, 2))
            .round(3)
            .tolist()
            for i, (c, _) in enumerate(prompts)
        },
        "t2i_found_colours": found,
    }


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


def _write_text_parts(clip_folder: Path, sd: Path) -> None:
    """``text_encoder/`` (the CLIP stand-in's text tower), ``tokenizer/`` and ``scheduler/``."""
    from diffusers import PNDMScheduler
    from transformers import CLIPModel

    from mindvideo.demo.standins.clip import text_encoder_from_clip

    with atomic_dir(sd / "text_encoder") as tmp:
        text_encoder_from_clip(CLIPModel.from_pretrained(clip_folder)).save_pretrained(tmp)
    with atomic_dir(sd / "tokenizer") as tmp:
        for name in TOKENIZER_FILES:
            if (clip_folder / name).is_file():
                shutil.copyfile(clip_folder / name, tmp / name)
    with atomic_dir(sd / "scheduler") as tmp:
        PNDMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp)


def _write_model_index(sd: Path) -> None:
    """``model_index.json`` of a ``StableDiffusionPipeline`` with these parts (no safety
    checker, no feature extractor), written atomically."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with atomic_path(sd / "model_index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def train_sd_standin(job: StandinJob) -> dict[str, Any]:
    """Train the VAE and the UNet and write the Stable Diffusion folder (module docstring);
    returns its marker. ``vae/`` and ``unet/`` each get their own marker, so an interrupted
    run keeps a finished VAE."""
    data, folder, spec, key, seed, device, log_dir = job.astuple()
    paths = job.paths
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    start = time.perf_counter()
    sd = Path(folder)
    (sd / "standin.json").unlink(missing_ok=True)
    sd.mkdir(parents=True, exist_ok=True)
    _write_text_parts(paths.clip, sd)
    text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    # The VAE depends on the frames only; the UNet also on the text encoder's weights.
    vae_key = {k: v for k, v in key.items() if k != "clip"}
    unet_key = {**vae_key, "text_encoder": weights_digest(sd, "text_encoder")}

    # 1. The VAE.
    if not is_complete(sd / "vae", vae_key):
        _train_vae_part(sd, vae_key, data, spec.vae, seed, device, log_dir / "vae")
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").eval()

    # 2. The UNet, on the VAE's latents of the training frames and their captions.
    if not is_complete(sd / "unet", unet_key):
        text = _TextParts(text_encoder, tokenizer)
        _train_unet_part(sd, unet_key, data, spec.unet, vae, text, seed, device, log_dir / "unet")

    # 3. The pipeline folder, checked by loading it with diffusers and sampling from text.
    _write_model_index(sd)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    check = text_to_image_check(sd, data, seed, device, per_prompt=4)
    marker = _write_sd_marker(sd, key, spec, data, vae, unet, text_encoder, check, start)
    logger.info(
        "Stable Diffusion stand-in: text-to-image colour match %.2f (chance %.2f).",
        check["t2i_colour_accuracy"],
        check["t2i_colour_chance"],
    )
    return marker


@dataclass
class _TextParts:
    """The frozen text encoder and its tokenizer, as loaded from the folder."""

    encoder: Any
    tokenizer: Any


def _save_part(
    folder: Path, model: Any, key: dict[str, Any], budget: Any, seconds: float, metrics: dict
) -> None:
    """Save a trained ``vae/`` or ``unet/`` atomically with its own marker."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        write_marker(
            tmp,
            key,
            parameters=sum(p.numel() for p in model.parameters()),
            train=budget,
            train_seconds=round(seconds, 2),
            metrics=metrics,
        )


def _train_vae_part(
    sd: Path,
    key: dict[str, Any],
    data: StandinData,
    spec: VaePreset,
    seed: int,
    device: torch.device,
    log_dir: Path,
) -> None:
    """Train the VAE and write ``sd/vae`` with its test PSNR."""
    t0 = time.perf_counter()
    vae = train_vae(data, spec, seed, device, log_dir)
    vae_s = time.perf_counter() - t0
    psnr = reconstruction_psnr(vae, data.test_frames, torch.device("cpu"))
    smoothed = smooth_uint8(
        torch.from_numpy(np.array(data.test_frames)),
        torch.from_numpy(mean_image(data.train_frames)),
        block=4,
        mix=0.5,
    )
    smooth_psnr = reconstruction_psnr(vae, smoothed.numpy(), torch.device("cpu"))
    metrics = {
        "vae_psnr_db": psnr,
        "vae_smoothed_psnr_db": smooth_psnr,
        "scaling_factor": vae.config.scaling_factor,
        "vae_final_train_loss": final_loss(log_dir),
    }
    _save_part(sd / "vae", vae, key, spec.train, vae_s, metrics)
    logger.info(
        "VAE stand-in: test PSNR %.2f dB, smoothed %.2f dB (%.1f s).", psnr, smooth_psnr, vae_s
    )


def _train_unet_part(
    sd: Path,
    key: dict[str, Any],
    data: StandinData,
    spec: UnetPreset,
    vae: Any,
    text: _TextParts,
    seed: int,
    device: torch.device,
    log_dir: Path,
) -> None:
    """Train the UNet on the VAE's latents and the captions' embeddings and write ``sd/unet``
    with its probe loss before and after training."""
    t0 = time.perf_counter()
    scale = float(vae.config.scaling_factor)
    scheduler_config = json.loads((sd / "scheduler" / "scheduler_config.json").read_text())
    alphas = noise_schedule(scheduler_config)
    n_probe = min(256, len(data.test_frames))
    probe_latents = encode_frames(vae, data.test_frames[:n_probe], device)[0] * scale
    probe_captions = [data.captions[c] for c in data.test_caption[:n_probe]]
    probe_cond = encode_text(text.encoder, text.tokenizer, probe_captions, device)
    frames = data.train_frames[:: spec.frame_stride]
    captions = data.train_caption[:: spec.frame_stride]
    mean, std = encode_frames(vae, frames, device)
    used = sorted(set(captions.tolist()))
    row = {c: i for i, c in enumerate(used)}
    embeddings = encode_text(
        text.encoder, text.tokenizer, [data.captions[c] for c in used] + [""], device
    )
    rows = np.array([row[c] for c in captions.tolist()])
    seeded(seed, 3)
    unet = build_unet(spec, _latent_size(vae, data), text.encoder.config.hidden_size)
    before = probe_loss(unet, probe_latents, probe_cond, alphas, seed, device)
    unet = fit(
        "UNet",
        unet,
        LatentCaptions(mean, std, rows),
        _unet_loss_fn(embeddings, len(used), alphas, scale, spec.caption_dropout, spec.timesteps),
        spec.train,
        log_dir,
        seed,
        device,
    )
    unet_s = time.perf_counter() - t0
    after = probe_loss(unet, probe_latents, probe_cond, alphas, seed, device)
    metrics = {
        "unet_probe_loss_before": before,
        "unet_probe_loss_after": after,
        "unet_final_train_loss": final_loss(log_dir),
    }
    _save_part(sd / "unet", unet, key, spec.train, unet_s, metrics)
    logger.info("UNet stand-in: probe loss %.4f → %.4f (%.1f s).", before, after, unet_s)


def _vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _latent_size(vae: Any, data: StandinData) -> int:
    return data.frame_size // _vae_scale_factor(vae)


def _write_sd_marker(
    sd: Path,
    key: dict[str, Any],
    spec: Any,
    data: StandinData,
    vae: Any,
    unet: Any,
    text_encoder: Any,
    check: dict[str, Any],
    start: float,
) -> dict[str, Any]:
    """The folder's own marker: the parts' sizes, training times and metrics, and ``check``."""
    vae_marker, unet_marker = read_marker(sd / "vae") or {}, read_marker(sd / "unet") or {}
    metrics = {**vae_marker.get("metrics", {}), **unet_marker.get("metrics", {}), **check}
    return write_marker(
        sd,
        key,
        model="StableDiffusionPipeline",
        replaces="runwayml/stable-diffusion-v1-5",
        parts=list(SD_PARTS),
        vae_parameters=vae_marker.get("parameters"),
        unet_parameters=sum(p.numel() for p in unet.parameters()),
        text_encoder_parameters=sum(p.numel() for p in text_encoder.parameters()),
        latent_size=_latent_size(vae, data),
        vae_scale_factor=_vae_scale_factor(vae),
        cross_attention_dim=int(unet.config.cross_attention_dim),
        train={"vae": spec.vae.train, "unet": spec.unet.train},
        train_seconds={
            "vae": vae_marker.get("train_seconds"),
            "unet": unet_marker.get("train_seconds"),
        },
        seconds=round(time.perf_counter() - start, 2),
        metrics=metrics,
    )
