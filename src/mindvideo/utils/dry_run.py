"""Dry runs (``--dry-run``): a stage's plan, parameter counts and a memory estimate.

A dry run resolves and checks a stage's configuration exactly as the real run does, builds its
models *without weights* on PyTorch's meta device (shapes only: seconds even at Stable Diffusion
size, on a laptop), and returns a :class:`RunPlan` — the data shapes, the optimisation schedule,
every model with its total and trainable parameters, and a memory estimate. It trains nothing
and writes nothing.

The memory estimate, per process:

- **weights**: every parameter held on the accelerator, float32 (the training engine and the
  reconstruction keep float32 weights; ``bf16`` / ``fp16`` are autocast);
- **gradients**: float32, one per trainable parameter;
- **AdamW states**: float32, two per trainable parameter (``exp_avg``, ``exp_avg_sq``);
- **activations** (rough): traced, not computed: one forward pass of one batch runs on meta
  tensors (no memory, no arithmetic) while :func:`trace_activations` adds up the storage of every
  tensor it creates and subtracts it again when the tensor is freed. Training reports what is
  still held when the loss is returned (what the backward pass keeps; gradient checkpointing
  shows as less); inference reports the peak. The trace is float32; under ``bf16`` / ``fp16``
  autocast the estimate is halved, which is rough (norms and softmax stay float32). DDP buckets,
  the CUDA context, allocator fragmentation and the peak inside the backward pass are not in it.

The dataclasses here are shared by every stage; the stages build their plans next to their
checks and loaders (:mod:`mindvideo.training.dry_run`, ``mindvideo.pipeline.reconstruct``).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mindvideo.utils.integrity import WEIGHT_SUFFIXES

__all__ = [
    "FLOAT32_BYTES",
    "Batching",
    "MemoryEstimate",
    "ModelPart",
    "PhasePlan",
    "RunPlan",
    "activation_bytes",
    "empty_model",
    "empty_weights",
    "meta_like",
    "out_status",
    "planned_processes",
    "trace_activations",
    "training_memory",
]

FLOAT32_BYTES = 4
ADAMW_STATES = 2
"""AdamW keeps ``exp_avg`` and ``exp_avg_sq`` per trainable parameter."""
HALF_PRECISION = ("bf16", "fp16", "bfloat16", "float16")


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass
class ModelPart:
    """One model component of a stage: its parameters and how many of them are trained.

    ``resident``: held on the accelerator during the training steps (or the reconstruction);
    ``False`` for a frozen model used only before them (e.g. the VAE once the latents are cached).
    """

    name: str
    parameters: int
    trainable: int = 0
    resident: bool = True

    @classmethod
    def of(
        cls,
        name: str,
        module: Any,
        trainable: Iterable[Any] | None = None,
        resident: bool = True,
    ) -> ModelPart:
        """Count ``module``'s parameters (an ``nn.Module`` or an iterable of parameters).

        ``trainable``: the parameters the run optimises (those of ``module`` among them are
        counted); ``None``: the parameters with ``requires_grad``, as the training engine does.
        """
        params = _unique(module.parameters() if hasattr(module, "parameters") else module)
        if trainable is None:
            chosen = [p for p in params if p.requires_grad]
        else:
            ids = {id(p) for p in trainable}
            chosen = [p for p in params if id(p) in ids]
        return cls(
            name,
            sum(int(p.numel()) for p in params),
            sum(int(p.numel()) for p in chosen),
            resident,
        )


def _unique(params: Iterable[Any]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


@dataclass
class Batching:
    """Samples per optimiser step: ``batch_size × processes × accumulation``."""

    batch_size: int
    processes: int = 1
    accumulation: int = 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.accumulation


@dataclass
class MemoryEstimate:
    """Bytes per process (see the module docstring); ``activations`` is ``None`` when the trace
    could not run."""

    weights: int
    gradients: int = 0
    optimizer: int = 0
    activations: int | None = None
    activations_how: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0)


@dataclass
class PhasePlan:
    """What one training phase (or the reconstruction) would do.

    ``data``: labelled shapes and counts; ``steps`` and ``batching``: the optimisation (``None``
    for inference); ``samples``: training samples per epoch; ``settings``: anything else worth
    seeing before a long run (e.g. sampler steps).
    """

    name: str
    data: dict[str, Any]
    models: list[ModelPart]
    memory: MemoryEstimate
    steps: int | None = None
    batching: Batching | None = None
    mixed_precision: str | None = None
    samples: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(p.parameters for p in self.models)

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.models)

    @property
    def epochs(self) -> float | None:
        if self.steps is None or self.batching is None or not self.samples:
            return None
        return self.steps * self.batching.global_batch / self.samples


@dataclass
class RunPlan:
    """A stage's dry run: what was checked, one :class:`PhasePlan` per phase, and notes.

    ``checked``: label → what the label's path was found to be. :meth:`format` gives the text
    the CLI prints; :meth:`to_dict` a JSON-ready dict.
    """

    stage: str
    checked: dict[str, str]
    phases: list[PhasePlan]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for phase, raw in zip(self.phases, out["phases"], strict=True):
            raw["parameters"] = phase.parameters
            raw["trainable"] = phase.trainable
            raw["epochs"] = phase.epochs
            raw["memory"]["total"] = phase.memory.total
            if phase.batching is not None:
                raw["batching"]["global_batch"] = phase.batching.global_batch
        return out

    def format(self) -> str:
        lines = [f"mindvideo {self.stage} --dry-run: checked; nothing was run or written."]
        lines += ["", "checked"]
        width = max((len(k) for k in self.checked), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in self.checked.items()]
        for i, phase in enumerate(self.phases):
            title = f"phase {i + 1}/{len(self.phases)}: " if len(self.phases) > 1 else ""
            lines += ["", f"{title}{phase.name}", *_format_phase(phase)]
        if self.notes:
            lines += ["", "notes", *(f"  - {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " × ".join(_value(v) for v in value)
    return str(value)


def _bytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:8.2f} GiB"
    return f"{n / 2**20:8.1f} MiB"


def _format_phase(phase: PhasePlan) -> list[str]:
    rows: list[tuple[str, str]] = [(k, _value(v)) for k, v in phase.data.items()]
    if phase.steps is not None and phase.batching is not None:
        b = phase.batching
        steps = f"{phase.steps:,} optimiser steps"
        if phase.epochs is not None:
            steps += f" ≈ {phase.epochs:,.1f} epochs of {phase.samples:,} samples"
        rows.append(("steps", steps))
        rows.append(
            (
                "global batch",
                f"{b.global_batch:,} = {b.batch_size:,} per process × {b.processes} "
                f"process{'es' if b.processes != 1 else ''} × {b.accumulation} accumulation",
            )
        )
    if phase.mixed_precision is not None:
        rows.append(("precision", phase.mixed_precision))
    rows += [(k, _value(v)) for k, v in phase.settings.items()]
    width = max(len(k) for k, _ in rows) if rows else 0
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]

    name_width = max([len(p.name) for p in phase.models] + [5])
    lines.append(f"  {'models':<{name_width + 2}}  {'parameters':>15}  {'trainable':>15}")
    for part in phase.models:
        where = "" if part.resident else "  (not on the device while training)"
        lines.append(
            f"    {part.name:<{name_width}}  {part.parameters:>15,}  {part.trainable:>15,}{where}"
        )
    lines.append(f"    {'total':<{name_width}}  {phase.parameters:>15,}  {phase.trainable:>15,}")

    m = phase.memory
    lines.append("  memory per process (an estimate)")
    mem = [("weights (float32)", m.weights, "parameters on the device")]
    if phase.steps is not None:
        mem += [
            ("gradients (float32)", m.gradients, "one per trainable parameter"),
            ("AdamW states (float32)", m.optimizer, "two per trainable parameter"),
        ]
    label_width = max(len(label) for label, _, _ in [*mem, ("activations (rough)", 0, "")])
    lines += [f"    {label:<{label_width}}  {_bytes(n)}  {why}" for label, n, why in mem]
    activations = "     unknown" if m.activations is None else _bytes(m.activations)
    lines.append(f"    {'activations (rough)':<{label_width}}  {activations}  {m.activations_how}")
    lines.append(f"    {'total':<{label_width}}  {_bytes(m.total)}")
    return lines


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def training_memory(
    models: Iterable[ModelPart], activations: int | None, activations_how: str
) -> MemoryEstimate:
    """Weights of the resident parts, float32 gradients and AdamW states of the trainable ones."""
    models = list(models)
    trainable = sum(p.trainable for p in models)
    return MemoryEstimate(
        weights=FLOAT32_BYTES * sum(p.parameters for p in models if p.resident),
        gradients=FLOAT32_BYTES * trainable,
        optimizer=ADAMW_STATES * FLOAT32_BYTES * trainable,
        activations=activations,
        activations_how=activations_how,
    )


def activation_bytes(traced: int | None, precision: str | None) -> int | None:
    """A float32 trace scaled to the run's precision (halved for bf16 / fp16 autocast)."""
    if traced is None:
        return None
    return traced // 2 if precision in HALF_PRECISION else traced


def out_status(out: str | os.PathLike | None) -> str:
    """How a dry run leaves the output folder, for :attr:`RunPlan.checked`."""
    if out is None:
        return "not given (a dry run writes nothing)"
    if Path(out).exists():
        return f"{out}: exists; left as it is"
    return f"{out}: not created (a dry run writes nothing)"


def planned_processes() -> int:
    """Processes the run would have: ``WORLD_SIZE`` (set by ``accelerate launch`` and
    ``torchrun``), else 1. ``WORLD_SIZE=8 mindvideo STAGE --dry-run`` plans for 8 GPUs."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class _LiveStorages:
    """A dispatch mode adding up the bytes of live tensor storages created under it."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                tracker.note_inputs((args, kwargs))
                out = func(*args, **kwargs)
                if not (func.is_view or func._schema.is_mutable):  # no new memory
                    tracker.add(out)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()
        self._outside: set[int] = set()
        """Storages made before the trace (parameters, inputs): a view of one is not new."""

    @staticmethod
    def _storages(tree: Any) -> Iterator[Any]:
        import torch
        from torch.utils._pytree import tree_leaves

        for leaf in tree_leaves(tree):
            if isinstance(leaf, torch.Tensor):
                yield leaf.untyped_storage()

    def note_inputs(self, tree: Any) -> None:
        for storage in self._storages(tree):
            if storage._cdata not in self._seen:
                self._outside.add(storage._cdata)

    def add(self, out: Any) -> None:
        for storage in self._storages(out):
            key = storage._cdata  # one per storage: views and in-place results are not new
            if key in self._seen or key in self._outside:
                continue
            self._seen.add(key)
            size = int(storage.nbytes())
            self.live += size
            weakref.finalize(storage, self._free, key, size)
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def trace_activations(fn: Callable[[], Any], peak: bool = False) -> int:
    """Bytes of the tensors ``fn()`` creates, traced on meta tensors (nothing is allocated).

    ``fn`` must run on meta-device models and inputs. Returns the bytes still held when ``fn``
    returns — with autograd on, what the backward pass keeps — or, with ``peak``, the most held
    at any moment (inference).
    """
    tracker = _LiveStorages()
    with tracker.mode:
        result = fn()
        held = tracker.live
    del result
    return tracker.peak if peak else held


def meta_like(shape: Iterable[int], dtype: Any = None) -> Any:
    """An uninitialised meta tensor of ``shape`` (float32 unless ``dtype``)."""
    import torch

    return torch.empty(tuple(int(s) for s in shape), dtype=dtype or torch.float32, device="meta")


# --------------------------------------------------------------------------------------------
# Models without weights
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def empty_weights(enabled: bool = True) -> Iterator[None]:
    """Build models on the meta device inside this block (shapes only, no memory, no init)."""
    if not enabled:
        yield
        return
    import torch

    with torch.device("meta"):
        yield


def _has_weights(folder: Path) -> bool:
    return any(
        p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"))
        for p in folder.iterdir()
    )


def empty_model(cls: type, path: str | os.PathLike, subfolder: str | None = None) -> Any:
    """``cls`` built from the config in ``path`` (/``subfolder``) on the meta device.

    Works for diffusers models (``load_config`` + ``from_config``) and transformers models
    (``config_class.from_pretrained``). A local folder must also hold a weights file, so a dry
    run catches a folder whose download stopped after ``config.json``. Fails as
    ``from_pretrained`` does (an ``OSError``), so the callers' error messages stay the same.
    """
    folder = Path(path) / subfolder if subfolder else Path(path)
    if folder.is_dir() and not _has_weights(folder):
        raise FileNotFoundError(
            f"{folder} holds no weights file (*.safetensors or *.bin); the download is incomplete"
        )
    kwargs = {"subfolder": subfolder} if subfolder else {}
    diffusers_style = hasattr(cls, "load_config") and hasattr(cls, "from_config")
    if diffusers_style:
        config = cls.load_config(os.fspath(path), **kwargs)
    else:  # transformers
        config = cls.config_class.from_pretrained(os.fspath(path), **kwargs)
    with empty_weights():
        model = cls.from_config(config) if diffusers_style else cls(config)
    return model.eval()
