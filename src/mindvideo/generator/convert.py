"""Load the authors' released UNet into :class:`~mindvideo.generator.VideoUNet` (weights only).

The authors' pipeline folder holds ``unet/`` with a Tune-A-Video-style ``UNet3DConditionModel``
``config.json`` and ``diffusion_pytorch_model.bin``. Their UNet keeps diffusers' 2D module names
(``InflatedConv3d`` is a ``Conv2d`` applied per frame, so ``conv_in.weight`` has the 2D shape) and
adds ``attn_temp`` / ``norm_temp`` inside each transformer block — the names ``VideoUNet`` uses.
The key mapping is therefore the identity, plus (each recorded in a :class:`ConversionReport`):

- a leading ``module.`` (a model saved from inside DistributedDataParallel) is dropped;
- legacy diffusers attention names are renamed where ours differ: ``query``/``key``/``value``/
  ``proj_attn`` → ``to_q``/``to_k``/``to_v``/``to_out.0``, ``to_out.weight`` → ``to_out.0.weight``;
- ``proj_in`` / ``proj_out`` are reshaped between a 1×1 conv ``[out, in, 1, 1]`` and a linear
  ``[out, in]`` when the checkpoint and the model disagree on ``use_linear_projection``.

Weights are read without executing pickle code (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from mindvideo.generator.unet import VideoUNet, is_temporal_key
from mindvideo.utils import UserError
from mindvideo.utils.checkpoints import (
    find_weights_file,
    load_state_dict_safely,
    read_json_object,
)

__all__ = [
    "ConversionReport",
    "convert_authors_unet",
    "convert_authors_unet_state_dict",
    "inflated_unet_from_authors",
    "load_state_dict_safely",
    "unet2d_config_from_authors",
]

logger = logging.getLogger(__name__)

#: The authors' (Tune-A-Video) block types and the diffusers 2D blocks they inflate.
BLOCK_TYPES_3D_TO_2D = {
    "CrossAttnDownBlock3D": "CrossAttnDownBlock2D",
    "DownBlock3D": "DownBlock2D",
    "CrossAttnUpBlock3D": "CrossAttnUpBlock2D",
    "UpBlock3D": "UpBlock2D",
    "UNetMidBlock3DCrossAttn": "UNetMidBlock2DCrossAttn",
}
#: Legacy diffusers attention names → current ones (tried only when a key is not found as is).
LEGACY_ATTENTION_NAMES = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
    ".to_out.weight": ".to_out.0.weight",
    ".to_out.bias": ".to_out.0.bias",
}
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.pth",
)


@dataclass
class ConversionReport:
    """What :func:`convert_authors_unet_state_dict` did to the checkpoint's keys."""

    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key → our key
    reshaped: list[str] = field(default_factory=list)  # our keys reshaped conv ↔ linear
    missing: list[str] = field(default_factory=list)  # our keys the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in ours

    @property
    def missing_2d(self) -> list[str]:
        """Missing keys outside the temporal layers (a checkpoint that does not fit)."""
        return [k for k in self.missing if not is_temporal_key(k)]

    def summary(self) -> str:
        return (
            f"{len(self.renamed)} renamed, {len(self.reshaped)} reshaped, "
            f"{len(self.missing)} missing ({len(self.missing_2d)} outside temporal layers), "
            f"{len(self.unexpected)} unexpected"
        )


def unet2d_config_from_authors(config: dict[str, Any]) -> dict[str, Any]:
    """Map a Tune-A-Video ``UNet3DConditionModel`` config onto ``UNet2DConditionModel`` arguments.

    Block types ``*3D`` become their ``*2D`` originals; keys the 2D UNet does not take (and
    private ``_*`` keys) are dropped.
    """
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    out: dict[str, Any] = {}
    dropped = []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in accepted:
            dropped.append(key)
            continue
        out[key] = value

    def to_2d(name: str) -> str:
        if name in BLOCK_TYPES_3D_TO_2D.values():
            return name
        if name not in BLOCK_TYPES_3D_TO_2D:
            raise UserError(
                f"unet config block type {name!r} is not one of the authors' UNet3D blocks "
                f"{sorted(BLOCK_TYPES_3D_TO_2D)}; is this the authors' unet/config.json?"
            )
        return BLOCK_TYPES_3D_TO_2D[name]

    for key in ("down_block_types", "up_block_types"):
        if key in out:
            out[key] = [to_2d(name) for name in out[key]]
    if out.get("mid_block_type") is not None:
        out["mid_block_type"] = to_2d(out["mid_block_type"])
    if dropped:
        logger.info("unet config keys not used by the 2D UNet, dropped: %s", sorted(dropped))
    return out


def convert_authors_unet_state_dict(
    state_dict: dict[str, torch.Tensor], unet: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map the authors' UNet3D state dict onto ``unet``'s keys and shapes.

    Returns the converted dict (only keys ``unet`` has) and a :class:`ConversionReport`.
    Raises :class:`UserError` when a tensor's shape disagrees with ours (a checkpoint built for a
    different architecture than ``unet``).
    """
    ours = unet.state_dict()
    report = ConversionReport()
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("module.")
        if name not in ours:
            for old, new in LEGACY_ATTENTION_NAMES.items():
                if old in name and name.replace(old, new) in ours:
                    name = name.replace(old, new)
                    break
        if name not in ours:
            report.unexpected.append(key)
            continue
        if name != key:
            report.renamed[key] = name
        target = ours[name].shape
        if tensor.shape != target:
            if name.endswith(("proj_in.weight", "proj_out.weight")) and (
                tensor.squeeze(-1).squeeze(-1).shape == target
                if tensor.ndim == 4
                else (*tensor.shape, 1, 1) == target
            ):
                tensor = tensor.reshape(target)  # 1×1 conv ↔ linear: same numbers
                report.reshaped.append(name)
            else:
                raise UserError(
                    f"checkpoint tensor {key!r} has shape {tuple(tensor.shape)} but the UNet "
                    f"built from its config.json expects {tuple(target)}; the weights and "
                    "config.json do not belong together."
                )
        converted[name] = tensor
    report.missing = sorted(set(ours) - set(converted))
    return converted, report


def _find_unet_folder(folder: Path) -> Path:
    for candidate in (folder / "unet", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(
        f"{folder} has neither unet/config.json nor config.json; give the authors' pipeline "
        "folder (with unet/) or its unet/ folder."
    )


def convert_authors_unet(
    folder: str | os.PathLike, strict: bool = True, sample_size: int | None = None
) -> tuple[VideoUNet, ConversionReport, Path]:
    """:func:`inflated_unet_from_authors`, also returning its report and the weights file read.

    ``sample_size`` (latent pixels) replaces the released config's when given.
    """
    unet_dir = _find_unet_folder(Path(folder))
    config_path = unet_dir / "config.json"
    config = unet2d_config_from_authors(read_json_object(config_path))
    if sample_size is not None:
        config["sample_size"] = sample_size
    unet = VideoUNet(**config)
    weights = find_weights_file(unet_dir, WEIGHT_NAMES)
    state, report = convert_authors_unet_state_dict(load_state_dict_safely(weights), unet)
    logger.info("converted %s: %s", weights, report.summary())
    if strict and (report.unexpected or report.missing_2d):
        raise UserError(
            f"{weights} does not fit the UNet described by {config_path}: unexpected keys "
            f"{report.unexpected[:5]}, missing keys {report.missing_2d[:5]}; pass strict=False "
            "(mindvideo convert --allow-missing) to load what fits."
        )
    if report.missing:
        logger.warning(
            "%d keys missing from %s keep their fresh values (temporal layers are the identity).",
            len(report.missing),
            weights,
        )
    unet.load_state_dict(state, strict=False)
    # The authors' ResnetBlock3D and conv_norm_out normalise [B, C, F, H, W]: per clip.
    unet.set_cross_frame_norm(True)
    return unet, report, weights


def inflated_unet_from_authors(folder: str | os.PathLike, strict: bool = True) -> VideoUNet:
    """Build a :class:`VideoUNet` from the authors' released pipeline folder (or its ``unet/``).

    Reads ``unet/config.json`` (their ``UNet3DConditionModel`` config, mapped by
    :func:`unet2d_config_from_authors`) and the weights file, converts the keys with
    :func:`convert_authors_unet_state_dict` and loads them. With ``strict`` (default) any
    checkpoint key without a place in ours, or any missing non-temporal key, is a
    :class:`UserError`; missing temporal layers stay freshly initialised (the identity).
    """
    return convert_authors_unet(folder, strict)[0]
