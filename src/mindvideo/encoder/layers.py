"""Transformer parts shared by the MBM autoencoder and the spatiotemporal encoder (paper 3.3).

A pre-norm ViT block (``norm1 → attention → residual``, ``norm2 → MLP → residual``) with the
parameter names of MinD-Vis and MinD-Video's release (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), so their checkpoints map onto ours key for key. Attention runs
through :func:`torch.nn.functional.scaled_dot_product_attention`; the softmax weights are formed
explicitly only when a caller asks to record them (paper 3.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed1D",
    "get_1d_sincos_pos_embed",
    "init_vit_weights",
]


def get_1d_sincos_pos_embed(embed_dim: int, length: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 1D sine-cosine position embedding of MAE / MinD-Vis (paper 3.3).

    Position ``l`` gets ``[sin(l·ω_0) … sin(l·ω_{D/2-1}), cos(l·ω_0) … cos(l·ω_{D/2-1})]`` with
    ``ω_i = 10000^(-2i/D)``. Computed in float64, returned as float32.

    Returns:
        ``[length, D]``, or ``[1 + length, D]`` with a leading all-zero row for the CLS token.
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos embedding, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    pos = torch.arange(length, dtype=torch.float64)  # [L]
    out = pos[:, None] * omega[None, :]  # [L, D/2]
    emb = torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [L, D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


class PatchEmbed1D(nn.Module):
    """1D patchifier + linear token embedding of fMRI (MinD-Vis): ``[N, V] → [N, V/p, D]``.

    A ``Conv1d`` with kernel = stride = ``p`` is a linear map applied to each patch of ``p``
    consecutive voxels; it is kept (instead of ``nn.Linear``) so MinD-Vis weights load unchanged.
    """

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv1d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[N, V]`` → tokens ``[N, L, D]`` with ``L = V / p``."""
        x = self.proj(x[:, None, :])  # [N, D, L]
        return x.transpose(1, 2)  # [N, L, D]


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, ...]``; identity in eval mode or when ``p == 0``."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer GELU MLP of a ViT block: ``D → hidden → D``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, T, D]`` → ``[B, T, D]``."""
        x = self.drop(self.act(self.fc1(x)))  # [B, T, hidden]
        return self.drop(self.fc2(x))  # [B, T, D]


class Attention(nn.Module):
    """Multi-head self-attention, ``softmax(QKᵀ/√d)·V`` (paper eqs. 1–2).

    Runs through ``scaled_dot_product_attention``; with ``return_attention=True`` the same result
    is computed explicitly so the attention weights can be returned (paper 3.5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: ``[B, T, D]`` → (``[B, T, D]``, attention ``[B, heads, T, T]`` or ``None``).

        The attention rows (last axis) sum to 1; they are the weights before attention dropout.
        """
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, d]
        drop = self.attn_drop if self.training else 0.0
        weights = None
        if return_attention:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # [B, H, T, T]
            weights = scores.softmax(dim=-1)  # [B, H, T, T]
            out = F.dropout(weights, p=drop) @ v  # [B, H, T, d]
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # [B, H, T, d]
        out = out.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.proj_drop(self.proj(out)), weights


class Block(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (MAE, MinD-Vis)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: ``[B, T, D]`` → ``[B, T, D]`` (and attention ``[B, heads, T, T]`` if asked)."""
        h, attn = self.attn(self.norm1(x), return_attention)  # [B, T, D]
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # [B, T, D]
        return (x, attn) if return_attention else x


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation for ``module.apply``: xavier-uniform Linear with zero bias, LayerNorm 1/0.

    The patch-embedding Conv1d is initialised like a Linear (xavier on its flattened weight).
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PatchEmbed1D):
        w = module.proj.weight  # [D, 1, p]
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(module.proj.bias)
