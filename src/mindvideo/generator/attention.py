"""Attention for the inflated video UNet (paper 3.4, eq. 4; Tune-A-Video's network inflation).

Frames are folded into the batch for every 2D layer, so a transformer block sees
``hidden_states: [B·F, L, D]`` (L = H·W latent positions of one frame). The number of frames F
travels in ``cross_attention_kwargs["num_frames"]``, diffusers' own channel from the UNet's
``forward`` to every attention processor; :class:`~mindvideo.generator.VideoUNet` puts it there.

- ``attn1`` runs :class:`SparseCausalAttnProcessor`: frame i's queries attend to the keys and
  values of frames ``max(i−2, 0)`` and ``max(i−1, 0)`` (scene-dynamic sparse causal attention).
- ``attn2`` (cross-attention to the condition tokens) runs :class:`FrameAttnProcessor`: ordinary
  per-frame attention that accepts ``num_frames`` so diffusers does not warn about it.
- :class:`VideoTransformerBlock` is diffusers' ``BasicTransformerBlock`` followed by a temporal
  attention layer (``norm_temp`` + ``attn_temp``) across the F frames at each latent position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

__all__ = [
    "FrameAttnProcessor",
    "SparseCausalAttnProcessor",
    "VideoTransformerBlock",
    "sparse_causal_frame_indices",
]


def sparse_causal_frame_indices(
    num_frames: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The frames each frame's self-attention reads (paper 3.4, eq. 4), clamped at frame 0.

    Returns ``[F, 2]`` long: row i is ``(max(i−2, 0), max(i−1, 0))``. Frame 0 reads (0, 0), only
    itself; frame 1 reads (0, 0), only frame 0; frame i ≥ 2 reads frames i−2 and i−1 and not
    itself. These are the indices the authors' released code uses.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    i = torch.arange(num_frames, device=device)
    return torch.stack([(i - 2).clamp(min=0), (i - 1).clamp(min=0)], dim=1)


def _gather_previous_frames(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``x: [B·F, L, D]`` → ``[B·F, 2L, D]``: per frame, the tokens of its two source frames."""
    num_frames = frames.shape[0]
    x = x.unflatten(0, (-1, num_frames))  # [B, F, L, D]
    x = x[:, frames]  # [B, F, 2, L, D]
    return x.flatten(2, 3).flatten(0, 1)


def _require_num_frames(num_frames: int | None, batch_frames: int, where: str) -> int:
    if num_frames is None:
        raise ValueError(
            f"{where} needs num_frames in cross_attention_kwargs; call the VideoUNet (it passes "
            "num_frames) rather than its 2D parts, or pass "
            "cross_attention_kwargs={'num_frames': F}."
        )
    if num_frames < 1 or batch_frames % num_frames:
        raise ValueError(
            f"{where}: a batch of {batch_frames} frame latents is not a whole number of videos of "
            f"num_frames={num_frames}."
        )
    return num_frames


class SparseCausalAttnProcessor:
    """Scene-dynamic sparse causal (SC) attention for ``attn1`` (paper 3.4, eq. 4).

    ``Q = W^Q z_i``, ``K = W^K [z_{i−2}, z_{i−1}]``, ``V = W^V [z_{i−2}, z_{i−1}]`` with frame
    indices clamped at 0 (see :func:`sparse_causal_frame_indices`). Keys and values are projected
    once per frame and then gathered, so the cost over per-frame self-attention is only the
    doubled key length. Frame i's output never depends on a frame after i, nor on frames before
    i−2. When all frames are identical this equals ordinary self-attention (a repeated key set
    leaves softmax attention unchanged), which is why an inflated UNet fed a still video
    reproduces the 2D UNet.

    hidden_states: ``[B·F, L, D]`` → ``[B·F, L, D]``.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "sparse causal attention is self-attention over frames; it takes neither "
                "encoder_hidden_states nor an attention_mask."
            )
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError(
                "SparseCausalAttnProcessor serves the attn1 of a transformer block on [B·F, L, D] "
                "tokens; this Attention layer is a different kind."
            )
        batch_frames, length, _ = hidden_states.shape
        num_frames = _require_num_frames(num_frames, batch_frames, "sparse causal attention")
        residual = hidden_states

        query = attn.to_q(hidden_states)  # [B·F, L, inner]
        frames = sparse_causal_frame_indices(num_frames, device=hidden_states.device)
        key = _gather_previous_frames(attn.to_k(hidden_states), frames)  # [B·F, 2L, inner]
        value = _gather_previous_frames(attn.to_v(hidden_states), frames)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)  # [B·F, h, L, d]
        out = out.transpose(1, 2).reshape(batch_frames, length, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))  # projection, dropout
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FrameAttnProcessor(AttnProcessor2_0):
    """Per-frame attention (``attn2``, cross-attention to the condition tokens).

    diffusers' ``AttnProcessor2_0`` with a ``num_frames`` argument it does not need: every frame
    attends to its own copy of the condition tokens ``[B·F, 77, d]``. Declaring the argument keeps
    diffusers from warning about the shared ``cross_attention_kwargs``.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class VideoTransformerBlock(BasicTransformerBlock):
    """diffusers' ``BasicTransformerBlock`` inflated for video (paper 3.4; Tune-A-Video layout).

    The 2D block runs unchanged on ``[B·F, L, D]`` (``attn1`` with sparse causal attention,
    ``attn2`` cross-attention, ``ff``), then a temporal attention layer mixes the F frames at each
    of the L latent positions: ``x ← x + attn_temp(norm_temp(x))`` on ``[B·L, F, D]``. The output
    projection ``attn_temp.to_out[0]`` (weight and bias) starts at zero, so a freshly inflated
    block computes exactly what the 2D block computes. There is no frame position encoding (as in
    Tune-A-Video and the authors' release): frame order reaches the model through the causal
    ``attn1``.

    Module names (``attn1``, ``attn2``, ``ff``, ``norm1..3``, ``attn_temp``, ``norm_temp``) are
    those of the authors' checkpoints, so their weights load by name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.only_cross_attention:
            raise ValueError(
                "only_cross_attention UNets have no self-attention to make sparse causal; "
                "inflate a UNet with only_cross_attention=False."
            )
        self.reset_temporal_attention()
        self.set_video_attn_processors()

    def reset_temporal_attention(self) -> None:
        """(Re)create ``norm_temp`` and ``attn_temp`` at their identity initialisation."""
        self.norm_temp = nn.LayerNorm(self.dim)
        self.attn_temp = Attention(
            query_dim=self.dim,
            heads=self.num_attention_heads,
            dim_head=self.attention_head_dim,
            dropout=self.dropout,
            bias=self.attention_bias,
            upcast_attention=self.attn1.upcast_attention,
            processor=AttnProcessor2_0(),
        )
        # Zero output projection: the temporal layer is the identity until it is trained.
        nn.init.zeros_(self.attn_temp.to_out[0].weight)
        nn.init.zeros_(self.attn_temp.to_out[0].bias)

    def set_video_attn_processors(self) -> None:
        """(Re)install the video processors: SC for ``attn1``, per-frame for ``attn2``, SDPA for
        ``attn_temp``."""
        self.attn1.set_processor(SparseCausalAttnProcessor())
        if self.attn2 is not None:
            self.attn2.set_processor(FrameAttnProcessor())
        self.attn_temp.set_processor(AttnProcessor2_0())

    def temporal_attention(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Residual attention across frames at each latent position.

        hidden_states: ``[B·F, L, D]`` → ``[B·F, L, D]`` (attention runs on ``[B·L, F, D]``).
        """
        length = hidden_states.shape[1]
        x = (
            hidden_states.unflatten(0, (-1, num_frames)).transpose(1, 2).flatten(0, 1)
        )  # [B·L, F, D]
        x = x + self.attn_temp(self.norm_temp(x))
        return x.unflatten(0, (-1, length)).transpose(1, 2).flatten(0, 1)  # [B·F, L, D]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """hidden_states: ``[B·F, L, D]``; encoder_hidden_states: ``[B·F, 77, d]``;
        ``cross_attention_kwargs["num_frames"] = F``. Returns ``[B·F, L, D]``."""
        num_frames = _require_num_frames(
            (cross_attention_kwargs or {}).get("num_frames"),
            hidden_states.shape[0],
            "VideoTransformerBlock",
        )
        hidden_states = super().forward(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep,
            cross_attention_kwargs=cross_attention_kwargs,
            class_labels=class_labels,
            added_cond_kwargs=added_cond_kwargs,
        )
        return self.temporal_attention(hidden_states, num_frames)
