"""Inputs checked to be whole before a stage loads them: weights, JSON and ``.npy`` files.

A truncated or damaged file deep inside a checkpoint otherwise fails inside the library that
reads it (safetensors, ``torch.load``, numpy, a JSON parser) with a long chained traceback that
names neither the fix nor, often, the file. :func:`check_inputs` reads only headers and sizes —
a fraction of a second even for Stable Diffusion's weights — and raises one
:class:`~mindvideo.utils.errors.UserError` naming the file, what is wrong with it and the fix:
re-run the stage that wrote it, or re-download it.

Checked, by suffix:

- ``.safetensors``: the 8-byte header length, the JSON header, and the file's size against the
  end of the last tensor the header describes;
- ``.bin`` / ``.pth`` / ``.pt`` / ``.ckpt``: a ``torch.save`` zip archive whose central directory
  is readable and whose members lie inside the file (a truncated archive loses its directory),
  or a legacy pickle that starts as one;
- ``.json``: it parses;
- ``.npy``: the header parses and the file holds the bytes its shape and dtype need.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mindvideo.utils.errors import UserError

__all__ = ["WEIGHT_SUFFIXES", "check_inputs", "damage"]

#: The file endings a weights file may have.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
CHECKED = (*WEIGHT_SUFFIXES, ".json", ".npy")
MAX_DEPTH = 5
"""How deep :func:`check_inputs` looks into an input folder."""


def _bytes(n: int) -> str:
    return f"{n:,} bytes"


def _safetensors(path: Path, size: int) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({_bytes(size)}, shorter than a safetensors header)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"truncated ({_bytes(size)}; its header alone needs {_bytes(8 + n)})"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "damaged (its safetensors header is not valid JSON)"
    try:
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "damaged (its safetensors header does not describe tensors)"
    if 8 + n + end > size:
        return f"truncated ({_bytes(size)} of the {_bytes(8 + n + end)} its header describes)"
    return None


def _torch_file(path: Path, size: int) -> str | None:
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.header_offset + info.compress_size > size:
                        return "truncated (a member of its zip archive runs past the end)"
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            return f"damaged ({exc})"
        return None
    with open(path, "rb") as f:
        first = f.read(2)
    if first[:1] == b"\x80":  # a legacy pickle (protocol 2+): nothing cheaper to check
        return None
    return "not a PyTorch weights file, or truncated (no zip archive directory at its end)"


def _npy(path: Path, size: int) -> str | None:
    import numpy as np

    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, OSError, SyntaxError) as exc:
            return f"damaged (not a readable .npy header: {exc})"
        offset = f.tell()
    if dtype.hasobject:
        return None
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        return f"truncated ({_bytes(size)} of the {_bytes(need)} its shape {tuple(shape)} needs)"
    return None


def _json(path: Path, size: int) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"not valid JSON ({detail}; {_bytes(size)})"
    return None


def damage(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` in words (e.g. ``"truncated (10 of 20 bytes ...)"``), or
    ``None`` when it looks whole or is not a kind of file checked here."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKED:
        return None
    size = path.stat().st_size
    if suffix == ".safetensors":
        return _safetensors(path, size)
    if suffix == ".npy":
        return _npy(path, size)
    if suffix == ".json":
        return _json(path, size)
    return _torch_file(path, size)


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        # staging entries of an interrupted write are not inputs; nor is anything too deep
        dirs[:] = [d for d in dirs if not d.startswith(".") and len(here.parts) - base < MAX_DEPTH]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in CHECKED:
                yield here / name


def check_inputs(inputs: Iterable[tuple[str, str | os.PathLike, str]]) -> None:
    """Check every weights, JSON and ``.npy`` file in each input (a file, or a folder searched
    :data:`MAX_DEPTH` deep) before a stage loads it.

    ``inputs``: ``(what, path, fix)`` triples: ``what`` names the input for the message (e.g.
    ``"the checkpoint input"``), ``fix`` says what to do (e.g. ``"re-run mindvideo cotrain"``).
    Paths that do not exist are left to the stage, which says what it expected.
    """
    for what, root, fix in inputs:
        root = Path(root)
        if not root.exists():
            continue
        for path in _files(root):
            try:
                problem = damage(path)
            except OSError as exc:
                problem = f"unreadable ({exc.strerror})"
            if problem is not None:
                where = "" if path == root else f" (in {what} {root})"
                raise UserError(f"{path}{where} is {problem}; {fix}.")
