"""Atomic writes: every artifact appears complete or not at all (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mindvideo.utils.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(root: str | os.PathLike) -> None:
    """Give ``root`` and everything under it the modes a plain ``open()``/``mkdir()`` would have
    given under the user's umask.

    Some writers create private files (safetensors and ``huggingface_hub`` write weights
    ``0600`` through temporary files): a pipeline folder on a shared machine would then be
    unreadable to the colleagues its folders are readable to.
    """
    root = Path(root)
    mask = _umask()
    entries = [root, *root.rglob("*")] if root.is_dir() else [root]
    for entry in entries:
        if entry.is_symlink():
            continue
        mode = (0o777 if entry.is_dir() else 0o666) & ~mask
        if entry.is_file() and entry.stat().st_mode & 0o111:
            mode |= 0o111 & ~mask  # keep a script executable
        os.chmod(entry, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps a file extension on the temporary name for writers that look at it
    (numpy, PyAV). On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            follow_umask(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp_path
        follow_umask(tmp_path)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


def open_memmap_allocated(path: str | os.PathLike, dtype: Any, shape: tuple[int, ...]) -> Any:
    """``numpy.lib.format.open_memmap(path, "w+", ...)`` with the file's blocks allocated first.

    A memory-mapped file is sparse: writing into it on a full disk kills the process with
    SIGBUS and no message. Allocating every block up front makes a full disk an
    ``OSError(ENOSPC)`` naming the file, raised before any data is written.
    """
    import errno

    from numpy.lib.format import open_memmap

    arr = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate: writes may still fail
            return arr
        del arr
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    finally:
        os.close(fd)
    return arr


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The JSON value in ``path`` (UTF-8); a :class:`UserError` naming the file and ending with
    ``fix`` (what to do, e.g. "re-run `mindvideo prepare`") when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise UserError(f"{path} is not valid JSON ({detail}); {fix}.") from exc
