"""The shipped presets: ``presets/NAME/STAGE.yaml`` inside this package, loaded over the defaults.

``tiny`` is the test suite's scale (seconds on a laptop CPU), ``demo`` the scale of
``mindvideo demo`` (minutes on a laptop CPU) and ``full`` the simulator's real scale. The YAML
files are the presets' only source: ``configs/tiny`` and ``configs/demo`` in the repository link
to them, for users to copy. Which stage has which presets is in :data:`~mindvideo.config.STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mindvideo.config.loading import load_config
from mindvideo.config.registry import STAGES
from mindvideo.config.stages import (
    AdaptConfig,
    BaselineConfig,
    ContrastConfig,
    CotrainConfig,
    EvaluateConfig,
    ExplainConfig,
    LowLevelConfig,
    PrepareConfig,
    PretrainConfig,
    ReconstructConfig,
    SimulateConfig,
    TuneVideoConfig,
)
from mindvideo.utils import UserError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""The folder of the shipped presets, one subfolder per preset name."""

# The simulator's hemodynamic responses peak 4-7 s after the stimulus, so the frames of TR t
# are best seen in TRs t+2..t+3: the demo's window covers them (w = 2 sees only 0-4 s of lag).
DEMO_WINDOW = 4
"""The fMRI window of the ``demo`` presets (``window`` in presets/demo/*.yaml)."""


def preset_path(stage: str, name: str) -> Path:
    """The YAML file of ``stage``'s preset ``name``; a UserError names the choices."""
    choices = STAGES[stage].presets
    if name not in choices:
        raise UserError(f"Unknown {stage} preset {name!r}; choose one of: {', '.join(choices)}.")
    return PRESET_DIR / name / f"{stage}.yaml"


def load_preset(stage: str, name: str) -> Any:
    """``stage``'s config class filled from its preset ``name`` (see :func:`preset_path`)."""
    return load_config(STAGES[stage].config, preset_path(stage, name))


# One function per stage with presets, as the demo and the tests call them.
simulate_preset: Callable[[str], SimulateConfig] = partial(load_preset, "simulate")
prepare_preset: Callable[[str], PrepareConfig] = partial(load_preset, "prepare")
baseline_preset: Callable[[str], BaselineConfig] = partial(load_preset, "baseline")
lowlevel_preset: Callable[[str], LowLevelConfig] = partial(load_preset, "lowlevel")
adapt_preset: Callable[[str], AdaptConfig] = partial(load_preset, "adapt")
pretrain_preset: Callable[[str], PretrainConfig] = partial(load_preset, "pretrain")
contrast_preset: Callable[[str], ContrastConfig] = partial(load_preset, "contrast")
tune_video_preset: Callable[[str], TuneVideoConfig] = partial(load_preset, "tune-video")
cotrain_preset: Callable[[str], CotrainConfig] = partial(load_preset, "cotrain")
reconstruct_preset: Callable[[str], ReconstructConfig] = partial(load_preset, "reconstruct")
evaluate_preset: Callable[[str], EvaluateConfig] = partial(load_preset, "evaluate")
explain_preset: Callable[[str], ExplainConfig] = partial(load_preset, "explain")

PRESETS: dict[str, Callable[[str], Any]] = {
    name: partial(load_preset, name) for name, stage in STAGES.items() if stage.presets
}
"""Stage name → a function of the preset name that loads it (``tiny``, ``demo``; ``full`` for
``simulate``)."""
