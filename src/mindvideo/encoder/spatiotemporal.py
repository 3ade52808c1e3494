"""The spatiotemporal fMRI encoder: the MBM encoder inflated over a window of TRs (paper 3.3).

Input: a window of ``w`` consecutive fMRI frames ``[N, w, V]``. Each TR is patchified and embedded
exactly as in MBM pretraining (``[N, w, L, D]``); a learned temporal position embedding marks the
TR. Every block then runs

1. spatial attention over one TR's patches, batch and window merged: ``[N·w, L, D]`` (eq. 1);
2. temporal attention across the window per patch position, batch and patches merged:
   ``[N·L, w, D]`` (eq. 2), a new pre-norm residual branch (``norm_temp``, ``attn_temp``);
3. the MLP.

A projection head maps the ``w·L`` tokens of width ``D`` to the ``77 × cond_dim`` conditioning
tokens of the text encoder the diffusion UNet expects (MinD-Video's release head): a linear map
over the token axis ``w·L → 77``, then a residual GELU MLP ``D → cond_dim``. The pooled embedding
for contrastive learning (eq. 3) is the mean of those 77 tokens.

Inflation (:meth:`SpatiotemporalEncoder.from_mbm`) copies the MBM encoder and zero-initialises the
temporal attention's output projection and the temporal position embedding, so a freshly
inflated encoder computes, for every TR, exactly the MBM encoder's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from mindvideo.encoder.layers import (
    Attention,
    Block,
    PatchEmbed1D,
    get_1d_sincos_pos_embed,
    init_vit_weights,
)
from mindvideo.encoder.mbm import MBMAutoencoder, check_patching
from mindvideo.utils import UserError

__all__ = [
    "ProjectionHead",
    "SpatiotemporalBlock",
    "SpatiotemporalEncoder",
    "SpatiotemporalEncoderOutput",
]

#: The MBM's settings an inflated encoder keeps: they shape the spatial weights it copies.
MBM_ENCODER_SETTINGS = (
    "num_voxels",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "use_cls_token",
)


@dataclass
class SpatiotemporalEncoderOutput(BaseOutput):
    """Output of :class:`SpatiotemporalEncoder`.

    Attributes:
        embeddings: conditioning tokens ``[N, out_tokens, cond_dim]`` (``[N, 77, 768]`` for SD-1.5).
        pooled: pooled embedding for contrastive learning ``[N, pooled_dim or cond_dim]``.
        spatial_attentions: with ``output_attentions``: one tensor per recorded layer,
            ``[N·w, heads, T, T]`` (``[N·w, T, T]`` if head-averaged), ``T = P + L`` where
            ``P = num_prefix_tokens`` (1: position 0 is the CLS token).
        temporal_attentions: likewise ``[N·T, heads, w, w]`` (``[N·T, w, w]`` if head-averaged);
            row ``n·T + j`` is sample ``n``, token position ``j``.
        attention_layers: indices of the recorded layers.
    """

    embeddings: torch.Tensor
    pooled: torch.Tensor | None = None
    spatial_attentions: tuple[torch.Tensor, ...] | None = None
    temporal_attentions: tuple[torch.Tensor, ...] | None = None
    attention_layers: tuple[int, ...] | None = None


class SpatiotemporalBlock(Block):
    """A ViT block with a temporal attention branch between spatial attention and MLP (eqs. 1–2).

    The spatial parts (``norm1``, ``attn``, ``norm2``, ``mlp``) have the names and shapes of an
    MBM :class:`~mindvideo.encoder.layers.Block`, so MBM weights load into them unchanged.
    """

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
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path)
        self.norm_temp = nn.LayerNorm(dim)
        self.attn_temp = Attention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)

    def forward(
        self, x: torch.Tensor, window: int, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ``[N·w, T, D]`` (TRs of one sample consecutive) → ``[N·w, T, D]``.

        With ``return_attention``, also the spatial ``[N·w, H, T, T]`` and temporal
        ``[N·T, H, w, w]`` attention weights.
        """
        NW, T, D = x.shape
        N = NW // window
        # eq. 1: spatial attention within each TR
        h, attn_spat = self.attn(self.norm1(x), return_attention)  # [N·w, T, D]
        x = x + self.drop_path(h)
        # eq. 2: temporal attention within each patch position
        xt = x.reshape(N, window, T, D).transpose(1, 2).reshape(N * T, window, D)  # [N·T, w, D]
        h, attn_temp = self.attn_temp(self.norm_temp(xt), return_attention)  # [N·T, w, D]
        xt = xt + self.drop_path(h)
        x = xt.reshape(N, T, window, D).transpose(1, 2).reshape(NW, T, D)  # [N·w, T, D]
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # [N·w, T, D]
        return (x, attn_spat, attn_temp) if return_attention else x


class ProjectionHead(nn.Module):
    """Encoder tokens ``[N, w·L, D]`` → conditioning tokens ``[N, out_tokens, cond_dim]``.

    As in MinD-Video's release: ``channel_mapper`` (a bias-free linear map over the token axis,
    ``w·L → out_tokens``: each output token is a learned mix of all patches of all TRs) →
    ``projection`` ``D → cond_dim`` → ``+ dropout(fc(GELU(·)))`` residual → optional LayerNorm.
    """

    def __init__(
        self,
        in_tokens: int,
        out_tokens: int,
        in_dim: int,
        out_dim: int,
        dropout: float = 0.0,
        output_norm: bool = False,
    ):
        super().__init__()
        self.channel_mapper = nn.Linear(in_tokens, out_tokens, bias=False)
        self.projection = nn.Linear(in_dim, out_dim, bias=False)
        self.act = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim) if output_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: ``[N, w·L, D]`` → ``[N, out_tokens, cond_dim]``."""
        x = self.channel_mapper(tokens.transpose(1, 2)).transpose(1, 2)  # [N, 77, D]
        projected = self.projection(x)  # [N, 77, cond]
        x = projected + self.dropout(self.fc(self.act(projected)))  # [N, 77, cond]
        return self.layer_norm(x)


class SpatiotemporalEncoder(ModelMixin, ConfigMixin):
    """fMRI encoder with spatiotemporal attention over a window of TRs (paper 3.3, eqs. 1–2).

    Saved in a pipeline folder's ``fmri_encoder/`` with ``save_pretrained``; usually made from a
    pretrained MBM with :meth:`from_mbm`.

    Args:
        num_voxels, patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, use_cls_token:
            the MBM encoder's settings (see :class:`~mindvideo.encoder.mbm.MBMAutoencoder`).
        window: ``w``, TRs per fMRI window the head is built for (paper: 2).
        max_window: rows of the temporal position embedding: the longest window
            :meth:`forward_sliding` accepts (longer videos from longer fMRI windows).
        out_tokens: conditioning tokens (77, the CLIP text length).
        cond_dim: conditioning width, the text encoder's hidden size (768 for SD-1.5).
        pooled_dim: if set, a bias-free linear map ``cond_dim → pooled_dim`` after mean pooling
            (for CLIP models whose projection width differs from ``cond_dim``); else identity.
        dropout: dropout in the projection head (paper: 0.6 in contrastive training).
        drop_path: stochastic-depth rate of every residual branch (spatial, temporal, MLP).
            MinD-Video's release passes its one dropout value (0.6) both here and to the head.
        output_norm: a LayerNorm on the conditioning tokens (off in the release).
        readout_rank: if > 0, a linear path from the flattened fMRI window to the conditioning
            tokens, added to the head's output: ``readout_out(readout_in(fmri))``, ``w·V →
            readout_rank → out_tokens·cond_dim`` (not in the release; 0 = the paper's encoder).
            ``mindvideo contrast`` with ``linear_readout`` starts it from a ridge fit on the
            training split; a fresh one adds zero.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_voxels: int = 4096,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = True,
        use_cls_token: bool = True,
        window: int = 2,
        max_window: int = 8,
        out_tokens: int = 77,
        cond_dim: int = 768,
        pooled_dim: int | None = None,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        output_norm: bool = False,
        readout_rank: int = 0,
    ):
        super().__init__()
        L = check_patching(num_voxels, patch_size)
        if not 1 <= window <= max_window:
            raise UserError(
                f"The encoder's window ({window} TRs) must lie between 1 and max_window "
                f"({max_window}); raise max_window in the encoder config."
            )
        self.num_patches = L
        self.num_prefix_tokens = 1 if use_cls_token else 0
        self.gradient_checkpointing = False

        self.patch_embed = PatchEmbed1D(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        self.register_buffer(
            "pos_embed", get_1d_sincos_pos_embed(embed_dim, L, use_cls_token), persistent=False
        )  # [P + L, D], fixed
        self.temporal_pos_embed = nn.Parameter(torch.zeros(max_window, embed_dim))  # [w_max, D]
        self.blocks = nn.ModuleList(
            [
                SpatiotemporalBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=drop_path)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_head = ProjectionHead(
            window * L, out_tokens, embed_dim, cond_dim, dropout, output_norm
        )
        self.pool_proj = nn.Linear(cond_dim, pooled_dim, bias=False) if pooled_dim else None
        self.readout_in = self.readout_out = None
        if readout_rank > 0:
            self.readout_in = nn.Linear(window * num_voxels, readout_rank)
            self.readout_out = nn.Linear(readout_rank, out_tokens * cond_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation, then zeros for the temporal output projections and position
        embedding, so the temporal branches start as the identity."""
        self.apply(init_vit_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.temporal_pos_embed)
        for blk in self.blocks:
            nn.init.zeros_(blk.attn_temp.proj.weight)
            nn.init.zeros_(blk.attn_temp.proj.bias)
        if self.readout_out is not None:  # a fresh linear path adds nothing
            nn.init.zeros_(self.readout_out.weight)
            nn.init.zeros_(self.readout_out.bias)

    # ------------------------------------------------------------------ inflation
    @classmethod
    def from_mbm(
        cls,
        mbm: MBMAutoencoder,
        window: int = 2,
        max_window: int | None = None,
        **settings: Any,
    ) -> SpatiotemporalEncoder:
        """Inflate a (pretrained) MBM encoder to a window of ``w`` TRs (paper 3.3, B).

        Copies the patch embedding, CLS token, every block's spatial attention, MLP and norms, and
        the final norm; the temporal attention, temporal position embedding and projection head
        are new (temporal output projections and position embedding zero). The MBM decoder is
        dropped. ``max_window`` defaults to ``max(8, window)``; ``settings`` are the encoder's
        other constructor arguments (``out_tokens``, ``cond_dim``, ``pooled_dim``, ``dropout``,
        ``drop_path``, ``output_norm``), the shape of the spatial part coming from the MBM.
        """
        spatial = {key: mbm.config[key] for key in MBM_ENCODER_SETTINGS}
        max_window = max_window if max_window is not None else max(8, window)
        model = cls(**spatial, window=window, max_window=max_window, **settings)
        encoder_keys = ("patch_embed.", "cls_token", "blocks.", "norm.")
        state = {k: v for k, v in mbm.state_dict().items() if k.startswith(encoder_keys)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        new_parts = (
            ".norm_temp.",
            ".attn_temp.",
            "temporal_pos_embed",
            "proj_head.",
            "pool_proj",
            "readout_",
        )
        not_new = [k for k in missing if not any(part in k for part in new_parts)]
        if unexpected or not_new:  # would mean the two classes disagree on parameter names
            raise RuntimeError(
                f"MBM → spatiotemporal copy: unexpected {unexpected}, missing {not_new}"
            )
        model.to(mbm.device)
        if mbm.dtype != model.dtype:
            model.to(mbm.dtype)
        return model

    # ------------------------------------------------------------------ forward
    def _check_input(self, fmri: torch.Tensor, exact_window: bool) -> None:
        c = self.config
        if fmri.ndim != 3 or fmri.shape[2] != c.num_voxels:
            raise UserError(
                f"The fMRI encoder expects fMRI windows of shape [N, w, {c.num_voxels}] "
                f"(num_voxels in its config.json) but got {list(fmri.shape)}."
            )
        w = fmri.shape[1]
        if exact_window and w != c.window:
            raise UserError(
                f"The fMRI encoder was built for windows of {c.window} TRs but got {w}; use "
                "windows of that size (data window setting) or forward_sliding for longer ones."
            )
        if not 1 <= w <= c.max_window:
            raise UserError(
                f"The fMRI window has {w} TRs but the encoder's temporal position embedding "
                f"covers at most max_window = {c.max_window}; use shorter windows."
            )

    def forward_encoder(
        self,
        fmri: torch.Tensor,
        output_attentions: bool = False,
        attention_layers: Sequence[int] | None = None,
        average_heads: bool = False,
    ) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor], list[int]] | None]:
        """Spatiotemporal transformer over a window: fmri ``[N, W, V]`` → tokens ``[N, W, L, D]``.

        Any ``1 ≤ W ≤ max_window`` works here (only the head is tied to ``window``). The CLS
        token, if any, attends like any token but is dropped from the output.

        Returns:
            tokens ``[N, W, L, D]`` and, with ``output_attentions``, (spatial maps, temporal maps,
            recorded layer indices) — see :class:`SpatiotemporalEncoderOutput`.
        """
        self._check_input(fmri, exact_window=False)
        N, W, V = fmri.shape
        P = self.num_prefix_tokens
        x = self.patch_embed(fmri.reshape(N * W, V)) + self.pos_embed[P:]  # [N·W, L, D]
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:1]).expand(N * W, -1, -1)  # [N·W, 1, D]
            x = torch.cat([cls, x], dim=1)  # [N·W, T, D], T = P + L
        T, D = x.shape[1], x.shape[2]
        x = x.reshape(N, W, T, D) + self.temporal_pos_embed[:W, None, :]  # [N, W, T, D]
        x = x.reshape(N * W, T, D)

        record: set[int] = set()
        if output_attentions:
            depth = len(self.blocks)
            layers = range(depth) if attention_layers is None else attention_layers
            record = {i % depth for i in layers}  # negative indices count from the end
        spatial, temporal = [], []
        for i, blk in enumerate(self.blocks):
            if i in record:
                x, a_s, a_t = blk(x, W, return_attention=True)
                if average_heads:
                    a_s, a_t = a_s.mean(dim=1), a_t.mean(dim=1)
                spatial.append(a_s)  # [N·W, H, T, T]
                temporal.append(a_t)  # [N·T, H, W, W]
            elif torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(blk, x, W)
            else:
                x = blk(x, W)
        x = self.norm(x).reshape(N, W, T, D)[:, :, P:]  # [N, W, L, D]
        attentions = (spatial, temporal, sorted(record)) if output_attentions else None
        return x, attentions

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[N, w, L, D]`` (``w = window``) → conditioning tokens ``[N, 77, cond_dim]``."""
        N, W, L, D = tokens.shape
        return self.proj_head(tokens.reshape(N, W * L, D))  # [N, 77, cond]

    def pool(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Pooled fMRI embedding for eq. 3: mean over tokens ``[N, 77, cond]`` → ``[N, pooled]``."""
        pooled = embeddings.mean(dim=1)  # [N, cond]
        return self.pool_proj(pooled) if self.pool_proj is not None else pooled

    def forward(
        self,
        fmri: torch.Tensor,
        output_attentions: bool = False,
        attention_layers: Sequence[int] | None = None,
        average_heads: bool = False,
        return_dict: bool = True,
    ) -> SpatiotemporalEncoderOutput | tuple:
        """Encode fMRI windows to conditioning tokens (paper 3.3).

        Args:
            fmri: ``[N, w, V]`` with ``w = config.window``.
            output_attentions: also return the attention weights (paper 3.5), computed
                explicitly in the recorded layers only (the others still use SDPA).
            attention_layers: layers to record (default all; e.g. ``(0, depth // 2, -1)`` for
                the paper's first, middle, last).
            average_heads: return head-averaged maps (``[B, T, T]``), ``heads`` times smaller.
            return_dict: return a :class:`SpatiotemporalEncoderOutput`, else a tuple
                ``(embeddings, pooled[, spatial, temporal, layers])``.

        Returns:
            embeddings ``[N, 77, cond_dim]``, pooled ``[N, pooled_dim or cond_dim]``, attentions.
        """
        self._check_input(fmri, exact_window=True)
        tokens, attentions = self.forward_encoder(
            fmri, output_attentions, attention_layers, average_heads
        )  # [N, w, L, D]
        embeddings = self.forward_head(tokens)  # [N, 77, cond]
        if self.readout_in is not None:
            embeddings = embeddings + self.readout(fmri)
        pooled = self.pool(embeddings)  # [N, pooled]
        spatial = temporal = layers = None
        if attentions is not None:
            spatial, temporal, layers = (tuple(a) for a in attentions)
        if not return_dict:
            extra = (spatial, temporal, layers) if attentions is not None else ()
            return (embeddings, pooled, *extra)
        return SpatiotemporalEncoderOutput(embeddings, pooled, spatial, temporal, layers)

    def encode_pooled(self, fmri: torch.Tensor) -> torch.Tensor:
        """fmri ``[N, w, V]`` → pooled embedding ``[N, pooled_dim or cond_dim]``, differentiable."""
        return self(fmri).pooled

    def forward_sliding(self, fmri: torch.Tensor) -> torch.Tensor:
        """Longer fMRI windows → one conditioning per sub-window (paper: longer videos).

        Temporal attention runs across all ``W`` TRs at once (``W ≤ max_window``); the head is
        then applied to each run of ``window`` consecutive TRs.

        Args:
            fmri: ``[N, W, V]`` with ``window ≤ W ≤ max_window``.

        Returns:
            ``[N, W - window + 1, 77, cond_dim]``; entry ``s`` conditions TRs ``s … s+window-1``.
        """
        w = self.config.window
        if fmri.ndim == 3 and fmri.shape[1] < w:
            raise UserError(
                f"forward_sliding needs at least window = {w} TRs but got {fmri.shape[1]}."
            )
        tokens, _ = self.forward_encoder(fmri)  # [N, W, L, D]
        N, W = tokens.shape[:2]
        subs = tokens.unfold(1, w, 1)  # [N, W-w+1, L, D, w]
        subs = subs.permute(0, 1, 4, 2, 3).reshape(N * (W - w + 1), w, *tokens.shape[2:])
        out = self.forward_head(subs)  # [N·S, 77, cond]
        if self.readout_in is not None:
            windows = fmri.unfold(1, w, 1).permute(0, 1, 3, 2)  # [N, W-w+1, w, V]
            out = out + self.readout(windows.reshape(N * (W - w + 1), w, -1))
        return out.reshape(N, W - w + 1, *out.shape[1:])  # [N, S, 77, cond]

    def readout(self, fmri: torch.Tensor) -> torch.Tensor:
        """The linear path (``readout_rank`` > 0): windows ``[N, w, V]`` → ``[N, 77, cond]``."""
        if self.readout_in is None or self.readout_out is None:
            raise RuntimeError("this encoder has no linear readout (readout_rank 0)")
        c = self.config
        out = self.readout_out(self.readout_in(fmri.reshape(fmri.shape[0], -1)))
        return out.reshape(fmri.shape[0], c.out_tokens, c.cond_dim)
