"""What happens when things go wrong, through the real ``mindvideo`` command line.

Each failure a user can cause gives one clear line on stderr, exit code 2, and leaves no partial
output behind (the ``--out`` folder is absent, or an earlier result in it is untouched); a
training stage killed with SIGKILL and resumed with ``--resume latest`` ends with the same weights
as an uninterrupted run; the same seed gives the same reconstructions. The unit tests of each
module cover the rest (NaN voxels, wrong volume counts, missing repetitions, unknown config keys,
truncated videos at the reader level, ...).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers.cli import assert_one_line_error, run_quiet
from helpers.clip import write_class_prepared
from helpers.datasets import copy_dataset
from helpers.pipeline import tiny_pipeline
from helpers.sd import build_sd_folder, write_tiny_prepared
from safetensors.torch import load_file

from mindvideo.data.cifti import read_dtseries, write_dtseries
from mindvideo.data.prepared import PreparedData
from mindvideo.training.engine import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@contextlib.contextmanager
def data_logs(caplog):
    """Records of ``mindvideo.data`` at INFO into ``caplog`` (the CLI's ``mindvideo`` logger
    does not propagate to the root logger caplog listens on)."""
    logger = logging.getLogger("mindvideo.data")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (relative paths), temporary entries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------
# Small inputs shared by the tests (a few seconds in all)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny pipeline folder (its encoder takes 64 voxels: 60 padded to 4 patches of 16),
    prepared subjects of 60 and 80 voxels, a tiny Stable Diffusion folder and an empty folder."""
    root = tmp_path_factory.mktemp("robustness")
    tiny_pipeline().save_pretrained(root / "checkpoint")
    (root / "empty").mkdir()
    return {
        "checkpoint": root / "checkpoint",
        "data60": write_tiny_prepared(root / "data60", voxels=60),
        "data80": write_tiny_prepared(root / "data80", voxels=80),
        "sd": build_sd_folder(root / "sd"),
        "empty": root / "empty",
    }


# --------------------------------------------------------------------------------------------
# kill -9 during a training stage, then --resume latest
# --------------------------------------------------------------------------------------------


def _pretrain_command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mindvideo",
        "pretrain",
        "--config",
        str(CONFIGS / "tiny" / "pretrain.yaml"),
        "--finetune-data",
        str(data),
        "--out",
        str(out),
        "finetune.max_steps=150",
        "finetune.batch_size=16",
        "finetune.checkpoint_every=10",
        "finetune.log_every=10",
        "finetune.eval_every=0",
    ]


def _subprocess_env() -> dict[str, str]:
    # One thread in every run: the same arithmetic in each, and the other tests keep a core.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "finetune" / "logs" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def test_kill_9_during_training_then_resume_latest_gives_the_same_weights(tmp_path):
    data = write_class_prepared(tmp_path / "data", n_voxels=100, noise=0.5)
    env = _subprocess_env()
    straight, cut = tmp_path / "straight", tmp_path / "cut"

    proc = subprocess.run(
        _pretrain_command(data, straight), env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr

    # The same run, killed with SIGKILL as soon as its first checkpoint is complete.
    log = tmp_path / "cut.log"
    with log.open("w") as stderr:
        victim = subprocess.Popen(
            _pretrain_command(data, cut), env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 120
            while not list_checkpoints(cut / "finetune"):
                assert victim.poll() is None, f"ended before a checkpoint: {log.read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.01)
            victim.send_signal(signal.SIGKILL)
        finally:
            if victim.poll() is None:
                victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (cut / "mbm").exists()  # killed mid-run: no final model yet

    proc = subprocess.run(
        [*_pretrain_command(data, cut), "--resume", "latest"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Resumed from" in proc.stderr

    weights = "diffusion_pytorch_model.safetensors"
    expected = load_file(straight / "mbm" / weights)
    resumed = load_file(cut / "mbm" / weights)
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    assert _losses(cut) == _losses(straight)  # the log was cut back to the checkpoint, too
    held = [json.loads((d / "heldout.json").read_text()) for d in (straight, cut)]
    assert held[0] == held[1]
    hidden = [p for p in leftovers(cut) if any(part.startswith(".") for part in Path(p).parts)]
    assert hidden == []  # a checkpoint the kill cut short was replaced, not left behind


# --------------------------------------------------------------------------------------------
# A voxel count that does not match the checkpoint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["reconstruct", "cotrain"])
def test_a_voxel_count_the_checkpoint_does_not_take_is_one_line_and_writes_nothing(
    stage, inputs, tmp_path, capsys
):
    out = tmp_path / "out"
    if stage == "reconstruct":
        flags = ["--checkpoint", str(inputs["checkpoint"])]
        overrides = ["num_inference_steps=1", "limit=1"]
    else:
        flags = ["--encoder", str(inputs["checkpoint"]), "--generator", str(inputs["sd"])]
        overrides = ["size=16", "train.max_steps=1", "train.batch_size=2", "train.cpu=true"]
    argv = [stage, "--data", str(inputs["data80"]), *flags, "--out", str(out), *overrides]
    code, err = run_quiet(argv, capsys)
    assert_one_line_error(code, err, stage, "80", "64", str(inputs["data80"]))
    assert not out.exists(), leftovers(out)


# --------------------------------------------------------------------------------------------
# An empty folder where a stage expects its input
# --------------------------------------------------------------------------------------------

EMPTY_INPUTS = {  # case: (stage, flags naming the empty folder)
    "prepare": ("prepare", ["--config", "configs/tiny/prepare.yaml", "--root", "{empty}"]),
    "prepare-preprocessed": ("prepare", ["--dataset", "wen2018-preprocessed", "--root", "{empty}"]),
    "prepare-hcp": ("prepare", ["--dataset", "hcp", "--root", "{empty}"]),
    "pretrain": ("pretrain", ["--config", "configs/tiny/pretrain.yaml", "--data", "{empty}"]),
    "pretrain-finetune": ("pretrain", ["--finetune-data", "{empty}", "encoder.preset=tiny"]),
    "contrast": ("contrast", ["--data", "{empty}", "--encoder", "{empty}", "--clip", "{empty}"]),
    "tune-video": ("tune-video", ["--data", "{empty}", "--stable-diffusion", "{empty}"]),
    "cotrain": ("cotrain", ["--data", "{empty}", "--encoder", "{empty}", "--generator", "{empty}"]),
    "reconstruct": ("reconstruct", ["--data", "{empty}", "--checkpoint", "{empty}"]),
    "evaluate": ("evaluate", ["--reconstructions", "{empty}", "--image-classifier", "{empty}"]),
    "explain": ("explain", ["--data", "{empty}", "--mbm", "{empty}", "--contrast", "{empty}"]),
}


@pytest.mark.parametrize("case", sorted(EMPTY_INPUTS))
def test_an_empty_input_folder_is_one_line_and_writes_nothing(case, inputs, tmp_path, capsys):
    stage, flags = EMPTY_INPUTS[case]
    flags = [a.format(empty=inputs["empty"]) for a in flags]
    out = tmp_path / "out"
    code, err = run_quiet([stage, *flags, "--out", str(out)], capsys)
    assert_one_line_error(code, err, stage, str(inputs["empty"]))
    assert not out.exists(), leftovers(out)


def test_an_empty_checkpoint_folder_with_good_data_is_one_line(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reconstruct", "--checkpoint", str(inputs["empty"]), "--data", str(inputs["data60"])]
    code, err = run_quiet([*argv, "--out", str(out)], capsys)
    assert_one_line_error(code, err, "reconstruct", str(inputs["empty"]))
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# prepare: a truncated video, Inf and constant voxels
# --------------------------------------------------------------------------------------------


def run_path(root: Path, name: str, r: int) -> Path:
    return root / "subject1/fmri" / name / "cifti" / f"{name}_{r}_Atlas.dtseries.nii"


def prepare_argv(root: Path, out: Path, *overrides: str) -> list[str]:
    config = str(CONFIGS / "tiny" / "prepare.yaml")
    return ["prepare", "--config", config, "--root", str(root), "--out", str(out), *overrides]


def cut_inside_the_frames(mp4: Path, keep: float = 0.7) -> None:
    """Re-mux ``mp4`` with its index first (faststart), then cut it: the header still promises
    every frame, so only decoding finds the damage — after earlier stimuli were decoded."""
    remuxed = mp4.with_name("remuxed.mp4")
    faststart = {"movflags": "faststart"}
    with av.open(str(mp4)) as src, av.open(str(remuxed), "w", options=faststart) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = remuxed.read_bytes()
    remuxed.unlink()
    mp4.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_last_video_leaves_no_partial_prepared_folder(
    simulated_dataset, tmp_path, capsys
):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2, 3), test=(1,))
    mp4 = root / "stimuli" / "test1.mp4"  # decoded last, after frames_train.npy is complete
    cut_inside_the_frames(mp4)
    out = tmp_path / "runs" / "subject1"
    code, err = run_quiet(prepare_argv(root, out), capsys)
    assert_one_line_error(code, err, "prepare", str(mp4), "truncated")
    assert not out.exists(), leftovers(out)
    assert leftovers(tmp_path / "runs") == []  # no staging folder beside it either


def test_a_failed_re_prepare_keeps_the_earlier_complete_subject(
    simulated_dataset, tmp_path, capsys
):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2, 3), test=(1,))
    out = tmp_path / "subject1"
    assert run_quiet(prepare_argv(root, out), capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.iterdir()}
    cut_inside_the_frames(root / "stimuli" / "test1.mp4")
    code, err = run_quiet(prepare_argv(root, out, "fps=1.5"), capsys)  # would prepare again
    assert_one_line_error(code, err, "prepare", "test1.mp4")
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    assert PreparedData.open(out).manifest["prepare_config"]["fps"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "subject1"]


def test_a_bad_last_hcp_run_leaves_no_partial_corpus(simulated_rest, tmp_path, capsys):
    runs = sorted(simulated_rest.rglob("*_Atlas.dtseries.nii"))
    root = tmp_path / "rest"
    shutil.copytree(simulated_rest, root)
    last = root / runs[-1].relative_to(simulated_rest)
    data, axis, tr = read_dtseries(last)
    data[7, :] = np.inf  # every vertex of the last run
    write_dtseries(last, data, axis, tr)
    out = tmp_path / "corpus"
    argv = ["prepare", "--dataset", "hcp", "--root", str(root), "--out", str(out)]
    code, err = run_quiet([*argv, "hcp.shard_frames=100"], capsys)  # run 1 fills 3 shards first
    assert_one_line_error(code, err, "prepare", str(last), "NaN or Inf")
    assert not out.exists(), leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rest"]


def test_inf_voxels_are_an_error_or_zeroed_and_constant_voxels_are_left_out(
    simulated_dataset, tmp_path, capsys, caplog
):
    root = copy_dataset(simulated_dataset, tmp_path / "ds", train=(1, 2, 3), test=(1,))
    bad = run_path(root, "test1", 2)  # a test run: read after the ROI is fitted
    data, axis, tr = read_dtseries(bad)
    data[5, :3] = np.inf
    data[9, 3] = -np.inf
    write_dtseries(bad, data, axis, tr)
    dead = np.arange(20, 30)  # cortical vertices without signal in every run (e.g. dropout)
    for path in sorted((root / "subject1" / "fmri").rglob("*.dtseries.nii")):
        data, axis, tr = read_dtseries(path)
        data[:, dead] = 1000.0
        write_dtseries(path, data, axis, tr)

    out = tmp_path / "out"
    code, err = run_quiet(prepare_argv(root, out), capsys)
    assert_one_line_error(code, err, "prepare", str(bad), "4 of", "NaN or Inf", "nan_policy")
    assert not out.exists(), leftovers(out)

    with data_logs(caplog):
        code, err = run_quiet(prepare_argv(root, out, "nan_policy=zero"), capsys)
    assert code == 0, err
    assert f"{bad}: 4 vertices with NaN or Inf values set to 0" in caplog.text
    assert "10 constant vertices set to 0" in caplog.text
    prepared = PreparedData.open(out)
    assert np.isfinite(prepared.fmri_train).all() and np.isfinite(prepared.fmri_test).all()
    assert prepared.roi_mask is not None and not prepared.roi_mask[dead].any()


def test_nan_in_the_authors_fmri_arrays_is_an_error_or_zeroed(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        np.save(tmp_path / f"video_{split}_16_3hz.npy", np.zeros((n, 4, 6, 16, 16, 3), np.uint8))
        np.save(tmp_path / f"text_{split}_16_3hz.npy", np.full((n, 4, 6), "a cat"))
        fmri = rng.standard_normal((n, 4, 20)).astype(np.float32)
        if split == "train":
            fmri[1, 2, [3, 7]] = [np.nan, np.inf]
        np.save(tmp_path / f"fmri_{split}_subject1.npy", fmri)
    np.save(tmp_path / "test_seg_id_3hz.npy", np.zeros((1, 4), np.int64))
    argv = ["prepare", "--dataset", "wen2018-preprocessed", "--root", str(tmp_path)]
    argv += ["--out", str(tmp_path / "out"), "frame_size=16"]

    code, err = run_quiet(argv, capsys)
    path = tmp_path / "fmri_train_subject1.npy"
    assert_one_line_error(code, err, "prepare", str(path), "2 of 20 voxels", "nan_policy")
    assert not (tmp_path / "out").exists()

    with data_logs(caplog):
        code, err = run_quiet([*argv, "nan_policy=zero"], capsys)
    assert code == 0, err
    assert "2 voxels with NaN or Inf values set to 0" in caplog.text
    prepared = PreparedData.open(tmp_path / "out")
    assert np.isfinite(prepared.fmri_train).all()
    assert (prepared.fmri_train[..., [3, 7]] == 0).all()


# --------------------------------------------------------------------------------------------
# The same seed gives the same reconstructions
# --------------------------------------------------------------------------------------------


def test_the_same_seed_gives_byte_identical_reconstructions(inputs, tmp_path, capsys):
    def reconstruct(out: Path, seed: int) -> np.ndarray:
        argv = ["reconstruct", "--checkpoint", str(inputs["checkpoint"])]
        argv += ["--data", str(inputs["data60"]), "--out", str(out)]
        argv += [f"seed={seed}", "limit=2", "num_inference_steps=2", "gif=false"]
        code, err = run_quiet(argv, capsys)
        assert code == 0, err
        return np.load(out / "reconstructions.npy")

    first = reconstruct(tmp_path / "a", seed=5)
    again = reconstruct(tmp_path / "b", seed=5)
    other = reconstruct(tmp_path / "c", seed=6)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
