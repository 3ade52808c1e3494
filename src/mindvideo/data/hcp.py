"""The HCP pre-training corpus: visual-cortex fMRI frames for masked brain modeling (paper 3.3).

Paper 4.1: "we employed resting-state and task-evoked fMRI data from the HCP. Building upon
[MinD-Vis], we obtained 600,000 fMRI segments". Paper 3.2: the pre-training ROI is a
parcellation, Glasser's V1–V4 (MinD-Vis). :func:`prepare_hcp` reads runs in the HCP layout::

    ROOT/{subject}/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas.dtseries.nii
    ROOT/{subject}/MNINonLinear/Results/tfMRI_WM_LR/tfMRI_WM_LR_Atlas.dtseries.nii   (task)

keeps the grayordinates of the Glasser areas ``hcp.areas`` (V1, V2, V3, V4) ordered along the
visual hierarchy — all V1 vertices first, then V2, V3, V4, as MinD-Vis concatenates them; within
an area the file order (left hemisphere, then right, vertices ascending) — detrends and z-scores
each vertex per run, and writes every volume as one frame into a sharded corpus::

    OUT/shard_00000.npy   float32 [n, V]   hcp.shard_frames frames each (the last one shorter)
    OUT/shard_00001.npy   ...
    OUT/index.json        shards, frames, V, the 91k-grayordinate index of each voxel, areas,
                          source runs with sha256, config (written last: without it the corpus
                          is incomplete)

:class:`HCPCorpus` memory-maps the shards, so a DataLoader streams a corpus of any size (the
paper's ~600k frames × the 4,183 V1–V4 grayordinates are ~10 GB) without loading it into RAM.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mindvideo.data.pairing import PadMode, pad_voxels, padded_size
from mindvideo.data.prepared import hash_inputs, relative_key
from mindvideo.utils import UserError, atomic_path
from mindvideo.utils.freshness import StagedFolder, files_present, read_marker, write_marker
from mindvideo.utils.timing import timed

if TYPE_CHECKING:
    from mindvideo.config import PrepareConfig

log = logging.getLogger(__name__)

__all__ = ["INDEX", "HCPCorpus", "find_hcp_runs", "prepare_hcp"]

INDEX = "index.json"
FORMAT_VERSION = 1
PREPARE_VERSION = 1
"""Bumped when the corpus changes for the same inputs: older corpora are then rebuilt."""

_RUN_DIR_RE = re.compile(r"^(rfMRI|tfMRI)_\w+$")
_LAYOUT_HELP = (
    "ROOT/{subject}/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas.dtseries.nii "
    "(resting state; task runs tfMRI_* are used too)"
)


def find_hcp_runs(root: str | os.PathLike) -> list[Path]:
    """Every resting-state (``rfMRI_*``) and task (``tfMRI_*``) run under ``root``, HCP layout.

    A run is ``{subject}/MNINonLinear/Results/{run}/{run}_Atlas.dtseries.nii`` (the 91k
    grayordinate file HCP's minimal preprocessing writes). Sorted by subject, then run name.
    Raises a :class:`UserError` when ``root`` does not exist or holds no such file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"HCP root {root} does not exist; pass the HCP data folder as --root.")
    runs = []
    for path in root.glob("*/MNINonLinear/Results/*/*_Atlas.dtseries.nii"):
        run = path.parent.name
        if _RUN_DIR_RE.match(run) and path.name == f"{run}_Atlas.dtseries.nii":
            runs.append(path)
    if not runs:
        raise UserError(
            f"No HCP runs found under {root}; expected files laid out as {_LAYOUT_HELP}."
        )
    return sorted(runs, key=lambda p: (p.parts[-5], p.parent.name))


class _ShardWriter:
    """Collects frames ``[n, V]`` and writes ``shard_{i:05d}.npy`` files of ``size`` frames.

    One shard is buffered in memory (``size × V`` float32: 16,384 × 4,183 × 4 B ≈ 0.27 GB at
    the default), each shard file is written atomically.
    """

    def __init__(self, out: Path, size: int, n_voxels: int) -> None:
        self.out, self.size = out, size
        self.buffer = np.empty((size, n_voxels), np.float32)
        self.filled = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, x: np.ndarray) -> None:
        start = 0
        while start < x.shape[0]:
            n = min(self.size - self.filled, x.shape[0] - start)
            self.buffer[self.filled : self.filled + n] = x[start : start + n]
            self.filled += n
            start += n
            if self.filled == self.size:
                self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        name = f"shard_{len(self.shards):05d}.npy"
        with atomic_path(self.out / name) as tmp:
            np.save(tmp, self.buffer[: self.filled])
        self.shards.append({"file": name, "frames": self.filled})
        self.filled = 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        return self.shards


def _visual_positions(
    axis: Any, areas: list[str], cache: list[tuple[Any, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(file positions, 91k-grayordinate indices) of the ``areas`` voxels, hierarchy order.

    Runs with identical headers share one parsed axis object, so the result is cached by it.
    """
    from mindvideo.data import atlas

    for known, positions, gray in cache:
        if known is axis:
            return positions, gray
    gray = atlas.grayordinate_index(axis)  # [G], -1 where unknown
    valid = np.flatnonzero(gray >= 0)
    level = atlas.hierarchy_level(gray[valid], areas)  # len(areas) outside them
    inside = level < len(areas)
    positions = valid[inside][np.argsort(level[inside], kind="stable")]
    cache.insert(0, (axis, positions, gray[positions]))
    del cache[4:]
    return positions, gray[positions]


def _inputs_config(cfg: PrepareConfig) -> dict[str, Any]:
    return {
        "prepare_version": PREPARE_VERSION,
        "dataset": "hcp",
        "nan_policy": cfg.nan_policy,
        "hcp": dataclasses.asdict(cfg.hcp),
    }


def _read_index(root: Path) -> dict[str, Any] | None:
    return read_marker(root / INDEX)


def _up_to_date(root: Path, inputs: dict[str, Any]) -> bool:
    index = read_marker(root / INDEX, inputs)
    # Shapes are checked when the corpus is opened.
    return index is not None and files_present(root, (s["file"] for s in index.get("shards", [])))


def _check_config(cfg: PrepareConfig) -> None:
    if not cfg.root:
        raise UserError("Invalid prepare config: no dataset folder: pass --root (or set root).")
    if cfg.hcp.shard_frames < 1:
        raise UserError(f"hcp.shard_frames must be at least 1, not {cfg.hcp.shard_frames}.")
    if not cfg.hcp.areas:
        raise UserError(
            "hcp.areas is empty; list the Glasser areas to keep, e.g. [V1, V2, V3, V4]."
        )
    if cfg.nan_policy not in ("raise", "zero"):
        raise UserError(f"nan_policy must be 'raise' or 'zero', not {cfg.nan_policy!r}.")


@dataclasses.dataclass
class _Corpus:
    """What reading the runs gave: the shards being written, the voxels' grayordinates (fixed by
    the first run), one entry per run for the index, seconds spent reading and preprocessing."""

    writer: _ShardWriter | None = None
    reference: tuple[Path, np.ndarray] | None = None
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cache: list[tuple[Any, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    times: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"read": 0.0, "preprocess": 0.0}
    )

    def check_voxels(self, path: Path, gray: np.ndarray, areas: list[str]) -> None:
        """The first run fixes the grayordinates; every other run must have the same."""
        assert self.reference is not None
        if not np.array_equal(gray, self.reference[1]):
            raise UserError(
                f"{path} has {gray.size} grayordinates in {', '.join(areas)} but "
                f"{self.reference[0]} has {self.reference[1].size} (or other ones); all runs "
                "must be on the same grayordinates (HCP's 91k *_Atlas.dtseries.nii files)."
            )


def _add_run(corpus: _Corpus, path: Path, cfg: PrepareConfig, root: Path, staging: Path) -> None:
    """Read one run, keep its visual voxels, detrend and z-score them, append its frames."""
    from mindvideo.data.cifti import read_dtseries
    from mindvideo.data.preprocess import preprocess_run

    areas = list(cfg.hcp.areas)
    t0 = time.perf_counter()
    data, axis, tr_s = read_dtseries(path)  # [T, G]
    t1 = time.perf_counter()
    positions, gray = _visual_positions(axis, areas, corpus.cache)
    if corpus.reference is None:
        if gray.size == 0:
            raise UserError(
                f"{path} has no grayordinates in the Glasser areas {', '.join(areas)}; give "
                "HCP *_Atlas.dtseries.nii files (91k grayordinates) or change hcp.areas."
            )
        corpus.reference = (path, gray)
        corpus.writer = _ShardWriter(staging, cfg.hcp.shard_frames, gray.size)
    else:
        corpus.check_voxels(path, gray, areas)
    x = preprocess_run(
        data,
        positions,
        drop=(0, 0),
        order=cfg.hcp.detrend_order,
        nan_policy=cfg.nan_policy,  # type: ignore[arg-type]
        source=str(path),
    )  # [T, V]
    del data
    assert corpus.writer is not None
    corpus.writer.add(x)
    corpus.runs.append({"file": relative_key(path, root), "volumes": int(x.shape[0]), "tr_s": tr_s})
    corpus.times["read"] += t1 - t0
    corpus.times["preprocess"] += time.perf_counter() - t1


def _build_index(
    cfg: PrepareConfig,
    corpus: _Corpus,
    shards: list[dict[str, Any]],
    sources: dict[str, str],
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``index.json`` (see the module doc)."""
    from mindvideo.data import atlas

    assert corpus.reference is not None
    gray = corpus.reference[1]
    areas = list(cfg.hcp.areas)
    area_of_voxel = atlas.area_of(gray).tolist()
    return {
        "format_version": FORMAT_VERSION,
        "source": "hcp",
        "n_frames": int(sum(s["frames"] for s in shards)),
        "n_voxels": int(gray.size),
        "frames_per_shard": int(cfg.hcp.shard_frames),
        "dtype": "<f4",
        "shards": shards,
        "areas": areas,
        "voxels_per_area": {a: area_of_voxel.count(a) for a in areas},
        "grayordinates": gray.tolist(),
        "runs": [{**r, "sha256": sources[r["file"]]} for r in corpus.runs],
        **inputs,
        "prepare_config": dataclasses.asdict(cfg),
    }


def prepare_hcp(
    cfg: PrepareConfig, out: str | os.PathLike, *, timings: dict[str, float] | None = None
) -> Path:
    """Build the sharded pre-training corpus from the HCP runs under ``cfg.root``; returns ``out``.

    Per run: keep the ``cfg.hcp.areas`` grayordinates in hierarchy order, remove a polynomial
    trend of order ``cfg.hcp.detrend_order`` and z-score every vertex (statistics of that run
    only; no volumes are dropped), then append its volumes as frames. All runs must give the same
    voxels (the HCP 91k grayordinates). NaN/Inf vertices follow ``cfg.nan_policy``. Re-running
    with the same runs (sha256) and settings does nothing.
    """
    from tqdm.auto import tqdm

    times = timings if timings is not None else {}
    start = time.perf_counter()
    _check_config(cfg)
    root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
    out = Path(out)
    runs = find_hcp_runs(root)
    with timed(times, "hash"):
        sources = hash_inputs(runs, root)
    inputs = {"sources": sources, "config": _inputs_config(cfg)}
    if _up_to_date(out, inputs):
        log.info("%s is up to date (same runs and config): nothing to do", out)
        times["total"] = time.perf_counter() - start
        return out

    # Shards are staged beside `out` and moved in only when every run is read: a failure (a NaN
    # vertex in the last run) leaves no partial corpus, or the earlier one untouched.
    corpus = _Corpus()
    with StagedFolder(out, marker=INDEX) as stage:
        for path in tqdm(runs, desc="HCP runs", unit="run", disable=None):
            _add_run(corpus, path, cfg, root, stage.root)
        times.update(corpus.times)
        assert corpus.writer is not None
        t0 = time.perf_counter()
        shards = corpus.writer.close()
        stage.publish()
    for stale in out.glob("shard_*.npy"):  # left over from an earlier, larger corpus
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
    index = _build_index(cfg, corpus, shards, sources, inputs)
    write_marker(out / INDEX, index, indent=None)
    times["write"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - start
    log.info(
        "HCP corpus %s: %d frames x %d voxels (%s) from %d runs in %d shards",
        out,
        index["n_frames"],
        index["n_voxels"],
        ", ".join(f"{a} {n}" for a, n in index["voxels_per_area"].items()),
        len(runs),
        len(shards),
    )
    return out


class HCPCorpus(Dataset):
    """The sharded pre-training corpus written by :func:`prepare_hcp`, memory-mapped.

    Item ``i``: float32 ``[V_padded]`` — frame ``i`` (one volume of one run, z-scored voxels in
    hierarchy order), padded to a multiple of ``patch_size`` (:func:`mindvideo.data.pairing.
    pad_voxels`, ``pad_mode`` ``"zero"`` or ``"wrap_compat"``). Opening reads only
    ``index.json`` and the ``.npy`` headers; frames are read from disk when indexed, so a
    DataLoader streams the corpus without loading it. Attributes: ``n_voxels`` (V),
    ``n_voxels_padded``, ``voxel_grayordinates`` (int64 ``[V]``, index into the 91,282 HCP
    grayordinates), ``index`` (the parsed ``index.json``), ``shards`` (``np.memmap`` each).
    """

    def __init__(
        self, root: str | os.PathLike, patch_size: int = 16, pad_mode: PadMode = "zero"
    ) -> None:
        self.root = Path(root)
        self.patch_size = patch_size
        self.pad_mode = pad_mode
        if not self.root.is_dir():
            raise UserError(
                f"HCP corpus {self.root} does not exist; build it with "
                "`mindvideo prepare --dataset hcp --root HCP_DIR --out DIR`."
            )
        index = _read_index(self.root)
        if index is None:
            raise UserError(
                f"{self.root} has no readable {INDEX}: it is not an HCP corpus or its "
                "preparation was interrupted; re-run `mindvideo prepare --dataset hcp`."
            )
        if index.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(
                f"{self.root / INDEX} has format version {index.get('format_version')}, newer "
                "than this mindvideo reads; upgrade mindvideo or re-run prepare."
            )
        self.index = index
        self.n_voxels = int(index["n_voxels"])
        self.n_voxels_padded = padded_size(self.n_voxels, patch_size, pad_mode)
        self.voxel_grayordinates = np.asarray(index["grayordinates"], np.int64)
        self._open()

    def _open(self) -> None:
        shards = []
        for entry in self.index["shards"]:
            path = self.root / entry["file"]
            if not path.is_file():
                raise UserError(
                    f"{path} is listed in {self.root / INDEX} but missing; re-run "
                    "`mindvideo prepare --dataset hcp`."
                )
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape != (entry["frames"], self.n_voxels) or arr.dtype != np.float32:
                raise UserError(
                    f"{path} is {arr.dtype} {list(arr.shape)}, not float32 "
                    f"[{entry['frames']}, {self.n_voxels}] as {INDEX} says; re-run prepare."
                )
            shards.append(arr)
        self.shards: list[np.memmap] = shards
        self.offsets = np.cumsum([0, *(s.shape[0] for s in shards)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for a corpus of {n} frames")
        i %= n
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        x = np.array(self.shards[s][i - self.offsets[s]], dtype=np.float32)  # [V], one read
        return torch.from_numpy(pad_voxels(x, self.patch_size, self.pad_mode))

    # DataLoader workers started with "spawn" pickle the dataset: send the path, not the data.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("shards", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()
