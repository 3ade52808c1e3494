"""Is this artifact up to date? Fingerprints, markers written last, and staged folders.

Every stage that reuses earlier work answers the question the same way:

1. a **key**: what decides the artifact (config, input hashes, weights), made JSON-able —
   :func:`fingerprint` of a config, :func:`sha256_file` of an input, :func:`module_fingerprint`
   of a model, :func:`files_digest` of saved weights;
2. a **marker**: a JSON file written last, atomically (:func:`write_marker`), holding the key and
   anything else worth recording; a folder without it is incomplete;
3. the **check**: :func:`read_marker` with the key returns the marker only when every field of
   the key equals the recorded one (after a JSON round trip), so a changed config is stale;
4. for a folder built from many files, :class:`StagedFolder` writes them beside the destination
   and moves them in only once all are there (files kept in the destination, such as a resumable
   cache, survive; :func:`mindvideo.utils.io.atomic_dir` replaces a whole folder instead).

Only the standard library here; numpy and torch are imported by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mindvideo.utils.io import atomic_write_text

__all__ = [
    "StagedFolder",
    "files_digest",
    "files_present",
    "fingerprint",
    "json_default",
    "jsonable",
    "module_fingerprint",
    "npy_shape",
    "read_marker",
    "sha256_bytes",
    "sha256_file",
    "staging_dir",
    "stale_fields",
    "write_marker",
]


# --------------------------------------------------------------------------------------------
# Keys: JSON-able values and their hashes
# --------------------------------------------------------------------------------------------


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, paths and dataclasses."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    np = sys.modules.get("numpy")  # loaded whenever one of its objects exists
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def jsonable(obj: Any) -> Any:
    """``obj`` as a JSON round trip gives it back (tuples → lists, numpy scalars → Python), the
    form a key has once it is read from a marker."""
    return json.loads(json.dumps(obj, default=json_default))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file's bytes (read in 16 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (sorted keys; a dataclass as its fields, anything
    else JSON cannot write as its ``str``): equal configs give equal fingerprints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def files_digest(paths: Iterable[str | os.PathLike]) -> str | None:
    """One sha256 over the names and contents of ``paths`` (in the order given); ``None`` when
    there are none. Saved weights (``*.safetensors``) are fingerprinted this way."""
    paths = [Path(p) for p in paths]
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def module_fingerprint(module: Any) -> str:
    """sha256 of a torch model's weights (names, dtypes, shapes, bytes) and diffusers config.

    A diffusers config (e.g. the VAE's ``scaling_factor``) is included without its private
    ``_`` keys, so a model re-saved elsewhere has the same fingerprint; a transformers config
    carries version and path fields and is left out (the weights decide).
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):
        items = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Markers: a JSON file written last
# --------------------------------------------------------------------------------------------


def write_marker(
    path: str | os.PathLike,
    fields: Mapping[str, Any],
    *,
    indent: int | None = 2,
    ensure_ascii: bool = True,
) -> dict[str, Any]:
    """Write ``fields`` as JSON to ``path`` atomically; call it after everything it vouches for
    is written. Returns ``fields`` (a dict)."""
    fields = dict(fields)
    text = json.dumps(fields, indent=indent, ensure_ascii=ensure_ascii, default=json_default)
    atomic_write_text(path, text + "\n")
    return fields


def stale_fields(marker: Mapping[str, Any] | None, key: Mapping[str, Any]) -> list[str]:
    """The fields of ``key`` that ``marker`` records otherwise (all of them without a marker),
    compared after a JSON round trip; sorted."""
    want = jsonable(dict(key))
    if marker is None:
        return sorted(want)
    return sorted(k for k, v in want.items() if marker.get(k) != v)


def read_marker(
    path: str | os.PathLike, key: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, unreadable, not an object, or
    (given ``key``) records any field of ``key`` otherwise (:func:`stale_fields`)."""
    try:
        marker = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return None
    if not isinstance(marker, dict):
        return None
    if key is not None and stale_fields(marker, key):
        return None
    return marker


def files_present(folder: str | os.PathLike, names: Iterable[str]) -> bool:
    """Whether every file ``folder/name`` exists (each was written atomically, so it is whole)."""
    return all((Path(folder) / name).is_file() for name in names)


def npy_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape of the ``.npy`` array in ``path`` (memory-mapped, so a truncated file fails),
    or ``None`` when it is missing or unreadable."""
    import numpy as np

    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Staging: a folder built beside its destination
# --------------------------------------------------------------------------------------------


def staging_dir(out: str | os.PathLike) -> Path:
    """Where files for ``out`` are staged: the hidden folder ``.{name}.tmp`` beside it (the same
    file system, so its files move into ``out`` by rename). The name is fixed, so a run killed
    mid-way leaves one folder that the next run removes first."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.tmp"


class StagedFolder:
    """Files written into :func:`staging_dir` and moved into ``out`` only when all are there.

    ``root`` is the (fresh) staging folder. :meth:`publish` removes ``out``'s marker (so ``out``
    reads as incomplete until the caller writes the new one) and moves every staged file in by
    rename; leaving the ``with`` block without it (an exception) deletes the staged files and
    leaves ``out`` as it was. Files in ``out`` that are not staged stay.

    Example::

        with StagedFolder(out, marker="index.json") as stage:
            write_shards(stage.root)
            stage.publish()
        write_marker(out / "index.json", {...})
    """

    def __init__(self, out: str | os.PathLike, marker: str) -> None:
        self.out = Path(out)
        self.marker = marker
        self.root = staging_dir(self.out)
        shutil.rmtree(self.root, ignore_errors=True)  # left by a killed run
        self.root.mkdir(parents=True)

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def abort(self) -> None:
        """Delete the staged files (``out`` does not change); a no-op after :meth:`publish`."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def publish(self) -> list[str]:
        """Move the staged files into ``out`` (each by rename), its marker removed first;
        returns their names."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / self.marker).unlink(missing_ok=True)
        names = []
        for path in sorted(self.root.iterdir()):
            os.replace(path, self.out / path.name)
            names.append(path.name)
        self.root.rmdir()
        return names
