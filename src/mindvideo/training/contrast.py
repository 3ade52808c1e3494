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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from mindvideo.training.checkpoints import CHECKPOINTS_DIR, list_checkpoints
from mindvideo.training.clip_towers import ClipTowers, load_clip
from mindvideo.training.common import (
    is_main_process,
    load_mbm,
    sample_rng,
    save_model_atomically,
)
from mindvideo.training.engine import Trainer
from mindvideo.training.retrieval import RetrievalEvaluator
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
    "fit_linear_readout",
    "gather_with_grad",
    "load_clip",
    "random_crop",
    "sparsify_voxels",
    "training_conditions",
]

ENCODER_DIR = "fmri_encoder"
"""The trained encoder's folder inside the output directory."""
RETRIEVAL_FILE = "retrieval.json"
RETRIEVAL_DEFINITION = (
    "One query per test TR: its fMRI window (repetitions averaged). caption: candidates "
    "are the unique captions of the test windows' middle frames (CLIP text embeddings); "
    "image: candidates are the test scenes, each the mean CLIP image embedding of its "
    "windows' middle frames. A query is right when its own caption / scene is among the "
    "k most cosine-similar candidates (ties count against it). condition: the "
    "encoder's [77, d] conditioning tokens against each candidate caption's text "
    "condition (the text encoder's last hidden state, what the generator reads), both "
    "flattened and centred on the candidates' mean condition; condition_mse: the mean "
    "squared error against the query's own caption's condition, its 'chance' the error "
    "of the best constant condition."
)
CROP_SCALE = (0.5, 1.0)
"""Area fraction of the frame kept by the random crop (uniform in this range, aspect kept)."""


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

    def forward(self, fmri: torch.Tensor, with_tokens: bool = False) -> tuple[torch.Tensor, ...]:
        """``(pooled, ε)``; with ``with_tokens`` also the conditioning tokens ``[N, 77, d]``."""
        out = self.encoder(fmri)
        if with_tokens:
            return out.pooled, self.temperature(), out.embeddings
        return out.pooled, self.temperature()

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


def contrastive_loss_fn(towers: ClipTowers, mode: str = "both", condition_loss: float = 0.0):
    """The engine's loss function for eq. 3: ``loss_fn(model, batch) -> (loss, logs)``.

    ``batch``: ``fmri [N, w, V]`` and, as ``mode`` needs, ``input_ids`` / ``attention_mask``
    ``[N, 77]`` and ``pixel_values [N, 3, S, S]``. CLIP runs frozen on the batch's device.

    ``condition_loss`` > 0 adds ``condition_loss · MSE(tokens, c)``: the encoder's conditioning
    tokens ``[N, 77, d]`` against ``c``, the text encoder's last hidden state of the sample's
    caption (:meth:`ClipTowers.text_embeds_and_condition`) — the condition the generator was
    trained on.
    Eq. 3 aligns only the tokens' mean; this term makes every token what the UNet's
    cross-attention expects (the token-level alignment of MindEye's and Brain-Diffuser's
    regressions to CLIP's hidden states). It needs the captions (``mode`` ``both`` or
    ``text``).
    """

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        fmri = batch["fmri"]
        if towers.device != fmri.device:
            towers.to(fmri.device)
        getattr(model, "module", model).temperature.clamp_()  # CLIP clamps after each step
        logs: dict[str, torch.Tensor] = {}
        if condition_loss > 0:
            emb_f, scale, tokens = model(fmri, with_tokens=True)  # [N, D], scalar, [N, 77, d]
        else:
            emb_f, scale = model(fmri)  # [N, D], scalar
        emb_t = emb_i = target = None
        if condition_loss > 0:  # one text forward gives both (mode is both or text)
            emb_t, target = towers.text_embeds_and_condition(batch["input_ids"])
        elif mode in ("both", "text"):
            emb_t = towers.text_embeds(batch["input_ids"], batch["attention_mask"])  # [N, D]
        if mode in ("both", "image"):
            emb_i = towers.image_embeds(batch["pixel_values"])  # [N, D]
        emb_f = gather_with_grad(emb_f)
        emb_t, emb_i = _gather_no_grad(emb_t), _gather_no_grad(emb_i)
        loss = contrastive_loss(emb_f, emb_t, emb_i, scale, mode)
        if condition_loss > 0:
            mse = torch.nn.functional.mse_loss(tokens, target.to(tokens.dtype))  # [N, 77, d]
            logs["contrastive_loss"] = loss.detach()
            logs["condition_mse"] = mse.detach()
            loss = loss + condition_loss * mse
        logs["logit_scale"] = scale.detach()
        return loss, logs

    return loss_fn


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
    if cfg.condition_loss < 0:
        raise UserError(
            f"Config key 'condition_loss' must be at least 0, not {cfg.condition_loss}."
        )
    if cfg.condition_loss > 0 and cfg.mode == "image":
        raise UserError(
            "Config key 'condition_loss' regresses the encoder's tokens to the captions' text "
            "condition, but mode 'image' loads no captions; use mode 'both' or 'text', or set "
            "condition_loss: 0."
        )
    if cfg.linear_readout < 0:
        raise UserError(
            f"Config key 'linear_readout' must be at least 0, not {cfg.linear_readout}."
        )
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
        readout_rank=cfg.linear_readout,
    )


def training_conditions(windows: Any, towers: ClipTowers, batch_size: int = 64) -> torch.Tensor:
    """Every training window's caption condition ``[N, 77·d]`` float32, in window order: the
    text condition (:meth:`ClipTowers.encode_conditions`) of the caption that sums up the TR's
    clip (:func:`~mindvideo.data.captions.clip_caption`, as ``condition=caption`` uses), each
    distinct caption encoded once."""
    from mindvideo.data.captions import clip_caption

    captions = []
    for index in range(len(windows)):
        segment, _, t = windows.locate(index)
        captions.append(clip_caption(windows.captions[segment][t]))
    unique = sorted(set(captions))
    encoded = towers.encode_conditions(unique, batch_size).flatten(1).cpu()  # [U, 77·d]
    lookup = {c: i for i, c in enumerate(unique)}
    return encoded[[lookup[c] for c in captions]]


@torch.no_grad()
def fit_linear_readout(
    encoder: SpatiotemporalEncoder, windows: Any, towers: ClipTowers
) -> dict[str, float]:
    """Start the encoder's linear path from ridge regression on the training windows.

    The targets are the training captions' text conditions (:func:`training_conditions`),
    reduced to their first ``readout_rank`` principal components; ridge
    (:class:`~mindvideo.data.ridge.RidgeDecoder`, the penalty chosen per component by
    cross-validation over whole training segments) maps the encoder's own input — the
    normalised, padded window ``[w, V]``, flattened — to them. ``readout_in`` becomes the
    ridge map, ``readout_out`` the components and the mean condition, so the path alone gives
    the ridge's prediction of the condition; the head's projection is zeroed, so training starts
    there (a zero-initialised branch, as ControlNet's). Test windows are never read.
    """
    from mindvideo.data.ridge import DEFAULT_ALPHAS, RidgeDecoder

    rank = int(encoder.config.readout_rank)
    located = [windows.locate(i) for i in range(len(windows))]  # (segment, repetition, TR)
    fmri = np.stack([windows.fmri_window(s, t, r) for s, r, t in located])
    fmri = fmri.reshape(len(located), -1)  # [N, w·V]
    groups = np.array([s for s, _, _ in located])
    targets = training_conditions(windows, towers)  # [N, 77·d]
    mean = targets.mean(dim=0)
    centred = targets - mean
    rank = min(rank, *centred.shape)
    torch.manual_seed(0)
    _, _, components = torch.svd_lowrank(centred, q=min(rank + 10, *centred.shape), niter=4)
    basis = components[:, :rank]  # [77·d, K]
    scores = (centred @ basis).numpy()  # [N, K]
    ridge = RidgeDecoder(alphas=DEFAULT_ALPHAS, folds=5).fit(fmri, scores, groups)
    weight, offset = ridge.linear_map()  # [w·V, K], [K]
    dtype = encoder.readout_in.weight.dtype
    encoder.readout_in.weight.copy_(torch.from_numpy(weight.T).to(dtype))
    encoder.readout_in.bias.copy_(torch.from_numpy(offset).to(dtype))
    encoder.readout_out.weight.copy_(basis.to(dtype))
    encoder.readout_out.bias.copy_(mean.to(dtype))
    encoder.proj_head.projection.weight.zero_()
    explained = float((centred @ basis).pow(2).sum() / centred.pow(2).sum())
    logger.info(
        "Linear readout: ridge from %d training windows (%d values) to the first %d principal "
        "components of their captions' conditions (%.0f%% of their variance); median penalty "
        "%.3g.",
        *fmri.shape,
        rank,
        100 * explained,
        float(np.median(ridge.alphas_)),
    )
    return {"components_variance": explained, "median_alpha": float(np.median(ridge.alphas_))}


@dataclass
class ContrastSetup:
    """Everything :func:`contrast` trains with, built from a config by :func:`build_contrast`.

    Attributes:
        towers: the frozen CLIP towers.
        model: the :class:`ContrastiveModel` (freshly inflated encoder + temperature).
        dataset: the augmented training triplets (:class:`ContrastiveDataset`).
        sampler: scene-aware batches of ``train.batch_size`` (full batches only).
        evaluator: retrieval on the test windows.
        shared: with ``subjects``: the subjects and their pooled training data
            (:mod:`mindvideo.training.shared`); else ``None``.
    """

    towers: ClipTowers
    model: ContrastiveModel
    dataset: ContrastiveDataset
    sampler: Any
    evaluator: RetrievalEvaluator
    shared: Any = None


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
    shared, data = None, cfg.data
    if cfg.subjects:
        from mindvideo.training.shared import open_subjects, subjects_folder

        shared = open_subjects(
            cfg.data,  # type: ignore[arg-type]
            cfg.subjects,
            adapters_from=subjects_folder(cfg.encoder),  # a shared pretrain's, when it was one
            fit=not empty_weights,
        )
        data = shared.pooled
    windows = {
        split: FMRIWindowDataset(
            data,  # type: ignore[arg-type]
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
    if cfg.linear_readout > 0 and not empty_weights:
        fit_linear_readout(encoder, windows["train"], towers)
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
    return ContrastSetup(towers, model, dataset, sampler, evaluator, shared)


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
        if setup.shared is not None:  # the adapters, for cotrain and the pipeline folder
            from mindvideo.pipeline.shared import save_subjects

            save_subjects(setup.shared.subjects, out)
    evaluator = setup.evaluator

    # Retrieval of the freshly inflated encoder (deterministic, so a resumed run gets the same).
    setup.model.to(_training_device(cfg.train.cpu))
    before = evaluator(setup.model.encoder)

    def retrieval_report(model: nn.Module) -> dict[str, Any]:
        if evaluator.last is not None and evaluator.last[0] == cfg.train.max_steps:
            after = evaluator.last[1]
        else:  # resumed at max_steps: no evaluation ran
            after = evaluator(model.encoder)  # type: ignore[arg-type]
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
            "definition": RETRIEVAL_DEFINITION,
        }
        return report

    written: dict[str, Any] = {}

    def save_fn(m: nn.Module, _out: Path) -> None:
        # The report first: the encoder's folder marks the stage finished, so an interrupt
        # between the two cannot leave a finished-looking run without its report.
        written["report"] = retrieval_report(m)
        atomic_write_text(out / RETRIEVAL_FILE, json.dumps(written["report"], indent=2) + "\n")
        save_model_atomically(m.encoder, out / ENCODER_DIR)  # type: ignore[arg-type]
        logger.info("Saved the fMRI encoder to %s.", out / ENCODER_DIR)

    trainer = Trainer(
        setup.model,
        setup.dataset,
        contrastive_loss_fn(setup.towers, cfg.mode, cfg.condition_loss),
        cfg.train,
        out,
        batch_sampler=setup.sampler,
        eval_fn=evaluator.eval_fn,
        save_fn=save_fn,
    )
    trained = trainer.train(resume=resume)
    report = written.get("report") or retrieval_report(trained)  # the other processes'
    after = report["after"]
    if trainer.is_main_process:
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
        if "condition_top1" in after:
            logger.info(
                "Conditioning tokens → caption top-1: %.3f before, %.3f after (chance %.3f); "
                "MSE to the caption's text condition %.3f after (a constant condition: %.3f).",
                before["condition_top1"],
                after["condition_top1"],
                evaluator.chance["condition_top1"],
                after["condition_mse"],
                evaluator.chance["condition_mse"],
            )
    return ContrastResult(encoder_dir=out / ENCODER_DIR, retrieval=report)
