"""What every stand-in shares: presets, the scene labels, the training data drawn from a
prepared subject, folder markers and the training loop (:func:`fit` on the stages' engine)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.data.labels import SceneLabels
from mindvideo.data.prepared import PreparedData
from mindvideo.data.prepared import data_fingerprint as data_fingerprint  # re-exported
from mindvideo.utils import UserError, freshness
from mindvideo.utils.freshness import json_default as json_default  # re-exported

__all__ = [
    "MARKER",
    "PRESETS",
    "ClassifierPreset",
    "ClipPreset",
    "ConvClassifierPreset",
    "StandinJob",
    "StandinPaths",
    "StandinPreset",
    "TrainBudget",
    "UnetPreset",
    "VaePreset",
    "normalise",
    "standin_preset",
]

logger = logging.getLogger(__name__)

STANDINS_VERSION = 1
MARKER = "standin.json"
"""Written last into every finished stand-in folder: what made it and how well it does."""
MAX_TOKENS = 77
"""CLIP's context length, the text condition's length in Stable Diffusion (``[77, d]``)."""


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainBudget:
    """Optimiser steps, batch size and peak learning rate of one stand-in's training."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 10
    weight_decay: float = 0.0
    schedule: str = "cosine"
    """After warm-up: ``cosine`` (to 1/20 of the peak) or ``constant`` (for a model that is
    still improving fast when its budget ends, like the VAE)."""
    mixed_precision: str = "no"
    """``no`` or ``bf16`` (autocast); chosen per model by measured speed on a CPU."""


@dataclass(frozen=True)
class ClipPreset:
    """CLIP stand-in: both towers ``layers`` × ``width``, ``grid`` × ``grid`` image patches."""

    width: int
    layers: int
    heads: int
    projection_dim: int
    grid: int
    train: TrainBudget


@dataclass(frozen=True)
class VaePreset:
    """AutoencoderKL stand-in: ``len(channels)`` blocks (factor ``2 ** (len - 1)``), trained on
    random ``crop`` × ``crop`` crops (it is convolutional; whole frames at test time)."""

    channels: tuple[int, ...]
    crop: int
    kl_weight: float
    train: TrainBudget
    layers_per_block: int = 0
    """ResNet layers per encoder block (the decoder has one more): 0 trains several times
    faster on these simple frames than SD's 2 (measured: PSNR after a few hundred steps)."""
    encoder_steps: int = 0
    """After training, the encoder alone (the decoder frozen, so the latent space stays) is
    fine-tuned this many steps on half sharp, half *smoothed* crops — box-blurred in blocks of
    ``smooth_blocks`` pixels and mixed toward the training frames' mean image — so that it
    also encodes blurry, low-contrast images faithfully: what a regression decoder of fMRI
    gives and the low-level path feeds it (docs/lowlevel.md). 0: no such phase."""
    smooth_blocks: tuple[int, ...] = (2, 4)
    """Block sizes (pixels) of the smoothed crops' box blur."""
    smooth_mix: float = 0.7
    """Largest weight of the mean image in a smoothed crop (drawn uniformly from 0 to it)."""


#: How a diffusion stand-in may draw its training timesteps (:class:`UnetPreset`).
TIMESTEP_SAMPLING = ("uniform", "logit-normal")


@dataclass(frozen=True)
class UnetPreset:
    """UNet2DConditionModel stand-in: cross-attention blocks of ``channels``."""

    channels: tuple[int, ...]
    heads: int
    caption_dropout: float
    train: TrainBudget
    frame_stride: int = 1
    """Train on every n-th of the ``frames_per_tr`` training frames (2: one per TR)."""
    timesteps: str = "logit-normal"
    """How training draws each sample's diffusion timestep ``t`` of the schedule's ``T``:
    ``uniform`` (SD-1.5's recipe) or ``logit-normal`` (``t / T = sigmoid(n)``, ``n ~ N(0, 1)``;
    Esser et al. 2024, "Scaling Rectified Flow Transformers", section 3.1), which spends the
    small budget on the middle noise levels, where a sample's layout and colour are decided,
    rather than on the nearly clean and the nearly pure-noise ends (docs/standins.md)."""

    def __post_init__(self) -> None:
        if self.timesteps not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"timesteps must be one of {TIMESTEP_SAMPLING}, not {self.timesteps!r}"
            )


@dataclass(frozen=True)
class ConvClassifierPreset:
    """ResNet stand-in: ``len(channels)`` stages of ``depths`` basic blocks of ``channels``
    after a ``stem``-channel stem (``ResNetConfig``'s ``embedding_size``)."""

    stem: int
    channels: tuple[int, ...]
    depths: tuple[int, ...]
    train: TrainBudget


@dataclass(frozen=True)
class ClassifierPreset:
    """ViT / VideoMAE stand-in: ``layers`` × ``width``, ``grid`` × ``grid`` patches."""

    width: int
    layers: int
    heads: int
    grid: int
    train: TrainBudget


@dataclass(frozen=True)
class StandinPreset:
    """Sizes and budgets of all stand-ins (``tiny``: tests; ``demo``: the CPU demo).

    ``frames_per_tr``: which of the 6 frames of every training TR the image models see (the
    frames of one TR are nearly alike, so a subsample loses little and saves time).
    """

    name: str
    frames_per_tr: tuple[int, ...]
    clip: ClipPreset
    vae: VaePreset
    unet: UnetPreset
    image_classifier: ConvClassifierPreset
    video_classifier: ClassifierPreset
    eval_frames: int = 512
    """Held-out test frames (clips) each quality number is measured on, at most."""


def _preset(
    name: str,
    *,
    vae_crop: int,
    unet_frame_stride: int,
    steps: dict[str, int],
    eval_frames: int,
) -> StandinPreset:
    """One architecture for both presets; what differs is the frame crop and the budgets."""

    def budget(model: str, batch_size: int, schedule: str = "cosine") -> TrainBudget:
        return TrainBudget(steps[model], batch_size, learning_rate=2e-3, schedule=schedule)

    return StandinPreset(
        name=name,
        frames_per_tr=(0, 3),
        clip=ClipPreset(
            width=64, layers=2, heads=4, projection_dim=64, grid=4, train=budget("clip", 64)
        ),
        vae=VaePreset(
            channels=(32, 32, 32),
            crop=vae_crop,
            kl_weight=1e-6,
            train=budget("vae", 32, schedule="constant"),
            encoder_steps=steps["vae_encoder"],
        ),
        unet=UnetPreset(
            channels=(32, 64),
            heads=4,
            caption_dropout=0.1,
            frame_stride=unet_frame_stride,
            train=budget("unet", 32),
        ),
        image_classifier=ConvClassifierPreset(
            stem=32, channels=(32, 64, 128), depths=(1, 1, 1), train=budget("image_classifier", 64)
        ),
        video_classifier=ClassifierPreset(
            width=64, layers=2, heads=4, grid=8, train=budget("video_classifier", 32)
        ),
        eval_frames=eval_frames,
    )


PRESETS: dict[str, StandinPreset] = {
    # Tests: the tiny simulated subject (4 training segments, 32 × 32 frames); ≈ 40 s on one
    # CPU thread.
    "tiny": _preset(
        "tiny",
        vae_crop=16,
        unet_frame_stride=1,
        steps=dict(
            clip=120, vae=400, vae_encoder=100, unet=200, image_classifier=200, video_classifier=200
        ),
        eval_frames=480,
    ),
    # The CPU demo: the demo simulated subject (18 training segments, 64 × 64 frames);
    # ≈ 3–4 minutes on one CPU thread.
    "demo": _preset(
        "demo",
        vae_crop=32,
        unet_frame_stride=2,
        steps=dict(
            clip=300,
            vae=600,
            vae_encoder=200,
            unet=500,
            image_classifier=1600,
            video_classifier=2000,
        ),
        eval_frames=1024,
    ),
}


def standin_preset(name: str) -> StandinPreset:
    """The preset called ``name`` (``tiny`` or ``demo``); a :class:`UserError` otherwise."""
    if name not in PRESETS:
        raise UserError(f"Unknown stand-in preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------
# Output folders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandinPaths:
    """Where :func:`train_standins` put each stand-in (each a folder a real model could fill).

    ``pretrained`` maps the config keys a GPU user sets to the real models' folders onto these.
    """

    root: Path
    clip: Path
    stable_diffusion: Path
    image_classifier: Path
    video_classifier: Path
    summary: Path

    @classmethod
    def under(cls, root: str | os.PathLike) -> StandinPaths:
        root = Path(root)
        return cls(
            root=root,
            clip=root / "clip",
            stable_diffusion=root / "stable_diffusion",
            image_classifier=root / "image_classifier",
            video_classifier=root / "video_classifier",
            summary=root / "standins.json",
        )

    @property
    def pretrained(self) -> dict[str, str]:
        """``{"pretrained.clip": ".../clip", ...}``: config overrides for every stage."""
        return {
            "pretrained.clip": str(self.clip),
            "pretrained.stable_diffusion": str(self.stable_diffusion),
            "pretrained.image_classifier": str(self.image_classifier),
            "pretrained.video_classifier": str(self.video_classifier),
        }


@dataclass(frozen=True)
class StandinJob:
    """What one stand-in trainer gets: the shared training data, its output folder, the whole
    preset, the marker key it writes, the seed, the device and its log folder (``paths``: every
    stand-in's folder, for the one that reads another's, e.g. Stable Diffusion's text encoder)."""

    data: StandinData
    folder: Path
    spec: StandinPreset
    key: dict[str, Any]
    seed: int
    device: torch.device
    log_dir: Path
    paths: StandinPaths | None = None

    def astuple(self) -> tuple[Any, ...]:
        """``(data, folder, spec, key, seed, device, log_dir)``."""
        return (self.data, self.folder, self.spec, self.key, self.seed, self.device, self.log_dir)


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``standin.json`` of a finished stand-in folder, or ``None`` if there is none."""
    return freshness.read_marker(Path(folder) / MARKER)


def is_complete(folder: str | os.PathLike, key: Mapping[str, Any]) -> bool:
    """Whether ``folder`` holds a finished stand-in made with ``key`` (preset, seed, data)."""
    return freshness.read_marker(Path(folder) / MARKER, {"key": dict(key)}) is not None


def write_marker(folder: Path, key: Mapping[str, Any], **info: Any) -> dict[str, Any]:
    """Write ``folder/standin.json`` (last, atomically); returns what it wrote."""
    return freshness.write_marker(folder / MARKER, {"key": dict(key), **info})


def weights_digest(folder: str | os.PathLike, subfolder: str | None = None) -> str | None:
    """sha256 of a saved model's ``*.safetensors`` files (``None`` when there are none): what
    a model trained on its outputs depends on."""
    root = Path(folder) / subfolder if subfolder else Path(folder)
    return freshness.files_digest(sorted(root.glob("*.safetensors")))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class StandinData:
    """What the stand-ins train and are measured on, drawn once from the prepared subject.

    ``train_frames``: uint8 ``[N, H, W, 3]``, frames ``frames_per_tr`` of every training TR,
    with ``train_class`` ``[N]`` and ``train_caption`` ``[N]`` (index into ``captions``);
    ``test_frames`` / ``test_class`` / ``test_caption``: up to ``eval_frames`` test frames (one
    per TR, the middle one, evenly spread). ``captions``: the unique captions, training first.
    """

    prepared: PreparedData
    labels: SceneLabels
    frame_size: int
    captions: list[str]
    train_frames: np.ndarray
    train_class: np.ndarray
    train_caption: np.ndarray
    test_frames: np.ndarray
    test_class: np.ndarray
    test_caption: np.ndarray
    n_train_captions: int = field(default=0)

    @classmethod
    def build(
        cls, prepared: PreparedData, labels: SceneLabels, preset: StandinPreset
    ) -> StandinData:
        for split in ("train", "test"):
            if prepared.captions(split) is None:
                raise UserError(
                    f"{prepared.root} has no captions_{split}.json; the stand-ins train on "
                    "(frame, caption) pairs: re-run `mindvideo prepare`."
                )
        frames = prepared.frames("train")
        size = int(frames.shape[3])
        if frames.shape[3] != frames.shape[4]:
            raise UserError(
                f"The stand-ins need square frames; {prepared.root} has {frames.shape[3]} × "
                f"{frames.shape[4]}: re-run `mindvideo prepare` with frame_size set."
            )
        n_frames = frames.shape[2]
        picks = [j for j in preset.frames_per_tr if j < n_frames] or [0]
        train = np.asarray(frames[:, :, picks])  # [S, T, k, H, W, 3]
        caps_train = prepared.captions("train")
        caps_test = prepared.captions("test")
        flat_train = [c for seg in caps_train for tr in seg for c in tr]
        flat_test = [c for seg in caps_test for tr in seg for c in tr]
        captions = list(dict.fromkeys(flat_train))
        n_train_captions = len(captions)
        seen = set(captions)
        captions += [c for c in dict.fromkeys(flat_test) if c not in seen]
        index = {c: i for i, c in enumerate(captions)}
        cap_train = np.array(
            [[[index[seg[t][j]] for j in picks] for t in range(len(seg))] for seg in caps_train]
        )
        test = prepared.frames("test")
        n_test = test.shape[0] * test.shape[1]
        rows = np.unique(np.linspace(0, n_test - 1, min(preset.eval_frames, n_test)).round())
        seg, tr = np.divmod(rows.astype(np.int64), test.shape[1])
        mid = n_frames // 2
        return cls(
            prepared=prepared,
            labels=labels,
            frame_size=size,
            captions=captions,
            train_frames=train.reshape(-1, size, size, 3),
            train_class=labels.class_id["train"][:, :, picks].reshape(-1),
            train_caption=cap_train.reshape(-1),
            test_frames=np.stack(
                [np.asarray(test[s, t, mid]) for s, t in zip(seg, tr, strict=True)]
            ),
            test_class=labels.class_id["test"][seg, tr, mid],
            test_caption=np.array(
                [index[caps_test[s][t][mid]] for s, t in zip(seg, tr, strict=True)]
            ),
            n_train_captions=n_train_captions,
        )


# --------------------------------------------------------------------------------------------
# Training helpers shared by the stand-ins
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else the CPU; a CUDA request without CUDA is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device='cuda' was asked for but no CUDA GPU is available; use 'cpu'.")
    return device


def fit(
    name: str,
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    loss_fn: Any,
    budget: TrainBudget,
    log_dir: Path,
    seed: int,
    device: torch.device,
    trainable_params: Any = None,
) -> torch.nn.Module:
    """Train ``model`` with the shared engine (AdamW, warm-up + cosine, clipping, progress bar,
    ``log_dir/logs/metrics.jsonl``); no checkpoints: a stand-in trains in seconds to a minute,
    and an interrupted one is simply trained again."""
    import shutil

    from mindvideo.config import TrainConfig
    from mindvideo.training.engine import Trainer

    shutil.rmtree(log_dir, ignore_errors=True)
    mixed = budget.mixed_precision
    if mixed == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        mixed = "fp16"
    config = TrainConfig(
        max_steps=budget.steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        weight_decay=budget.weight_decay,
        betas=[0.9, 0.999],
        warmup_steps=budget.warmup_steps,
        lr_schedule=budget.schedule,
        min_lr=budget.learning_rate / 20,
        max_grad_norm=1.0,
        mixed_precision=mixed,
        cpu=device.type == "cpu",
        checkpoint_every=0,
        log_every=max(1, budget.steps // 10),
        seed=seed,
    )
    trainer = Trainer(
        model,
        dataset,
        loss_fn,
        config,
        log_dir,
        trainable_params=trainable_params,
        project_name=f"{name} stand-in",
    )
    return trainer.train()


def final_loss(log_dir: Path) -> float | None:
    """The last logged training loss in ``log_dir/logs/metrics.jsonl``."""
    path = log_dir / "logs" / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return float(lines[-1]["loss"]) if lines else None


def epoch_rng(seed: int, epoch: int, index: int, purpose: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, index, purpose): data augmentation that
    the engine's exact-order contract allows."""
    return np.random.default_rng([seed, epoch, index, purpose])


class EpochDataset(torch.utils.data.Dataset):
    """Base for the stand-ins' datasets: remembers the epoch the engine announces."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def seeded(seed: int, purpose: int) -> None:
    """Seed torch's global RNG for one model's initialisation."""
    torch.manual_seed(int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0]))


def normalise(frames: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, H, W]``: ``(x / 255 − mean) / std`` per channel,
    what an image processor does to a frame already at its input size."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
