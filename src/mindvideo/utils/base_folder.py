"""Light model folders: what a stage trained, plus a reference to the base Stable Diffusion.

``mindvideo tune-video`` and ``mindvideo cotrain`` train a small part of Stable Diffusion (the
UNet's attention and temporal layers) and leave the VAE, the text encoder and the tokenizer as
they were. Their folders therefore hold only what changed, and a ``base.json`` naming the Stable
Diffusion folder the rest comes from::

    base.json   {"stable_diffusion": {"path": "/abs/sd", "relative": "../sd"},
                 "components": ["vae", "text_encoder", "tokenizer"]}

A component folder that is absent is read from the base folder's component of the same name
(:func:`component_dir`). The base is found by its path relative to the light folder first (a run
directory moved as a whole keeps working), then by its absolute path; when neither exists, a
:class:`UserError` says which folder is missing and that ``mindvideo export`` writes a standalone
copy. This is what diffusers does for trained temporal weights with ``MotionAdapter``: the small
trained part on its own, the large frozen part by reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mindvideo.utils.errors import UserError
from mindvideo.utils.io import atomic_write_text

__all__ = ["BASE_FILE", "component_dir", "read_base", "write_base"]

BASE_FILE = "base.json"


def write_base(folder: str | os.PathLike, base: str | os.PathLike, components: list[str]) -> Path:
    """Write ``folder/base.json``: ``components`` come from the Stable Diffusion folder ``base``."""
    folder, base = Path(folder), Path(base).resolve()
    record = {
        "stable_diffusion": {
            "path": str(base),
            "relative": os.path.relpath(base, folder.resolve()),
        },
        "components": sorted(components),
        "what": "the components listed are read from this Stable Diffusion folder; `mindvideo "
        "export` writes a standalone copy",
    }
    path = folder / BASE_FILE
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def _record(folder: Path) -> dict[str, Any] | None:
    path = folder / BASE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record["stable_diffusion"]["path"], str):
            raise TypeError("stable_diffusion.path is not a string")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}); re-run the stage that wrote it.") from exc
    return record


def read_base(folder: str | os.PathLike) -> Path | None:
    """The base Stable Diffusion folder of a light folder, or ``None`` for a standalone one."""
    folder = Path(folder)
    record = _record(folder)
    if record is None:
        return None
    sd = record["stable_diffusion"]
    candidates = [folder / sd["relative"]] if sd.get("relative") else []
    for candidate in (*candidates, Path(sd["path"])):
        if candidate.is_dir():
            return candidate.resolve()
    raise UserError(
        f"{folder} holds only what was trained and builds on the Stable Diffusion folder "
        f"{sd['path']}, which is missing; put it back (or next to the run as it was, "
        f"{sd.get('relative')}), or write a standalone copy with `mindvideo export` while both "
        "exist."
    )


def component_dir(folder: str | os.PathLike, name: str) -> Path:
    """Where component ``name`` of ``folder`` lives: ``folder/name`` when present, else the base
    Stable Diffusion folder's ``name`` (a :class:`UserError` when neither has it)."""
    folder = Path(folder)
    own = folder / name
    if own.is_dir():
        return own
    base = read_base(folder)
    if base is not None and (base / name).is_dir():
        return base / name
    where = f" nor its base {base}" if base is not None else ""
    raise UserError(f"Neither {folder}{where} has a {name}/ folder.")
