"""Stage 3, ``mindvideo contrast``: spatiotemporal encoder + multimodal contrastive learning.

Paper 3.3 and B. The MBM encoder written by ``mindvideo pretrain`` is inflated into a
:class:`~mindvideo.encoder.SpatiotemporalEncoder` over windows of ``w`` TRs and trained so that
its pooled embedding of an fMRI window lands next to the frozen CLIP embeddings of what was on
screen (eq. 3)::

    L = (L_CLIP(emb_f, emb_t) + L_CLIP(emb_f, emb_i)) / 2

with ``emb_t`` the projected CLIP text embedding of a caption of the window's clip, ``emb_i`` the
projected CLIP image embedding of a random frame of that clip, and a learnable temperature.
``mode: text`` / ``image`` keep one term (Table 1's ablations); the "no contrast" ablation skips
this stage (``mindvideo cotrain`` then starts from the MBM inflated directly).

Augmentations (paper B), all drawn from a generator seeded by (seed, epoch, sample index), so an
interrupted run resumes exactly: 20 % of the voxels set to zero (``sparsify``), a random crop of
the frame with probability 0.5 (``crop_p``), synonym replacement and word swaps of the caption
(``caption_aug``). Batches never hold two samples of one scene
(:class:`~mindvideo.data.datasets.SceneAwareBatchSampler`).

Outputs of ``contrast(cfg, out)``::

    OUT/config.yaml        the resolved ContrastConfig
    OUT/checkpoints/       the engine's resumable checkpoints; OUT/logs/metrics.jsonl
    OUT/fmri_encoder/      the trained SpatiotemporalEncoder (config.json + safetensors): what a
                           pipeline folder's fmri_encoder/ holds
    OUT/retrieval.json     fMRI → caption and fMRI → image top-1 / top-5 retrieval on the held-out
                           test windows, before and after training, with chance levels
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mindvideo.config import ContrastConfig, save_config
from mindvideo.encoder import (
    CONTRASTIVE_MODES,
    LearnableTemperature,
    MBMAutoencoder,
    SpatiotemporalEncoder,
    contrastive_loss,
)
from mindvideo.training.common import (
    is_main_process,
    load_mbm,
    sample_rng,
    save_model_atomically,
)
from mindvideo.training.engine import CHECKPOINTS_DIR, Trainer, list_checkpoints
from mindvideo.utils import UserError, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "CROP_SCALE",
    "ClipTowers",
    "ContrastResult",
    "ContrastSetup",
    "ContrastiveDataset",
    "ContrastiveModel",
    "RetrievalEvaluator",
    "build_contrast",
    "build_encoder",
    "check_contrast_config",
    "contrast",
    "contrastive_loss_fn",
    "gather_with_grad",
    "load_clip",
    "random_crop",
    "sparsify_voxels",
]

ENCODER_DIR = "fmri_encoder"
"""The trained encoder's folder inside the output directory."""
RETRIEVAL_FILE = "retrieval.json"
CROP_SCALE = (0.5, 1.0)
"""Area fraction of the frame kept by the random crop (uniform in this range, aspect kept)."""


# --------------------------------------------------------------------------------------------
# Frozen CLIP towers
# --------------------------------------------------------------------------------------------


class ClipTowers:
    """Frozen CLIP text and image encoders with their tokenizer and image processor (eq. 3).

    Embeddings are the *projected* ones (``text_embeds`` / ``image_embeds`` of CLIP, width
    ``projection_dim``): the space where CLIP's text and images meet. The model stays in eval mode
    without gradients.

    Attributes:
        model: a ``transformers.CLIPModel``.
        tokenizer: its ``CLIPTokenizer``; captions are padded to ``max_length`` (77) tokens.
        image_processor: its ``CLIPImageProcessor`` (resize, centre crop, normalise).
        text_hidden_size: width of the text encoder's tokens (the UNet's cross-attention width,
            768 for CLIP ViT-L/14 and SD-1.5): the ``cond_dim`` of the fMRI encoder.
        projection_dim: width of the joint embedding space: the pooled fMRI embedding's width.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        text_config = model.config.text_config
        self.text_hidden_size = int(text_config.hidden_size)
        self.projection_dim = int(model.config.projection_dim)
        self.max_length = int(text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ClipTowers:
        self.model.to(device)
        return self

    def tokenize(self, captions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``input_ids`` and ``attention_mask``, int64 ``[N, 77]`` (``[77]`` for one)."""
        single = isinstance(captions, str)
        enc = self.tokenizer(
            [captions] if single else list(captions),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = {k: enc[k] for k in ("input_ids", "attention_mask")}
        return {k: v[0] for k, v in out.items()} if single else out

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 frames ``[H, W, 3]`` (or a list / ``[N, H, W, 3]``) → pixel values
        ``[3, S, S]`` (``[N, 3, S, S]``), CLIP's resize, centre crop and normalisation."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
        return pixels[0] if single else pixels

    @torch.no_grad()
    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[N, 77]`` token ids → projected pooled text embeddings ``[N, projection_dim]``."""
        device = self.device
        out = self.model.get_text_features(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        )
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` → projected image embeddings ``[N, projection_dim]``."""
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def encode_captions(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions → ``[N, projection_dim]`` float32 (on the towers' device)."""
        chunks = []
        for start in range(0, len(captions), batch_size):
            tokens = self.tokenize(list(captions[start : start + batch_size]))
            chunks.append(self.text_embeds(**tokens).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """uint8 frames ``[H, W, 3]`` → ``[N, projection_dim]`` float32."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(list(images[start : start + batch_size]))
            chunks.append(self.image_embeds(pixels).float())
        return torch.cat(chunks)


def load_clip(path: str | os.PathLike | None, empty_weights: bool = False) -> ClipTowers:
    """Load CLIP (model, tokenizer, image processor) from a local folder (``pretrained.clip``).

    The paper's model is openai/clip-vit-large-patch14 — the text encoder of Stable Diffusion
    1.5 — downloaded once (e.g. ``huggingface-cli download openai/clip-vit-large-patch14
    --local-dir ...``). A hub id also works for users who are online. ``empty_weights``: the
    model is built from its config on the meta device (a dry run; tokenizer and image processor
    are loaded as usual).
    """
    if not path:
        raise UserError(
            "No CLIP model: set pretrained.clip (flag --clip) to a local CLIP folder, e.g. a "
            "download of openai/clip-vit-large-patch14."
        )
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    try:
        if empty_weights:
            from mindvideo.utils.dry_run import empty_model

            model = empty_model(CLIPModel, path)
        else:
            model = CLIPModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not load CLIP from {path} ({_first_line(exc)}); set pretrained.clip to a "
            "folder with the CLIP model, its tokenizer and preprocessor_config.json."
        ) from exc
    return ClipTowers(model, tokenizer, image_processor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Augmentations and the dataset
# --------------------------------------------------------------------------------------------


def random_crop(
    frame: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE
) -> np.ndarray:
    """A random crop of ``frame`` ``[H, W, 3]`` keeping an area fraction drawn from ``scale``.

    The aspect ratio is kept; the position is uniform. CLIP's image processor then resizes the
    crop to its input size, so the crop acts as a random zoom (paper B: "random crop").
    """
    h, w = frame.shape[:2]
    side = math.sqrt(rng.uniform(*scale))
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return frame[top : top + ch, left : left + cw]


def sparsify_voxels(
    fmri: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    num_voxels: int,
    patch_size: int,
    pad_mode: str = "zero",
) -> np.ndarray:
    """Random sparsification (paper B): ``fraction`` of the real voxels set to zero.

    Args:
        fmri: a padded window ``[w, V_padded]``.
        num_voxels: ``V``, the real (unpadded) voxels; the same voxels are dropped in every TR
            of the window, and a padded voxel follows the voxel it repeats (``wrap_compat``).

    Returns:
        ``[w, V_padded]`` float32, a copy.
    """
    from mindvideo.data.pairing import pad_voxels

    keep = np.ones((1, num_voxels), dtype=np.float32)
    n_drop = round(fraction * num_voxels)
    if n_drop:
        keep[0, rng.choice(num_voxels, size=n_drop, replace=False)] = 0.0
    keep = pad_voxels(keep, patch_size, pad_mode)  # type: ignore[arg-type]
    return (np.asarray(fmri, dtype=np.float32) * keep).astype(np.float32)


class ContrastiveDataset(Dataset):
    """{fMRI window, image, caption} triplets with the paper's augmentations (paper 3.3, B).

    Wraps an :class:`~mindvideo.data.datasets.FMRIWindowDataset` (its ``scene_keys`` drive the
    scene-aware batches). Item ``i`` in epoch ``e``: from ``rng = sample_rng(seed, e, i)``,

    1. ``fmri``: the window ``[w, V_padded]`` with ``sparsify`` of its voxels zeroed;
    2. one frame ``k`` of the TR's clip drawn uniformly ("a randomly-picked frame"), cropped at
       random with probability ``crop_p`` → ``pixel_values`` ``[3, S, S]`` (CLIP preprocessing);
    3. the caption of that frame, augmented → ``input_ids``, ``attention_mask`` ``[77]``.

    ``mode`` only skips the work for an unused modality (``text``: no image, ``image``: no
    caption); the draws are the same in every mode.
    """

    def __init__(
        self,
        windows: Any,
        towers: ClipTowers,
        *,
        sparsify: float = 0.2,
        crop_p: float = 0.5,
        caption_augmenter: Any = None,
        mode: str = "both",
        seed: int = 0,
    ) -> None:
        self.windows = windows
        self.towers = towers
        self.sparsify = sparsify
        self.crop_p = crop_p
        self.caption_augmenter = caption_augmenter
        self.mode = mode
        self.seed = seed
        self.epoch = 0
        self.num_voxels = int(windows.prepared.n_voxels)

    @property
    def scene_keys(self) -> list[tuple[int, ...]]:
        return self.windows.scene_keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.epoch, index)
        item = self.windows[index]
        w = self.windows
        fmri = sparsify_voxels(
            item["fmri"].numpy(), self.sparsify, rng, self.num_voxels, w.patch_size, w.pad_mode
        )  # [w, V_padded]
        frames = item["frames"].numpy()  # [F, H, W, 3]
        k = int(rng.integers(len(frames)))
        crop = rng.random() < self.crop_p
        frame = random_crop(frames[k], rng) if crop else frames[k]
        caption = item["captions"][k]
        if self.caption_augmenter is not None:
            caption = self.caption_augmenter(caption, rng)
        out: dict[str, torch.Tensor] = {"fmri": torch.from_numpy(fmri)}
        if self.mode in ("both", "image"):
            out["pixel_values"] = self.towers.preprocess(np.ascontiguousarray(frame))
        if self.mode in ("both", "text"):
            out.update(self.towers.tokenize(caption))
        return out


# --------------------------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------------------------


class ContrastiveModel(nn.Module):
    """The trained part of eq. 3: the fMRI encoder and CLIP's learnable temperature ``ε``.

    ``forward(fmri [N, w, V]) -> (emb_f [N, pooled_dim], ε scalar)``. The CLIP towers are kept
    outside (frozen), so checkpoints hold only what is trained.
    """

    def __init__(self, encoder: SpatiotemporalEncoder, temperature: LearnableTemperature):
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, fmri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(fmri).pooled, self.temperature()

    def enable_gradient_checkpointing(self) -> None:
        self.encoder.enable_gradient_checkpointing()


def _world_size() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this process's slice of the summed
    gradients (every process's loss depends on every process's embeddings)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dist = torch.distributed
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [P·n, D]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)  # sum over processes
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[n, D]`` from every process (``[P·n, D]``), gradients flowing back.

    With one process it returns ``x``. Under DDP every process then computes the loss over the
    global batch, so the negatives of eq. 3 come from all processes (as CLIP); the backward sums
    the gradients of every process's copy of the loss, which DDP's averaging turns back into the
    gradient of one global-batch loss. Every process must hold the same ``n`` (full batches).
    """
    if _world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _gather_no_grad(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None or _world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def contrastive_loss_fn(towers: ClipTowers, mode: str = "both"):
    """The engine's loss function for eq. 3: ``loss_fn(model, batch) -> (loss, logs)``.

    ``batch``: ``fmri [N, w, V]`` and, as ``mode`` needs, ``input_ids`` / ``attention_mask``
    ``[N, 77]`` and ``pixel_values [N, 3, S, S]``. CLIP runs frozen on the batch's device.
    """

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        fmri = batch["fmri"]
        if towers.device != fmri.device:
            towers.to(fmri.device)
        getattr(model, "module", model).temperature.clamp_()  # CLIP clamps after each step
        emb_f, scale = model(fmri)  # [N, D], scalar
        emb_t = emb_i = None
        if mode in ("both", "text"):
            emb_t = towers.text_embeds(batch["input_ids"], batch["attention_mask"])  # [N, D]
        if mode in ("both", "image"):
            emb_i = towers.image_embeds(batch["pixel_values"])  # [N, D]
        emb_f = gather_with_grad(emb_f)
        emb_t, emb_i = _gather_no_grad(emb_t), _gather_no_grad(emb_i)
        loss = contrastive_loss(emb_f, emb_t, emb_i, scale, mode)
        return loss, {"logit_scale": scale.detach()}

    return loss_fn


# --------------------------------------------------------------------------------------------
# Retrieval on held-out test windows
# --------------------------------------------------------------------------------------------


def _topk_hits(sim: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows of ``sim`` ``[N, C]`` whose ``target`` column ranks within the top k.

    Ties count against the right answer (a collapsed encoder scores 0, not 1)."""
    correct = sim.gather(1, target[:, None])  # [N, 1]
    rank = (sim >= correct).sum(dim=1) - 1  # [N], 0 = strictly best
    return {k: (rank < k).float().mean().item() for k in ks}


class RetrievalEvaluator:
    """fMRI → caption and fMRI → image top-1 / top-5 retrieval on the *test* windows.

    Every test TR ``t`` of every test segment is one query: its fMRI window (repetitions
    averaged, no augmentation) through the encoder's pooled embedding. Its reference is its clip's
    middle frame ``F // 2`` (frame 3 of 6):

    - **caption**: candidates are the *unique* captions of the test windows' middle frames,
      embedded by CLIP's text tower; a query is right when its own caption is the most similar
      (cosine). Chance = 1 / number of unique captions.
    - **image**: candidates are the test *scenes* (of the middle frames), each the mean CLIP image
      embedding of the middle frames of its windows; a query is right when its own scene is the
      most similar. Chance = 1 / number of scenes.

    Top-5 likewise (chance 5 / candidates). Ties count against the right answer.
    """

    def __init__(self, windows: Any, towers: ClipTowers, batch_size: int = 64) -> None:
        self.windows = windows
        self.towers = towers
        self.batch_size = batch_size
        n_frames = windows.frames.shape[2]
        self.frame = n_frames // 2
        captions, scenes = [], []
        for index in range(len(windows)):
            seg, _, t = windows.locate(index)
            captions.append(windows.captions[seg][t][self.frame])
            scenes.append(int(windows.scene_ids[seg, t, self.frame]))
        self.unique_captions = sorted(set(captions))
        lookup = {c: i for i, c in enumerate(self.unique_captions)}
        self.caption_index = torch.tensor([lookup[c] for c in captions])  # [N]
        self.unique_scenes = sorted(set(scenes))
        lookup = {s: i for i, s in enumerate(self.unique_scenes)}
        self.scene_index = torch.tensor([lookup[s] for s in scenes])  # [N]
        self._targets: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: tuple[int, dict[str, float]] | None = None
        """(step, metrics) of the last evaluation run through :meth:`eval_fn`."""

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def chance(self) -> dict[str, float]:
        c, s = len(self.unique_captions), len(self.unique_scenes)
        return {
            "caption_top1": 1 / c,
            "caption_top5": min(5, c) / c,
            "image_top1": 1 / s,
            "image_top5": min(5, s) / s,
        }

    def _candidate_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(captions ``[C, D]``, scenes ``[S, D]``), L2-normalised, computed once."""
        if self._targets is None:
            text = self.towers.encode_captions(self.unique_captions, self.batch_size)  # [C, D]
            images = []
            for start in range(0, len(self), self.batch_size):
                frames = []
                for index in range(start, min(start + self.batch_size, len(self))):
                    seg, _, t = self.windows.locate(index)
                    frames.append(np.asarray(self.windows.frames[seg, t, self.frame]))
                images.append(self.towers.encode_images(frames, self.batch_size))
            per_window = torch.cat(images)  # [N, D]
            scene = self.scene_index.to(per_window.device)
            sums = torch.zeros(len(self.unique_scenes), per_window.shape[1], device=scene.device)
            sums.index_add_(0, scene, F.normalize(per_window, dim=-1))
            self._targets = (F.normalize(text, dim=-1), F.normalize(sums, dim=-1))
        return self._targets

    @torch.no_grad()
    def pooled(self, encoder: SpatiotemporalEncoder) -> torch.Tensor:
        """Pooled embeddings of all test windows, ``[N, D]`` float32 (encoder in eval mode)."""
        was_training = encoder.training
        encoder.eval()
        out = []
        for start in range(0, len(self), self.batch_size):
            stop = min(start + self.batch_size, len(self))
            windows = []
            for index in range(start, stop):
                seg, rep, t = self.windows.locate(index)
                windows.append(self.windows.fmri_window(seg, t, rep))  # [w, V]
            fmri = torch.from_numpy(np.stack(windows))  # [n, w, V]
            fmri = fmri.to(device=encoder.device, dtype=encoder.dtype)
            out.append(encoder(fmri).pooled.float())
        encoder.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, encoder: SpatiotemporalEncoder) -> dict[str, float]:
        """Retrieval accuracies of ``encoder``: ``caption_top1``, ``caption_top5``,
        ``image_top1``, ``image_top5`` (fractions in [0, 1])."""
        if self.towers.device != encoder.device:
            self.towers.to(encoder.device)
            self._targets = None
        text, scenes = self._candidate_embeddings()
        emb = F.normalize(self.pooled(encoder).to(text.device), dim=-1)  # [N, D]
        cap = _topk_hits(emb @ text.T, self.caption_index.to(text.device), (1, 5))
        img = _topk_hits(emb @ scenes.T, self.scene_index.to(text.device), (1, 5))
        return {
            "caption_top1": cap[1],
            "caption_top5": cap[5],
            "image_top1": img[1],
            "image_top5": img[5],
        }

    def eval_fn(self, model: nn.Module, step: int) -> dict[str, float]:
        """The engine's ``eval_fn`` for a :class:`ContrastiveModel`: logs ``retrieval/*``."""
        values = self(model.encoder)  # type: ignore[arg-type]
        self.last = (step, values)
        return {f"retrieval/{k}": v for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass
class ContrastResult:
    """What :func:`contrast` produced: the encoder folder and the retrieval report."""

    encoder_dir: Path
    retrieval: dict[str, Any]


def check_contrast_config(cfg: ContrastConfig) -> None:
    """Raise a :class:`UserError` naming the key for settings the stage cannot run with."""
    if not cfg.encoder:
        raise UserError(
            "No MBM encoder: pass --encoder DIR (the mbm/ folder written by mindvideo pretrain) "
            "or set the config key encoder."
        )
    if not cfg.data:
        raise UserError(
            "No prepared data: pass --data DIR (a folder written by mindvideo prepare) or set "
            "the config key data."
        )
    if cfg.mode not in CONTRASTIVE_MODES:
        raise UserError(
            f"Config key 'mode' is {cfg.mode!r}; choose one of: {', '.join(CONTRASTIVE_MODES)} "
            "(for Table 1's no-contrast ablation skip this stage instead)."
        )
    for key in ("sparsify", "dropout", "drop_path"):
        value = getattr(cfg, key)
        if not 0.0 <= value < 1.0:
            raise UserError(f"Config key {key!r} must lie in [0, 1), not {value}.")
    if not 0.0 <= cfg.crop_p <= 1.0:
        raise UserError(f"Config key 'crop_p' must lie in [0, 1], not {cfg.crop_p}.")
    if cfg.window < 1:
        raise UserError(f"Config key 'window' must be at least 1, not {cfg.window}.")
    if cfg.out_tokens < 1:
        raise UserError(f"Config key 'out_tokens' must be at least 1, not {cfg.out_tokens}.")
    if cfg.train.batch_size < 2:
        raise UserError(
            f"Training key 'batch_size' is {cfg.train.batch_size}; contrastive learning needs at "
            "least 2 samples per batch (the other samples are the negatives)."
        )


def _training_device(cpu: bool) -> torch.device:
    if torch.cuda.is_available() and not cpu:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def build_encoder(
    cfg: ContrastConfig, mbm: MBMAutoencoder, towers: ClipTowers, num_voxels: int
) -> SpatiotemporalEncoder:
    """Inflate ``mbm`` (from ``cfg.encoder``) for ``cfg.window`` TRs (paper 3.3, B).

    ``cond_dim`` = CLIP's text hidden size (the UNet's cross-attention width: 768 for
    ViT-L/14 and SD-1.5); the pooled embedding gets a linear map to CLIP's ``projection_dim``
    when the two differ. An MBM trained on another voxel count (e.g. HCP only) is resized to
    ``num_voxels`` first (:func:`mindvideo.training.pretrain.resize_mbm`).
    """
    from mindvideo.training.pretrain import resize_mbm

    if mbm.config.num_voxels != num_voxels:
        logger.warning(
            "The MBM in %s was trained on %d voxels, the data has %d (padded); resizing it. "
            "Fine-tune the MBM on this subject (mindvideo pretrain finetune_data=...) first for "
            "better results.",
            cfg.encoder,
            mbm.config.num_voxels,
            num_voxels,
        )
        mbm = resize_mbm(mbm, num_voxels)
    cond_dim = towers.text_hidden_size
    pooled_dim = towers.projection_dim if towers.projection_dim != cond_dim else None
    torch.manual_seed(cfg.train.seed)  # a reproducible initialisation of the new parts
    return SpatiotemporalEncoder.from_mbm(
        mbm,
        window=cfg.window,
        out_tokens=cfg.out_tokens,
        cond_dim=cond_dim,
        pooled_dim=pooled_dim,
        dropout=cfg.dropout,
        drop_path=cfg.drop_path,
    )


@dataclass
class ContrastSetup:
    """Everything :func:`contrast` trains with, built from a config by :func:`build_contrast`.

    Attributes:
        towers: the frozen CLIP towers.
        model: the :class:`ContrastiveModel` (freshly inflated encoder + temperature).
        dataset: the augmented training triplets (:class:`ContrastiveDataset`).
        sampler: scene-aware batches of ``train.batch_size`` (full batches only).
        evaluator: retrieval on the test windows.
    """

    towers: ClipTowers
    model: ContrastiveModel
    dataset: ContrastiveDataset
    sampler: Any
    evaluator: RetrievalEvaluator


def build_contrast(cfg: ContrastConfig, empty_weights: bool = False) -> ContrastSetup:
    """Load CLIP and the MBM, inflate the encoder, and build the data of :func:`contrast`.

    ``empty_weights``: every model is built on the meta device, without weights (a dry run).
    """
    from mindvideo.data.captions import CaptionAugmenter
    from mindvideo.data.datasets import FMRIWindowDataset, SceneAwareBatchSampler
    from mindvideo.utils.dry_run import empty_weights as meta_device

    check_contrast_config(cfg)
    towers = load_clip(cfg.pretrained.clip, empty_weights)
    mbm = load_mbm(cfg.encoder, "encoder", empty_weights)  # type: ignore[arg-type]
    windows = {
        split: FMRIWindowDataset(
            cfg.data,  # type: ignore[arg-type]
            split=split,
            window=cfg.window,
            patch_size=int(mbm.config.patch_size),
            pad_mode=cfg.pad_mode,  # type: ignore[arg-type]
        )
        for split in ("train", "test")
    }
    with meta_device(empty_weights):
        encoder = build_encoder(cfg, mbm, towers, windows["train"].n_voxels_padded)
        temperature = LearnableTemperature()
    augmenter = CaptionAugmenter(
        p_synonym=cfg.caption_aug.p_synonym,
        p_swap=cfg.caption_aug.p_swap,
        lexicon=cfg.caption_aug.lexicon,
    )
    dataset = ContrastiveDataset(
        windows["train"],
        towers,
        sparsify=cfg.sparsify,
        crop_p=cfg.crop_p,
        caption_augmenter=augmenter,
        mode=cfg.mode,
        seed=cfg.train.seed,
    )
    sampler = SceneAwareBatchSampler(
        windows["train"], cfg.train.batch_size, seed=cfg.train.seed, drop_last=True
    )
    evaluator = RetrievalEvaluator(windows["test"], towers)
    logger.info(
        "Contrastive learning (mode %s): %d training windows of %d TRs × %d voxels, %d test "
        "windows (%d unique captions, %d scenes), encoder %.2f M parameters.",
        cfg.mode,
        len(dataset),
        cfg.window,
        windows["train"].n_voxels_padded,
        len(evaluator),
        len(evaluator.unique_captions),
        len(evaluator.unique_scenes),
        sum(p.numel() for p in encoder.parameters()) / 1e6,
    )
    model = ContrastiveModel(encoder, temperature)
    return ContrastSetup(towers, model, dataset, sampler, evaluator)


def contrast(
    cfg: ContrastConfig, out: str | os.PathLike, resume: str | os.PathLike | None = None
) -> ContrastResult:
    """Train the spatiotemporal fMRI encoder with multimodal contrastive learning (eq. 3).

    ``resume``: ``None`` (a fresh run), ``"latest"`` or a ``OUT/checkpoints/step_N`` folder.
    Writes the layout of the module docstring; returns a :class:`ContrastResult`.
    """
    check_contrast_config(cfg)
    out = Path(out)
    if resume is None and list_checkpoints(out):
        raise UserError(
            f"{out / CHECKPOINTS_DIR} already holds checkpoints of an earlier run; pass --resume "
            "latest to continue it, or use a new output directory."
        )
    setup = build_contrast(cfg)
    # Written once every input has been checked: a refused run leaves no output folder.
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    evaluator = setup.evaluator

    # Retrieval of the freshly inflated encoder (deterministic, so a resumed run gets the same).
    setup.model.to(_training_device(cfg.train.cpu))
    before = evaluator(setup.model.encoder)

    def save_fn(m: nn.Module, _out: Path) -> None:
        save_model_atomically(m.encoder, out / ENCODER_DIR)  # type: ignore[arg-type]
        logger.info("Saved the fMRI encoder to %s.", out / ENCODER_DIR)

    trainer = Trainer(
        setup.model,
        setup.dataset,
        contrastive_loss_fn(setup.towers, cfg.mode),
        cfg.train,
        out,
        batch_sampler=setup.sampler,
        eval_fn=evaluator.eval_fn,
        save_fn=save_fn,
    )
    trained = trainer.train(resume=resume)
    if evaluator.last is not None and evaluator.last[0] == cfg.train.max_steps:
        after = evaluator.last[1]
    else:  # resumed at max_steps: no evaluation ran
        after = evaluator(trained.encoder)  # type: ignore[arg-type]
    report = {
        "split": "test",
        "queries": len(evaluator),
        "window": cfg.window,
        "mode": cfg.mode,
        "steps": cfg.train.max_steps,
        "candidates": {
            "caption": len(evaluator.unique_captions),
            "image": len(evaluator.unique_scenes),
        },
        "chance": evaluator.chance,
        "before": before,
        "after": after,
        "definition": (
            "One query per test TR: its fMRI window (repetitions averaged). caption: candidates "
            "are the unique captions of the test windows' middle frames (CLIP text embeddings); "
            "image: candidates are the test scenes, each the mean CLIP image embedding of its "
            "windows' middle frames. A query is right when its own caption / scene is among the "
            "k most cosine-similar candidates (ties count against it)."
        ),
    }
    if trainer.is_main_process:
        atomic_write_text(out / RETRIEVAL_FILE, json.dumps(report, indent=2) + "\n")
        logger.info(
            "fMRI → caption top-1 on %d test windows: %.3f before, %.3f after (chance %.3f); "
            "fMRI → image (scene) top-1: %.3f before, %.3f after (chance %.3f).",
            len(evaluator),
            before["caption_top1"],
            after["caption_top1"],
            evaluator.chance["caption_top1"],
            before["image_top1"],
            after["image_top1"],
            evaluator.chance["image_top1"],
        )
    return ContrastResult(encoder_dir=out / ENCODER_DIR, retrieval=report)
