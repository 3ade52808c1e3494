"""Learning-rate schedules of the training engine: linear warm-up, then cosine decay or constant.

The schedule is the one of MAE (He et al. 2022), which MinD-Video's MBM pretraining (paper 3.3)
inherits: the learning rate rises linearly over ``warmup_steps`` optimiser steps, then follows half
a cosine from ``learning_rate`` down to ``min_lr`` at ``max_steps``. It is written per optimiser
step (not per epoch) and as a multiplier of each parameter group's own learning rate, so groups
with different learning rates keep their ratio.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "constant")


def lr_factor(
    step: int,
    *,
    max_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the first
    update already moves the weights and the last warm-up step reaches the full rate.
    ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the
    post-warm-up steps done and ``r = min_lr / learning_rate``. ``constant``: 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    learning_rate: float,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; step it once per optimiser step.

    Its state (the step count) is saved and restored with the engine's checkpoints.
    """
    ratio = min_lr / learning_rate if learning_rate > 0 else 0.0

    def factor(step: int) -> float:
        return lr_factor(
            step,
            max_steps=max_steps,
            warmup_steps=warmup_steps,
            schedule=schedule,
            min_lr_ratio=ratio,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
