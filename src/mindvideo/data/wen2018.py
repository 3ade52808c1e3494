"""Stage 1 for Wen 2018: raw CIFTI runs + mp4 stimuli → a prepared subject (paper 3.2, 4.1, 4.2).

:func:`prepare_wen2018` reads the raw Purdue "video_fmri_dataset" layout (the real data or the
simulator's, DESIGN.md "The real datasets")::

    ROOT/subjectN/fmri/seg{k}/cifti/seg{k}_{r}_Atlas.dtseries.nii    training, r = 1..2
    ROOT/subjectN/fmri/test{k}/cifti/test{k}_{r}_Atlas.dtseries.nii  testing, r = 1..10
    ROOT/stimuli/seg{k}.mp4, ROOT/stimuli/test{k}.mp4                 8 min at 30 FPS
    ROOT/scenes.json                                                  only in simulated data

and writes the prepared directory of :mod:`mindvideo.data.prepared`. Per run: the authors'
volume drop, the cortical grayordinates, 4th-order detrending and z-scoring
(:func:`mindvideo.data.preprocess.preprocess_run`). The reproducibility ROI
(:class:`mindvideo.data.roi.ReproducibilityROI`) is fitted on the training segments only — the
test runs are read after the fit and only pass through ``transform``. The repetitions of a
segment are averaged: the paper's 18 training segments give "4,320 paired training examples"
(18 × 240), and its 1,200 test fMRIs are the 5 test segments' averaged repetitions
(``test_repetitions: keep`` keeps each test repetition instead).

Frames: each stimulus decoded with PyAV at ``fps`` (3) and ``frame_size`` (256, short side
resized, centre-cropped); TR ``t`` is paired with the frames shown during ``[t·TR, (t+1)·TR)``
(:func:`mindvideo.data.pairing.frames_for_tr`: frames 6t..6t+5 at 3 FPS and TR 2 s).

Captions: BLIP (``pretrained.blip``) on every frame with a resumable cache in the output folder;
without BLIP, the ground-truth captions of a simulated dataset's ``scenes.json``. Real data
without a BLIP folder is refused (the authors' arrays, ``wen2018-preprocessed``, carry theirs).

:func:`mindvideo.data.wen2018_preprocessed.prepare_wen2018_preprocessed` copies the authors'
preprocessed arrays into the same format instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mindvideo.data.prepared import hash_inputs, relative_key
from mindvideo.data.roi import RULES
from mindvideo.utils import UserError
from mindvideo.utils.io import read_json
from mindvideo.utils.threads import usable_cpus
from mindvideo.utils.timing import timed

if TYPE_CHECKING:
    from nibabel.cifti2 import BrainModelAxis

    from mindvideo.config import PrepareConfig
    from mindvideo.data.prepared import PreparedWriter
    from mindvideo.data.roi import ReproducibilityROI

log = logging.getLogger(__name__)

__all__ = [
    "VOXEL_GRAYORDINATES",
    "Wen2018Layout",
    "find_wen2018_runs",
    "hash_inputs",
    "prepare_wen2018",
    "relative_key",
]

PREPARE_VERSION = 1
"""Bumped when the preparation changes what it writes: older directories are then re-prepared."""
VOXEL_GRAYORDINATES = "voxel_grayordinates"
"""Extra array: int32 ``[V]``, the 91k-grayordinate index of each ROI voxel, in voxel order."""

_RUN_RE = re.compile(r"^(seg|test)(\d+)_(\d+)_Atlas\.dtseries\.nii$")
_SEGMENT_RE = re.compile(r"^(seg|test)(\d+)$")

_LAYOUT_HELP = (
    "ROOT/subjectN/fmri/seg{k}/cifti/seg{k}_{r}_Atlas.dtseries.nii (training), "
    "ROOT/subjectN/fmri/test{k}/cifti/test{k}_{r}_Atlas.dtseries.nii (testing) and "
    "ROOT/stimuli/seg{k}.mp4, ROOT/stimuli/test{k}.mp4"
)


# --------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class Wen2018Layout:
    """The files of one subject of a Wen 2018 dataset, as :func:`find_wen2018_runs` found them.

    ``train`` / ``test``: segment name (``"seg1"``, ``"test3"``) → its repetition files, in
    repetition order; segments in numeric order. ``stimuli``: segment name → mp4. ``scenes``:
    the simulator's ``scenes.json`` when present (real data has none).
    """

    root: Path
    subject: int
    train: dict[str, tuple[Path, ...]]
    test: dict[str, tuple[Path, ...]]
    stimuli: dict[str, Path]
    scenes: Path | None = None
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", (*self.train, *self.test))

    def runs(self) -> list[Path]:
        """Every CIFTI run: training segments then test segments, repetitions in order."""
        return [p for split in (self.train, self.test) for reps in split.values() for p in reps]

    def sources(self) -> list[Path]:
        """Every input file: the runs, the stimuli and ``scenes.json`` when present."""
        extra = [self.scenes] if self.scenes is not None else []
        return [*self.runs(), *self.stimuli.values(), *extra]


def find_wen2018_runs(root: str | os.PathLike, subject: int) -> Wen2018Layout:
    """Find one subject's runs and the stimuli in the raw Wen 2018 layout.

    Segments are the ``seg{k}`` / ``test{k}`` folders present (k = 1..K, no gaps); every segment
    of a split must have the same repetitions ``1..R`` (R = the most found in that split).
    Raises one :class:`UserError` naming the first missing run or stimulus file (and how many
    more are missing), or describing the expected layout when nothing is found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Wen 2018 root {root} does not exist; pass the dataset folder as --root.")
    subject_dir = root / f"subject{int(subject)}"
    fmri = subject_dir / "fmri"
    if not fmri.is_dir():
        found = sorted(p.name for p in root.glob("subject*") if (p / "fmri").is_dir())
        have = f" (it has {', '.join(found)})" if found else ""
        raise UserError(
            f"{fmri} does not exist{have}; --root must be a Wen 2018 dataset folder laid out as "
            f"{_LAYOUT_HELP}, and --subject one of its subjects."
        )
    found_runs: dict[str, dict[int, dict[int, Path]]] = {"seg": {}, "test": {}}
    for seg_dir in fmri.iterdir():
        m = _SEGMENT_RE.match(seg_dir.name)
        if not m or not seg_dir.is_dir():
            continue
        reps = found_runs[m[1]].setdefault(int(m[2]), {})
        for path in (seg_dir / "cifti").glob(f"{seg_dir.name}_*_Atlas.dtseries.nii"):
            rm = _RUN_RE.match(path.name)
            if rm and rm[1] == m[1] and int(rm[2]) == int(m[2]):
                reps[int(rm[3])] = path
    if not any(found_runs["seg"].values()):
        raise UserError(
            f"No training runs (seg{{k}}/cifti/seg{{k}}_{{r}}_Atlas.dtseries.nii) under {fmri}; "
            f"expected the Wen 2018 layout {_LAYOUT_HELP}."
        )

    missing: list[Path] = []
    splits: dict[str, dict[str, tuple[Path, ...]]] = {}
    for kind in ("seg", "test"):
        segs = found_runs[kind]
        n_seg = max(segs, default=0)
        n_rep = max((max(r) for r in segs.values() if r), default=0)
        out: dict[str, tuple[Path, ...]] = {}
        for k in range(1, n_seg + 1):
            name = f"{kind}{k}"
            reps = segs.get(k, {})
            for r in range(1, n_rep + 1):
                if r not in reps:
                    missing.append(fmri / name / "cifti" / f"{name}_{r}_Atlas.dtseries.nii")
            out[name] = tuple(reps[r] for r in sorted(reps))
        splits[kind] = out
    stimuli = {}
    for name in (*splits["seg"], *splits["test"]):
        mp4 = root / "stimuli" / f"{name}.mp4"
        if not mp4.is_file():
            missing.append(mp4)
        stimuli[name] = mp4
    if missing:
        more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
        raise UserError(
            f"{missing[0]} is missing{more}; every segment needs all its repetitions and its "
            f"stimulus ({_LAYOUT_HELP}): restore the file or re-download the dataset."
        )
    if not splits["test"]:
        raise UserError(
            f"No test runs (test{{k}}/cifti/test{{k}}_{{r}}_Atlas.dtseries.nii) under {fmri}; "
            f"expected the Wen 2018 layout {_LAYOUT_HELP}."
        )
    scenes = root / "scenes.json"
    return Wen2018Layout(
        root=root,
        subject=int(subject),
        train=splits["seg"],
        test=splits["test"],
        stimuli=stimuli,
        scenes=scenes if scenes.is_file() else None,
    )


# --------------------------------------------------------------------------------------------
# fMRI


@dataclass
class _RunReader:
    """Reads and preprocesses runs that must share one brain-model axis and TR.

    The first run fixes the axis (its XML is parsed once: :mod:`mindvideo.data.cifti` caches
    it), the cortical grayordinates and the TR; every other run is checked against them.
    """

    order: int
    nan_policy: str
    root: Path
    axis: BrainModelAxis | None = None
    tr_s: float = 0.0
    cortex: np.ndarray | slice | None = None
    n_cortex: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "preprocess": 0.0})
    _first: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: Path) -> np.ndarray:
        """One run → float32 ``[240, Vc]`` (dropped, cortex, detrended, z-scored)."""
        from mindvideo.data.cifti import cortex_indices, read_dtseries
        from mindvideo.data.preprocess import preprocess_run, volumes_to_drop

        t0 = time.perf_counter()
        data, axis, tr_s = read_dtseries(path)  # [T, G]
        t1 = time.perf_counter()
        if self.axis is None:
            self.axis, self.tr_s, self._first = axis, tr_s, path
            idx = cortex_indices(axis)
            if idx.size == 0:
                raise UserError(
                    f"{path} has no cortical grayordinates (CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT); "
                    "give the *_Atlas.dtseries.nii runs on the fsLR-32k grayordinates."
                )
            contiguous = idx[-1] - idx[0] + 1 == idx.size
            self.cortex = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
            self.n_cortex = int(idx.size)
        elif axis is not self.axis:  # the parsed-XML cache returns the same object when equal
            if len(axis) != len(self.axis):
                raise UserError(
                    f"{path} has {len(axis)} grayordinates but {self._first} has "
                    f"{len(self.axis)}; all runs of a subject must be on the same grayordinates "
                    "(use the *_Atlas.dtseries.nii files of one subject)."
                )
            if axis != self.axis:
                raise UserError(
                    f"{path} has other grayordinates than {self._first} (same count, different "
                    "brain models); all runs of a subject must share one brain-model axis."
                )
        if not math.isclose(tr_s, self.tr_s, rel_tol=1e-6):
            raise UserError(
                f"{path} has a TR of {tr_s} s but {self._first} has {self.tr_s} s; all runs of a "
                "subject must have the same TR."
            )
        first, last = volumes_to_drop(data.shape[0], source=str(path))
        x = preprocess_run(
            data,
            self.cortex,
            drop=(first, last),
            order=self.order,
            nan_policy=self.nan_policy,  # type: ignore[arg-type]
            source=str(path),
        )
        with self._lock:
            self.dropped[relative_key(path, self.root)] = [data.shape[0], first, last]
            self.timings["read"] += t1 - t0
            self.timings["preprocess"] += time.perf_counter() - t1
        return x


READ_WORKERS = min(4, usable_cpus())
"""fMRI runs read and preprocessed at a time (each holds ~0.3 GB while it is worked on)."""


@contextlib.contextmanager
def _workers() -> Iterator[ThreadPoolExecutor]:
    """A pool of :data:`READ_WORKERS` threads whose queued work is dropped on an error or
    Ctrl-C (a plain ``with`` would run every queued run or segment to the end first)."""
    pool = ThreadPoolExecutor(max_workers=READ_WORKERS)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _prepare_fmri(
    layout: Wen2018Layout,
    cfg: PrepareConfig,
    reader: _RunReader,
    references: list[tuple[dict[str, Any], np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, ReproducibilityROI]:
    """Training runs → ROI fit → (fmri_train ``[S, T, V]``, fmri_test ``[S, T, V]`` or
    ``[S, R, T, V]``, the fitted ROI). Test runs are read only after the ROI is fitted. With
    ``references`` (:func:`~mindvideo.data.roi.read_reference_rois`), the ROI is theirs
    (:class:`~mindvideo.data.roi.ReferenceROI`) and no test is run."""
    from tqdm.auto import tqdm

    from mindvideo.data.roi import ReferenceROI, ReproducibilityROI

    with (
        tqdm(total=len(layout.runs()), desc="fMRI runs", unit="run", disable=None) as bar,
        _workers() as pool,
    ):

        def read(path: Path) -> np.ndarray:
            x = reader(path)
            bar.update()
            return x

        def read_all(paths: list[Path], then: Any = None) -> list[np.ndarray]:
            """Runs in order (each through ``then`` when given), several at a time: reading,
            detrending and z-scoring one run is numpy work that releases the GIL, and each run
            is computed alone, so the arrays are the same bit for bit as one at a time. The
            subject's first run is read alone (it fixes the grayordinate axis, the cortex and
            the TR the others are checked against)."""
            one = read if then is None else (lambda path: then(read(path)))
            first = [one(paths[0])] if reader.axis is None and paths else []
            return first + list(pool.map(one, paths[len(first) :]))

        # The ROI needs every training run at once (~2 GB at full scale: 18 × 2 × 240 × 59,412).
        runs = iter(read_all([p for reps in layout.train.values() for p in reps]))
        train_runs = [(name, [next(runs) for _ in reps]) for name, reps in layout.train.items()]
        _check_lengths(train_runs, layout.train)
        t0 = time.perf_counter()
        if references:
            roi: ReproducibilityROI = ReferenceROI.from_references(
                _cortex_grayordinates(reader), references, cfg.roi.reference_min
            )
        else:
            roi = ReproducibilityROI(
                alpha=cfg.roi.alpha,
                top_fraction=cfg.roi.top_fraction,
                correction=cfg.roi.correction,  # type: ignore[arg-type]
                alternative=cfg.roi.alternative,  # type: ignore[arg-type]
                rule=cfg.roi.rule,  # type: ignore[arg-type]
            ).fit((reps for _, reps in train_runs), areas=_cortex_areas(reader))
        # Training repetitions averaged: 18 segments x 240 TRs = the paper's 4,320 pairs.
        fmri_train = np.stack(
            [
                np.mean([roi.transform(r) for r in reps], axis=0, dtype=np.float32)
                for _, reps in train_runs
            ]
        )
        reader.timings["roi"] = time.perf_counter() - t0
        n_trs = fmri_train.shape[1]
        del train_runs

        keep = cfg.test_repetitions == "keep"
        test: list[np.ndarray] = []
        for reps in layout.test.values():
            selected = []
            # [T, V]: transform only, nothing is fitted here
            for path, x in zip(reps, read_all(list(reps), then=roi.transform), strict=True):
                if x.shape[0] != n_trs:
                    raise UserError(
                        f"{path} has {x.shape[0]} volumes after dropping but the training runs "
                        f"have {n_trs}; every run must cover the same movie length."
                    )
                selected.append(x)
            seg = np.stack(selected)  # [R, T, V]
            test.append(seg if keep else seg.mean(axis=0, dtype=np.float32))
    return fmri_train, np.stack(test).astype(np.float32, copy=False), roi


def _cortex_grayordinates(reader: _RunReader) -> np.ndarray:
    """The 91k-grayordinate index of each cortical vertex read, in file order."""
    from mindvideo.data import atlas

    assert reader.axis is not None and reader.cortex is not None
    return atlas.grayordinate_index(reader.axis)[reader.cortex]


def _cortex_areas(reader: _RunReader) -> np.ndarray:
    """Glasser MMP label (``"L_V1"``, ``"R_MT"``, ...) of each cortical vertex read, in file
    order; ``""`` for a vertex without one (the ROI's per-area rule and its counts per area)."""
    from mindvideo.data import atlas

    assert reader.axis is not None and reader.cortex is not None
    gray = atlas.grayordinate_index(reader.axis)[reader.cortex]
    return np.where(gray >= 0, atlas.mmp_labels()[np.maximum(gray, 0)], "")


def _check_lengths(train_runs: list, files: dict[str, tuple[Path, ...]]) -> None:
    lengths = {name: [r.shape[0] for r in reps] for name, reps in train_runs}
    first_name = next(iter(lengths))
    n = lengths[first_name][0]
    for name, ns in lengths.items():
        for path, m in zip(files[name], ns, strict=True):
            if m != n:
                raise UserError(
                    f"{path} has {m} volumes after dropping but {files[first_name][0]} has {n}; "
                    "every run must cover the same movie length."
                )


# --------------------------------------------------------------------------------------------
# Frames, scenes and captions


def _frame_index(n_trs: int, fps: float, tr_s: float) -> np.ndarray:
    """``[T, F]`` indices of the frames (at ``fps``) shown during each TR."""
    from mindvideo.data.pairing import frames_for_tr, frames_per_tr

    n_f = frames_per_tr(fps, tr_s)
    idx = np.stack([frames_for_tr(t, fps, tr_s) for t in range(n_trs)])
    if idx.shape != (n_trs, n_f):
        raise UserError(f"fps {fps} does not give {n_f} frames in every TR of {tr_s} s.")
    return idx


def _check_durations(layout: Wen2018Layout, allow_longer: bool = False) -> None:
    """Every stimulus lasts as long as its runs' kept TRs × TR, read from the headers alone
    (before any fMRI work).

    Shorter by more than half a frame is always an error (TRs would have no frames). Longer by
    more than one TR is an error unless ``allow_longer``: the rest of the stimulus would never
    be paired with fMRI, which is what a wrong TR in the runs' headers (1 s for 2 s) looks like.
    """
    from mindvideo.data.cifti import dtseries_shape
    from mindvideo.data.preprocess import volumes_to_drop
    from mindvideo.data.video import video_info

    runs = {**layout.train, **layout.test}
    for name, path in layout.stimuli.items():
        run = runs[name][0]
        volumes, _, tr_s = dtseries_shape(run)
        first, last = volumes_to_drop(volumes, source=str(run))
        n_trs = volumes - first - last
        need = n_trs * tr_s
        info = video_info(path)
        covers = f"{run} covers {n_trs} TRs of {tr_s:g} s = {need:g} s (its header's TR)"
        if info.duration_s < need - 0.5 / max(info.fps, 1.0):
            raise UserError(
                f"{path} lasts {info.duration_s:.2f} s but the fMRI run {covers}; use the "
                "stimulus that was shown with these runs."
            )
        if info.duration_s > need + tr_s and not allow_longer:
            raise UserError(
                f"{path} lasts {info.duration_s:.2f} s but the fMRI run {covers}: "
                f"{info.duration_s - need:.1f} s of the stimulus would never be paired with "
                "fMRI. Check the runs' TR and that this is the stimulus shown with them; if it "
                "did run on after the scan, pass --allow-duration-mismatch."
            )


def _decode_segment(
    path: Path, index: np.ndarray, fps: float, size: int, tr_s: float
) -> np.ndarray:
    """``[T, F, size, size, 3]`` uint8: the frames of every TR of one stimulus."""
    from mindvideo.data.video import read_video

    duration = index.shape[0] * tr_s
    clip = read_video(path, fps=fps, size=size, duration_s=duration)  # [N, H, W, 3]
    if clip.shape[0] <= index.max():
        raise UserError(
            f"{path} decoded to {clip.shape[0]} frames at {fps:g} FPS, fewer than the "
            f"{index.max() + 1} the {index.shape[0]} TRs need; the file is truncated: re-create "
            "or re-download it."
        )
    return clip[index]


def _scenes_meta(layout: Wen2018Layout) -> dict[str, Any] | None:
    if layout.scenes is None:
        return None
    meta = read_json(layout.scenes, "re-simulate")
    segments = meta.get("segments") if isinstance(meta, dict) else None
    if not isinstance(segments, dict):
        raise UserError(f"{layout.scenes} has no 'segments' entry; it is not a simulator's file.")
    for name in layout.segments:
        if not segments.get(name):
            raise UserError(
                f"{layout.scenes} has no scenes for segment {name}; it belongs to another "
                "dataset: re-simulate, or remove it and caption with BLIP (pretrained.blip)."
            )
    return meta


def _scene_table(
    meta: dict[str, Any], names: list[str], n_trs: int, fps: float, tr_s: float
) -> tuple[np.ndarray, list[list[list[str]]]]:
    """(scene ids ``[S, T, F]`` int32 unique within the split, ground-truth captions
    ``[S][T][F]``) from ``scenes.json``: each frame gets the scene on screen at its time."""
    from mindvideo.data.pairing import scene_ids_from_times

    ids, captions, next_id = [], [], 0
    source_fps = meta.get("fps")
    for name in names:
        scenes = meta["segments"][name]
        local = scene_ids_from_times(
            [s["start_s"] for s in scenes], n_trs, fps=fps, tr_s=tr_s, source_fps=source_fps
        )  # [T, F] index into this segment's scenes
        texts = np.array([str(s.get("caption", "")) for s in scenes], dtype=object)
        captions.append(texts[local].tolist())
        ids.append(local + next_id)
        next_id += len(scenes)
    return np.stack(ids).astype(np.int32), captions


# --------------------------------------------------------------------------------------------
# The stage


def _roi_inputs(cfg: PrepareConfig) -> dict[str, Any]:
    """The ROI settings that decide the selection: the reference folders and their vote, or the
    test's (a subject prepared before ``reference`` existed stays up to date)."""
    roi = dataclasses.asdict(cfg.roi)
    if cfg.roi.reference:
        return {"reference": list(roi["reference"]), "reference_min": roi["reference_min"]}
    del roi["reference"], roi["reference_min"]
    return roi


def _inputs_config(cfg: PrepareConfig) -> dict[str, Any]:
    """The parts of the config that decide what prepare writes (compared on a re-run)."""
    out = {
        "prepare_version": PREPARE_VERSION,
        "dataset": cfg.dataset,
        "subject": int(cfg.subject),
        "fps": float(cfg.fps),
        "frame_size": int(cfg.frame_size),
        "test_repetitions": cfg.test_repetitions,
        "detrend_order": int(cfg.detrend_order),
        "nan_policy": cfg.nan_policy,
        "roi": _roi_inputs(cfg),
        "blip": cfg.pretrained.blip,
    }
    if cfg.train_segments is not None:  # absent otherwise: earlier subjects stay up to date
        out["train_segments"] = int(cfg.train_segments)
    if cfg.pretrained.blip:
        c = cfg.captions
        out["captions"] = {
            "max_new_tokens": c.max_new_tokens,
            "num_beams": c.num_beams,
            "prompt": c.prompt,
            "dtype": c.dtype,
        }
    return out


def check_prepare_config(cfg: PrepareConfig) -> None:
    """A :class:`UserError` naming the first invalid setting of a Wen 2018 preparation."""
    problems = []
    if not cfg.root:
        problems.append("no dataset folder: pass --root (or set the key root)")
    if cfg.test_repetitions not in ("average", "keep"):
        problems.append(
            f"test_repetitions must be 'average' or 'keep', not {cfg.test_repetitions!r}"
        )
    if cfg.nan_policy not in ("raise", "zero"):
        problems.append(f"nan_policy must be 'raise' or 'zero', not {cfg.nan_policy!r}")
    if not cfg.fps > 0:
        problems.append(f"fps must be positive, not {cfg.fps}")
    if cfg.frame_size < 1:
        problems.append(f"frame_size must be at least 1, not {cfg.frame_size}")
    if cfg.subject < 1:
        problems.append(f"subject must be at least 1, not {cfg.subject}")
    if cfg.roi.rule not in RULES:  # before the runs are read (the ROI checks its other options)
        problems.append(f"roi.rule must be {' or '.join(map(repr, RULES))}, not {cfg.roi.rule!r}")
    if cfg.roi.reference and not 1 <= cfg.roi.reference_min <= len(cfg.roi.reference):
        problems.append(
            f"roi.reference_min must be between 1 and the number of roi.reference folders "
            f"({len(cfg.roi.reference)}), not {cfg.roi.reference_min}"
        )
    if problems:
        raise UserError(f"Invalid prepare config: {problems[0]}.")


def prepare_wen2018(
    cfg: PrepareConfig, out: str | os.PathLike, *, timings: dict[str, float] | None = None
) -> Path:
    """Prepare one subject of a raw Wen 2018 dataset (real or simulated) into ``out``.

    Writes (see :mod:`mindvideo.data.prepared`): ``fmri_{train,test}.npy`` (float32
    ``[S, 240, V]``; test ``[S, R, 240, V]`` with ``test_repetitions: keep``),
    ``frames_{train,test}.npy`` (uint8 ``[S, 240, 6, H, W, 3]``), ``captions_{train,test}.json``,
    ``roi_mask.npy`` (bool ``[G]`` over the file's grayordinates), ``voxel_grayordinates.npy``
    (int32 ``[V]``), ``scene_ids_{train,test}.npy`` (simulated data only) and ``manifest.json``
    (last). Returns ``out``. If ``out`` already holds a subject prepared from the same files
    (sha256) and the same settings, nothing is done. ``timings``, when given, receives the
    seconds spent per step (hash, read, preprocess, roi, frames, captions, write).

    Every check that can fail on the inputs (missing files, captions source, stimulus length,
    volume counts, NaN voxels, grayordinates) runs before anything is written, and the arrays are
    staged beside ``out`` (:class:`~mindvideo.data.prepared.PreparedWriter`, ``staged=True``)
    until all are complete, so a failed run (a video truncated inside its frames is found only
    while decoding) leaves ``out`` as it was: absent, or an earlier prepared subject untouched.
    Only the BLIP caption cache (``captions.cache``) is kept in ``out`` to resume from.
    """
    from mindvideo.data.prepared import PreparedWriter, is_up_to_date

    check_prepare_config(cfg)
    times = timings if timings is not None else {}
    start = time.perf_counter()
    out = Path(out)
    layout, scenes = _find_inputs(cfg)
    references = None
    if cfg.roi.reference:  # a bad reference fails here, before the long part
        from mindvideo.data.roi import read_reference_rois

        references = read_reference_rois(cfg.roi.reference)
    with timed(times, "hash"):
        inputs = {"sources": hash_inputs(layout.sources(), layout.root)}
    inputs["config"] = _inputs_config(cfg)
    if references:  # what the references kept, not only where they are
        inputs["config"]["roi_reference_sha256"] = [info["sha256"] for info, _ in references]
    if is_up_to_date(out, inputs):
        log.info("%s is up to date (same inputs and config): nothing to do", out)
        times["total"] = time.perf_counter() - start
        return out

    _check_durations(layout, allow_longer=cfg.allow_duration_mismatch)
    captioner = None  # without BLIP: the ground truth of scenes.json
    if cfg.pretrained.blip:  # a bad BLIP folder fails here, before the long part
        from mindvideo.data.captions import BlipCaptioner

        captioner = BlipCaptioner.from_config(cfg.pretrained.blip, cfg.captions)
    reader = _RunReader(order=cfg.detrend_order, nan_policy=cfg.nan_policy, root=layout.root)
    with timed(times, "fmri"):  # wall time; "read" and "preprocess" add up each run's time
        fmri_train, fmri_test, roi = _prepare_fmri(layout, cfg, reader, references)
    times.update(reader.timings)
    n_trs = fmri_train.shape[1]
    index = _frame_index(n_trs, cfg.fps, reader.tr_s)  # [T, F]

    # Staged beside `out` and moved in by finish(): a failure (e.g. a video truncated inside
    # its frames, found only when decoding) leaves no partial output.
    with PreparedWriter(out, staged=True) as writer:
        with timed(times, "frames"):
            _write_frames(writer, layout, cfg, index, reader.tr_s)
        with timed(times, "captions"):
            scene_summary = _write_captions(
                writer, layout, cfg, scenes, captioner, index.shape[0], reader.tr_s
            )
        with timed(times, "write"):
            _write_fmri(writer, fmri_train, fmri_test, reader, roi)
            manifest = writer.finish(
                inputs,
                **_manifest_info(cfg, layout, reader, roi, index),
                captions_source="blip" if captioner is not None else "scenes.json",
                n_scenes=scene_summary or None,
                prepare_config=dataclasses.asdict(cfg),
            )
    times["total"] = time.perf_counter() - start
    log.info(
        "prepared subject %d: %d of %d cortical vertices kept (%s), train %s, test %s, in %.1f s",
        cfg.subject,
        manifest["n_voxels"],
        reader.n_cortex,
        "the reference subjects' ROI"
        if references
        else f"{int(roi.significant_.sum())} significant",
        list(fmri_train.shape),
        list(fmri_test.shape),
        times["total"],
    )
    return out


def _find_inputs(cfg: PrepareConfig) -> tuple[Wen2018Layout, dict[str, Any] | None]:
    """The subject's files and the simulator's ``scenes.json`` (None for real data); a
    :class:`UserError` when there is no source of captions."""
    layout = find_wen2018_runs(cfg.root, cfg.subject)  # type: ignore[arg-type]
    if cfg.train_segments is not None:
        layout = _first_train_segments(layout, cfg.train_segments)
    scenes = _scenes_meta(layout)  # None for real data
    if scenes is None and not cfg.pretrained.blip:
        raise UserError(
            f"{layout.root} has no frame captions (real Wen 2018 data ships none); set "
            "pretrained.blip to a local BLIP captioning model folder, or use --dataset "
            "wen2018-preprocessed with the authors' arrays and their captions."
        )
    return layout, scenes


def _first_train_segments(layout: Wen2018Layout, n: int) -> Wen2018Layout:
    """``layout`` with only its first ``n`` training segments (their runs and stimuli)."""
    if not 1 <= n <= len(layout.train):
        raise UserError(
            f"train_segments must be between 1 and the {len(layout.train)} training segments "
            f"found in {layout.root}, not {n}."
        )
    train = dict(list(layout.train.items())[:n])
    dropped = set(layout.train) - set(train)
    stimuli = {k: v for k, v in layout.stimuli.items() if k not in dropped}
    return dataclasses.replace(layout, train=train, stimuli=stimuli)


def _splits(layout: Wen2018Layout) -> dict[str, list[str]]:
    return {"train": list(layout.train), "test": list(layout.test)}


def _write_frames(
    writer: PreparedWriter,
    layout: Wen2018Layout,
    cfg: PrepareConfig,
    index: np.ndarray,
    tr_s: float,
) -> None:
    """Decode every stimulus into ``frames_{split}.npy`` ``[S, T, F, size, size, 3]``, segment by
    segment (the frames of ``index`` ``[T, F]``), several segments at a time (FFmpeg decodes and
    scales without the GIL; each segment goes into its own slice)."""
    from tqdm.auto import tqdm

    size = int(cfg.frame_size)
    with (
        tqdm(total=len(layout.stimuli), desc="stimuli", unit="video", disable=None) as bar,
        _workers() as pool,
    ):
        for split, names in _splits(layout).items():
            shape = (len(names), index.shape[0], index.shape[1], size, size, 3)
            with writer.open_array(f"frames_{split}", shape, np.uint8) as frames:

                def decode(s: int, name: str, frames: np.ndarray = frames) -> None:
                    frames[s] = _decode_segment(layout.stimuli[name], index, cfg.fps, size, tr_s)
                    bar.update()

                for done in [pool.submit(decode, s, name) for s, name in enumerate(names)]:
                    done.result()  # in order: the first failure is the one reported


def _write_captions(
    writer: PreparedWriter,
    layout: Wen2018Layout,
    cfg: PrepareConfig,
    scenes: dict[str, Any] | None,
    captioner: Any,
    n_trs: int,
    tr_s: float,
) -> dict[str, int]:
    """Write ``captions_{split}.json`` (BLIP's, or the ground truth of ``scenes.json``) and, for
    simulated data, ``scene_ids_{split}.npy``; returns the number of scenes per split."""
    scene_summary: dict[str, int] = {}
    for split, names in _splits(layout).items():
        if scenes is not None:
            ids, truth_captions = _scene_table(scenes, names, n_trs, cfg.fps, tr_s)
            writer.write_array(f"scene_ids_{split}", ids)
            scene_summary[split] = int(ids.max() - ids.min() + 1)
        if captioner is None:
            captions = truth_captions
        else:
            from mindvideo.data.captions import caption_frames

            frames = np.load(writer.root / f"frames_{split}.npy", mmap_mode="r")
            flat = caption_frames(frames, captioner, writer.out / cfg.captions.cache)
            captions = np.asarray(flat, dtype=object).reshape(frames.shape[:3]).tolist()
        writer.write_captions(split, captions)
    return scene_summary


def _write_fmri(
    writer: PreparedWriter,
    fmri_train: np.ndarray,
    fmri_test: np.ndarray,
    reader: _RunReader,
    roi: ReproducibilityROI,
) -> None:
    """The fMRI arrays, ``roi_mask`` (bool ``[G]`` over the file's grayordinates) and
    ``voxel_grayordinates`` (the 91k-grayordinate index int32 ``[V]`` of each ROI voxel)."""
    from mindvideo.data import atlas

    assert reader.axis is not None
    cortex = np.arange(len(reader.axis))[reader.cortex]  # cortical positions in the file
    roi_positions = cortex[roi.indices_]  # [V] file positions of the ROI voxels (increasing)
    roi_mask = np.zeros(len(reader.axis), dtype=bool)
    roi_mask[roi_positions] = True
    writer.write_array("fmri_train", fmri_train)
    writer.write_array("fmri_test", fmri_test)
    writer.write_array("roi_mask", roi_mask)
    gray = atlas.grayordinate_index(reader.axis)[roi_positions].astype(np.int32)
    writer.write_array("voxel_grayordinates", gray)


def _manifest_info(
    cfg: PrepareConfig,
    layout: Wen2018Layout,
    reader: _RunReader,
    roi: ReproducibilityROI,
    index: np.ndarray,
) -> dict[str, Any]:
    """What the manifest records besides the arrays: the source, timing, segments, the volumes
    dropped per run and the ROI's statistics."""
    assert reader.axis is not None
    return {
        "source": "wen2018",
        "subject": int(cfg.subject),
        "tr_s": reader.tr_s,
        "fps": float(cfg.fps),
        "frames_per_tr": int(index.shape[1]),
        "frame_size": int(cfg.frame_size),
        "grayordinates": len(reader.axis),
        "cortex_vertices": reader.n_cortex,
        "segments": _splits(layout),
        "repetitions": {
            "train": [len(r) for r in layout.train.values()],
            "test": [len(r) for r in layout.test.values()],
        },
        "test_repetitions": cfg.test_repetitions,
        "volumes_dropped": {  # in the layout's order (runs are read several at a time)
            key: dict(zip(("volumes", "start", "end"), reader.dropped[key], strict=True))
            for key in (relative_key(p, reader.root) for p in layout.runs())
        },
        "roi": roi.summary(),
    }
