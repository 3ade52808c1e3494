"""The shared training engine: learning, exact resume, checkpoints, DDP, accumulation, precision."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mindvideo.config import load_config
from mindvideo.training import (
    TrainConfig,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    lr_factor,
    param_groups_weight_decay,
)
from mindvideo.utils import UserError

from ._ddp_script import ToyDataset, build_model, mse_loss

SCRIPT = Path(__file__).with_name("_ddp_script.py")


def toy_config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=6,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=2,
        checkpoint_every=0,
        log_every=1,
        cpu=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def dataset_mse(model: nn.Module, data: ToyDataset) -> float:
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(data.x), data.y).item()


def read_metrics(out: Path) -> list[dict]:
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"{name} differs by {(p - q).abs().max().item()}"


class Interrupted(Exception):
    """Raised by the test's loss function to simulate a crash part-way through a run."""


def crash_after(calls: int):
    count = 0

    def loss_fn(model, batch):
        nonlocal count
        count += 1
        if count > calls:
            raise Interrupted
        return mse_loss(model, batch)

    return loss_fn


# --------------------------------------------------------------------------------------------


def test_loss_goes_down_and_metrics_are_logged(tmp_path):
    data = ToyDataset(48)
    model = build_model()
    before = dataset_mse(model, data)
    config = toy_config(max_steps=60, batch_size=8, log_every=10, warmup_steps=5)
    trained = Trainer(model, data, mse_loss, config, tmp_path).train()
    after = dataset_mse(trained, data)
    assert after < 0.3 * before, (before, after)
    assert not trained.training  # returned ready for inference
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [10, 20, 30, 40, 50, 60]
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    assert {"loss", "mae", "lr", "epoch", "grad_norm", "samples_per_s"} <= set(metrics[0])


def test_learning_rate_follows_warmup_then_cosine(tmp_path):
    config = toy_config(max_steps=8, warmup_steps=3, min_lr=1e-3)
    Trainer(build_model(), ToyDataset(), mse_loss, config, tmp_path).train()
    logged = [m["lr"] for m in read_metrics(tmp_path)]
    expected = [1e-2 / 3, 2e-2 / 3, 1e-2] + [
        1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (s - 3) / 5)) for s in range(3, 8)
    ]
    assert logged == pytest.approx(expected, rel=1e-9)
    assert lr_factor(7, max_steps=8, warmup_steps=3, schedule="constant") == 1.0


def test_interrupted_run_resumes_to_identical_parameters(tmp_path):
    # Dropout draws from the global RNG, 9 batches per epoch with accumulation 2 makes steps
    # straddle epoch ends, and the cosine schedule is mid-way: all must be restored exactly.
    data = ToyDataset(36)
    config = toy_config(
        max_steps=10, gradient_accumulation_steps=2, checkpoint_every=4, keep_checkpoints=1
    )
    reference = Trainer(
        build_model(dropout=0.2), data, mse_loss, config, tmp_path / "straight"
    ).train()

    out = tmp_path / "interrupted"
    crashing = Trainer(build_model(dropout=0.2), data, crash_after(13), config, out)
    with pytest.raises(Interrupted):  # during step 7, after the checkpoint of step 4
        crashing.train()
    assert [p.name for p in list_checkpoints(out)] == ["step_4"]
    state = json.loads((out / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 0, 8)

    # A fresh process would build the model anew; the checkpoint overwrites its weights.
    resumed = Trainer(build_model(seed=1, dropout=0.2), data, mse_loss, config, out)
    model = resumed.train(resume="latest")
    assert_same_parameters(model, reference)

    # The metrics file holds each step once, with the uninterrupted run's values.
    def curve(run: Path) -> list[tuple]:
        return [(m["step"], m["loss"], m["mae"], m["lr"]) for m in read_metrics(run)]

    assert curve(out) == curve(tmp_path / "straight")
    assert [step for step, *_ in curve(out)] == list(range(1, 11))


def test_evaluation_is_logged_and_leaves_training_unchanged(tmp_path):
    data = ToyDataset(48)
    config = toy_config(max_steps=6, eval_every=4, log_every=2)
    calls, saved = [], []

    def eval_fn(model, step):
        calls.append((step, model.training, torch.is_grad_enabled()))
        torch.rand(100)  # evaluation may draw random numbers (e.g. sampling noise)
        return {"val_mse": dataset_mse(model, data)}

    def save_fn(model, out):
        saved.append((out, model.training))

    model = build_model(dropout=0.2)
    evaluated = Trainer(
        model, data, mse_loss, config, tmp_path / "eval", eval_fn=eval_fn, save_fn=save_fn
    ).train()
    plain = Trainer(build_model(dropout=0.2), data, mse_loss, config, tmp_path / "plain").train()
    assert calls == [(4, False, False), (6, False, False)]
    assert saved == [(tmp_path / "eval", False)]
    assert_same_parameters(evaluated, plain)  # forked RNG: dropout masks unchanged
    val = [m for m in read_metrics(tmp_path / "eval") if "val_mse" in m]
    assert [m["step"] for m in val] == [4, 6]
    assert val[-1]["val_mse"] == pytest.approx(dataset_mse(evaluated, data), rel=1e-6)


def test_checkpoints_are_pruned_and_complete(tmp_path):
    config = toy_config(max_steps=7, checkpoint_every=2, keep_checkpoints=2)
    model = Trainer(build_model(), ToyDataset(), mse_loss, config, tmp_path).train()
    # Every 2 steps and at the end: 2, 4, 6, 7 → the newest two are kept.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_6", "step_7"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_6", "step_7"]
    last = latest_checkpoint(tmp_path)
    assert last is not None
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {
        p.name for p in last.iterdir()
    }
    saved = load_file(last / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

    # A new run must not mix its checkpoints with an earlier run's ...
    with pytest.raises(UserError, match="resume=latest"):
        Trainer(build_model(), ToyDataset(), mse_loss, config, tmp_path).train()
    # ... and resuming a finished run trains nothing and returns the trained weights.
    again = Trainer(build_model(seed=3), ToyDataset(), mse_loss, config, tmp_path)
    assert_same_parameters(again.train(resume="latest"), model)
    with pytest.raises(UserError, match="batch_size=4"):
        Trainer(
            build_model(), ToyDataset(), mse_loss, toy_config(max_steps=7, batch_size=8), tmp_path
        ).train(resume=last)
    with pytest.raises(UserError, match="not a complete training checkpoint"):
        Trainer(build_model(), ToyDataset(), mse_loss, config, tmp_path).train(resume=tmp_path)


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    data = ToyDataset(48)
    accumulated = Trainer(
        build_model(),
        data,
        mse_loss,
        toy_config(batch_size=4, gradient_accumulation_steps=2),
        tmp_path / "accumulated",
    ).train()
    large = Trainer(
        build_model(), data, mse_loss, toy_config(batch_size=8), tmp_path / "large"
    ).train()
    small = Trainer(
        build_model(), data, mse_loss, toy_config(batch_size=4), tmp_path / "small"
    ).train()
    for p, q, r in zip(
        accumulated.parameters(), large.parameters(), small.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p, r, rtol=1e-3, atol=1e-4)  # batch 4 alone differs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args: list[str], processes: int, tmp_path: Path, returncode: int = 0) -> None:
    """Run ``_ddp_script.py`` in ``tmp_path`` with 1 process or under torchrun (CPU, gloo)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path]),
    }
    launcher = [sys.executable]
    if processes > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
        ]
    result = subprocess.run(
        [*launcher, str(SCRIPT), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-3000:]


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = ["--steps", "6", "--samples", "48"]
    run_script(["--out", "ddp", "--result", "ddp", "--batch-size", "4", *common], 2, tmp_path)
    layout = json.loads((tmp_path / "ddp.json").read_text())
    assert layout == {"num_processes": 2, "global_batch_size": 8}
    rank0 = load_file(tmp_path / "ddp_rank0.safetensors")
    rank1 = load_file(tmp_path / "ddp_rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    # One process, batch 8: each DDP step's two rank-batches are this run's batch, split.
    single = Trainer(
        build_model(), ToyDataset(48), mse_loss, toy_config(batch_size=8), tmp_path / "single"
    ).train()
    small = Trainer(
        build_model(), ToyDataset(48), mse_loss, toy_config(batch_size=4), tmp_path / "small"
    ).train()
    for name, param in single.state_dict().items():
        torch.testing.assert_close(rank0[name], param, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(rank0[name], small.state_dict()[name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # three 2-process launches: ~15 s of CPU, more on a busy machine
def test_ddp_interrupted_run_resumes_to_identical_parameters_on_every_rank(tmp_path):
    # Accumulation under DDP, dropout drawing from each rank's RNG, epochs of 4 batches per rank.
    common = ["--steps", "10", "--accum", "2", "--samples", "36", "--dropout", "0.2"]
    common += ["--checkpoint-every", "4"]
    run_script(["--out", "straight", "--result", "straight", *common], 2, tmp_path)
    args = ["--out", "cut", "--result", "cut", *common]
    run_script([*args, "--crash-after", "7"], 2, tmp_path, returncode=1)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_4"]
    assert not (tmp_path / "cut_rank0.safetensors").exists()
    checkpoint = tmp_path / "cut" / "checkpoints" / "step_4"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    run_script([*args, "--resume", "latest"], 2, tmp_path)
    for rank in (0, 1):
        straight = load_file(tmp_path / f"straight_rank{rank}.safetensors")
        resumed = load_file(tmp_path / f"cut_rank{rank}.safetensors")
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (rank, name)


def test_bf16_autocast_runs_on_cpu(tmp_path):
    model = build_model()
    dtypes = []  # of the first layer's output: bf16 only if autocast is really on
    model.net[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    config = toy_config(max_steps=2, mixed_precision="bf16")
    trained = Trainer(model, ToyDataset(), mse_loss, config, tmp_path).train()
    assert len(dtypes) == 2 and all(d == torch.bfloat16 for d in dtypes)
    assert all(math.isfinite(m["loss"]) for m in read_metrics(tmp_path))
    assert all(p.dtype == torch.float32 for p in trained.parameters())  # master weights stay fp32
    assert any(not torch.equal(b, p) for b, p in zip(before, trained.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with a CUDA GPU")
def test_fp16_without_a_gpu_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="bf16"):
        Trainer(build_model(), ToyDataset(), mse_loss, toy_config(mixed_precision="fp16"), tmp_path)


def test_missing_tracker_names_the_pip_extra(tmp_path):
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed")
    with pytest.raises(UserError, match=r"mindvideo\[tensorboard\]"):
        Trainer(
            build_model(), ToyDataset(), mse_loss, toy_config(trackers=["tensorboard"]), tmp_path
        )
    with pytest.raises(UserError, match="choose from: tensorboard, wandb"):
        Trainer(build_model(), ToyDataset(), mse_loss, toy_config(trackers=["tb"]), tmp_path)


def test_weight_decay_spares_biases_norms_embeddings_and_tokens():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2)

    model = Model()
    groups = param_groups_weight_decay(model, None, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.proj.weight), id(model.head.weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    # Only the listed parameters train; the rest are frozen by the trainer.
    heads = param_groups_weight_decay(model, [{"params": model.head.parameters(), "lr": 1.0}], 0.1)
    assert [(len(g["params"]), g["weight_decay"], g["lr"]) for g in heads] == [
        (1, 0.1, 1.0),
        (1, 0.0, 1.0),
    ]


def test_only_trainable_params_change(tmp_path):
    model = build_model()
    first = model.net[0]
    frozen = {k: v.clone() for k, v in model.net[4].state_dict().items()}
    config = toy_config(max_steps=3)
    trained = Trainer(
        model, ToyDataset(), mse_loss, config, tmp_path, trainable_params=first.parameters()
    ).train()
    for key, value in trained.net[4].state_dict().items():
        assert torch.equal(value, frozen[key])
    assert not trained.net[4].weight.requires_grad


def test_config_nests_in_the_yaml_loader_and_bad_values_are_user_errors(tmp_path):
    config = load_config(TrainConfig, overrides=["max_steps=5", "betas=[0.9,0.99]", "cpu=true"])
    assert (config.max_steps, config.betas, config.cpu) == (5, [0.9, 0.99], True)
    with pytest.raises(UserError, match="'lr_schedule'"):
        Trainer(build_model(), ToyDataset(), mse_loss, toy_config(lr_schedule="linear"), tmp_path)
    with pytest.raises(UserError, match="'batch_size' must be at least 1"):
        Trainer(build_model(), ToyDataset(), mse_loss, toy_config(batch_size=0), tmp_path)
    with pytest.raises(UserError, match="lower batch_size"):
        Trainer(build_model(), ToyDataset(6), mse_loss, toy_config(batch_size=8), tmp_path).train()
