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

With ``lowlevel`` (the low-level path, docs/lowlevel.md) every clip starts from the video the
low-level decoder reads from the window's fMRI, noised to ``strength`` of the way back
(:mod:`mindvideo.pipeline.lowlevel_video`); without it sampling starts from noise, the paper's
method. With ``keyframe`` as well, the low-level video's first frame is a keyframe the sampler
keeps (``MindVideoPipeline(keyframe=...)``).

``condition=caption`` (:mod:`mindvideo.pipeline.oracle`) generates each window from its caption
through a text encoder instead of its fMRI — the generator's ceiling — into the same files; each
``index.json`` window then also records its ``caption`` (and ``captions``, one per sub-window).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
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
from mindvideo.pipeline.aligned import aligned_data, load_adapter
from mindvideo.pipeline.convert import authors_settings_note
from mindvideo.pipeline.fmri_input import FmriInput, RunWindows
from mindvideo.pipeline.guidance import NEGATIVE_SOURCES, negative_fmri_from_prepared
from mindvideo.pipeline.linear_condition import LinearCondition
from mindvideo.pipeline.lowlevel_video import LowLevelVideos, decoder_folder, load_lowlevel
from mindvideo.pipeline.oracle import (
    EMPTY_CAPTION_NEGATIVE,
    TEXT_CONDITIONS,
    CaptionEncoder,
    add_window_captions,
    check_condition,
)
from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline, steps_from_video
from mindvideo.pipeline.schedulers import describe_sampler, sampler_for
from mindvideo.pipeline.shared import load_subjects, match_subject
from mindvideo.utils import UserError, atomic_path, atomic_write_text
from mindvideo.utils.freshness import files_present, npy_shape, stale_fields
from mindvideo.utils.io import open_memmap_allocated, read_json

__all__ = [
    "INDEX_VERSION",
    "ReconstructionResult",
    "load_pipeline",
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
    "condition",
    "text_encoder",
    "fmri",
    "average_runs",
    "lowlevel",
    "strength",
    "keyframe",
    "adapter",
    "subject",
)
#: What an index written before a setting existed means by its absence.
SETTINGS_BEFORE = {
    "condition": "fmri",
    "text_encoder": None,
    "fmri": None,
    "average_runs": False,
    "lowlevel": None,
    "strength": None,
    "keyframe": False,
    "adapter": None,
    "subject": None,
}
RECONSTRUCTIONS = "reconstructions.npy"
GROUND_TRUTH = "ground_truth.npy"
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
    if cfg.condition in TEXT_CONDITIONS:
        values["negative"] = EMPTY_CAPTION_NEGATIVE  # the fMRI negative is not used
    else:
        values["text_encoder"] = None  # only used with condition=caption or linear
    if values["lowlevel"] is None:
        values["strength"] = None  # only used with the low-level path
    for key in ("checkpoint", "data", "text_encoder", "lowlevel", "adapter"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).resolve())
    if values["fmri"] is not None:
        values["fmri"] = [str(Path(p).resolve()) for p in values["fmri"]]
    return values


def _check_config(cfg: ReconstructConfig, have_pipeline: bool) -> None:
    if cfg.checkpoint is None and not have_pipeline:
        raise UserError(
            "reconstruct needs a pipeline folder: pass --checkpoint DIR or set checkpoint in the "
            "config."
        )
    if cfg.data is None and not cfg.fmri:
        raise UserError(
            "reconstruct needs fMRI: a prepared subject (--data DIR) or raw CIFTI runs "
            "(--fmri RUN.dtseries.nii ...)."
        )
    if cfg.data is not None and cfg.fmri:
        raise UserError("Pass either a prepared subject (--data) or raw runs (--fmri), not both.")
    if cfg.fmri and cfg.checkpoint is None:
        raise UserError("Decoding raw runs (--fmri) needs the pipeline folder: pass --checkpoint.")
    if cfg.fmri and cfg.condition != "fmri":
        raise UserError(
            f"condition={cfg.condition} reads the prepared subject's captions or training split; "
            "it cannot run on raw runs (--fmri): pass --data instead."
        )
    if cfg.lowlevel is not None and cfg.fmri:
        raise UserError(
            "The low-level decoder (lowlevel) reads the prepared subject's fMRI, as it was "
            "fitted; it cannot run on raw runs (--fmri): pass --data instead."
        )
    if cfg.adapter is not None and cfg.fmri:
        raise UserError(
            "A subject adapter (adapter) reads the new subject's prepared folder; it cannot run "
            "on raw runs (--fmri): pass --data instead."
        )
    if cfg.subject is not None and cfg.fmri:
        raise UserError(
            "--subject reads that subject's prepared folder through its adapter; raw runs "
            "(--fmri) are the pipeline's reference subject's: pass --data instead."
        )
    if cfg.subject is not None and cfg.adapter is not None:
        raise UserError(
            "Pass either --subject (one of the subjects the pipeline was trained on) or adapter "
            "(a new subject's adapter from mindvideo adapt), not both."
        )
    if cfg.keyframe and cfg.lowlevel is None:
        raise UserError(
            "keyframe=true keeps the first frame of the low-level video as the clip's keyframe: "
            "set lowlevel too (the output folder of `mindvideo lowlevel`)."
        )
    if cfg.lowlevel is not None and not 0.0 < cfg.strength <= 1.0:
        raise UserError(f"Config key strength must be in (0, 1], not {cfg.strength}.")
    if cfg.lowlevel is not None and steps_from_video(cfg.num_inference_steps, cfg.strength) < 1:
        raise UserError(
            f"strength {cfg.strength} of {cfg.num_inference_steps} steps leaves no denoising "
            "step; raise the strength or num_inference_steps."
        )
    if cfg.average_runs and not cfg.fmri:
        raise UserError("average_runs applies to raw runs (--fmri) only.")
    for key, what, choices in (
        ("negative", "negative condition", NEGATIVE_SOURCES),
        ("dtype", "dtype", DTYPES),
    ):
        if getattr(cfg, key) not in choices:
            raise UserError(
                f"Unknown {what} {getattr(cfg, key)!r} (config key {key}); choose one of "
                f"{', '.join(choices)}."
            )
    for key in ("batch_size", "tr_stride", "frames_per_tr", "num_inference_steps", "fps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"Config key {key} must be at least 1, not {getattr(cfg, key)}.")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"Config key limit must be at least 1 or unset, not {cfg.limit}.")
    check_condition(cfg)


def open_data(cfg: ReconstructConfig) -> PreparedData | None:
    """The prepared subject ``cfg.data`` (``None`` for raw runs), in the voxel space of the
    pipeline's encoder: with ``cfg.adapter``, read through that (new) subject's adapter; with a
    pipeline trained on several subjects (``pipeline/subjects/``), through the adapter of the
    subject ``cfg.subject`` (unset: the subject whose prepared data it is)."""
    if cfg.data is None:
        return None
    adapter = load_adapter(cfg.adapter) if cfg.adapter is not None else None
    prepared = PreparedData.open(cfg.data)
    subjects = load_subjects(cfg.checkpoint) if cfg.checkpoint is not None else None
    if cfg.subject is not None and subjects is None:
        raise UserError(
            f"--subject {cfg.subject}: the pipeline {cfg.checkpoint} was trained on one subject "
            "(it has no subjects/ folder); leave --subject out."
        )
    if adapter is None and subjects is not None:
        subject = match_subject(subjects, prepared, cfg.subject, Path(cfg.checkpoint))  # type: ignore[arg-type]
        logger.info("subject %s of the shared pipeline", subject.name)
        adapter = subject.adapter
    if adapter is None:
        return prepared
    logger.info(
        "subject adapter: %s's %d voxels → the %d of %s",
        adapter.config.subject or cfg.data,
        adapter.config.in_voxels,
        adapter.config.out_voxels,
        adapter.config.reference or "the reference subject",
    )
    return aligned_data(prepared, adapter)


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
    index = read_json(path, "delete it to start the reconstruction over")
    return index if isinstance(index, dict) else None


def _write_index(out: Path, index: dict[str, Any]) -> None:
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _finished(out: Path, entry: dict[str, Any], gif: bool) -> bool:
    """Whether a window's clip files are all there (each was written atomically)."""
    return files_present(out, [entry["frames"], entry["mp4"]] + ([entry["gif"]] if gif else []))


def _stack(out: Path, name: str, shape: tuple[int, ...], rows: Any) -> None:
    """Write ``name`` uint8 ``shape`` row by row into a memory map (atomically)."""
    path = out / name
    with atomic_path(path) as tmp:
        arr = open_memmap_allocated(tmp, np.uint8, shape)
        for i, row in enumerate(rows):
            arr[i] = row
        arr.flush()
        del arr


@dataclass
class _Windows:
    """What a run reconstructs: the split's dataset (or the raw runs'), one entry per window
    (``index.json``'s ``windows``), conditions and frames per video, frame size, and the
    recorded settings."""

    dataset: FMRIWindowDataset | RunWindows
    windows: list[dict[str, Any]]
    conditions: int
    num_frames: int
    size: int
    settings: dict[str, Any]


def _plan_windows(
    cfg: ReconstructConfig,
    out: Path | None,
    pipe: MindVideoPipeline,
    prepared: PreparedData | None,
) -> _Windows:
    """Check that the data fits the pipeline's encoder and that ``out`` (if it holds an earlier
    run) was made with the same settings; list the windows (with ``condition=caption``, their
    captions). ``prepared`` ``None``: the raw runs of ``cfg.fmri`` (read here). Writes
    nothing."""
    # The data must be what the encoder was trained on (the oracle does not read the fMRI).
    enc = pipe.fmri_encoder.config
    pad_mode, normalize = pipe.config.fmri_pad_mode, pipe.config.fmri_normalize
    fmri_input = FmriInput.load(cfg.checkpoint) if prepared is None else None  # type: ignore[arg-type]
    n_voxels = prepared.n_voxels if fmri_input is None else fmri_input.n_voxels
    where = f"The prepared data {cfg.data}" if prepared is not None else "The pipeline's ROI"
    n_padded = padded_size(n_voxels, enc.patch_size, pad_mode)
    if n_padded != enc.num_voxels and cfg.condition == "fmri":
        raise UserError(
            f"{where} has {n_voxels} voxels ({n_padded} after "
            f"padding to the patch size {enc.patch_size}) but the checkpoint's fMRI encoder "
            f"expects {enc.num_voxels}; reconstruct with the checkpoint trained on this "
            "subject's prepared data, or a new subject's adapter (adapter=DIR, mindvideo adapt)."
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
    dataset: FMRIWindowDataset | RunWindows
    if fmri_input is not None:
        dataset = RunWindows(
            fmri_input,
            list(cfg.fmri or []),
            window=cfg.window,
            patch_size=enc.patch_size,
            pad_mode=pad_mode,
            average=cfg.average_runs,
        )
    else:
        dataset = FMRIWindowDataset(
            prepared,  # type: ignore[arg-type]
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
        if isinstance(dataset, RunWindows) and not cfg.average_runs:
            windows[-1]["run"] = dataset.runs[s]
    if cfg.condition == "caption":
        add_window_captions(
            windows,
            prepared,  # type: ignore[arg-type]  # checked: captions need --data
            cfg.split,
            (dataset.n_segments, dataset.n_trs),
        )
    settings = _settings(cfg)
    previous = _read_index(out / "index.json") if out is not None else None
    before = None if previous is None else {**SETTINGS_BEFORE, **(previous.get("settings") or {})}
    if before is not None and before != settings:
        changed = stale_fields(before, settings)
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
    (``cfg.checkpoint`` is still recorded; with ``cfg.scheduler`` set, the pipeline's scheduler is
    replaced by that sampler). Raises :class:`UserError` for a missing checkpoint or
    data directory, a voxel count that does not fit the checkpoint's encoder, a window shorter
    than the encoder's, or an ``out`` holding clips made with other settings; with
    ``condition=caption`` also for a missing ``text_encoder`` folder or missing captions.
    """
    from mindvideo.config import save_config

    _check_config(cfg, pipeline is not None)
    out = Path(out)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = _autocast(device, cfg.dtype)
    if pipeline is None:
        _check_checkpoint(cfg.checkpoint)  # before the data: the cheap checks first
    if cfg.lowlevel is not None:
        decoder_folder(cfg.lowlevel)
    prepared = open_data(cfg)
    pipe = pipeline if pipeline is not None else load_pipeline(cfg.checkpoint, device)
    pipe.scheduler = sampler_for(pipe.scheduler, cfg.scheduler)
    pipe.set_progress_bar_config(disable=True)  # one bar over the windows instead
    logger.info(
        "sampler: %s, %d steps",
        describe_sampler(pipe.scheduler, cfg.scheduler),
        cfg.num_inference_steps,
    )
    if cfg.lowlevel is not None:
        logger.info(
            "low-level path: each clip starts from the video %s decodes from its fMRI, at "
            "strength %g (%d of the %d steps run)",
            decoder_folder(cfg.lowlevel),
            cfg.strength,
            steps_from_video(cfg.num_inference_steps, cfg.strength),
            cfg.num_inference_steps,
        )
        if cfg.keyframe:
            logger.info("keyframe: the sampler keeps the low-level video's first frame")
    if cfg.checkpoint is not None:
        note = authors_settings_note(cfg, pipe, Path(cfg.checkpoint))
        if note:
            logger.info("%s", note)

    run = _plan_windows(cfg, out, pipe, prepared)
    index: dict[str, Any] = {
        "format_version": INDEX_VERSION,
        "source": "prepared" if prepared is not None else "fmri_runs",
        "split": cfg.split if prepared is not None else None,
        "settings": run.settings,
        "num_frames": run.num_frames,
        "height": run.size,
        "width": run.size,
        "fps": cfg.fps,
        "complete": False,
        "windows": run.windows,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    _write_index(out, index)

    generated = _generate_clips(cfg, out, pipe, prepared, run, index, autocast)
    frames = prepared.frames(cfg.split) if prepared is not None else None
    index["arrays"] = _write_stacked(out, run, frames, regenerate=generated > 0)
    index["complete"] = True
    _write_index(out, index)
    n = len(run.windows)
    logger.info(
        "reconstructed %d windows into %s (%d generated, %d kept)", n, out, generated, n - generated
    )
    return ReconstructionResult(out, n, generated, n - generated)


def _generate_clips(
    cfg: ReconstructConfig,
    out: Path,
    pipe: MindVideoPipeline,
    prepared: PreparedData | None,
    run: _Windows,
    index: dict[str, Any],
    autocast: contextlib.AbstractContextManager,
) -> int:
    """Generate and write every window's clip that is not finished yet, in the fixed batches of
    ``cfg.batch_size`` windows; ``index.json`` is rewritten after each batch. Returns how many
    clips were generated."""
    from tqdm.auto import tqdm

    conditions: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    windows = run.windows
    done = [_finished(out, w, cfg.gif) for w in windows]
    generated = 0
    batches = [
        range(i, min(i + cfg.batch_size, len(windows)))
        for i in range(0, len(windows), cfg.batch_size)
    ]
    with tqdm(total=len(windows), initial=sum(done), desc="reconstruct", unit="clip") as bar:
        for batch in batches:
            todo = [i for i in batch if not done[i]]
            if not todo:
                continue
            # The whole fixed batch is generated so every clip sees the same batch as in an
            # uninterrupted run; only the missing clips are written.
            if conditions is None:  # loaded once, and only when a clip is missing
                conditions = _conditions(cfg, pipe, prepared, run)
            condition = conditions([windows[i] for i in batch])
            generators = [torch.Generator().manual_seed(windows[i]["seed"]) for i in batch]
            with autocast:
                frames = pipe(
                    **condition,
                    guidance_scale=cfg.guidance_scale,
                    num_inference_steps=cfg.num_inference_steps,
                    num_frames=run.num_frames,
                    generator=generators,
                    output_type="np",
                ).frames  # uint8 [B, F, H, W, 3]
            for j, i in enumerate(batch):
                if i in todo:
                    _write_clip(out, windows[i], frames[j], cfg)
                    done[i] = True
                    generated += 1
            _write_index(out, index)
            bar.update(len(todo))
    return generated


def _conditions(
    cfg: ReconstructConfig, pipe: MindVideoPipeline, prepared: PreparedData | None, run: _Windows
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The pipeline's arguments for a batch of windows: their conditions
    (:func:`_condition_args`) and, with ``lowlevel``, the low-level video that starts the
    sampler and its ``strength`` (and with ``keyframe`` its first frame as the keyframe)."""
    conditions = _condition_args(cfg, pipe, prepared, run)
    if cfg.lowlevel is None:
        return conditions
    decoder = load_lowlevel(cfg.lowlevel)
    low = LowLevelVideos(
        decoder,
        _lowlevel_data(cfg, prepared, decoder.config.num_voxels),  # type: ignore[arg-type]
        cfg.split,
        cfg.frames_per_tr,
    )

    def arguments(batch: list[dict[str, Any]]) -> dict[str, Any]:
        video = low.videos(batch)  # [B, F, 3, s, s]
        args = {**conditions(batch), "video": video, "strength": cfg.strength}
        if cfg.keyframe:
            args["keyframe"] = video[:, 0]
        return args

    return arguments


def _lowlevel_data(cfg: ReconstructConfig, prepared: PreparedData, voxels: int) -> PreparedData:
    """What the low-level decoder reads: the fMRI in the voxel space it was fitted in. A subject
    read through an adapter (a new subject, or one of a shared pipeline's) keeps its own
    decoder when it has one — fitted on its own prepared folder (``mindvideo lowlevel --data``
    of that folder), it reads the subject's own voxels; else the reference's decoder reads the
    aligned fMRI."""
    if "aligned" not in prepared.manifest or cfg.data is None:
        return prepared
    own = PreparedData.open(cfg.data)
    fitted_on = _lowlevel_fitted_on(cfg.lowlevel)  # type: ignore[arg-type]
    mine = fitted_on is not None and Path(fitted_on).resolve() == Path(cfg.data).resolve()
    if voxels == own.n_voxels and (voxels != prepared.n_voxels or mine):
        logger.info("low-level path: the subject's own decoder reads its own %d voxels", voxels)
        return own
    return prepared


def _lowlevel_fitted_on(path: str) -> str | None:
    """The prepared folder a ``mindvideo lowlevel`` output was fitted on (its config.yaml)."""
    from omegaconf import OmegaConf

    for folder in (Path(path), decoder_folder(path).parent):
        config = folder / "config.yaml"
        if config.is_file():
            try:
                data = OmegaConf.load(config).get("data")
            except Exception:  # an unreadable config says nothing: fall back to the voxels
                return None
            return str(data) if data else None
    return None


def _condition_args(
    cfg: ReconstructConfig, pipe: MindVideoPipeline, prepared: PreparedData | None, run: _Windows
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The pipeline's condition arguments for a batch of windows: their fMRI and the negative
    fMRI (``negative``); with ``condition=caption`` their captions' text conditions, with
    ``condition=linear`` the conditions a ridge map fitted on the training split decodes from
    their fMRI (:class:`~mindvideo.pipeline.linear_condition.LinearCondition`), and the empty
    caption's (:class:`~mindvideo.pipeline.oracle.CaptionEncoder`) as the negative."""
    enc = pipe.fmri_encoder.config
    if cfg.condition in TEXT_CONDITIONS:
        text = CaptionEncoder(
            cfg.text_encoder,  # type: ignore[arg-type]  # checked by check_condition
            pipe.device,
            tokens=int(enc.out_tokens),
            dim=int(pipe.unet.config.cross_attention_dim),
        )
        empty = text.negative()
        if cfg.condition == "linear":
            # One condition per sub-window, from the encoder's window of TRs (as condition=fmri).
            linear = LinearCondition().fit(prepared, text, int(enc.window))
            linear.predict(prepared, cfg.split)
            return lambda batch: {
                "prompt_embeds": linear.conditions(batch),
                "negative_embeddings": empty,
            }
        return lambda batch: {
            "prompt_embeds": text.conditions(batch),
            "negative_embeddings": empty,
        }
    if isinstance(run.dataset, RunWindows):
        negative = run.dataset.negative(cfg.negative, enc.window)
    else:
        negative = negative_fmri_from_prepared(
            prepared,  # type: ignore[arg-type]
            cfg.negative,
            enc.window,
            enc.patch_size,
            pipe.config.fmri_pad_mode,
            pipe.config.fmri_normalize,
        )

    def fmri(batch: list[dict[str, Any]]) -> dict[str, Any]:
        windows = np.stack([run.dataset.fmri_window(w["segment"], w["tr"]) for w in batch])
        return {"fmri": torch.from_numpy(windows), "negative_fmri": negative}

    return fmri


def _write_clip(
    out: Path, window: dict[str, Any], frames: np.ndarray, cfg: ReconstructConfig
) -> None:
    """One window's clip uint8 ``[F, H, W, 3]``: its ``.npy``, ``.mp4`` (and ``.gif``)."""
    _save_npy(out / window["frames"], frames)
    write_video(out / window["mp4"], frames, fps=cfg.fps)
    if cfg.gif:
        write_gif(out / window["gif"], frames, fps=cfg.fps)


def _write_stacked(
    out: Path, run: _Windows, frames_split: np.ndarray | None, regenerate: bool
) -> dict[str, Any]:
    """``reconstructions.npy`` and ``ground_truth.npy`` (row i = window i), rewritten when a clip
    was generated or a file is missing or of another shape; returns their ``index.json`` entry.
    ``frames_split``: the split's prepared frames ``[S, T, 6, H0, W0, 3]``; ``None`` (raw runs,
    no video known): no ground truth."""
    windows = run.windows
    shape = (len(windows), run.num_frames, run.size, run.size, 3)
    if regenerate or npy_shape(out / RECONSTRUCTIONS) != shape:
        _stack(out, RECONSTRUCTIONS, shape, (np.load(out / w["frames"]) for w in windows))
    recon = {"file": RECONSTRUCTIONS, "shape": list(shape), "dtype": "uint8"}
    if frames_split is None:
        return {"reconstructions": recon}
    gt_shape = (len(windows), run.conditions * frames_split.shape[2], *frames_split.shape[3:])
    if regenerate or npy_shape(out / GROUND_TRUTH) != gt_shape:
        rows = (
            np.concatenate([frames_split[w["segment"], t] for t in w["frame_trs"]]) for w in windows
        )
        _stack(out, GROUND_TRUTH, gt_shape, rows)
    return {
        "reconstructions": recon,
        "ground_truth": {"file": GROUND_TRUTH, "shape": list(gt_shape), "dtype": "uint8"},
    }
