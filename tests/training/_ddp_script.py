"""A toy regression (fixture of the engine tests) and a script that trains it with the engine.

Run under ``torchrun --nproc_per_node 2`` it is a real 2-process DDP run on CPU (gloo); run with
plain ``python`` it is a 1-process run. Each process writes its final parameters to
``{result}_rank{i}.safetensors`` and the run's layout to ``{result}.json`` (main process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mindvideo.training import TrainConfig, Trainer
from mindvideo.utils import atomic_path, atomic_write_text

IN_DIM = 8


class ToyRegression(nn.Module):
    """A small MLP: x [N, 8] → y [N, 1], with optional dropout (to exercise RNG restore)."""

    def __init__(self, hidden: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(IN_DIM, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyDataset(Dataset):
    """A fixed synthetic regression set: y = tanh(x W) v + noise, x ~ N(0, 1)."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, IN_DIM)).astype(np.float32)
        w = rng.standard_normal((IN_DIM, 4)).astype(np.float32)
        v = rng.standard_normal((4, 1)).astype(np.float32)
        y = np.tanh(x @ w) @ v + 0.05 * rng.standard_normal((n, 1)).astype(np.float32)
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y.astype(np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


def mse_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Mean squared error over the batch, plus the mean absolute error as a log."""
    pred = model(batch["x"])
    loss = torch.nn.functional.mse_loss(pred.float(), batch["y"])
    return loss, {"mae": (pred.float() - batch["y"]).abs().mean()}


class Interrupted(Exception):
    """Raised by :func:`crash_in_step`'s loss function to simulate a crash."""


def crash_in_step(step: int, accumulation: int = 1):
    """``mse_loss`` that raises on the first batch of optimiser step ``step`` (1-based)."""
    calls = 0

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        nonlocal calls
        calls += 1
        if calls > (step - 1) * accumulation:
            raise Interrupted
        return mse_loss(model, batch)

    return loss_fn


def build_model(seed: int = 0, dropout: float = 0.0) -> ToyRegression:
    torch.manual_seed(seed)
    return ToyRegression(dropout=dropout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--crash-after", type=int, default=0, help="raise in this optimiser step")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    config = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.accum,
        learning_rate=1e-2,
        warmup_steps=2,
        checkpoint_every=args.checkpoint_every,
        log_every=2,
        cpu=True,
    )
    loss_fn = mse_loss
    if args.crash_after:
        loss_fn = crash_in_step(args.crash_after, args.accum)
    model = build_model(dropout=args.dropout)
    trainer = Trainer(model, ToyDataset(args.samples), loss_fn, config, args.out)
    try:
        model = trainer.train(resume=args.resume)
    except Interrupted:
        sys.exit(3)

    from safetensors.torch import save_file

    rank = trainer.process_index
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = args.result.with_name(f"{args.result.name}_rank{rank}.safetensors")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    if trainer.is_main_process:
        layout = {
            "num_processes": trainer.num_processes,
            "global_batch_size": trainer.global_batch_size,
        }
        atomic_write_text(args.result.with_name(f"{args.result.name}.json"), json.dumps(layout))


if __name__ == "__main__":
    main(sys.argv[1:])
