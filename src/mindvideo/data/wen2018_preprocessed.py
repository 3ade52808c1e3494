"""Stage 1 for the authors' preprocessed Wen 2018 arrays (``--dataset wen2018-preprocessed``).

:func:`prepare_wen2018_preprocessed` copies the arrays MinD-Video's authors released
(``video_{train,test}_256_3hz.npy``, ``text_...``, ``fmri_{train,test}_subjectN.npy``,
``test_seg_id_3hz.npy``, read by :func:`mindvideo.data.prepared.load_authors_arrays`) into the
prepared directory :func:`mindvideo.data.wen2018.prepare_wen2018` writes from the raw data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mindvideo.data.prepared import (
    find_authors_file,
    hash_inputs,
    is_up_to_date,
    load_authors_arrays,
    write_prepared,
)
from mindvideo.data.wen2018 import PREPARE_VERSION, check_prepare_config
from mindvideo.utils import UserError
from mindvideo.utils.timing import timed

if TYPE_CHECKING:
    from mindvideo.config import PrepareConfig

# A child of the Wen 2018 preparation's logger: configuring that one configures both.
log = logging.getLogger("mindvideo.data.wen2018.preprocessed")

__all__ = ["prepare_wen2018_preprocessed"]


def _authors_files(root: Path, subject: int, fps: int, size: int) -> list[Path]:
    names = [
        *(f"video_{s}_{size}_{fps}hz.npy" for s in ("train", "test")),
        *(f"text_{s}_{size}_{fps}hz.npy" for s in ("train", "test")),
        *(f"fmri_{s}_subject{subject}.npy" for s in ("train", "test")),
        f"test_seg_id_{fps}hz.npy",
    ]
    return [find_authors_file(root, name) for name in names]


def _check_finite_fmri(data: Any, root: Path, subject: int, nan_policy: str) -> None:
    """Voxels with a NaN or Inf anywhere in the authors' fMRI arrays: a :class:`UserError`
    naming the file, or with ``nan_policy="zero"`` those voxels set to 0 in ``data`` (logged),
    as raw runs are treated (:func:`mindvideo.data.preprocess.preprocess_run`)."""
    for split in ("train", "test"):
        fmri = getattr(data, f"fmri_{split}")  # [S, T, V]
        finite = np.isfinite(fmri).all(axis=tuple(range(fmri.ndim - 1)))  # [V]
        n_bad = int(finite.size - np.count_nonzero(finite))
        if not n_bad:
            continue
        path = find_authors_file(root, f"fmri_{split}_subject{subject}.npy")
        if nan_policy == "raise":
            raise UserError(
                f"{path} has {n_bad} of {finite.size} voxels with NaN or Inf values; fix the "
                "file, or set nan_policy to 'zero' to set those voxels to 0."
            )
        log.warning("%s: %d voxels with NaN or Inf values set to 0", path, n_bad)
        setattr(data, f"fmri_{split}", np.where(finite, fmri, 0).astype(fmri.dtype, copy=False))


def prepare_wen2018_preprocessed(
    cfg: PrepareConfig, out: str | os.PathLike, *, timings: dict[str, float] | None = None
) -> Path:
    """Copy the authors' preprocessed arrays of ``cfg.subject`` (in ``cfg.root`` or
    ``cfg.root/preprocessed``) into a prepared directory; returns ``out``.

    Files: ``video_{train,test}_{frame_size}_{fps}hz.npy``, ``text_...``,
    ``fmri_{train,test}_subjectN.npy``, ``test_seg_id_{fps}hz.npy`` (see
    :func:`mindvideo.data.prepared.load_authors_arrays`). The arrays carry no grayordinate
    information, so there is no ``roi_mask.npy`` and no ``voxel_grayordinates.npy`` (attention
    maps cannot be projected onto the brain), and no scene ids (the datasets estimate them from
    the frames). Idempotent like :func:`mindvideo.data.wen2018.prepare_wen2018`.
    """
    check_prepare_config(cfg)
    times = timings if timings is not None else {}
    start = time.perf_counter()
    root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise UserError(f"{root} does not exist; pass the folder of the authors' arrays as --root.")
    if not float(cfg.fps).is_integer():
        raise UserError(f"The authors' arrays are named by a whole fps (3hz), not {cfg.fps}.")
    fps = int(cfg.fps)
    data = load_authors_arrays(root, cfg.subject, fps=fps, size=int(cfg.frame_size))
    _check_finite_fmri(data, root, int(cfg.subject), cfg.nan_policy)
    files = _authors_files(root, int(cfg.subject), fps, int(cfg.frame_size))
    config = {
        "prepare_version": PREPARE_VERSION,
        "dataset": cfg.dataset,
        "subject": int(cfg.subject),
        "fps": fps,
        "frame_size": int(cfg.frame_size),
    }
    if cfg.nan_policy != "raise":  # only then: earlier directories stay up to date
        config["nan_policy"] = cfg.nan_policy
    with timed(times, "hash"):
        inputs = {"sources": hash_inputs(files, root), "config": config}
    if is_up_to_date(out, inputs):
        log.info("%s is up to date (same inputs and config): nothing to do", out)
        return Path(out)
    with timed(times, "write"):
        write_prepared(
            data,
            out,
            inputs,
            source="wen2018-preprocessed",
            root=str(root),
            subject=int(cfg.subject),
            prepare_config=dataclasses.asdict(cfg),
        )
    times["total"] = time.perf_counter() - start
    log.info("copied the authors' arrays of subject %d to %s", cfg.subject, out)
    return Path(out)
