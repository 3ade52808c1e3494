"""Losses of the fMRI encoder: masked MSE (MBM) and the contrastive language-image-fMRI loss.

Paper 3.3, eq. 3::

    L = (L_CLIP(emb_f, emb_t) + L_CLIP(emb_f, emb_i)) / 2,
    L_CLIP(a, b) = CrossEntropy(ε · a·bᵀ, [0, 1, …, n-1])

Eq. 3 as printed is one-directional (each fMRI picks its caption among the batch). CLIP itself,
which the paper cites for the loss, averages both directions (each caption also picks its fMRI);
:func:`clip_loss` is symmetric by default and one-directional with ``symmetric=False``. The scale
``ε`` is CLIP's learnable temperature, :class:`LearnableTemperature`.

Everything here is a pure function of its tensors except :class:`LearnableTemperature`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.utils import UserError

__all__ = [
    "CONTRASTIVE_MODES",
    "LearnableTemperature",
    "clip_loss",
    "contrastive_loss",
    "masked_mse",
    "retrieval_top1",
    "retrieval_topk",
]

CONTRASTIVE_MODES = ("both", "text", "image")
"""Which CLIP embeddings the fMRI is contrasted with (Table 1: full, text-fMRI, image-fMRI)."""


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only (MBM, paper 3.3).

    Args:
        pred, target: ``[N, L, p]``.
        mask: ``[N, L]``, 1 where the patch was masked (counts), 0 where visible (ignored).

    Returns:
        scalar: ``Σ mask · mean_p (pred - target)² / Σ mask``; 0 when nothing is masked.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    symmetric: bool = True,
) -> torch.Tensor:
    """CLIP loss between paired embeddings (paper eq. 3, ``L_CLIP``).

    Args:
        a, b: ``[N, D]``; row ``i`` of ``a`` is paired with row ``i`` of ``b``. They are
            L2-normalised here, so ``a·bᵀ`` is the cosine-similarity matrix.
        logit_scale: ``ε``, the multiplier of the similarities (``1 / temperature``); a scalar
            tensor (e.g. from :class:`LearnableTemperature`) or a float.
        symmetric: average the ``a → b`` and ``b → a`` cross-entropies (CLIP). ``False`` gives
            eq. 3 literally, ``CrossEntropy(ε a·bᵀ, [0 … n-1])``.

    Returns:
        scalar loss.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"clip_loss needs two [N, D] tensors of one shape, got {a.shape}, {b.shape}"
        )
    a = F.normalize(a, dim=-1)  # [N, D]
    b = F.normalize(b.to(a.dtype), dim=-1)  # [N, D]
    logits = logit_scale * (a @ b.T)  # [N, N]
    labels = torch.arange(a.shape[0], device=a.device)  # [N]
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


def contrastive_loss(
    emb_f: torch.Tensor,
    emb_t: torch.Tensor | None,
    emb_i: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    mode: str = "both",
    symmetric: bool = True,
) -> torch.Tensor:
    """Contrastive language-image-fMRI loss (paper eq. 3 and its Table 1 ablations).

    Args:
        emb_f: pooled fMRI embeddings ``[N, D]``.
        emb_t: pooled CLIP text embeddings ``[N, D]`` (may be ``None`` when ``mode="image"``).
        emb_i: CLIP image embeddings ``[N, D]`` (may be ``None`` when ``mode="text"``).
        logit_scale: ``ε`` of eq. 3.
        mode: ``"both"`` = ``(L_text + L_image) / 2`` (the full model), ``"text"`` = text-fMRI
            only, ``"image"`` = image-fMRI only. The "no contrast" ablation has no loss: the
            training recipe skips the contrastive stage instead.

    Returns:
        scalar loss.
    """
    if mode not in CONTRASTIVE_MODES:
        raise UserError(
            f"Unknown contrastive mode {mode!r}; choose one of {', '.join(CONTRASTIVE_MODES)} "
            "(to train without contrast, skip the contrast stage)."
        )
    losses = []
    for name, other in (("text", emb_t), ("image", emb_i)):
        if mode in (name, "both"):
            if other is None:
                raise ValueError(f"contrastive mode {mode!r} needs the {name} embeddings")
            losses.append(clip_loss(emb_f, other, logit_scale, symmetric))
    return sum(losses) / len(losses)


class LearnableTemperature(nn.Module):
    """CLIP's learnable logit scale ``ε = exp(s)``, initialised to ``1 / 0.07`` and capped at 100.

    The returned scale is clamped at ``max_scale`` on every call; :meth:`clamp_` also clamps the
    stored parameter (CLIP does this after each optimiser step) so it cannot drift past the cap.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.max_log_scale = math.log(max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> torch.Tensor:
        """Returns the scalar ``ε`` (a 0-dim tensor)."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the parameter to ``[0, log(max_scale)]`` in place (call after optimiser steps)."""
        self.log_scale.clamp_(0.0, self.max_log_scale)


@torch.no_grad()
def retrieval_topk(a: torch.Tensor, b: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows ``i`` whose partner ``b[i]`` is among the ``k`` cosine-nearest of ``a[i]``.

    Args:
        a: queries ``[N, D]``; b: candidates ``[N, D]``, ``b[i]`` the correct one for ``a[i]``.

    Returns:
        accuracy in ``[0, 1]``; chance is ``k / N``.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"retrieval needs two [N, D] tensors of one shape, got {a.shape}, {b.shape}"
        )
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # [N, N]
    correct = sim.diagonal()[:, None]  # [N, 1]
    # rank = how many other candidates are at least as similar as the right one: ties count
    # against it, so collapsed (all-equal) embeddings score 0 rather than 1
    rank = (sim >= correct).sum(dim=1) - 1  # [N]
    return (rank < k).float().mean().item()


def retrieval_top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Top-1 accuracy of retrieving ``b[i]`` from ``a[i]`` by cosine similarity; chance ``1/N``."""
    return retrieval_topk(a, b, k=1)
