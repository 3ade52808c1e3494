"""An output folder's safety: one run at a time, room and write access checked before any work,
and a failed write turned into one line.

Every command that writes an ``--out`` folder goes through :func:`guard_output` (the CLI does
it for each of them, on the main process only):

- :func:`check_output_folder` first: ``--out`` (or the folder it will be made in) must be a
  writable folder on a writable file system with room for what the stage will write (its
  estimate from the inputs, plus a margin). It runs before any work, so a read-only or full
  disk costs seconds, not the hour of work before the first write.
- :func:`output_lock` then: a lock file beside ``--out`` (``.NAME.lock``), held with
  ``flock`` and holding the command, PID, host and start time. A second run into the same
  folder is refused at once with one line naming the first. The lock dies with its process, so
  a run killed with SIGKILL leaves no lock that blocks: the next run takes it over (and says so).
  A finished folder is reused as before: the lock is removed when the run ends.

:func:`write_failure` turns an error from a write that still failed (the disk filled during
the run, a quota, a file system turned read-only) into one line naming the file and the fix.
The atomic writers of :mod:`mindvideo.utils.io` have removed their staging entries by then, so
nothing partial is left.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mindvideo.utils.errors import UserError

__all__ = [
    "ROOM_MARGIN",
    "check_output_folder",
    "clean_stale_staging",
    "format_bytes",
    "guard_output",
    "lock_path",
    "output_lock",
    "write_failure",
]

log = logging.getLogger(__name__)

ROOM_MARGIN = 16 * 2**20
"""Bytes of room asked for beyond a stage's estimate: configs, logs, JSON reports, staging."""

#: errno values of a write that cannot succeed however often it is tried.
WRITE_ERRORS = {
    errno.ENOSPC: "no space is left on its file system; free some space or choose another --out",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another --out",
    errno.EROFS: "its file system is read-only; choose another --out",
    errno.EACCES: "permission denied; choose an --out this user may write, or fix its permissions",
    errno.EPERM: "operation not permitted; choose an --out this user may write",
}


def format_bytes(n: float) -> str:
    """``n`` bytes as the CLI prints sizes: ``1.2 GiB``, ``340 MiB``, ``12 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out: str | os.PathLike, need_bytes: int = 0, is_file: bool = False) -> None:
    """Refuse, before any work, an ``out`` that cannot be written or has too little room.

    ``out`` may not exist yet: then the folder it would be made in is checked (a stage stages its
    outputs beside ``out`` and renames them in, so that folder must be writable too).
    ``need_bytes``: what the stage will write (its estimate); :data:`ROOM_MARGIN` is added.
    ``is_file``: ``out`` is a file the command writes (the report's page), not a folder.
    Raises :class:`UserError` naming the folder, the figures and the fix.
    """
    out = Path(out)
    if is_file and out.is_dir():
        raise UserError(f"--out {out} is a folder; give the path of the file to write.")
    if not is_file and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (it is created when missing).")
    where = _existing_ancestor(out.parent)
    if not where.is_dir():
        raise UserError(f"--out {out} lies under the file {where}; give a path in a folder.")
    for folder in [where, out] if out.is_dir() else [where]:
        stat = os.statvfs(folder)
        if stat.f_flag & os.ST_RDONLY:
            raise UserError(
                f"--out {out} cannot be written: {folder} is on a read-only file system; "
                "choose another --out."
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(
                f"--out {out} cannot be written: this user may not write in {folder}; choose "
                "another --out or fix its permissions."
            )
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    need = int(need_bytes) + ROOM_MARGIN
    if need > free:
        raise UserError(
            f"--out {out} needs about {format_bytes(need)} (the stage's outputs, estimated from "
            f"its inputs, and a margin) but only {format_bytes(free)} is free on the file system "
            f"of {where}; free some space or choose another --out."
        )


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _holder(text: str) -> str:
    """The run a lock file describes, in words."""
    try:
        info = json.loads(text)
        return (
            f"mindvideo {info['command']}, PID {info['pid']} on {info['host']}, started "
            f"{info['started']}"
        )
    except (ValueError, KeyError, TypeError):
        return "a run that left no description"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``out``'s lock (:func:`lock_path`) while the block runs; refuse a folder in use.

    Raises :class:`UserError` at once, naming the running command, its PID, host and start time,
    when another process holds the lock. A lock file whose process is gone (killed with SIGKILL,
    or the machine restarted) is stale: it is taken over, with a log line.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock(fd, path, out)
        except BaseException:
            os.close(fd)
            raise
        # The run that held the lock may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else sees; open the current one again.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        previous = _read(fd)
        if previous.strip():
            log.info("took over the stale lock of %s: %s had stopped", out, _holder(previous))
        info = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before the lock goes: a waiting open then sees a new file
        os.close(fd)


def _flock(fd: int, path: Path, out: str | os.PathLike) -> None:
    """Take ``fd``'s exclusive lock without waiting; :class:`UserError` when it is held."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    except OSError as exc:  # a file system without flock: judge by the PID in the file
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        text = _read(fd)
        try:
            info = json.loads(text)
            alive = info["host"] == socket.gethostname() and _pid_alive(int(info["pid"]))
        except (ValueError, KeyError, TypeError):
            alive = False
        if not alive:
            return
    raise UserError(
        f"--out {out} is in use by another run ({_holder(_read(fd))}); wait for it to end or "
        f"stop it, or choose another --out. (Lock file: {path}.)"
    )


# The temporary entries of mindvideo.utils.io's atomic writers (".NAME.XXXXXXXX.tmp[.SUFFIX]"),
# of staged folders (".NAME.tmp"), of checkpoints (".step_N.tmp") and replaced folders
# (".NAME.old"): what a run killed with SIGKILL leaves behind.
_STAGING = re.compile(r"^\..+\.(tmp(\.[A-Za-z0-9]+)?|old)$")


def clean_stale_staging(out: str | os.PathLike, is_file: bool = False) -> list[Path]:
    """Remove the staging entries an earlier run of ``out`` left when it was killed: beside
    ``out`` (its own temporary and staged names) and, for a folder, anywhere inside it. Only
    safe while holding ``out``'s lock (no run of it is writing). Returns what was removed."""
    out = Path(out).absolute()
    stem = out.stem if is_file else out.name
    found = [p for p in out.parent.glob(f".{glob.escape(stem)}.*") if _STAGING.match(p.name)]
    if not is_file and out.is_dir():
        found += [p for p in out.rglob(".*") if _STAGING.match(p.name)]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not os.path.lexists(path):
            continue  # inside a folder removed before it
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info(
            "removed %d staging entr%s an interrupted run of %s left behind",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            out,
        )
    return removed


@contextlib.contextmanager
def guard_output(
    out: str | os.PathLike, command: str, need_bytes: int = 0, is_file: bool = False
) -> Iterator[Path]:
    """:func:`check_output_folder`, then :func:`output_lock` for the block, and while holding
    it :func:`clean_stale_staging` (the leftovers of a run killed with SIGKILL)."""
    if is_file and not Path(out).parent.is_dir():
        # A file whose folder is missing (the report's page in a run folder that is not there):
        # the command names the missing folder itself; nothing is created for it here.
        yield lock_path(out)
        return
    check_output_folder(out, need_bytes, is_file)
    with output_lock(out, command) as path:
        clean_stale_staging(out, is_file)
        yield path


def write_failure(exc: BaseException, out: str | os.PathLike | None = None) -> str | None:
    """One line for an exception that is (or was caused by) a write that cannot succeed: a full
    disk, a quota, a read-only file system, a permission; ``None`` for any other exception.

    Libraries that write through their own code (safetensors, ``torch.save``) raise their own
    exception types whose message alone carries the cause; a full disk is then recognised from
    the file system of ``out``, which has (next to) no room left.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
            where = f" ({error.filename})" if error.filename else ""
            name = f"--out {out}" if out is not None else "a file"
            return f"could not write {name}{where}: {WRITE_ERRORS[error.errno]}."
        error = error.__cause__ or error.__context__
    if out is not None:
        where = _existing_ancestor(Path(out))
        with contextlib.suppress(OSError):
            stat = os.statvfs(where)
            if stat.f_bavail * stat.f_frsize < 2**20:
                return (
                    f"could not write under {out} ({type(exc).__name__}): no space is left on "
                    f"the file system of {where}; free some space or choose another --out."
                )
    return None
