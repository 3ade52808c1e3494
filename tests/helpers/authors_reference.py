"""References of the authors' video UNet and fMRI encoder, written from their modules' semantics.

The authors' ``UNet3DConditionModel`` (MindVideo's ``models/unet.py``, ``unet_blocks.py``,
``attention.py``; Tune-A-Video's ``resnet.py``) takes ``[B, C, F, H, W]`` latents. What decides
its numbers, as read from those files:

- ``InflatedConv3d``: a 2-D convolution applied to every frame.
- ``ResnetBlock3D``: ``nn.GroupNorm`` applied to the 5-D tensor, so a group's statistics pool
  over all frames of a clip; SiLU; the time embedding added after ``conv1``; a 1×1 shortcut when
  the channels change.
- ``Transformer3DModel``: the frames folded into the batch; ``GroupNorm`` (eps 1e-6) per frame,
  a 1×1 ``proj_in``, the transformer blocks, a 1×1 ``proj_out``, the residual.
- ``BasicTransformerBlock``: LayerNorm → sparse-causal self-attention (``attn1``: every frame's
  queries against the keys and values of frames ``i − 2`` and ``i − 1``, both clamped at 0) →
  LayerNorm → cross-attention (``attn2``) → LayerNorm → GEGLU feed-forward → per pixel, across the
  frames, LayerNorm → temporal self-attention (``attn_temp``); each with a residual.
- ``Downsample3D`` a stride-2 convolution per frame; ``Upsample3D`` nearest ×2 in space, then a
  convolution; ``conv_norm_out`` again a 5-D ``GroupNorm``.

:class:`AuthorsFMRIEncoder` is their ``fMRIEncoder`` with temporal blocks (``fmri_encoder.py``):
each TR of the window patch-embedded by a ``Conv1d``, the fixed sin-cos position embedding
without its CLS row added (the CLS token is never used), ``BlockTemp`` blocks (spatial attention,
then attention across the window's TRs per patch, then the MLP, each pre-norm with a residual;
``qkv`` with bias), a final LayerNorm, the window's tokens concatenated, and the projection head
(``channel_mapper`` over tokens to 77, ``projection``, GELU, ``fc``, the residual).

Both build modules under their names (``down_blocks.0.resnets.0.norm1``,
``...transformer_blocks.0.attn_temp.to_q``, ``time_embedding.linear_1``, ...), so its
``state_dict()`` is a checkpoint in their layout; its ``forward`` is the computation above, in
plain ``torch`` — nothing of ``mindvideo``. Written for this test from their files' semantics; it
does not copy their code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``[N, C, H, W]`` function to every frame of ``[B, C, F, H, W]``."""
    b, _, f, _, _ = x.shape
    y = fn(x.transpose(1, 2).reshape(b * f, *x.shape[1:2], *x.shape[3:]))
    return y.reshape(b, f, *y.shape[1:]).transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (``flip_sin_to_cos=True``, ``freq_shift=0``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with; softmax(q kᵀ / √d) v."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def attend(self, q, k, v):
        n, lq, d = q.shape
        h = self.heads

        def split(x):
            return x.reshape(n, x.shape[1], h, d // h).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, lq, d)
        return self.to_out[0](out)

    def forward(self, x, context=None):
        context = x if context is None else context
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(context))


class SparseCausalAttention(Attention):
    def forward(self, x, frames: int):  # x: [(b f), tokens, d]
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        previous = (torch.arange(frames) - 1).clamp(min=0)
        before = (torch.arange(frames) - 2).clamp(min=0)

        def gather(t):
            t = t.reshape(-1, frames, *t.shape[1:])  # [b, f, tokens, d]
            return torch.cat([t[:, before], t[:, previous]], dim=2).flatten(0, 1)

        return self.attend(q, gather(k), gather(v))


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = 4 * dim
        self.net = nn.ModuleList([nn.Module(), nn.Dropout(0.0), nn.Linear(inner, dim)])
        self.net[0].proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        hidden, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](hidden * F.gelu(gate))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = SparseCausalAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.attn_temp = Attention(dim, heads)
        self.norm_temp = nn.LayerNorm(dim)

    def forward(self, x, context, frames: int):  # x: [(b f), tokens, d]
        x = self.attn1(self.norm1(x), frames) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        bf, tokens, d = x.shape
        t = x.reshape(-1, frames, tokens, d).transpose(1, 2).reshape(-1, frames, d)
        t = self.attn_temp(self.norm_temp(t)) + t
        return t.reshape(-1, tokens, frames, d).transpose(1, 2).reshape(bf, tokens, d)


class Transformer3D(nn.Module):
    def __init__(self, channels: int, heads: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):  # x: [B, C, F, H, W], context [B, 77, d]
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        context = context.repeat_interleave(f, dim=0)
        hidden = self.proj_in(self.norm(frames))
        hidden = hidden.permute(0, 2, 3, 1).reshape(b * f, h * w, c)
        for block in self.transformer_blocks:
            hidden = block(hidden, context, f)
        hidden = self.proj_out(hidden.reshape(b * f, h, w, c).permute(0, 3, 1, 2))
        out = hidden + frames
        return out.reshape(b, f, c, h, w).transpose(1, 2)


class ResnetBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):  # GroupNorm on the 5-D clip: statistics over its frames
        h = per_frame(self.conv1, F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None, None]
        h = per_frame(self.conv2, F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else per_frame(self.conv_shortcut, x)
        return shortcut + h


class _Conv(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)


class AuthorsUNet3D(nn.Module):
    """The authors' ``UNet3DConditionModel`` for a diffusers-style config (block types with
    ``3D`` names, ``attention_head_dim`` = heads, as in Stable Diffusion 1.x configs)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        channels = list(config["block_out_channels"])
        groups, eps = config["norm_num_groups"], config.get("norm_eps", 1e-5)
        heads, context = config["attention_head_dim"], config["cross_attention_dim"]
        layers, temb = config["layers_per_block"], 4 * channels[0]
        self.conv_in = nn.Conv2d(config["in_channels"], channels[0], 3, padding=1)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(channels[0], temb)
        self.time_embedding.linear_2 = nn.Linear(temb, temb)

        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, kind in enumerate(config["down_block_types"]):
            cin, out = out, channels[i]
            block = nn.Module()
            block.resnets = nn.ModuleList(
                [
                    ResnetBlock3D(cin if j == 0 else out, out, temb, groups, eps)
                    for j in range(layers)
                ]
            )
            if kind.startswith("CrossAttn"):
                block.attentions = nn.ModuleList(
                    [Transformer3D(out, heads, context, groups) for _ in range(layers)]
                )
            if i < len(channels) - 1:
                block.downsamplers = nn.ModuleList([_Conv(out, 2)])
            self.down_blocks.append(block)

        mid = channels[-1]
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList(
            [ResnetBlock3D(mid, mid, temb, groups, eps) for _ in range(2)]
        )
        self.mid_block.attentions = nn.ModuleList([Transformer3D(mid, heads, context, groups)])

        self.up_blocks = nn.ModuleList()
        rev = channels[::-1]
        out = rev[0]
        for i, kind in enumerate(config["up_block_types"]):
            prev, out, cin = out, rev[i], rev[min(i + 1, len(rev) - 1)]
            block = nn.Module()
            block.resnets = nn.ModuleList(
                [
                    ResnetBlock3D(
                        (prev if j == 0 else out) + (cin if j == layers else out),
                        out,
                        temb,
                        groups,
                        eps,
                    )
                    for j in range(layers + 1)
                ]
            )
            if kind.startswith("CrossAttn"):
                block.attentions = nn.ModuleList(
                    [Transformer3D(out, heads, context, groups) for _ in range(layers + 1)]
                )
            if i < len(rev) - 1:
                block.upsamplers = nn.ModuleList([_Conv(out, 1)])
            self.up_blocks.append(block)
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = nn.Conv2d(channels[0], config["out_channels"], 3, padding=1)

    def forward(self, sample, timestep, context):
        b = sample.shape[0]
        t = torch.as_tensor(timestep).reshape(-1).expand(b)
        emb = timestep_embedding(t, self.conv_in.out_channels)
        emb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(emb)))

        x = per_frame(self.conv_in, sample)
        skips = [x]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                x = resnet(x, emb)
                if hasattr(block, "attentions"):
                    x = block.attentions[j](x, context)
                skips.append(x)
            if hasattr(block, "downsamplers"):
                x = per_frame(block.downsamplers[0].conv, x)
                skips.append(x)

        x = self.mid_block.resnets[0](x, emb)
        x = self.mid_block.attentions[0](x, context)
        x = self.mid_block.resnets[1](x, emb)

        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
                if hasattr(block, "attentions"):
                    x = block.attentions[j](x, context)
            if hasattr(block, "upsamplers"):
                x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
                x = per_frame(block.upsamplers[0].conv, x)

        x = F.silu(self.conv_norm_out(x))  # GroupNorm on the 5-D clip
        return per_frame(self.conv_out, x)


def sincos_position_embedding(dim: int, length: int) -> torch.Tensor:
    """MAE's fixed 1-D embedding ``[length + 1, dim]``: a zero row for the CLS token, then for
    position p: sin(p ω_i) for the first half of the channels and cos(p ω_i) for the second,
    ω_i = 10000^(−2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, length, d))


class BlockTemp(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EncoderAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = EncoderAttention(dim, heads)
        self.norm_temp = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x, window: int):  # x: [(b w), L, D]
        x = x + self.attn(self.norm1(x))
        bw, length, d = x.shape
        t = x.reshape(-1, window, length, d).transpose(1, 2).reshape(-1, window, d)
        t = t + self.attn_temp(self.norm_temp(t))
        x = t.reshape(-1, length, window, d).transpose(1, 2).reshape(bw, length, d)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class AuthorsFMRIEncoder(nn.Module):
    """Their ``fMRIEncoder(use_temp_attn=True, use_norm=False)``: ``[B, window, V]`` fMRI →
    ``[B, out_channel, out_dim]`` tokens."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        d, p = config["embed_dim"], config["patch_size"]
        self.window = config["window_size"]
        self.num_patches = config["num_voxels"] // p
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv1d(1, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        table = sincos_position_embedding(d, self.num_patches)[None]
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.blocks = nn.ModuleList(
            [BlockTemp(d, config["num_heads"], config["mlp_ratio"]) for _ in range(config["depth"])]
        )
        self.norm = nn.LayerNorm(d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.proj_head = nn.Module()
        out = config["out_dim"]
        self.proj_head.projection = nn.Linear(d, out, bias=False)
        self.proj_head.fc = nn.Linear(out, out, bias=False)
        self.proj_head.channel_mapper = nn.Linear(
            self.num_patches * self.window, config["out_channel"], bias=False
        )
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, fmri):  # [B, w, V]
        b, w, v = fmri.shape
        x = self.patch_embed.proj(fmri.reshape(b * w, 1, v)).transpose(1, 2)  # [(b w), L, D]
        x = x + self.pos_embed[:, 1:]
        for block in self.blocks:
            x = block(x, w)
        x = self.norm(x).reshape(b, w * self.num_patches, -1)  # the window's tokens in a row
        x = self.proj_head.channel_mapper(x.transpose(1, 2)).transpose(1, 2)
        projected = self.proj_head.projection(x)
        return projected + self.proj_head.fc(F.gelu(projected))
