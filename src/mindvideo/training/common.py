"""Helpers the encoder training stages share (paper 3.3): model sizes, per-sample RNG, outputs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from mindvideo.config import EncoderSizeConfig
from mindvideo.utils import UserError, atomic_dir
from mindvideo.utils.dry_run import empty_model

__all__ = [
    "is_main_process",
    "load_mbm",
    "mbm_from_size_config",
    "sample_rng",
    "save_model_atomically",
]

_SIZE_FIELDS = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "mlp_ratio",
)


def mbm_from_size_config(size: EncoderSizeConfig, num_voxels: int):
    """A fresh :class:`~mindvideo.encoder.MBMAutoencoder` of ``size`` (preset + overrides).

    ``size.preset`` picks :func:`~mindvideo.encoder.mbm_paper` (Table B.1), ``mbm_demo`` or
    ``mbm_tiny``; every other field of :class:`EncoderSizeConfig` that is set overrides the
    preset's value. ``num_voxels`` is the data's V, padded to a multiple of the patch size.
    """
    from mindvideo.encoder import mbm_demo, mbm_paper, mbm_tiny

    presets: dict[str, Callable] = {"paper": mbm_paper, "demo": mbm_demo, "tiny": mbm_tiny}
    if size.preset not in presets:
        raise UserError(
            f"Unknown encoder preset {size.preset!r} (config key encoder.preset); choose one of: "
            f"{', '.join(presets)}."
        )
    overrides = {k: getattr(size, k) for k in _SIZE_FIELDS if getattr(size, k) is not None}
    try:
        return presets[size.preset](num_voxels, **overrides)
    except ValueError as exc:  # e.g. a width not divisible by the number of heads
        raise UserError(
            f"The encoder size settings (config key encoder) are invalid: {exc}."
        ) from exc


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentations: a function of (seed, epoch, index) only.

    Drawing every random choice of a dataset item from it makes a resumed run see exactly the
    augmentations an uninterrupted one would (docs/training.md, exact resume), in any worker.
    """
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def is_main_process() -> bool:
    """True on the process of global rank 0 (``RANK`` is set by torchrun / accelerate launch).

    Usable before the training engine has set up the distributed state, e.g. to write a stage's
    ``config.yaml`` once.
    """
    return int(os.environ.get("RANK", "0")) == 0


def save_model_atomically(model: nn.Module, folder: str | os.PathLike) -> Path:
    """``model.save_pretrained(folder)`` (config.json + safetensors) into a temporary folder
    renamed onto ``folder`` when complete; returns ``folder``."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)  # type: ignore[operator]
    return folder


def load_mbm(path: str | os.PathLike, key: str = "encoder", empty_weights: bool = False):
    """Load an :class:`~mindvideo.encoder.MBMAutoencoder` folder written by ``mindvideo pretrain``.

    ``path`` is the MBM folder itself (``config.json`` + safetensors) or a pretrain output
    directory holding ``mbm/``. ``key`` names the config key in error messages.
    ``empty_weights``: build it from its config on the meta device (a dry run).
    """
    from mindvideo.encoder import MBMAutoencoder

    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / "mbm" / "config.json").is_file():
        folder = folder / "mbm"
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{path} is not an MBM folder (no config.json); pass the mbm/ folder written by "
            f"`mindvideo pretrain` (config key {key})."
        )
    try:
        if empty_weights:
            return empty_model(MBMAutoencoder, folder)
        return MBMAutoencoder.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(
            f"Could not load the MBM in {folder} ({exc}); pass the mbm/ folder written by "
            f"`mindvideo pretrain` (config key {key})."
        ) from exc
