"""Small file systems for the fault tests: a full disk and a read-only one, as real mounts.

A ``tmpfs`` of a few KiB fills up for real (``ENOSPC`` from the kernel), and one mounted
read-only refuses every write (``EROFS``) even to root, whom permission bits do not stop. Mounting
needs root with ``CAP_SYS_ADMIN`` (CI's container has it); elsewhere the tests that need a mount
skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(target: Path, options: str) -> str | None:
    """Mount a tmpfs on ``target``; the reason it could not, or None."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (the full-disk and read-only tests)"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
    return None


@contextlib.contextmanager
def tmpfs(target: Path, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``target`` (created) for the block; skips the test when
    it cannot be mounted."""
    target.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0777" + (",ro" if read_only else "")
    why = _mount(target, options)
    if why is not None:
        pytest.skip(why)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def read_only_folder(target: Path) -> contextlib.AbstractContextManager[Path]:
    """A folder no write can land in: a read-only tmpfs as root, else a folder without write
    permission (which stops every user but root)."""
    if os.geteuid() == 0:
        return tmpfs(target, size="16k", read_only=True)
    return _no_write_permission(target)


@contextlib.contextmanager
def _no_write_permission(target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o555)
    try:
        yield target
    finally:
        target.chmod(0o755)
