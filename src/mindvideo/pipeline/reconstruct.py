"""Stage 6: reconstruct a whole split of a prepared subject, resumably (paper 3.4, B).

Output directory (``OUT``)::

    config.yaml                 the resolved ReconstructConfig
    index.json                  every window: segment, TR, fMRI TRs, seed, files, row; settings
    clips/seg{s:02d}_tr{t:03d}.mp4    one H.264 clip per fMRI window (+ .gif with ``gif``)
    clips/seg{s:02d}_tr{t:03d}.npy    uint8 [F, H, W, 3]: the clip's exact frames
    reconstructions.npy         uint8 [n, F, H, W, 3]: all clips, row i = index.json window i
    ground_truth.npy            uint8 [n, F, H0, W0, 3]: the frames shown during those TRs

Every file is written atomically. A window is finished when its ``.npy`` and ``.mp4`` (and
``.gif``) exist; a re-run skips finished windows, so an interrupted run resumes where it stopped.
The two stacked arrays are written once every window is finished. Window ``i``'s initial noise
comes from its own generator seeded with :func:`window_seed` ``(seed, segment, tr)`` and windows
are batched in fixed groups of ``batch_size`` by index, so a clip is bit-for-bit the same whether
or not the run was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.config import ReconstructConfig
from mindvideo.data.datasets import FMRIWindowDataset
from mindvideo.data.pairing import padded_size, window_indices
from mindvideo.data.prepared import PreparedData
from mindvideo.data.video import write_gif, write_video
from mindvideo.pipeline.guidance import NEGATIVE_SOURCES, negative_fmri_from_prepared
from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline
from mindvideo.pipeline.schedulers import make_scheduler
from mindvideo.utils import UserError, atomic_path, atomic_write_text
from mindvideo.utils.dry_run import (
    FLOAT32_BYTES,
    MemoryEstimate,
    ModelPart,
    PhasePlan,
    RunPlan,
    activation_bytes,
    meta_like,
    out_status,
    trace_activations,
)

__all__ = [
    "INDEX_VERSION",
    "ReconstructionResult",
    "load_pipeline",
    "plan_reconstruct",
    "reconstruct",
    "window_seed",
]

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
#: Settings that change a clip's pixels; a resumed run must use the same ones.
SETTINGS = (
    "checkpoint",
    "data",
    "split",
    "window",
    "frames_per_tr",
    "scheduler",
    "num_inference_steps",
    "guidance_scale",
    "negative",
    "seed",
    "batch_size",
    "tr_stride",
    "dtype",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ReconstructionResult:
    """What :func:`reconstruct` did: where, how many windows, how many made now / kept."""

    out: Path
    n_windows: int
    generated: int
    skipped: int

    @property
    def index(self) -> dict[str, Any]:
        return json.loads((self.out / "index.json").read_text())


def window_seed(seed: int, segment: int, tr: int) -> int:
    """The generator seed of the window of TR ``tr`` in ``segment``: a hash of all three.

    ``numpy.random.SeedSequence((seed, segment, tr))`` — independent streams per window, the
    same on every machine and whatever else is in the batch.
    """
    state = np.random.SeedSequence((seed, segment, tr)).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits, fits torch's int64 seed


def load_pipeline(checkpoint: str | os.PathLike, device: torch.device | str) -> MindVideoPipeline:
    """Load a pipeline folder for inference on ``device`` (a :class:`UserError` if missing)."""
    _check_checkpoint(checkpoint)
    pipe = MindVideoPipeline.from_pretrained(checkpoint)
    return pipe.to(device)


def _check_checkpoint(checkpoint: str | os.PathLike) -> None:
    path = Path(checkpoint)
    if not path.is_dir():
        raise UserError(
            f"Checkpoint {path} does not exist; pass the pipeline folder written by "
            "`mindvideo cotrain` or `mindvideo convert` with --checkpoint."
        )


def _clip_stem(segment: int, tr: int) -> str:
    return f"seg{segment:02d}_tr{tr:03d}"


def _settings(cfg: ReconstructConfig) -> dict[str, Any]:
    values = {k: getattr(cfg, k) for k in SETTINGS}
    for key in ("checkpoint", "data"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).resolve())
    return values


def _check_config(cfg: ReconstructConfig, have_pipeline: bool) -> None:
    if cfg.checkpoint is None and not have_pipeline:
        raise UserError(
            "reconstruct needs a pipeline folder: pass --checkpoint DIR or set checkpoint in the "
            "config."
        )
    if cfg.data is None:
        raise UserError(
            "reconstruct needs a prepared subject: pass --data DIR or set data in the config."
        )
    if cfg.negative not in NEGATIVE_SOURCES:
        raise UserError(
            f"Unknown negative condition {cfg.negative!r} (config key negative); choose one of "
            f"{', '.join(NEGATIVE_SOURCES)}."
        )
    if cfg.dtype not in DTYPES:
        raise UserError(
            f"Unknown dtype {cfg.dtype!r} (config key dtype); choose one of {', '.join(DTYPES)}."
        )
    for key in ("batch_size", "tr_stride", "frames_per_tr", "num_inference_steps", "fps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"Config key {key} must be at least 1, not {getattr(cfg, key)}.")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"Config key limit must be at least 1 or unset, not {cfg.limit}.")


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 by autocast: weights and latents stay float32, matmuls run in low precision."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type == "cpu":
        raise UserError(
            "dtype float16 needs a GPU; use dtype=bfloat16 (fast on recent CPUs) or float32."
        )
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _read_index(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc.msg}); delete it to start the reconstruction over."
        ) from exc
    return index if isinstance(index, dict) else None


def _write_index(out: Path, index: dict[str, Any]) -> None:
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _finished(out: Path, entry: dict[str, Any], gif: bool) -> bool:
    files = [entry["frames"], entry["mp4"]] + ([entry["gif"]] if gif else [])
    return all((out / f).is_file() for f in files)


def _up_to_date(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is an ``.npy`` of exactly ``shape`` (reads the header only)."""
    try:
        return np.load(path, mmap_mode="r").shape == shape
    except (OSError, ValueError):
        return False


def _stack(out: Path, name: str, shape: tuple[int, ...], rows: Any) -> None:
    """Write ``name`` uint8 ``shape`` row by row into a memory map (atomically)."""
    from numpy.lib.format import open_memmap

    path = out / name
    with atomic_path(path) as tmp:
        arr = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, row in enumerate(rows):
            arr[i] = row
        arr.flush()
        del arr


@dataclass
class _Windows:
    """What a run reconstructs: the split's dataset, one entry per window (``index.json``'s
    ``windows``), conditions and frames per video, frame size, and the recorded settings."""

    dataset: FMRIWindowDataset
    windows: list[dict[str, Any]]
    conditions: int
    num_frames: int
    size: int
    settings: dict[str, Any]


def _plan_windows(
    cfg: ReconstructConfig, out: Path | None, pipe: MindVideoPipeline, prepared: PreparedData
) -> _Windows:
    """Check that the data fits the pipeline's encoder and that ``out`` (if it holds an earlier
    run) was made with the same settings; list the windows. Writes nothing."""
    # The data must be what the encoder was trained on.
    enc = pipe.fmri_encoder.config
    pad_mode, normalize = pipe.config.fmri_pad_mode, pipe.config.fmri_normalize
    n_padded = padded_size(prepared.n_voxels, enc.patch_size, pad_mode)
    if n_padded != enc.num_voxels:
        raise UserError(
            f"The prepared data {cfg.data} has {prepared.n_voxels} voxels ({n_padded} after "
            f"padding to the patch size {enc.patch_size}) but the checkpoint's fMRI encoder "
            f"expects {enc.num_voxels}; reconstruct with the checkpoint trained on this "
            "subject's prepared data."
        )
    if cfg.window < enc.window:
        raise UserError(
            f"window = {cfg.window} is shorter than the {enc.window} TRs the checkpoint's fMRI "
            f"encoder was trained on; set window={enc.window} (or more for longer videos)."
        )
    if cfg.window > enc.max_window:
        raise UserError(
            f"window = {cfg.window} is longer than the {enc.max_window} TRs (max_window) the "
            f"checkpoint's fMRI encoder takes; set window to at most {enc.max_window}."
        )
    dataset = FMRIWindowDataset(
        prepared,
        cfg.split,
        window=cfg.window,
        patch_size=enc.patch_size,
        pad_mode=pad_mode,
        normalize=normalize,
        with_captions=False,
    )
    conditions = cfg.window - enc.window + 1  # 6-frame chunks per video

    # The windows: (segment, TR) in order, every tr_stride-th TR, the first `limit`.
    pairs = [
        (s, t) for s in range(dataset.n_segments) for t in range(0, dataset.n_trs, cfg.tr_stride)
    ][: cfg.limit]
    windows = []
    for row, (s, t) in enumerate(pairs):
        stem = f"clips/{_clip_stem(s, t)}"
        windows.append(
            {
                "row": row,
                "segment": s,
                "tr": t,
                "fmri_trs": window_indices(t, cfg.window, dataset.n_trs).tolist(),
                "frame_trs": window_indices(t, conditions, dataset.n_trs).tolist(),
                "seed": window_seed(cfg.seed, s, t),
                "frames": f"{stem}.npy",
                "mp4": f"{stem}.mp4",
                "gif": f"{stem}.gif" if cfg.gif else None,
            }
        )
    settings = _settings(cfg)
    previous = _read_index(out / "index.json") if out is not None else None
    if previous is not None and previous.get("settings") != settings:
        changed = sorted(
            k for k in settings if (previous.get("settings") or {}).get(k) != settings[k]
        )
        raise UserError(
            f"{out} holds reconstructions made with other settings ({', '.join(changed)} "
            "differ); use a new --out directory or delete the old one."
        )
    num_frames = cfg.frames_per_tr * conditions
    return _Windows(dataset, windows, conditions, num_frames, pipe.default_size, settings)


def reconstruct(
    cfg: ReconstructConfig,
    out: str | os.PathLike,
    pipeline: MindVideoPipeline | None = None,
) -> ReconstructionResult:
    """Reconstruct every selected window of ``cfg.split`` into ``out`` (see the module doc).

    ``pipeline``: an already loaded pipeline to use instead of loading ``cfg.checkpoint``
    (``cfg.checkpoint`` is still recorded; the pipeline's scheduler is replaced by
    ``cfg.scheduler``). Raises :class:`UserError` for a missing checkpoint or
    data directory, a voxel count that does not fit the checkpoint's encoder, a window shorter
    than the encoder's, or an ``out`` holding clips made with other settings.
    """
    from tqdm.auto import tqdm

    from mindvideo.config import save_config

    _check_config(cfg, pipeline is not None)
    out = Path(out)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = _autocast(device, cfg.dtype)
    if pipeline is None:
        _check_checkpoint(cfg.checkpoint)  # before the data: the cheap checks first
    prepared = PreparedData.open(cfg.data)
    if pipeline is None:
        pipeline = load_pipeline(cfg.checkpoint, device)
    pipe = pipeline
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # one bar over the windows instead

    run = _plan_windows(cfg, out, pipe, prepared)
    dataset, windows, conditions = run.dataset, run.windows, run.conditions
    num_frames, size, settings = run.num_frames, run.size, run.settings
    enc = pipe.fmri_encoder.config
    negative = negative_fmri_from_prepared(
        prepared,
        cfg.negative,
        enc.window,
        enc.patch_size,
        pipe.config.fmri_pad_mode,
        pipe.config.fmri_normalize,
    )
    index: dict[str, Any] = {
        "format_version": INDEX_VERSION,
        "split": cfg.split,
        "settings": settings,
        "num_frames": num_frames,
        "height": size,
        "width": size,
        "fps": cfg.fps,
        "complete": False,
        "windows": windows,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    _write_index(out, index)

    done = [_finished(out, w, cfg.gif) for w in windows]
    generated = 0
    batches = [
        range(i, min(i + cfg.batch_size, len(windows)))
        for i in range(0, len(windows), cfg.batch_size)
    ]
    bar = tqdm(total=len(windows), initial=sum(done), desc="reconstruct", unit="clip")
    with bar:
        for batch in batches:
            todo = [i for i in batch if not done[i]]
            if not todo:
                continue
            # The whole fixed batch is generated so every clip sees the same batch as in an
            # uninterrupted run; only the missing clips are written.
            fmri = np.stack(
                [dataset.fmri_window(windows[i]["segment"], windows[i]["tr"]) for i in batch]
            )
            generators = [torch.Generator().manual_seed(windows[i]["seed"]) for i in batch]
            with autocast:
                frames = pipe(
                    torch.from_numpy(fmri),
                    negative_fmri=negative,
                    guidance_scale=cfg.guidance_scale,
                    num_inference_steps=cfg.num_inference_steps,
                    num_frames=num_frames,
                    generator=generators,
                    output_type="np",
                ).frames  # uint8 [B, F, H, W, 3]
            for j, i in enumerate(batch):
                if i not in todo:
                    continue
                w = windows[i]
                _save_npy(out / w["frames"], frames[j])
                write_video(out / w["mp4"], frames[j], fps=cfg.fps)
                if cfg.gif:
                    write_gif(out / w["gif"], frames[j], fps=cfg.fps)
                done[i] = True
                generated += 1
            _write_index(out, index)
            bar.update(len(todo))

    # The stacked arrays for evaluation, once every window is there.
    shape = (len(windows), num_frames, size, size, 3)
    recon_path = out / "reconstructions.npy"
    if generated or not _up_to_date(recon_path, shape):
        _stack(out, "reconstructions.npy", shape, (np.load(out / w["frames"]) for w in windows))
    truth_path = out / "ground_truth.npy"
    frames_split = prepared.frames(cfg.split)  # [S, T, 6, H0, W0, 3]
    gt_shape = (len(windows), conditions * frames_split.shape[2], *frames_split.shape[3:])
    if generated or not _up_to_date(truth_path, gt_shape):
        _stack(
            out,
            "ground_truth.npy",
            gt_shape,
            (
                np.concatenate([frames_split[w["segment"], t] for t in w["frame_trs"]])
                for w in windows
            ),
        )
    index["complete"] = True
    index["arrays"] = {
        "reconstructions": {"file": recon_path.name, "shape": list(shape), "dtype": "uint8"},
        "ground_truth": {"file": truth_path.name, "shape": list(gt_shape), "dtype": "uint8"},
    }
    _write_index(out, index)
    logger.info(
        "reconstructed %d windows into %s (%d generated, %d kept)",
        len(windows),
        out,
        generated,
        len(windows) - generated,
    )
    return ReconstructionResult(out, len(windows), generated, len(windows) - generated)


def plan_reconstruct(cfg: ReconstructConfig, out: str | os.PathLike | None = None) -> RunPlan:
    """A dry run of :func:`reconstruct` (``mindvideo reconstruct --dry-run``).

    The same checks (config, checkpoint folder, prepared data, the data fitting the encoder,
    an ``out`` made with other settings), the pipeline's models built from their configs on the
    meta device, nothing generated or written. Returns a :class:`~mindvideo.utils.dry_run.RunPlan`
    with the windows, the models' parameters and a memory estimate (:mod:`mindvideo.utils.dry_run`).
    """
    _check_config(cfg, False)
    notes = []
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        _autocast(device, cfg.dtype)
    except UserError as exc:  # a plan for a GPU machine, made on a laptop
        notes.append(f"{str(exc).rstrip('.')}: on this machine the real run would stop here.")
    _check_checkpoint(cfg.checkpoint)  # type: ignore[arg-type]
    prepared = PreparedData.open(cfg.data)  # type: ignore[arg-type]
    pipe = MindVideoPipeline.from_pretrained(cfg.checkpoint, empty_weights=True)  # type: ignore[arg-type]
    scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    out_path = Path(out) if out is not None else None
    run = _plan_windows(cfg, out_path, pipe, prepared)
    done = 0
    if out_path is not None and out_path.is_dir():
        done = sum(_finished(out_path, w, cfg.gif) for w in run.windows)

    enc, unet, vae = pipe.fmri_encoder, pipe.unet, pipe.vae
    models = [
        ModelPart.of("fmri_encoder", enc, trainable=()),
        ModelPart.of("unet", unet, trainable=()),
        ModelPart.of("vae", vae, trainable=()),
    ]
    # The peak of one sampler step (both guidance branches in one UNet call) or of decoding.
    batch = min(cfg.batch_size, max(1, len(run.windows)))
    latent = run.size // pipe.vae_scale_factor
    channels, cond = int(unet.config.in_channels), enc.config
    latents = meta_like((2 * batch, channels, run.num_frames, latent, latent))
    condition = meta_like((2 * batch, cond.out_tokens, cond.cond_dim))
    fmri = meta_like((batch, cfg.window, cond.num_voxels))
    decode = meta_like((min(8, batch * run.num_frames), channels, latent, latent))
    traced = None
    try:
        with torch.no_grad():
            traced = max(
                trace_activations(lambda: enc.forward_sliding(fmri), peak=True),
                trace_activations(lambda: unet(latents, 1, condition).sample, peak=True),
                trace_activations(lambda: vae.decode(decode).sample, peak=True),
            )
    except Exception as exc:  # an estimate must never stop a dry run
        logger.warning("Could not trace the activations of the reconstruction (%s).", exc)
    memory = MemoryEstimate(
        weights=FLOAT32_BYTES * sum(p.parameters for p in models),
        activations=activation_bytes(traced, cfg.dtype),
        activations_how=(
            f"peak of one UNet call on {2 * batch} videos (both guidance branches) or of "
            "decoding 8 frames, traced"
            + (f", halved for {cfg.dtype}" if cfg.dtype != "float32" else "")
        ),
    )
    n_batches = -(-len(run.windows) // cfg.batch_size)
    phase = PhasePlan(
        "reconstruct",
        data={
            "split": cfg.split,
            "segments × TRs": [run.dataset.n_segments, run.dataset.n_trs],
            "voxels": f"{prepared.n_voxels:,} (padded to {cond.num_voxels:,})",
            "fMRI windows": (
                f"{len(run.windows):,} of {cfg.window} TRs (TR stride {cfg.tr_stride}"
                f"{f', the first {cfg.limit}' if cfg.limit else ''})"
            ),
            "already done": f"{done:,} (a re-run skips them)",
            "video": f"{run.num_frames} frames of {run.size} × {run.size} at {cfg.fps} FPS",
        },
        models=models,
        memory=memory,
        settings={
            "sampler": f"{type(scheduler).__name__}, {cfg.num_inference_steps} steps",
            "guidance": f"{cfg.negative} negative, scale {cfg.guidance_scale:g}",
            "batches": f"{n_batches:,} of {cfg.batch_size} windows"
            f" → {n_batches * cfg.num_inference_steps:,} UNet calls",
            "device, dtype": f"{device}, {cfg.dtype}",
        },
    )
    checked = {
        "checkpoint": f"{cfg.checkpoint}: pipeline folder (window {cond.window}, "
        f"{cond.num_voxels:,} voxels, {pipe.config.fmri_pad_mode} padding)",
        "data": f"{cfg.data}: prepared subject, {cfg.split} split",
        "out": out_status(out_path),
    }
    return RunPlan("reconstruct", checked, [phase], notes)
