"""The video UNet: Stable Diffusion's 2D UNet inflated for video (paper 3.4 and B).

``VideoUNet`` *is* a ``diffusers.UNet2DConditionModel`` — same constructor, same config, same
2D weights and parameter names — whose every ``BasicTransformerBlock`` is a
:class:`~mindvideo.generator.attention.VideoTransformerBlock` (sparse causal ``attn1`` plus a
zero-initialised temporal attention ``attn_temp``/``norm_temp``). Its ``forward`` takes video
latents ``[B, C, F, H, W]``, folds the frames into the batch for the 2D layers, gives every
frame the same condition tokens, and passes ``num_frames`` to the attention processors.

Build one from Stable Diffusion 1.5 weights on disk::

    unet = VideoUNet.from_pretrained_2d("path/to/stable-diffusion-v1-5", subfolder="unet")

or from a 2D model in memory with :meth:`VideoUNet.from_unet2d`; a trained one saves and loads
with ``save_pretrained`` / ``from_pretrained`` like any diffusers model.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.utils import BaseOutput
from torch import nn

from mindvideo.generator.attention import VideoTransformerBlock
from mindvideo.utils import UserError
from mindvideo.utils.base_folder import read_base, write_base

__all__ = [
    "CROSS_FRAME_NORM_KEY",
    "TEMPORAL_MODULES",
    "TRAINABLE_MODULES",
    "TRAINED_WEIGHTS",
    "FrameGroupNorm",
    "VideoUNet",
    "VideoUNetOutput",
    "trainable_parameters",
    "trained_keys",
]

logger = logging.getLogger(__name__)

#: Modules added by the inflation; everything else comes from the 2D UNet.
TEMPORAL_MODULES = ("attn_temp", "norm_temp")
#: What the paper tunes in video tuning and co-training (B: "attn1", "attn2", "attn_temp").
TRAINABLE_MODULES = ("attn1", "attn2", "attn_temp")


@dataclass
class VideoUNetOutput(BaseOutput):
    """The output of :class:`VideoUNet`.

    sample: ``[B, C, F, H, W]`` — the predicted noise (or v / x0, per the scheduler) per frame.
    """

    sample: torch.Tensor = None


def is_temporal_key(name: str) -> bool:
    """Whether a parameter/state-dict key belongs to the layers the inflation adds."""
    return any(f".{m}." in f".{name}" for m in TEMPORAL_MODULES)


# The Transformer2DModel config entries its BasicTransformerBlocks are built with (same names).
_BLOCK_SETTINGS = (
    "dropout",
    "cross_attention_dim",
    "activation_fn",
    "num_embeds_ada_norm",
    "attention_bias",
    "only_cross_attention",
    "double_self_attention",
    "upcast_attention",
    "norm_elementwise_affine",
    "norm_eps",
    "attention_type",
)


def _video_block_like(
    transformer: Transformer2DModel, block: BasicTransformerBlock
) -> VideoTransformerBlock:
    """A ``VideoTransformerBlock`` holding ``block``'s own 2D weights and fresh temporal layers.

    The constructor arguments are the ones ``Transformer2DModel`` passes for continuous (UNet)
    inputs; the state-dict layout check catches a diffusers release that changes them. The 2D
    part is built on the meta device and takes over ``block``'s tensors, so inflating costs no
    second random initialisation (seconds at Stable Diffusion size).
    """
    c = transformer.config
    with torch.device("meta"):
        video_block = VideoTransformerBlock(
            transformer.inner_dim,
            c.num_attention_heads,
            c.attention_head_dim,
            norm_type=block.norm_type,
            **{name: getattr(c, name) for name in _BLOCK_SETTINGS},
        )
    old = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    new = {k: tuple(v.shape) for k, v in video_block.state_dict().items() if not is_temporal_key(k)}
    if old != new:
        raise RuntimeError(
            "this diffusers release builds BasicTransformerBlock differently from what VideoUNet "
            f"expects (keys differ: {sorted(set(old) ^ set(new))[:5]})."
        )
    video_block.load_state_dict(block.state_dict(), strict=False, assign=True)
    video_block.reset_temporal_attention()  # real tensors, on the ambient default device
    if any(t.is_meta for t in video_block.state_dict().values()) and not any(
        t.is_meta for t in block.state_dict().values()
    ):
        raise RuntimeError("inflating a transformer block left tensors on the meta device.")
    video_block.set_chunk_feed_forward(block._chunk_size, block._chunk_dim)
    return video_block


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` on frames folded into the batch, ``[B·F, C, H, W]``, that can pool its
    statistics over all F frames of a clip, as the authors' ``ResnetBlock3D`` (and
    Tune-A-Video's) does by normalising ``[B, C, F, H, W]`` tensors.

    ``frames`` is set by :meth:`VideoUNet.forward` before every call; with ``cross_frame``
    off (the default) or one frame this is exactly ``nn.GroupNorm`` per frame. Same parameters
    and names as the ``nn.GroupNorm`` it replaces, so checkpoints load either way.
    """

    cross_frame: bool = False
    frames: int = 1

    @classmethod
    def like(cls, norm: nn.GroupNorm) -> FrameGroupNorm:
        """The same normalisation, holding ``norm``'s own parameters."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_groups, new.num_channels = norm.num_groups, norm.num_channels
        new.eps, new.affine = norm.eps, norm.affine
        new.weight, new.bias = norm.weight, norm.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cross_frame or self.frames <= 1:
            return super().forward(x)
        bf, *rest = x.shape
        if bf % self.frames:
            raise ValueError(f"{bf} frames in the batch do not split into clips of {self.frames}.")
        clips = x.reshape(bf // self.frames, self.frames, *rest).transpose(1, 2)  # [B, C, F, ...]
        out = nn.functional.group_norm(clips, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(x.shape)


def _frame_norms(unet: nn.Module) -> list[FrameGroupNorm]:
    return [m for m in unet.modules() if isinstance(m, FrameGroupNorm)]


def _use_frame_norms(unet: UNet2DConditionModel) -> None:
    """Make the GroupNorms the authors apply to whole clips (every ResNet block's ``norm1`` and
    ``norm2``, and ``conv_norm_out``) :class:`FrameGroupNorm` (per frame until switched on)."""
    from diffusers.models.resnet import ResnetBlock2D

    for block in [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]:
        for name in ("norm1", "norm2"):
            norm = getattr(block, name)
            if type(norm) is nn.GroupNorm:
                setattr(block, name, FrameGroupNorm.like(norm))
    if type(getattr(unet, "conv_norm_out", None)) is nn.GroupNorm:
        unet.conv_norm_out = FrameGroupNorm.like(unet.conv_norm_out)


TRAINED_WEIGHTS = "trained.safetensors"
"""A light UNet folder's tensors (:meth:`VideoUNet.save_trained`); the rest is its base's."""

CROSS_FRAME_NORM_KEY = "_cross_frame_norm"
"""config.json key of a saved VideoUNet whose GroupNorms pool over the frames of a clip."""

INFLATION_SEED = 0
"""Seed of the temporal layers an inflation adds (their output projections start at zero, so
the inflated UNet computes what the 2D one did; the other weights still need values)."""


class VideoUNet(UNet2DConditionModel):
    """Stable Diffusion's UNet inflated for video (paper 3.4, B), built like diffusers'
    ``UNetMotionModel.from_unet2d``: the 2D config and weights, plus fresh temporal layers.

    The constructor takes exactly ``UNet2DConditionModel``'s arguments (the config records the
    2D architecture; the temporal layers follow from it). The number of frames is a run-time
    property of the input, not part of the config: any F ≥ 1 works with the same weights.
    """

    @functools.wraps(UNet2DConditionModel.__init__, assigned=(), updated=())
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # ``wraps`` only sets __wrapped__, so diffusers' ConfigMixin (which reads the __init__
        # signature to build and check configs) sees UNet2DConditionModel's arguments.
        super().__init__(*args, **kwargs)
        for transformer in [m for m in self.modules() if isinstance(m, Transformer2DModel)]:
            transformer.transformer_blocks = nn.ModuleList(
                _video_block_like(transformer, block) for block in transformer.transformer_blocks
            )
        _use_frame_norms(self)
        # found once: forward sets their frame count on every call (every denoising step)
        self._frame_norm_modules = tuple(_frame_norms(self))

    @property
    def cross_frame_norm(self) -> bool:
        """Whether the ResNet blocks' GroupNorms and ``conv_norm_out`` pool their statistics
        over all frames of a clip (the authors' and Tune-A-Video's UNet) rather than per frame
        (diffusers' 2D layers on frames folded into the batch; the default)."""
        return bool(getattr(self.config, CROSS_FRAME_NORM_KEY, False))

    def set_cross_frame_norm(self, on: bool) -> None:
        """Switch cross-frame GroupNorm; recorded in the config, so ``save_pretrained`` /
        ``from_pretrained`` keep it. Same weights either way."""
        self.register_to_config(**{CROSS_FRAME_NORM_KEY: bool(on)})
        for norm in self._frame_norm_modules:
            norm.cross_frame = bool(on)

    @classmethod
    def from_unet2d(
        cls, unet: UNet2DConditionModel, config: dict[str, Any] | None = None
    ) -> VideoUNet:
        """Inflate a 2D UNet: same config (or ``config``, a saved video UNet's of the same
        architecture), its weights copied, temporal layers fresh (identity).

        The fresh layers are drawn from a fixed seed (:data:`INFLATION_SEED`), not the global
        random state: the same 2D UNet always inflates to the same video UNet, so a run repeats
        exactly and a resumed run matches an uninterrupted one."""
        with torch.random.fork_rng(devices=[]):
            model = cls.from_config(unet.config if config is None else config)
            # the same draws as from_pretrained's inflation: the same 2D UNet, the same result
            torch.manual_seed(INFLATION_SEED)
            for block in model.modules():
                if isinstance(block, VideoTransformerBlock):
                    block.reset_temporal_attention()
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or not all(is_temporal_key(k) for k in missing):
            missing_2d = [k for k in missing if not is_temporal_key(k)]
            raise RuntimeError(
                "the 2D UNet's weights do not fit the inflated UNet "
                f"(unexpected {unexpected[:5]}, missing {missing_2d[:5]})."
            )
        logger.info(
            "inflated a 2D UNet: %d new temporal parameters",
            sum(p.numel() for n, p in model.named_parameters() if is_temporal_key(n)),
        )
        model.to(unet.device)
        if unet.dtype != model.dtype:
            model.to(unet.dtype)
        return model

    @classmethod
    def from_pretrained_2d(
        cls, path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> VideoUNet:
        """Inflate a 2D UNet saved with ``save_pretrained`` (e.g. a local Stable Diffusion 1.5
        folder with ``subfolder="unet"``); ``kwargs`` go to
        ``UNet2DConditionModel.from_pretrained``.
        """
        return cls.from_unet2d(
            UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, **kwargs)
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """diffusers' ``from_pretrained``. A folder holding a 2D UNet (no temporal weights, e.g.
        Stable Diffusion's ``unet/``) is inflated: its temporal layers start as the identity.
        A light folder (:meth:`save_trained`) is rebuilt from its base Stable Diffusion UNet and
        the trained tensors it holds."""
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if (folder / TRAINED_WEIGHTS).is_file():
            return cls._from_trained(folder, kwargs.get("torch_dtype"))
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = cls.load_config(pretrained_model_name_or_path, subfolder=kwargs.get("subfolder"))
        model.set_cross_frame_norm(bool(config.get(CROSS_FRAME_NORM_KEY, False)))
        fresh = 0
        with torch.random.fork_rng(devices=[]):  # fresh layers from a fixed seed, as above
            torch.manual_seed(INFLATION_SEED)
            for block in model.modules():
                if isinstance(block, VideoTransformerBlock) and any(
                    p.is_meta
                    for p in (*block.norm_temp.parameters(), *block.attn_temp.parameters())
                ):
                    # Not in the checkpoint, so the fast loader left them unallocated.
                    like = block.attn1.to_q.weight
                    block.reset_temporal_attention()
                    block.norm_temp.to(like.device, like.dtype)
                    block.attn_temp.to(like.device, like.dtype)
                    fresh += 1
        if fresh:
            logger.info(
                "%s has no temporal weights: inflated %d transformer blocks with identity "
                "temporal layers.",
                pretrained_model_name_or_path,
                fresh,
            )
        return model

    def save_trained(
        self, folder: str | os.PathLike, base: str | os.PathLike, keys: Iterable[str]
    ) -> Path:
        """Save a light UNet folder: ``config.json``, the tensors named by ``keys`` (what was
        trained, and the temporal layers the inflation added) in ``trained.safetensors``, and
        ``base.json`` naming the Stable Diffusion folder ``base`` whose ``unet/`` holds the rest.
        :meth:`from_pretrained` rebuilds the same UNet from the two."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        unknown = sorted(set(keys) - set(state))
        if unknown:
            raise ValueError(f"not parameters of the UNet: {unknown[:5]}")
        tensors = {k: state[k].detach().to("cpu").contiguous() for k in sorted(set(keys))}
        save_file(tensors, folder / TRAINED_WEIGHTS, metadata={"format": "pt"})
        self.save_config(folder)
        write_base(folder, base, ["unet"])
        return folder

    @classmethod
    def _from_trained(cls, folder: Path, torch_dtype: Any = None) -> VideoUNet:
        """The UNet of a light folder: its config, the base UNet's weights, the trained ones."""
        from safetensors.torch import load_file

        base = read_base(folder)
        if base is None:
            raise UserError(
                f"{folder} holds trained weights only ({TRAINED_WEIGHTS}) but no base.json "
                "naming the Stable Diffusion folder with the rest; re-run the stage that wrote it."
            )
        config = dict(cls.load_config(folder))
        base_unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        try:  # the base inflated as video tuning inflated it, then the trained tensors
            model = cls.from_unet2d(base_unet, config)
        except RuntimeError as exc:  # another model than the one trained on
            raise UserError(
                f"The UNet of {base} does not fit the UNet trained in {folder}: {exc}"
            ) from exc
        trained = load_file(folder / TRAINED_WEIGHTS)
        _, unexpected = model.load_state_dict(trained, strict=False)
        if unexpected:
            raise UserError(f"{folder / TRAINED_WEIGHTS} holds unknown tensors {unexpected[:3]}.")
        model.set_cross_frame_norm(bool(config.get(CROSS_FRAME_NORM_KEY, False)))
        logger.info(
            "rebuilt the UNet of %s: %d trained tensors on the UNet of %s",
            folder,
            len(trained),
            base,
        )
        model.eval()
        return model.to(torch_dtype) if torch_dtype is not None else model

    def set_default_attn_processor(self) -> None:
        """Restore the video attention processors (SC ``attn1``, per-frame ``attn2``, SDPA
        ``attn_temp``); diffusers' 2D defaults would drop sparse causal attention."""
        for module in self.modules():
            if isinstance(module, VideoTransformerBlock):
                module.set_video_attn_processors()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> VideoUNetOutput | tuple[torch.Tensor]:
        """Denoise video latents.

        Args:
            sample: ``[B, C, F, H, W]`` noisy latents.
            timestep: a number, ``[]`` or ``[B]`` (one timestep per video).
            encoder_hidden_states: ``[B, 77, d]`` condition tokens shared by all frames (the
                paper), or ``[B, F, 77, d]`` for one condition per frame.
            encoder_attention_mask: ``[B, 77]`` (1 = keep) or ``None``.
            cross_attention_kwargs: extra arguments for the attention processors; ``num_frames``
                is set here.
            return_dict: return a :class:`VideoUNetOutput` rather than a tuple.

        Returns: ``sample: [B, C_out, F, H, W]``.
        """
        if sample.ndim != 5:
            raise ValueError(
                f"VideoUNet expects latents [B, C, F, H, W], got {tuple(sample.shape)}."
            )
        batch, channels, frames, height, width = sample.shape
        latents = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)

        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] > 1:
            if timestep.shape[0] != batch:
                raise ValueError(
                    f"timestep must be a number or one per video [B={batch}], "
                    f"got shape {tuple(timestep.shape)}."
                )
            timestep = timestep.repeat_interleave(frames)  # [B] → [B·F]
        if encoder_hidden_states.ndim == 4:
            if encoder_hidden_states.shape[:2] != (batch, frames):
                raise ValueError(
                    "per-frame encoder_hidden_states must be [B, F, L, d] with the latents' B, F, "
                    f"got {tuple(encoder_hidden_states.shape)} for latents {tuple(sample.shape)}."
                )
            encoder_hidden_states = encoder_hidden_states.flatten(0, 1)
        else:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        if encoder_attention_mask is not None:
            encoder_attention_mask = encoder_attention_mask.repeat_interleave(frames, dim=0)
        cross_attention_kwargs = {**(cross_attention_kwargs or {}), "num_frames": frames}
        if self.cross_frame_norm:  # per frame, the norms never read it
            for norm in self._frame_norm_modules:
                norm.frames = frames

        out = super().forward(
            latents,  # [B·F, C, H, W]
            timestep,
            encoder_hidden_states,  # [B·F, 77, d]
            encoder_attention_mask=encoder_attention_mask,
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=False,
        )[0]
        out = out.unflatten(0, (batch, frames)).transpose(1, 2)  # [B, C_out, F, H, W]
        if not return_dict:
            return (out,)
        return VideoUNetOutput(sample=out)


def trained_keys(unet: nn.Module, modules: Iterable[str] = TRAINABLE_MODULES) -> set[str]:
    """The state-dict keys a light save keeps (:meth:`VideoUNet.save_trained`): the parameters
    of the named trainable modules (matched as :func:`trainable_parameters` matches them) and
    every temporal layer the inflation added."""
    modules = tuple(modules)
    return {
        name
        for name, _ in unet.named_parameters()
        if is_temporal_key(name) or any(f".{m}." in f".{name}." for m in modules)
    }


def trainable_parameters(
    unet: nn.Module, modules: Iterable[str] = TRAINABLE_MODULES
) -> list[nn.Parameter]:
    """Freeze the UNet except the named modules (paper B); return the parameters left trainable.

    ``modules`` are dotted module names matched as whole path components: ``"attn1"`` selects
    every ``...transformer_blocks.N.attn1.*`` parameter, ``"attn1.to_q"`` only the query
    projections (Tune-A-Video's choice). The default is the paper's self-, cross- and temporal
    attention; ``norm_temp`` stays at its identity initialisation unless named, as in the
    authors' training.
    """
    modules = tuple(modules)
    selected: list[nn.Parameter] = []
    used: set[str] = set()
    for name, param in unet.named_parameters():
        hits = [m for m in modules if f".{m}." in f".{name}."]
        param.requires_grad_(bool(hits))
        if hits:
            selected.append(param)
            used.update(hits)
    unused = [m for m in modules if m not in used]
    if unused:
        raise UserError(
            f"trainable module name(s) {unused} match no parameter of the UNet; use module names "
            f"such as {', '.join((*TRAINABLE_MODULES, 'norm_temp'))}."
        )
    return selected
