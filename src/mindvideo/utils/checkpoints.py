"""Reading released checkpoints: a weights file in a folder, its tensors, its ``config.json``.

Weights are read without executing pickle code (safetensors, or ``torch.load(weights_only=True)``),
so a downloaded ``.bin``/``.pth`` cannot run code on load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mindvideo.utils.errors import UserError
from mindvideo.utils.integrity import WEIGHT_SUFFIXES
from mindvideo.utils.io import read_json

__all__ = ["WEIGHT_SUFFIXES", "find_weights_file", "load_state_dict_safely", "read_json_object"]


def find_weights_file(folder: Path, names: Sequence[str]) -> Path:
    """The weights file in ``folder``: the first of ``names`` present, else its only weights file.

    Raises :class:`UserError` when none of ``names`` is there and ``folder`` holds no weights file
    or several.
    """
    for name in names:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    raise UserError(
        f"{folder} holds {len(found)} weights files; expected exactly one, e.g. "
        f"{' or '.join(names[:4])}."
    )


def load_state_dict_safely(
    path: str | os.PathLike,
    unwrap: Sequence[str] = ("state_dict",),
    drop_non_tensors: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``.safetensors``, or ``.bin``/``.pth``/``.pt`` without pickle code.

    A wrapper such as ``{"state_dict": {...}}`` is unwrapped for each key of ``unwrap`` in turn.
    Values that are not tensors are an error, or dropped with ``drop_non_tensors``. Raises
    :class:`UserError` for a missing file, a file that needs arbitrary pickle code
    (``torch.load(weights_only=True)`` refuses it), or one that holds no dict of named tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of a weights file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as err:
            raise UserError(f"{path} is not a readable safetensors file ({err}).") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(
                f"{path} cannot be read as plain tensors with torch.load(weights_only=True) "
                f"({str(err).splitlines()[0]}): it pickles objects whose code would have to run "
                "(a mind-vis / MinD-Video .pth keeps its config object beside the weights), and "
                "that code is never run here. If you trust the file, re-save the weights alone: "
                f"ckpt = torch.load('{path}', weights_only=False); "
                f"torch.save(ckpt.get('model', ckpt), '{path}') — or as safetensors."
            ) from err
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    not_tensors = "does not hold a dict of named tensors; save a model state_dict."
    if not isinstance(state, dict):
        raise UserError(f"{path} {not_tensors}")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors or (len(tensors) < len(state) and not drop_non_tensors):
        raise UserError(f"{path} {not_tensors}")
    return tensors


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a ``config.json``); :class:`UserError` if it is not one."""
    data = read_json(path, "re-save the model folder")
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object.")
    return data
