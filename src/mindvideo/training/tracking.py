"""The training engine's metrics: ``logs/metrics.jsonl`` and the window of values between logs."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.tracking import GeneralTracker

from mindvideo.config import TrainConfig
from mindvideo.utils import atomic_write_text

__all__ = ["LOGS_DIR", "METRICS_FILE", "JsonlTracker", "MetricWindow", "flat_config"]

LOGS_DIR = "logs"
METRICS_FILE = "metrics.jsonl"
"""One JSON object per logged step, always written (no optional package needed)."""


class JsonlTracker(GeneralTracker):
    """An accelerate tracker appending ``{"step": N, ...metrics}`` lines to a JSON-lines file.

    Always on, so every run has its loss curve without optional packages (the report plots it).
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        """The stage saves its full configuration as ``config.yaml``; nothing to add here."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop logged lines after ``last_step`` (from a run that went on past its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line + "\n")
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    atomic_write_text(path, "".join(kept))


class MetricWindow:
    """Sums of the logged values since the last log, kept on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.steps = 0
        self.start = time.perf_counter()
        self.grad_norm: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, logs: Mapping[str, Any] | None) -> None:
        for key, value in {**dict(logs or {}), "loss": loss}.items():
            tensor = torch.as_tensor(value.detach() if torch.is_tensor(value) else value)
            tensor = tensor.to(device=loss.device, dtype=torch.float32).mean()
            self.sums[key] = self.sums[key] + tensor if key in self.sums else tensor
        self.batches += 1

    def reduce(self, accelerator: Any, global_batch_size: int) -> dict[str, float]:
        """Means over the window's batches and over processes, then start a new window.

        Every process must call this at the same step (it is a collective operation).
        """
        keys = sorted(self.sums)
        means = torch.stack([self.sums[k] for k in keys]) / max(self.batches, 1)
        metrics = dict(zip(keys, accelerator.reduce(means, reduction="mean").tolist(), strict=True))
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        metrics["samples_per_s"] = self.steps * global_batch_size / elapsed
        if self.grad_norm is not None:
            metrics["grad_norm"] = float(self.grad_norm)
        self.reset()
        return metrics


def flat_config(config: TrainConfig) -> dict[str, Any]:
    """Hyper-parameters as flat scalars (what tensorboard's hparams accept)."""
    flat = {}
    for key, value in dataclasses.asdict(config).items():
        flat[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat
