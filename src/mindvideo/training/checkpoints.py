"""The training engine's checkpoints: ``checkpoints/step_{N}`` folders and exact resume.

A checkpoint holds what ``accelerator.save_state`` writes (model, optimiser, LR scheduler, the RNG
states of every process) plus :data:`STATE_FILE`: the step, the data position and the batch layout
a resumed run must share.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mindvideo.utils import UserError, atomic_write_text
from mindvideo.utils.io import follow_umask

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "STATE_FILE",
    "TrainingPosition",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
]

CHECKPOINTS_DIR = "checkpoints"
"""Sub-folder of the output directory holding ``step_{N}`` checkpoints."""
STATE_FILE = "trainer_state.json"
"""The engine's own part of a checkpoint: step counter, data position, batch layout."""
#: Settings a resumed run must share with the checkpoint (else its data order differs).
SAME_ON_RESUME = ("num_processes", "batch_size", "gradient_accumulation_steps", "dataset_size")

_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainingPosition:
    """Where training stands: optimiser steps done and the next batch of the data."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints``, or None."""
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_resume(out_dir: Path, resume: str | os.PathLike | None) -> Path | None:
    """The checkpoint to resume from for ``Trainer.train(resume)``, or None to start afresh."""
    existing = list_checkpoints(out_dir)
    if resume is None:
        if existing:
            raise UserError(
                f"{out_dir / CHECKPOINTS_DIR} already holds checkpoints of an earlier "
                "run; pass resume=latest to continue it, or use a new output directory."
            )
        return None
    if str(resume) == "latest":
        if not existing:
            logger.info("No checkpoint in %s; starting afresh.", out_dir)
            return None
        return existing[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"{path} is not a complete training checkpoint (no {STATE_FILE}); pass a "
            f"{CHECKPOINTS_DIR}/step_N folder or resume=latest."
        )
    return path


def save_checkpoint(accelerator: Any, out_dir: Path, state: dict[str, Any], keep: int) -> None:
    """``checkpoints/step_{N}``, written into a temporary folder and renamed when complete.

    Every process calls this (each saves its RNG state). ``state`` is the engine's
    :data:`STATE_FILE` content (its ``"step"`` names the folder); the newest ``keep``
    checkpoints are kept (all when 0).
    """
    root = out_dir / CHECKPOINTS_DIR
    step = state["step"]
    final = root / f"step_{step}"
    # Every process writes its RNG state into it, so the temporary name is deterministic.
    tmp = root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2) + "\n")
            follow_umask(tmp)
    except BaseException:  # a full disk, an interrupt: no half-written checkpoint stays
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        old = root / f".step_{step}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if keep:
            for stale in list_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(stale, ignore_errors=True)
        logger.info("Saved checkpoint %s.", final)
    accelerator.wait_for_everyone()


def load_checkpoint(
    accelerator: Any, path: Path, here: dict[str, Any], gradient_accumulation_steps: int
) -> TrainingPosition:
    """Restore the checkpoint ``path`` into ``accelerator``; ``here`` is this run's state.

    Raises :class:`UserError` when a setting of :data:`SAME_ON_RESUME` differs from the
    checkpoint's; other changed settings are logged.
    """
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    for key in SAME_ON_RESUME:
        if state[key] != here[key]:
            raise UserError(
                f"Checkpoint {path} was written with {key}={state[key]}, this run has "
                f"{key}={here[key]}; resume with the same setting or start a new run in a new "
                "output directory."
            )
    changed = [
        k for k, v in state["config"].items() if k in here["config"] and here["config"][k] != v
    ]
    if changed:
        logger.warning("Resuming %s with changed settings: %s.", path, ", ".join(changed))
    accelerator.load_state(str(path))
    # The micro-batch counter that decides where accumulation windows end.
    accelerator.step = state["step"] * gradient_accumulation_steps
    logger.info("Resumed from %s at step %d.", path, state["step"])
    return TrainingPosition(state["step"], state["epoch"], state["batch_in_epoch"])
