"""The on-disk format of a prepared subject: written by ``mindvideo prepare``, read by every stage.

A prepared subject is a directory::

    fmri_train.npy        float32 [S_train, T, V]            z-scored ROI voxels, T = 240
    fmri_test.npy         float32 [S_test, T, V]             repetitions averaged, or
                                  [S_test, R, T, V]          each repetition kept
    frames_train.npy      uint8   [S_train, T, F, H, W, 3]   F = 6 frames per TR (3 FPS, TR 2 s)
    frames_test.npy       uint8   [S_test, T, F, H, W, 3]
    captions_train.json   [S_train][T][F] strings            (json, never pickled objects)
    captions_test.json    [S_test][T][F] strings
    roi_mask.npy          bool    [G]                        the ROI over the subject's
                                                             grayordinates, in file order
    voxel_grayordinates.npy int32 [V]                        optional: index into the 91,282
                                                             HCP grayordinates of each voxel
    scene_ids_train.npy   int32   [S_train, T, F]            optional: scene of every frame,
    scene_ids_test.npy    int32   [S_test, T, F]             unique within a split
    test_seg_id.npy       int     [S_test, T]                optional (the authors' arrays)
    manifest.json         what is there: shapes, dtypes, voxel count, source files with
                          sha256 hashes, volumes dropped, config, format version

Every file is written atomically (temp file + rename); large arrays are written incrementally
into a memory map (:meth:`PreparedWriter.open_array`), so frames never need to fit in memory.
``manifest.json`` is written last and removed first when a directory is rewritten: a directory
without it is incomplete. ``mindvideo prepare`` stages the whole directory beside its destination
(``PreparedWriter(out, staged=True)``) and moves the files in only once all of them are written
and checked, so a failed preparation leaves no output (or the earlier one untouched).
:meth:`PreparedData.open` memory-maps everything read-only.

The authors' preprocessed arrays (``video_{train,test}_256_3hz.npy``, ``text_...``,
``fmri_{train,test}_subjectN.npy``, ``test_seg_id_3hz.npy``) open the same way with
:func:`load_authors_arrays`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.utils import UserError, atomic_path, atomic_write_text
from mindvideo.utils.freshness import (
    StagedFolder,
    fingerprint,
    jsonable,
    sha256_file,
    stale_fields,
    write_marker,
)
from mindvideo.utils.io import open_memmap_allocated, read_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
REQUIRED_ARRAYS = ("fmri_train", "fmri_test", "frames_train", "frames_test")
OPTIONAL_ARRAYS = (
    "roi_mask",
    "voxel_grayordinates",
    "scene_ids_train",
    "scene_ids_test",
    "test_seg_id",
)


# --------------------------------------------------------------------------------------------
# Hashes of the inputs
# --------------------------------------------------------------------------------------------


def relative_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (posix), as the manifests name input files; the full path
    when it lies outside ``root``."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def hash_sources(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict[str, str]:
    """``{relative_key(path): sha256}`` of every input file (a relative path is taken under
    ``root``), with a progress bar. Two files are hashed at a time (hashlib releases the GIL on
    large blocks, so both cores work)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    root = Path(root)
    paths = sorted(Path(p) if Path(p).is_absolute() else root / p for p in paths)
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        digests = list(
            tqdm(
                pool.map(sha256_file, paths),
                total=len(paths),
                desc="hashing inputs",
                unit="file",
                disable=None if len(paths) >= 8 else True,
            )
        )
    return dict(sorted((relative_key(p, root), d) for p, d in zip(paths, digests, strict=True)))


def hash_inputs(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict[str, str]:
    """:func:`hash_sources` of files found on disk (a relative path is taken under the working
    directory, as a dataset finder returns them for a relative ``root``)."""
    return hash_sources([Path(p).resolve() for p in paths], root)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class PreparedWriter:
    """Writes a prepared-subject directory, one atomic file at a time, manifest last.

    Unstaged (the default), files go straight into ``out_dir`` and creating the writer removes an
    existing ``manifest.json`` there first, so an interrupted rewrite leaves a directory that
    :meth:`PreparedData.open` rejects as incomplete. With ``staged=True`` every file is written
    into a :class:`~mindvideo.utils.freshness.StagedFolder` beside it instead (``root``);
    :meth:`finish` moves them into ``out_dir`` only once all are written and checked, and
    :meth:`abort` (or leaving the ``with`` block without :meth:`finish`) deletes them: a failed
    run leaves ``out_dir`` as it was (or absent).

    Example::

        with PreparedWriter(out, staged=True) as w:
            with w.open_array("frames_train", (S, 240, 6, 256, 256, 3), np.uint8) as frames:
                for s in range(S):
                    frames[s] = decode_segment(s)      # written segment by segment
            w.write_array("fmri_train", fmri_train)
            w.write_captions("train", captions)        # [S][240][6] strings
            w.finish(inputs={"sources": hashes, "config": cfg}, volumes_dropped={...})
    """

    def __init__(self, out_dir: str | os.PathLike, *, staged: bool = False) -> None:
        self.out = Path(out_dir)
        self.staged = staged
        self._stage: StagedFolder | None = None
        if staged:
            self._stage = StagedFolder(self.out, marker=MANIFEST)
            self.root = self._stage.root
        else:
            self.root = self.out
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / MANIFEST).unlink(missing_ok=True)
        self._arrays: dict[str, dict[str, Any]] = {}
        self._captions: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def abort(self) -> None:
        """Delete what a staged writer has written and not published (nothing in ``out_dir``
        changes); a no-op after :meth:`finish` and for an unstaged writer."""
        if self._stage is not None:
            self._stage.abort()

    @contextlib.contextmanager
    def open_array(
        self, name: str, shape: Sequence[int], dtype: Any
    ) -> Iterator[np.memmap[Any, Any]]:
        """A writable memory map of ``name.npy``; it appears under its name when the block ends.

        On an exception the temporary file is removed and no array is recorded.
        """
        _check_name(name)
        shape = tuple(int(s) for s in shape)
        path = self.root / f"{name}.npy"
        with atomic_path(path) as tmp:
            arr = open_memmap_allocated(tmp, np.dtype(dtype), shape)
            yield arr
            arr.flush()
            del arr
        self._arrays[name] = {
            "file": path.name,
            "shape": list(shape),
            "dtype": np.dtype(dtype).str,
        }

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Write a whole array (copied slice by slice along its first axis)."""
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        with self.open_array(name, array.shape, array.dtype) as out:
            if array.ndim == 0:
                out[...] = array
            for i in range(array.shape[0] if array.ndim else 0):
                out[i] = array[i]

    def write_captions(self, split: str, captions: Sequence[Sequence[Sequence[str]]]) -> None:
        """Write ``captions_{split}.json``: ``[S][T][F]`` strings."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        caps = _captions_to_lists(captions, f"captions_{split}")
        path = self.root / f"captions_{split}.json"
        atomic_write_text(path, json.dumps(caps, ensure_ascii=False))
        self._captions[split] = {"file": path.name, "shape": _nested_shape(caps)}

    def finish(self, inputs: Mapping[str, Any] | None = None, **info: Any) -> dict[str, Any]:
        """Check the arrays are consistent and write ``manifest.json``; returns the manifest.

        ``inputs`` (e.g. ``{"sources": {file: sha256}, "config": {...}}``) are stored at the top
        level of the manifest and are what :func:`is_up_to_date` compares on a re-run. ``info``
        adds any other JSON-able fields (``subject``, ``volumes_dropped``, ...).
        """
        missing = [n for n in REQUIRED_ARRAYS if n not in self._arrays]
        if missing:
            raise UserError(
                f"Prepared directory {self.out} is missing {', '.join(missing)}; write every "
                "required array before finish()."
            )
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "n_voxels": self._arrays["fmri_train"]["shape"][-1],
            "arrays": dict(sorted(self._arrays.items())),
            "captions": dict(sorted(self._captions.items())),
        }
        for key, value in {**(inputs or {}), **info}.items():
            if key in manifest:
                raise ValueError(f"manifest field {key!r} is reserved")
            manifest[key] = value
        manifest = jsonable(manifest)
        # Validate the finished directory the way readers will see it before publishing it.
        data = PreparedData._from_manifest(self.root, manifest)
        _validate(data, str(self.out))
        del data
        if self._stage is not None:  # the staged files move in, the manifest follows them
            self._stage.publish()
        write_marker(self.out / MANIFEST, manifest)
        logger.info("wrote prepared subject %s (%d voxels)", self.out, manifest["n_voxels"])
        return manifest


def _check_name(name: str) -> None:
    if name not in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
        raise ValueError(
            f"unknown prepared array {name!r}; expected one of {REQUIRED_ARRAYS + OPTIONAL_ARRAYS}"
        )


def _captions_to_lists(captions: Any, where: str) -> list[list[list[str]]]:
    if isinstance(captions, np.ndarray):
        if captions.dtype.kind == "S":
            captions = np.char.decode(captions, "utf-8")
        captions = captions.tolist()
    out = [[[str(c) for c in tr] for tr in seg] for seg in captions]
    _nested_shape(out, where)
    return out


def _nested_shape(caps: Sequence[Sequence[Sequence[str]]], where: str = "captions") -> list[int]:
    """``[S, T, F]`` of a nested caption list; a UserError if it is ragged."""
    n_seg = len(caps)
    n_tr = {len(seg) for seg in caps}
    n_f = {len(tr) for seg in caps for tr in seg}
    if len(n_tr) > 1 or len(n_f) > 1:
        raise UserError(
            f"{where} is ragged (TRs per segment {sorted(n_tr)}, captions per TR {sorted(n_f)}); "
            "every segment needs the same number of TRs and every TR one caption per frame."
        )
    return [n_seg, n_tr.pop() if n_tr else 0, n_f.pop() if n_f else 0]


def write_prepared(
    data: PreparedData,
    out_dir: str | os.PathLike,
    inputs: Mapping[str, Any] | None = None,
    **info: Any,
) -> PreparedData:
    """Copy any :class:`PreparedData` (e.g. the authors' arrays) into a prepared directory,
    segment by segment; returns the opened result."""
    from tqdm.auto import tqdm

    with PreparedWriter(out_dir, staged=True) as w:
        names = [n for n in REQUIRED_ARRAYS + OPTIONAL_ARRAYS if getattr(data, n) is not None]
        for name in tqdm(
            names, desc="writing prepared arrays", unit="array", disable=len(names) < 4
        ):
            w.write_array(name, getattr(data, name))
        for split in SPLITS:
            caps = getattr(data, f"captions_{split}")
            if caps is not None:
                w.write_captions(split, caps)
        extra = {k: v for k, v in data.manifest.items() if k not in _RESERVED}
        w.finish(inputs, **{**extra, **info})
    return PreparedData.open(out_dir)


_RESERVED = ("format_version", "n_voxels", "arrays", "captions")

TRAIN_ARRAYS = ("fmri_train", "frames_train", "scene_ids_train")
"""The arrays of a prepared subject indexed by training segment first."""


def write_first_segments(
    source: str | os.PathLike, out_dir: str | os.PathLike, segments: int
) -> PreparedData:
    """A prepared subject that has only the first ``segments`` training segments of ``source``
    (a subject with less data: a new subject's few recordings, a learning curve); its test
    split, voxels and ROI are ``source``'s, unchanged. The manifest records the source's
    fingerprint and the count (``first_segments``); returns the opened result.

    The voxels are those ``source``'s ROI chose from all its training segments: the cut
    subject's scores are those of the same voxels with fewer training segments."""
    data = PreparedData.open(source)
    available = int(data.fmri_train.shape[0])
    if not 1 <= segments <= available:
        raise UserError(
            f"{source} has {available} training segments: segments must be 1 to {available}, "
            f"not {segments}."
        )
    with PreparedWriter(out_dir, staged=True) as w:
        for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
            array = getattr(data, name)
            if array is not None:
                w.write_array(name, array[:segments] if name in TRAIN_ARRAYS else array)
        for split in SPLITS:
            caps = data.captions(split)
            if caps is not None:
                w.write_captions(split, caps[:segments] if split == "train" else caps)
        extra = {k: v for k, v in data.manifest.items() if k not in _RESERVED}
        for key in ("segments", "repetitions"):  # per-segment records of the layout
            if isinstance(extra.get(key), dict) and isinstance(extra[key].get("train"), list):
                extra[key] = {**extra[key], "train": extra[key]["train"][:segments]}
        if isinstance(extra.get("n_scenes"), dict) and data.scene_ids_train is not None:
            scenes = int(np.unique(np.asarray(data.scene_ids_train[:segments])).size)
            extra["n_scenes"] = {**extra["n_scenes"], "train": scenes}
        cut = {"source": data_fingerprint(data), "segments": int(segments)}
        w.finish(None, **{**extra, "first_segments": cut})
    return PreparedData.open(out_dir)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedData:
    """A prepared subject, arrays memory-mapped read-only (``PreparedData.open(dir)``).

    ``fmri_*: [S, T, V]`` (``fmri_test`` may be ``[S, R, T, V]``), ``frames_*:
    [S, T, F, H, W, 3]`` uint8, ``captions_*``: ``[S][T][F]`` lists of str or ``None``,
    ``roi_mask: [G]`` bool or ``None``, ``scene_ids_*: [S, T, F]`` int32 or ``None``.
    """

    root: Path | None
    manifest: dict[str, Any]
    fmri_train: np.ndarray
    fmri_test: np.ndarray
    frames_train: np.ndarray
    frames_test: np.ndarray
    captions_train: list[list[list[str]]] | None = None
    captions_test: list[list[list[str]]] | None = None
    roi_mask: np.ndarray | None = None
    voxel_grayordinates: np.ndarray | None = None
    scene_ids_train: np.ndarray | None = None
    scene_ids_test: np.ndarray | None = None
    test_seg_id: np.ndarray | None = None

    @classmethod
    def open(cls, root: str | os.PathLike) -> PreparedData:
        """Open a prepared directory; a :class:`UserError` if it is missing or incomplete."""
        root = Path(root)
        if not root.is_dir():
            raise UserError(
                f"Prepared data directory {root} does not exist; run `mindvideo prepare` first "
                "or pass the directory it wrote."
            )
        manifest = _read_manifest(root)
        data = cls._from_manifest(root, manifest)
        _validate(data, str(root))
        return data

    @classmethod
    def _from_manifest(cls, root: Path, manifest: dict[str, Any]) -> PreparedData:
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(
                f"{root / MANIFEST} has format version {version!r}, but this mindvideo reads "
                f"version {FORMAT_VERSION} or older; upgrade mindvideo or re-run prepare."
            )
        arrays: dict[str, np.ndarray | None] = {}
        for name, entry in manifest.get("arrays", {}).items():
            _check_name(name)
            arrays[name] = _open_npy(root / entry["file"], entry, root)
        for name in REQUIRED_ARRAYS:
            if name not in arrays:
                raise UserError(
                    f"Prepared data directory {root} lists no {name} in its manifest; re-run "
                    "`mindvideo prepare` into a fresh directory."
                )
        captions: dict[str, Any] = {}
        for split, entry in manifest.get("captions", {}).items():
            path = root / entry["file"]
            if not path.is_file():
                raise UserError(
                    f"{path} is listed in {root / MANIFEST} but missing; the directory is "
                    "incomplete: re-run `mindvideo prepare`."
                )
            caps = json.loads(path.read_text(encoding="utf-8"))
            if _nested_shape(caps, str(path)) != list(entry["shape"]):
                raise UserError(
                    f"{path} does not have the shape {entry['shape']} its manifest records; the "
                    "directory is incomplete or was edited: re-run `mindvideo prepare`."
                )
            captions[f"captions_{split}"] = caps
        return cls(root=root, manifest=manifest, **arrays, **captions)  # type: ignore[arg-type]

    # -- pickling: reopen instead of copying the arrays -------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with "spawn" pickle the dataset: send where the data lives,
        # not gigabytes of frames, and memory-map it again on the other side.
        if self.root is not None or self.manifest.get("source") == "authors_arrays":
            return {"_reopen": True, "root": self.root, "manifest": self.manifest}
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("_reopen"):
            m = state["manifest"]
            if state["root"] is not None:
                fresh = PreparedData.open(state["root"])
            else:
                fresh = load_authors_arrays(m["root"], m["subject"], m["fps"], m["size"])
            state = fresh.__dict__
        self.__dict__.update(state)

    # -- convenience ----------------------------------------------------------------------------

    @property
    def n_voxels(self) -> int:
        """V, the number of ROI voxels (unpadded)."""
        return int(self.fmri_train.shape[-1])

    @property
    def n_trs(self) -> int:
        """T, TRs per segment (240 for Wen 2018)."""
        return int(self.fmri_train.shape[-2])

    @property
    def frames_per_tr(self) -> int:
        """F, frames paired with one TR (6 at 3 FPS and TR 2 s)."""
        return int(self.frames_train.shape[2])

    @property
    def subject(self) -> int | None:
        s = self.manifest.get("subject")
        return int(s) if s is not None else None

    def fmri(self, split: str) -> np.ndarray:
        return getattr(self, f"fmri_{_split(split)}")

    def frames(self, split: str) -> np.ndarray:
        return getattr(self, f"frames_{_split(split)}")

    def captions(self, split: str) -> list[list[list[str]]] | None:
        return getattr(self, f"captions_{_split(split)}")

    def scene_ids(self, split: str) -> np.ndarray | None:
        return getattr(self, f"scene_ids_{_split(split)}")


def _split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"Unknown split {split!r}; choose 'train' or 'test'.")
    return split


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{root} has no {MANIFEST}: it is not a prepared subject, or `mindvideo prepare` was "
            "interrupted while writing it; re-run `mindvideo prepare`."
        )
    manifest = read_json(path, "re-run `mindvideo prepare`")
    if not isinstance(manifest, dict):
        raise UserError(f"{path} does not hold a JSON object; re-run `mindvideo prepare`.")
    return manifest


def _open_npy(path: Path, entry: Mapping[str, Any], root: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(
            f"{path} is listed in {root / MANIFEST} but missing; the directory is incomplete: "
            "re-run `mindvideo prepare`."
        )
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{path} is not a readable .npy array ({exc}); re-run prepare.") from exc
    if list(arr.shape) != list(entry["shape"]) or arr.dtype != np.dtype(entry["dtype"]):
        raise UserError(
            f"{path} is {arr.dtype} {list(arr.shape)} but {root / MANIFEST} records "
            f"{np.dtype(entry['dtype'])} {entry['shape']}; the directory is incomplete or was "
            "edited: re-run `mindvideo prepare`."
        )
    return arr


def _validate(data: PreparedData, where: str) -> None:
    """Shapes agree across arrays; a UserError naming the mismatch otherwise."""

    def bad(msg: str) -> UserError:
        return UserError(f"Prepared data {where}: {msg}.")

    ftr, fte = data.fmri_train, data.fmri_test
    if ftr.ndim != 3:
        raise bad(f"fmri_train must be [segments, TRs, voxels], got shape {list(ftr.shape)}")
    if fte.ndim not in (3, 4):
        raise bad(
            "fmri_test must be [segments, TRs, voxels] or [segments, repetitions, TRs, voxels], "
            f"got shape {list(fte.shape)}"
        )
    if fte.shape[-1] != ftr.shape[-1]:
        raise bad(f"fmri_test has {fte.shape[-1]} voxels but fmri_train has {ftr.shape[-1]}")
    for split, fm in (("train", ftr), ("test", fte)):
        fr = data.frames(split)
        if fr.ndim != 6 or fr.shape[-1] != 3 or fr.dtype != np.uint8:
            raise bad(
                f"frames_{split} must be uint8 [segments, TRs, frames, H, W, 3], got {fr.dtype} "
                f"{list(fr.shape)}"
            )
        if fr.shape[0] != fm.shape[0] or fr.shape[1] != fm.shape[-2]:
            raise bad(
                f"frames_{split} has {fr.shape[0]} segments × {fr.shape[1]} TRs but fmri_{split} "
                f"has {fm.shape[0]} × {fm.shape[-2]}"
            )
        caps = data.captions(split)
        if caps is not None and _nested_shape(caps) != list(fr.shape[:3]):
            raise bad(
                f"captions_{split} is {_nested_shape(caps)} but frames_{split} is "
                f"{list(fr.shape[:3])} (segments, TRs, frames)"
            )
        sid = data.scene_ids(split)
        if sid is not None and list(sid.shape) != list(fr.shape[:3]):
            raise bad(
                f"scene_ids_{split} is {list(sid.shape)} but frames_{split} is "
                f"{list(fr.shape[:3])} (segments, TRs, frames)"
            )
    if data.roi_mask is not None:
        m = data.roi_mask
        if m.dtype != bool or m.ndim != 1 or int(m.sum()) != ftr.shape[-1]:
            raise bad(
                f"roi_mask must be a boolean [grayordinates] array with {ftr.shape[-1]} True "
                f"values (one per voxel), got {m.dtype} {list(m.shape)} with {int(m.sum())}"
            )
    vg = data.voxel_grayordinates
    if vg is not None and (
        vg.ndim != 1 or vg.shape[0] != ftr.shape[-1] or not np.issubdtype(vg.dtype, np.integer)
    ):
        raise bad(
            f"voxel_grayordinates must be an integer [{ftr.shape[-1]}] array (one grayordinate "
            f"per voxel), got {vg.dtype} {list(vg.shape)}"
        )
    if data.test_seg_id is not None and list(data.test_seg_id.shape) != [
        fte.shape[0],
        fte.shape[-2],
    ]:
        raise bad(
            f"test_seg_id must be [{fte.shape[0]}, {fte.shape[-2]}], got "
            f"{list(data.test_seg_id.shape)}"
        )


def is_up_to_date(root: str | os.PathLike, manifest_inputs: Mapping[str, Any]) -> bool:
    """True when ``root`` holds a complete prepared subject made from the same inputs.

    ``manifest_inputs`` is what was passed as ``inputs`` to :meth:`PreparedWriter.finish`, e.g.
    ``{"sources": {relative path: sha256}, "config": {...}}``; each of its keys must equal the
    manifest's field of that name (after a JSON round trip). A re-run of ``prepare`` with the
    same input files and configuration can then skip all work.
    """
    if not manifest_inputs:
        return False
    try:
        data = PreparedData.open(root)
    except UserError:
        return False
    return not stale_fields(data.manifest, manifest_inputs)


def data_fingerprint(prepared: Any) -> str:
    """sha256 of a prepared subject's manifest (it records shapes and the sha256 of every source
    file): what a cache or model made from the subject depends on."""
    return fingerprint(getattr(prepared, "manifest", None) or {})


# --------------------------------------------------------------------------------------------
# The authors' preprocessed arrays
# --------------------------------------------------------------------------------------------


def find_authors_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/preprocessed/name``; a :class:`UserError` when neither exists."""
    for folder in (root, root / "preprocessed"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"{name} was not found in {root} or {root / 'preprocessed'}; point --root at the folder "
        "holding the authors' preprocessed Wen 2018 arrays."
    )


def _load_authors_npy(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc).lower():
            raise UserError(
                f"{path} holds Python objects and can only be read with pickle, which mindvideo "
                "never uses on data files; if you trust the file, convert it once with "
                f"`python -c \"import numpy as np; a = np.load('{path}', allow_pickle=True); "
                f"np.save('{path}', a.astype(str))\"` and run again."
            ) from exc
        raise UserError(f"{path} is not a readable .npy array ({exc}).") from exc


def load_authors_arrays(
    root: str | os.PathLike, subject: int | str, fps: int = 3, size: int = 256
) -> PreparedData:
    """Open the authors' preprocessed Wen 2018 arrays as a :class:`PreparedData` (memory-mapped).

    Files, in ``root`` or ``root/preprocessed``::

        video_{train,test}_{size}_{fps}hz.npy   uint8 [S, 240, 6, size, size, 3]
        text_{train,test}_{size}_{fps}hz.npy    str   [S, 240, 6]   (captions)
        fmri_{train,test}_subject{N}.npy        float [S, 240, V]
        test_seg_id_{fps}hz.npy                       [S_test, 240]

    ``subject``: 1..3 or ``"subject1"``. Shapes are checked against each other; captions must be
    numpy string arrays (a file that needs pickle raises a :class:`UserError` saying how to
    convert it). There is no ``roi_mask`` (the arrays carry no grayordinate information).
    """
    root = Path(root)
    sub = subject if isinstance(subject, str) else f"subject{int(subject)}"
    if not sub.startswith("subject"):
        sub = f"subject{sub}"
    arrays: dict[str, Any] = {}
    for split in SPLITS:
        video = _load_authors_npy(find_authors_file(root, f"video_{split}_{size}_{fps}hz.npy"))
        text_path = find_authors_file(root, f"text_{split}_{size}_{fps}hz.npy")
        text = _load_authors_npy(text_path, mmap=False)
        fmri_path = find_authors_file(root, f"fmri_{split}_{sub}.npy")
        fmri = _load_authors_npy(fmri_path)
        if video.ndim != 6 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise UserError(
                f"video_{split}_{size}_{fps}hz.npy should be uint8 [segments, TRs, frames, H, W, "
                f"3], got {video.dtype} {list(video.shape)}; use the authors' unmodified file."
            )
        if text.shape != video.shape[:3] or text.dtype.kind not in "US":
            raise UserError(
                f"{text_path.name} should be a string array of shape {list(video.shape[:3])} "
                f"(segments, TRs, frames, matching the video), got {text.dtype} "
                f"{list(text.shape)}."
            )
        if fmri.ndim != 3 or fmri.shape[:2] != video.shape[:2]:
            raise UserError(
                f"{fmri_path.name} should be [segments, TRs, voxels] with {list(video.shape[:2])} "
                f"segments × TRs like the video, got {list(fmri.shape)}."
            )
        if fmri.dtype.kind != "f":
            raise UserError(f"{fmri_path.name} should hold floats, got {fmri.dtype}.")
        arrays[f"frames_{split}"] = video
        arrays[f"captions_{split}"] = _captions_to_lists(text, text_path.name)
        arrays[f"fmri_{split}"] = fmri
    if arrays["fmri_train"].shape[-1] != arrays["fmri_test"].shape[-1]:
        raise UserError(
            f"fmri_train_{sub}.npy has {arrays['fmri_train'].shape[-1]} voxels but "
            f"fmri_test_{sub}.npy has {arrays['fmri_test'].shape[-1]}; use files of one subject."
        )
    seg_path = find_authors_file(root, f"test_seg_id_{fps}hz.npy")
    seg_id = _load_authors_npy(seg_path)
    if seg_id.shape != arrays["fmri_test"].shape[:2]:
        raise UserError(
            f"{seg_path.name} should be [{arrays['fmri_test'].shape[0]}, "
            f"{arrays['fmri_test'].shape[1]}] (test segments × TRs), got {list(seg_id.shape)}."
        )
    arrays["test_seg_id"] = seg_id
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": "authors_arrays",
        "root": str(root),
        "subject": int(sub.removeprefix("subject")) if sub[7:].isdigit() else sub,
        "n_voxels": int(arrays["fmri_train"].shape[-1]),
        "fps": fps,
        "size": size,
    }
    data = PreparedData(root=None, manifest=manifest, **arrays)
    _validate(data, str(root))
    return data
