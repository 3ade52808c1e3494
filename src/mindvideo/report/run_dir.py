"""The run directory: one folder per stage, as ``mindvideo demo`` writes it (docs/report.md).

Each folder is the ``--out`` of its stage's command and holds that stage's ``config.yaml``::

    RUN/
      run.json       optional provenance: mindvideo version, date, the command of the run
      simulate/      the simulated raw dataset
      prepare/       the prepared subject (manifest.json, fmri_*.npy, frames_*.npy, ...)
      pretrain/      mbm/ (the MBM encoder)
      contrast/      fmri_encoder/
      tune-video/    the video-tuned UNet
      cotrain/       pipeline/ (the reconstruction pipeline folder)
      reconstruct/   index.json, clips/, reconstructions.npy, ground_truth.npy
      evaluate/      metrics.json, metrics.md, samples.json
      explain/       networks.json, networks_*.png, flat_maps.png, explain.json
      compare/       comparison.json, comparison.md (ablations against this run)

Every part is optional for the report: a missing stage skips its section with a short note.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mindvideo.config.registry import STAGES
from mindvideo.utils import atomic_write_text
from mindvideo.utils.io import read_json

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_INFO",
    "STAGE_DIRS",
    "read_run_info",
    "read_stage_json",
    "stage_dir",
    "write_run_info",
]

#: Stage folders of a run directory, in pipeline order: one per stage of the registry, then the
#: ablation comparison (``mindvideo compare``, not a pipeline stage).
STAGE_DIRS = (*(stage.folder for stage in STAGES.values()), "compare")
RUN_INFO = "run.json"


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path | None:
    """``RUN/stage`` when that folder exists, else None."""
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGE_DIRS}")
    path = Path(run_dir) / stage
    return path if path.is_dir() else None


def read_stage_json(path: str | os.PathLike) -> Any:
    """A stage's JSON output for a summary of the run: None when the file does not exist (the
    stage has not run), None with a warning when it cannot be read (the summary skips it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        stage = path.parent.name
        fix = f"re-run mindvideo {stage} to write it again" if stage in STAGES else "re-write it"
        logger.warning("Skipping %s, which cannot be read (%s); %s.", path, exc, fix)
        return None


def write_run_info(
    run_dir: str | os.PathLike,
    command: str | Sequence[str],
    **extra: Any,
) -> Path:
    """Write ``RUN/run.json``: the mindvideo version, the date (UTC) and the command of a run.

    ``command`` is the command line (a string, or argv as a list); ``extra`` adds JSON-ready
    fields (e.g. ``preset="demo"``). The report shows them in its header.
    """
    from mindvideo import __version__

    text = command if isinstance(command, str) else shlex.join([str(c) for c in command])
    info = {
        "mindvideo_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": text,
        **extra,
    }
    path = Path(run_dir) / RUN_INFO
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``RUN/run.json`` as a dict, or None when absent."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    info = read_json(path, "fix or delete it")
    return info if isinstance(info, dict) else None
