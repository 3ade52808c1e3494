"""Training on HF Accelerate: the shared engine and one module per stage (paper 3.3–3.4)."""

from mindvideo.config import TrainConfig
from mindvideo.training.checkpoints import latest_checkpoint, list_checkpoints
from mindvideo.training.engine import (
    EpochShuffleSampler,
    Trainer,
    check_engine_config,
    param_groups_weight_decay,
)
from mindvideo.training.schedule import build_lr_scheduler, lr_factor

__all__ = [
    "EpochShuffleSampler",
    "TrainConfig",
    "Trainer",
    "build_lr_scheduler",
    "check_engine_config",
    "latest_checkpoint",
    "list_checkpoints",
    "lr_factor",
    "param_groups_weight_decay",
]
