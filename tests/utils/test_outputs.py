"""An output folder's guard: the lock, the early checks, failed writes, staging leftovers, modes."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.mounts import read_only_folder, tmpfs
from safetensors.torch import save_file

from mindvideo.utils import UserError, atomic_dir, atomic_path
from mindvideo.utils.io import follow_umask, open_memmap_allocated
from mindvideo.utils.outputs import (
    check_output_folder,
    clean_stale_staging,
    guard_output,
    lock_path,
    output_lock,
    write_failure,
)

HOLD = """
import sys, time
from mindvideo.utils.outputs import output_lock
with output_lock(sys.argv[1], "prepare"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_lock_on_a_folder_in_use_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "pretrain"):
        info = json.loads(lock_path(out).read_text())
        assert info["command"] == "pretrain" and info["pid"] == os.getpid()
        with pytest.raises(UserError) as refused, output_lock(out, "pretrain"):
            pass
    message = str(refused.value)
    assert f"--out {out} is in use by another run (mindvideo pretrain, PID {os.getpid()}" in message
    assert "wait for it to end or stop it, or choose another --out" in message
    assert not lock_path(out).exists()  # released and removed
    with output_lock(out, "pretrain"):  # a finished folder is free again
        pass


def test_another_process_holding_the_lock_is_named_and_a_killed_one_leaves_no_block(
    tmp_path, caplog
):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(UserError, match=rf"mindvideo prepare, PID {holder.pid} on "):
            with output_lock(out, "prepare"):
                pass
        assert time.perf_counter() - start < 1.0  # refused at once, not after waiting
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock dies with the process
        holder.wait()
    assert lock_path(out).exists()
    with caplog.at_level(logging.INFO, "mindvideo.utils.outputs"), output_lock(out, "prepare"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert f"took over the stale lock of {out}: mindvideo prepare, PID {holder.pid}" in caplog.text


def test_the_checks_name_a_file_a_read_only_folder_and_missing_room(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; give a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(UserError, match="lies under the file"):
        check_output_folder(tmp_path / "file" / "out")
    with pytest.raises(UserError, match="is a folder; give the path of the file"):
        check_output_folder(tmp_path, is_file=True)
    check_output_folder(tmp_path / "new" / "deeper")  # made when missing
    with read_only_folder(tmp_path / "ro") as ro, pytest.raises(UserError) as refused:
        check_output_folder(ro / "out")
    assert "cannot be written" in str(refused.value) and "choose another --out" in str(
        refused.value
    )
    with tmpfs(tmp_path / "small", size="1m") as small:
        with pytest.raises(UserError) as full:
            check_output_folder(small / "out", need_bytes=5 * 2**20)
    message = str(full.value)
    assert "needs about 21 MiB" in message and "only 1.0 MiB is free" in message, message


def test_write_failure_is_one_line_for_a_full_disk_and_none_for_other_errors(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("writer failed") from exc
    except RuntimeError as wrapped:
        line = write_failure(wrapped, tmp_path)
    assert line == (
        f"could not write --out {tmp_path} ({tmp_path / 'x.npy'}): no space is left on its file "
        "system; free some space or choose another --out."
    )
    assert write_failure(OSError(errno.EROFS, "Read-only file system"), None).endswith(
        "its file system is read-only; choose another --out."
    )
    assert write_failure(ValueError("a bug"), tmp_path) is None
    assert write_failure(OSError(errno.ENOENT, "No such file"), tmp_path) is None


def test_a_memory_map_on_a_full_disk_raises_enospc_instead_of_sigbus(tmp_path):
    with tmpfs(tmp_path / "full", size="64k") as full:
        with pytest.raises(OSError) as raised:
            open_memmap_allocated(full / "big.npy", np.uint8, (256, 1024))  # 256 KiB
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(full / "big.npy")
        arr = open_memmap_allocated(full / "small.npy", np.uint8, (16, 1024))
        arr[:] = 7
        arr.flush()
        del arr
        assert np.load(full / "small.npy").sum() == 7 * 16 * 1024


def test_staging_leftovers_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    (out / "pipeline").mkdir(parents=True)
    stale = [
        tmp_path / ".run.ab12cd34.tmp",  # atomic_dir(out)
        tmp_path / ".run.tmp",  # a staged prepare
        out / ".pipeline.k2j3h4g5.tmp",  # atomic_dir(out / "pipeline")
        out / "pipeline" / ".weights.x1y2z3w4.tmp.safetensors",  # atomic_path
        out / ".step_6.tmp",
        out / ".pipeline.old",
    ]
    kept = [
        tmp_path / ".other.ab12cd34.tmp",  # another output's
        tmp_path / ".run.lock",
        out / "pipeline" / "weights.safetensors",
        out / ".hidden-config",
    ]
    for path in stale + kept:
        if path.suffix in (".tmp", ".old") and "step" not in path.name:
            path.mkdir()
        else:
            path.write_text("x")
    removed = clean_stale_staging(out)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_guard_output_cleans_what_a_killed_run_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".metrics.ab12cd34.tmp.json").write_text("{")
    with guard_output(out, "evaluate"):
        assert not (out / ".metrics.ab12cd34.tmp.json").exists()


def test_outputs_follow_the_umask_weights_included(tmp_path):
    import torch

    before = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")
            os.chmod(tmp / "model.safetensors", 0o600)  # as huggingface's writers leave it
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "config.json").write_text("{}")
        with atomic_path(tmp_path / "clips.npy") as tmp:
            np.save(tmp, np.zeros(3))
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
        assert modes == {
            "model": 0o755,
            "model.safetensors": 0o644,
            "sub": 0o755,
            "config.json": 0o644,
            "clips.npy": 0o644,
        }
        os.umask(0o077)
        follow_umask(tmp_path / "model")
        assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(before)
