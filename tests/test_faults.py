"""The fault matrix: every stage command, on tiny data, under the faults a user meets.

For each stage (``simulate`` … ``report``, ``baseline``, ``lowlevel``, ``adapt``):

- **a folder in use**: a second run into an ``--out`` whose lock another run holds is refused at
  once, in one line naming that run's PID, and writes nothing;
- **a read-only output parent** and **no room** (a real read-only or 1 MiB tmpfs): one line
  before any work, nothing written;
- **the disk fills during the run** (the early check bypassed, a 64 KiB tmpfs): one line, and
  no partial result and no staging entry left;
- **a corrupt input** (a truncated weights file, ``.npy``, JSON or YAML): one line naming the
  file and the fix;
- **SIGINT** at a random point: exit 130, one line, no partial result, the lock released;
- **SIGKILL** at a random point, then the same command again: the result of an uninterrupted
  run, byte for byte.

Plus the issue's own case: two ``prepare`` runs started together into one ``--out``.
docs/robustness.md describes the guarantees these tests hold the stages to.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import assert_one_line_error, run_quiet
from helpers.clip import build_tiny_clip
from helpers.mounts import read_only_folder, tmpfs
from helpers.pipeline import tiny_pipeline
from helpers.run import (
    evaluate_overrides,
    random_clips,
    save_classifiers,
    save_encoders,
    write_prepared,
    write_reconstruction,
)
from helpers.sd import COND_DIM, build_sd_folder, write_tiny_prepared

from mindvideo.config import STAGES as REGISTERED
from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.utils import outputs
from mindvideo.utils.outputs import lock_path, output_lock

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"

# Every stage of the registry, in pipeline order, and the report.
STAGES = [*REGISTERED, "report"]
TRAINING = {"pretrain", "contrast", "tune-video", "cotrain"}
# Stages whose folder (or file) appears whole or not at all; the others keep resumable state
# (training checkpoints, a reconstruction's finished windows), marked as unfinished.
WHOLE = {
    "simulate",
    "prepare",
    "evaluate",
    "explain",
    "report",
    "baseline",
    "lowlevel",
    "adapt",
}

# What marks a stage's result as complete (relative to --out; "" is --out itself).
RESULT = {
    "simulate": "scenes.json",
    "prepare": "manifest.json",
    "pretrain": "mbm",
    "contrast": "fmri_encoder",
    "tune-video": "unet",
    "cotrain": "pipeline",
    "reconstruct": "index.json",
    "evaluate": "metrics.json",
    "explain": "explain.json",
    "report": "",
    "baseline": "baseline.json",
    "lowlevel": "decoder",
    "adapt": "adapter",
}


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """Progress bars write to stderr, which must hold the one line alone; log lines are not
    wrapped."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("COLUMNS", "1000")


def _steps(section: str = "train") -> list[str]:
    return [
        f"{section}.max_steps=6",
        f"{section}.batch_size=4",
        f"{section}.checkpoint_every=2",
        f"{section}.log_every=2",
        f"{section}.cpu=true",
    ]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, simulated_dataset, prepared_dataset) -> dict[str, Path]:
    """Every stage's tiny inputs (a few seconds in all; built once per worker, and never
    changed: the corrupt-input tests damage copies)."""
    root = tmp_path_factory.mktemp("faults")
    data = write_tiny_prepared(root / "data", voxels=60)
    torch.manual_seed(0)
    mbm = mbm_tiny(64)
    mbm.save_pretrained(root / "pretrain" / "mbm")
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND_DIM)
    encoder.save_pretrained(root / "contrast" / "fmri_encoder")
    captions = ["a red square", "a blue bar", "a green bar", "a yellow square"]
    run = root / "RUN"
    write_prepared(run / "prepare")
    save_encoders(run)
    pred = random_clips(6, size=32, seed=1)
    write_reconstruction(run / "reconstruct", pred, random_clips(6, size=32, seed=2))
    tiny_pipeline().save_pretrained(root / "pipeline")
    return {
        "sim": simulated_dataset,
        "prepared": prepared_dataset,
        "data": data,
        "sd": build_sd_folder(root / "sd"),
        "mbm": root / "pretrain",
        "encoder": root / "contrast",
        "clip": build_tiny_clip(root / "clip", [*captions, "the dark background"]),
        "pipeline": root / "pipeline",
        "run": run,
        "classifiers": save_classifiers(root / "classifiers"),
    }


REFUSED = [*STAGES, "demo"]
"""The faults refused before any work are checked on the demo too (it is too long for the
others; its stages are the functions the matrix covers)."""


def argv(stage: str, f: dict[str, Path], out: Path) -> list[str]:
    """A tiny run of ``stage`` writing ``out`` (training stages: ``--resume latest``, so that the
    same command continues an interrupted run and starts a fresh one alike)."""
    if stage == "demo":
        return ["demo", "--preset", "tiny", "--out", str(out)]
    config = ["--config", str(TINY / f"{stage}.yaml")] if stage != "report" else []
    resume = ["--resume", "latest"] if stage in TRAINING else []
    run = f["run"]
    args = {
        "simulate": [  # two processes render the two segments' stimuli
            *("--threads", "2", "train_segments=1", "test_segments=1", "test_repetitions=2"),
            *("visual_vertices=400", "other_vertices=50"),
        ],
        "prepare": ["--root", f["sim"]],
        "pretrain": ["--finetune-data", f["data"], *_steps("finetune")],
        "contrast": ["--data", f["data"], "--encoder", f["mbm"], "--clip", f["clip"], *_steps()],
        "tune-video": ["--data", f["data"], "--stable-diffusion", f["sd"], "size=16", *_steps()],
        "cotrain": [
            *("--data", f["data"], "--encoder", f["encoder"], "--generator", f["sd"]),
            *("size=16", *_steps()),
        ],
        "reconstruct": ["--data", f["data"], "--checkpoint", f["pipeline"]],
        "evaluate": [
            *("--reconstructions", run / "reconstruct"),
            *evaluate_overrides(f["classifiers"]),
        ],
        "explain": [
            *("--data", run / "prepare", "--mbm", run / "pretrain"),
            *("--contrast", run / "contrast", "--cotrain", run / "cotrain"),
        ],
        "report": [run],
        "baseline": ["--data", f["prepared"], "n_ways=[2]", "trials=10", "shuffles=2"],
        "lowlevel": ["--data", f["prepared"], "--clip", f["clip"]],
        # The subject aligned onto itself (the same stimuli), fine-tuned through the pipeline.
        "adapt": [
            *("--data", f["data"], "--reference", f["data"], "--pipeline", f["pipeline"]),
            "segments=2",
        ],
    }[stage]
    return [stage, *config, *resume, *map(str, args), "--out", str(out)]


def out_path(stage: str, folder: Path) -> Path:
    return folder / ("page.html" if stage == "report" else "out")


def entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def complete(stage: str, out: Path) -> bool:
    """Whether ``out`` holds the stage's finished result. A reconstruction folder is written
    window by window and resumable: its ``index.json`` says whether it is complete."""
    result = out / RESULT[stage]
    if stage == "reconstruct":
        return result.is_file() and json.loads(result.read_text())["complete"]
    return result.exists()


def assert_nothing_partial(stage: str, out: Path) -> None:
    """No staging entry anywhere beside or under ``out``, and no result that looks finished."""
    staging = [p for p in out.parent.rglob(".*") if outputs._STAGING.match(p.name)]
    assert not staging, staging
    assert not complete(stage, out)


# --------------------------------------------------------------------------------------------
# Refused before any work: a folder in use, a read-only parent, no room
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", REFUSED)
def test_a_folder_in_use_is_refused_at_once(stage, inputs, tmp_path, capsys):
    out = out_path(stage, tmp_path)
    with output_lock(out, stage):
        start = time.perf_counter()
        code, err = run_quiet(argv(stage, inputs, out), capsys)
        assert time.perf_counter() - start < 5.0
    assert_one_line_error(code, err, stage, "is in use by another run", f"PID {os.getpid()}")
    assert entries(tmp_path) == []


@pytest.mark.parametrize("stage", REFUSED)
def test_a_read_only_output_parent_is_one_line_before_any_work(stage, inputs, tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as ro:
        code, err = run_quiet(argv(stage, inputs, out_path(stage, ro)), capsys)
        assert entries(ro) == []
    assert_one_line_error(code, err, stage, "cannot be written", "choose another --out")


@pytest.mark.parametrize("stage", REFUSED)
def test_no_room_is_one_line_before_any_work(stage, inputs, tmp_path, capsys):
    with tmpfs(tmp_path / "small", size="1m") as small:
        code, err = run_quiet(argv(stage, inputs, out_path(stage, small)), capsys)
        assert entries(small) == []
    assert_one_line_error(code, err, stage, "needs about", "is free on the file system")


@pytest.mark.parametrize("stage", STAGES)
def test_a_disk_that_fills_during_the_run_is_one_line_and_nothing_partial(
    stage, inputs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(outputs, "check_output_folder", lambda *a, **k: None)
    # Small outputs: a smaller disk.
    size = "8k" if stage in ("evaluate", "baseline", "adapt") else "64k"
    with tmpfs(tmp_path / "full", size=size) as full:
        out = out_path(stage, full)
        code, err = run_quiet(argv(stage, inputs, out), capsys)
        assert_one_line_error(code, err, stage, "could not write", "no space is left")
        assert_nothing_partial(stage, out)
        assert not out.exists() or stage not in WHOLE, entries(out)
        assert not lock_path(out).exists()


# --------------------------------------------------------------------------------------------
# A corrupt input
# --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def corrupt(stage: str, f: dict[str, Path], root: Path) -> tuple[dict[str, Path], Path, str]:
    """A copy of ``f`` in which one input of ``stage`` is damaged: (inputs, damaged file, the
    fix the message must give)."""
    f = dict(f)
    root.mkdir(parents=True)
    if stage == "simulate":
        bad = root / "simulate.yaml"
        bad.write_text("seed: [0\n")
        return f, bad, "fix"
    if stage == "prepare":
        f["sim"] = _copy(f["sim"], root / "sim")
        return f, _truncate(f["sim"] / "scenes.json"), "re-download it"
    if stage == "baseline":
        f["prepared"] = _copy(f["prepared"], root / "prepared")
        return f, _truncate(f["prepared"] / "fmri_test.npy"), "re-run mindvideo prepare"
    if stage == "adapt":
        f["data"] = _copy(f["data"], root / "data")
        return f, _truncate(f["data"] / "fmri_train.npy"), "re-run mindvideo prepare"
    if stage == "lowlevel":
        f["prepared"] = _copy(f["prepared"], root / "prepared")
        return f, _truncate(f["prepared"] / "fmri_train.npy"), "re-run mindvideo prepare"
    if stage == "pretrain":
        f["data"] = _copy(f["data"], root / "data")
        return f, _truncate(f["data"] / "fmri_train.npy"), "re-run mindvideo prepare"
    if stage == "contrast":
        f["mbm"] = _copy(f["mbm"], root / "pretrain")
        bad = next((f["mbm"] / "mbm").glob("*.safetensors"))
        return f, _truncate(bad), "re-run mindvideo pretrain"
    if stage in ("tune-video", "cotrain"):
        f["sd"] = _copy(f["sd"], root / "sd")
        bad = next((f["sd"] / "unet").glob("*.safetensors"))
        return f, _truncate(bad), "re-download it" if stage == "tune-video" else "tune-video"
    if stage == "reconstruct":
        f["pipeline"] = _copy(f["pipeline"], root / "pipeline")
        bad = next((f["pipeline"] / "unet").glob("*.safetensors"))
        return f, _truncate(bad), "re-run mindvideo cotrain"
    f["run"] = _copy(f["run"], root / "RUN")
    if stage == "evaluate":
        return f, _truncate(f["run"] / "reconstruct" / "reconstructions.npy"), "reconstruct"
    if stage == "explain":
        bad = next((f["run"] / "contrast" / "fmri_encoder").glob("*.safetensors"))
        return f, _truncate(bad), "re-run mindvideo contrast"
    assert stage == "report"
    return f, _truncate(f["run"] / "reconstruct" / "index.json"), "reconstruct"


@pytest.mark.parametrize("stage", STAGES)
def test_a_corrupt_input_is_one_line_naming_the_file_and_the_fix(stage, inputs, tmp_path, capsys):
    f, bad, fix = corrupt(stage, inputs, tmp_path / "inputs")
    args = argv(stage, f, out_path(stage, tmp_path / "o"))
    if stage == "simulate":
        args[args.index("--config") + 1] = str(bad)
    code, err = run_quiet(args, capsys)
    if stage == "report":  # the page leaves out what it cannot read, with one warning
        lines = err.splitlines()
        assert code == 0 and len(lines) == 1 and lines[0].startswith("WARNING"), err
        assert f"Skipping {bad}, which cannot be read" in lines[0] and fix in lines[0], err
        return
    assert_one_line_error(code, err, stage, str(bad), fix)
    assert not (tmp_path / "o").exists() or entries(tmp_path / "o") == []


# --------------------------------------------------------------------------------------------
# Interrupted at a random point: SIGINT, and SIGKILL then the same command again
# --------------------------------------------------------------------------------------------


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mindvideo", "-q", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lock_seen(proc: subprocess.Popen, out: Path) -> float | None:
    """When ``out``'s lock appeared (the run passed its checks and began its work); None when
    the process ended first (a run too short to see it)."""
    while not lock_path(out).exists():
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return time.perf_counter()


def _without_times(value):
    """A JSON value without its ``created`` time stamps."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "created"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def digest(out: Path) -> dict[str, str]:
    """sha256 of every file of a result (relative path → digest), JSON without its time stamps;
    the training log (wall-clock speeds) and ``config.yaml`` (the run folder's own paths) left
    out."""
    found = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name in ("metrics.jsonl", "config.yaml"):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_without_times(json.loads(data)), sort_keys=True).encode()
        found[str(path.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigint_then_sigkill_at_a_random_point_then_the_same_command(
    stage, inputs, tmp_path, capsys
):
    """The random points are fractions of an uninterrupted run's length (the process's whole
    life: start-up, checks, work, writes). A signal that lands after the work is done must
    leave the finished result."""
    rng = random.Random(f"faults-{stage}")
    ref = out_path(stage, tmp_path / "ref")
    start = time.perf_counter()
    proc = _start(argv(stage, inputs, ref))
    locked = _lock_seen(proc, ref)
    assert proc.wait() == 0, proc.stderr.read()
    end = time.perf_counter()
    length = end - start
    # The stage's own part of the run: from taking the lock (its checks passed) to the end.
    work = end - locked if locked is not None else length
    expected = digest(ref) if stage != "report" else None

    def check_finished(out: Path) -> None:
        if stage == "report":  # the page records when it was made
            assert out.read_text(encoding="utf-8").rstrip().endswith("</html>")
        else:
            assert digest(out) == expected
        staging = [p for p in out.parent.rglob(".*") if outputs._STAGING.match(p.name)]
        assert staging == [] and not lock_path(out).exists()
        # every output, weights included, has the modes the umask gives
        mask = os.umask(0)
        os.umask(mask)
        for path in [out, *out.rglob("*")]:
            want = (0o777 if path.is_dir() else 0o666) & ~mask
            assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))

    # SIGINT: exit 130, one line, nothing partial, the lock released.
    out = out_path(stage, tmp_path / "int")
    proc = _start(argv(stage, inputs, out))
    time.sleep(rng.uniform(0.1, 0.6) * length)
    proc.send_signal(signal.SIGINT)
    code, err = proc.wait(), proc.stderr.read()
    lines = [line for line in err.split("\n") if line.strip() and "%|" not in line]
    if code == 0:  # it had finished
        check_finished(out)
    else:
        assert (code, lines) == (130, [f"mindvideo {stage}: interrupted"]), err
        assert not lock_path(out).exists()
        assert_nothing_partial(stage, out)
        assert not out.exists() or stage not in WHOLE, entries(out)

    # SIGKILL in the stage's own part of the run, then the same command again: the
    # uninterrupted run's result.
    out = out_path(stage, tmp_path / "kill")
    proc = _start(argv(stage, inputs, out))
    began = _lock_seen(proc, out)
    time.sleep(rng.uniform(0.4, 0.95) * work if began is not None else 0.0)
    proc.kill()
    proc.wait()
    code, err = run_quiet(argv(stage, inputs, out), capsys)
    assert code == 0, err
    check_finished(out)


# --------------------------------------------------------------------------------------------
# The case: two prepare runs into one --out, started together
# --------------------------------------------------------------------------------------------


def test_two_prepare_runs_started_together_one_refused_one_complete(inputs, tmp_path):
    from mindvideo.data.prepared import PreparedData

    out = tmp_path / "out"
    procs = [_start(argv("prepare", inputs, out)) for _ in range(2)]
    results = sorted((p.wait(), p.stderr.read().strip()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    err = results[1][1]
    assert err.startswith("mindvideo prepare: error: --out ") and "is in use by another run" in err
    assert "\n" not in err
    assert PreparedData.open(out).manifest["subject"] == 1
