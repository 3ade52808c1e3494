"""What a pipeline folder needs to decode raw fMRI runs by itself (``fmri_input/``).

A pipeline folder written by ``mindvideo cotrain`` holds, beside its models::

    fmri_input/config.json               format_version, the normaliser (mode and fitted training
                                         statistics), the preprocessing (drop rule, detrend
                                         order, NaN policy), the TR, the window, the TR/frame
                                         pairing, and where it all came from
    fmri_input/voxel_grayordinates.npy   int32 [V]: the ROI, as indices into the 91,282 HCP
                                         grayordinates, in the encoder's voxel order
    fmri_input/train_mean.npy            float32 [V]: the training fMRI's mean TR (the
                                         ``mean-train`` negative condition)

so ``mindvideo reconstruct --checkpoint P --fmri RUN.dtseries.nii [...]`` turns CIFTI runs of
the same subject into the encoder's inputs exactly as ``mindvideo prepare`` and the datasets
did for training — drop the volumes, keep the ROI's grayordinates, detrend, z-score per vertex
(:func:`~mindvideo.data.preprocess.preprocess_run`, per vertex, so keeping the ROI first changes
nothing), normalise with the *saved* training statistics (the test side of
:class:`~mindvideo.data.datasets.FMRINormalizer`), pad — with no prepared folder. Only training
data went into any of it. A run whose grayordinates do not hold the ROI, or whose TR differs, is
one :class:`UserError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data.datasets import FMRINormalizer
from mindvideo.data.pairing import PadMode, pad_voxels, window_indices
from mindvideo.data.prepared import PreparedData
from mindvideo.pipeline.guidance import mean_fmri, negative_window
from mindvideo.utils import UserError, atomic_write_text

__all__ = ["FMRI_INPUT_DIR", "FmriInput", "RunWindows"]

logger = logging.getLogger(__name__)

FMRI_INPUT_DIR = "fmri_input"
FORMAT_VERSION = 1


@dataclass
class FmriInput:
    """How raw runs become the encoder's inputs (see the module doc).

    ``voxel_grayordinates`` and ``preprocessing`` are ``None`` when the training data did not
    come from CIFTI runs (the authors' preprocessed arrays): such a pipeline decodes prepared
    data only.
    """

    normalizer: FMRINormalizer
    train_mean: np.ndarray
    window: int
    frames_per_tr: int
    tr_s: float | None
    fps: float | None
    voxel_grayordinates: np.ndarray | None
    preprocessing: dict[str, Any] | None
    source: dict[str, Any]

    @property
    def n_voxels(self) -> int:
        return len(self.train_mean)

    @classmethod
    def from_prepared(
        cls, prepared: PreparedData, normalizer: FMRINormalizer, window: int
    ) -> FmriInput:
        """From the prepared subject a pipeline was trained on; reads the training split only."""
        m = prepared.manifest
        config = m.get("config") or {}
        raw = m.get("source") == "wen2018" and prepared.voxel_grayordinates is not None
        preprocessing = None
        if raw:
            preprocessing = {
                "drop": "wen2018",  # 245 volumes → drop (1, 4), 246 → (2, 4)
                "detrend_order": int(config.get("detrend_order", 4)),
                "nan_policy": str(config.get("nan_policy", "raise")),
            }
        return cls(
            normalizer=normalizer,
            train_mean=mean_fmri(prepared.fmri_train).astype(np.float32),
            window=int(window),
            frames_per_tr=prepared.frames_per_tr,
            tr_s=float(m["tr_s"]) if "tr_s" in m else None,
            fps=float(m["fps"]) if "fps" in m else None,
            voxel_grayordinates=(
                np.asarray(prepared.voxel_grayordinates, dtype=np.int32) if raw else None
            ),
            preprocessing=preprocessing,
            source={
                "prepared": str(prepared.root) if prepared.root is not None else None,
                "dataset": m.get("source"),
                "subject": prepared.subject,
                "grayordinates": m.get("grayordinates"),
            },
        )

    # ------------------------------------------------------------------ saving and loading
    def save(self, pipeline_dir: str | os.PathLike) -> Path:
        """Write ``fmri_input/`` into a pipeline folder; returns it."""
        folder = Path(pipeline_dir) / FMRI_INPUT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "train_mean.npy", self.train_mean.astype(np.float32))
        if self.voxel_grayordinates is not None:
            np.save(folder / "voxel_grayordinates.npy", self.voxel_grayordinates)
        config = {
            "format_version": FORMAT_VERSION,
            "what": "how raw fMRI runs become this pipeline's encoder inputs (training data only)",
            "normalizer": self.normalizer.state_dict(),
            "n_voxels": self.n_voxels,
            "window": self.window,
            "pairing": {
                "frames_per_tr": self.frames_per_tr,
                "tr_s": self.tr_s,
                "fps": self.fps,
                "rule": "the window of TR t is TRs t .. t + window - 1 (the last TR repeats at "
                "the end of a run); its clip shows the frames of TR t",
            },
            "preprocessing": self.preprocessing,
            "roi": None if self.voxel_grayordinates is None else "voxel_grayordinates.npy",
            "source": self.source,
        }
        atomic_write_text(folder / "config.json", json.dumps(config, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, pipeline_dir: str | os.PathLike) -> FmriInput:
        """Read ``fmri_input/`` of a pipeline folder (a :class:`UserError` when it has none)."""
        folder = Path(pipeline_dir) / FMRI_INPUT_DIR
        path = folder / "config.json"
        if not path.is_file():
            raise UserError(
                f"{pipeline_dir} holds no {FMRI_INPUT_DIR}/ (the normaliser, ROI and window it "
                "was trained with), so it cannot decode raw fMRI runs on its own; pass the "
                "prepared subject with --data instead, or co-train it again with this version."
            )
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"{path} is of a newer format; upgrade mindvideo to read it.")
        roi = folder / "voxel_grayordinates.npy"
        pairing = config["pairing"]
        return cls(
            normalizer=FMRINormalizer.from_state_dict(config["normalizer"]),
            train_mean=np.load(folder / "train_mean.npy", allow_pickle=False),
            window=int(config["window"]),
            frames_per_tr=int(pairing["frames_per_tr"]),
            tr_s=pairing.get("tr_s"),
            fps=pairing.get("fps"),
            voxel_grayordinates=np.load(roi, allow_pickle=False) if roi.is_file() else None,
            preprocessing=config.get("preprocessing"),
            source=config.get("source") or {},
        )

    # ------------------------------------------------------------------ raw runs
    def read_run(self, path: str | os.PathLike) -> np.ndarray:
        """One CIFTI dense time series → float32 ``[T, V]``: preprocessed as ``prepare`` did,
        the ROI's grayordinates in the encoder's order (not yet normalised or padded)."""
        from mindvideo.data import atlas
        from mindvideo.data.cifti import read_dtseries
        from mindvideo.data.preprocess import preprocess_run, volumes_to_drop

        if self.voxel_grayordinates is None or self.preprocessing is None:
            raise UserError(
                "This pipeline was trained on data that did not come from CIFTI runs (the "
                f"{self.source.get('dataset')!r} arrays), so it records no ROI on the "
                "grayordinates; decode a prepared subject with --data instead."
            )
        data, axis, tr_s = read_dtseries(path)
        if self.tr_s is not None and not math.isclose(tr_s, self.tr_s, rel_tol=1e-6):
            raise UserError(
                f"{path} has a TR of {tr_s} s but the pipeline was trained on runs with a TR of "
                f"{self.tr_s} s; pass runs recorded with the same TR."
            )
        index = atlas.grayordinate_index(axis)  # [G] → 91k index (-1: none)
        lookup = np.full(max(int(index.max()), int(self.voxel_grayordinates.max())) + 1, -1)
        valid = index >= 0
        lookup[index[valid]] = np.flatnonzero(valid)
        positions = lookup[self.voxel_grayordinates]
        missing = int(np.count_nonzero(positions < 0))
        if missing:
            raise UserError(
                f"{path} does not hold the pipeline's voxel space: {missing} of the "
                f"{self.n_voxels} ROI grayordinates it was trained on are not among the file's "
                f"{len(axis)} grayordinates (training runs had "
                f"{self.source.get('grayordinates')}); pass runs of the same subject on the "
                "same grayordinates (the *_Atlas.dtseries.nii files)."
            )
        first, last = volumes_to_drop(data.shape[0], source=str(path))
        return preprocess_run(
            data,
            positions,
            drop=(first, last),
            order=int(self.preprocessing["detrend_order"]),
            nan_policy=self.preprocessing["nan_policy"],
            source=str(path),
        )


class RunWindows:
    """The fMRI windows of raw runs, as the encoder takes them (``fmri_window(s, t)``).

    ``runs``: CIFTI files, each a segment; ``average``: one segment, the mean of the runs
    (repetitions of one stimulus, as a prepared test split averages them). Windows are
    normalised as the pipeline's test split is (:meth:`FMRINormalizer.transform`, ``"test"``)
    and padded with ``pad_mode``.
    """

    def __init__(
        self,
        fmri_input: FmriInput,
        runs: list[str],
        window: int,
        patch_size: int,
        pad_mode: PadMode,
        average: bool = False,
    ) -> None:
        if not runs:
            raise UserError("Pass at least one fMRI run (.dtseries.nii) with --fmri.")
        arrays = [fmri_input.read_run(run) for run in runs]
        lengths = {a.shape[0] for a in arrays}
        if len(lengths) > 1:
            raise UserError(
                f"The runs must have the same length (one movie segment each); got "
                f"{sorted(lengths)} volumes after dropping."
            )
        if average:
            self.fmri = [np.mean(arrays, axis=0, dtype=np.float32)]  # as prepare averages
        else:
            self.fmri = arrays
        self.runs = [str(Path(r).resolve()) for r in runs]
        self.fmri_input = fmri_input
        self.window = window
        self.patch_size = patch_size
        self.pad_mode = pad_mode
        self.n_segments = len(self.fmri)
        self.n_trs = lengths.pop()
        logger.info(
            "read %d fMRI run%s (%s), %d ROI voxels each",
            len(runs),
            "" if len(runs) == 1 else "s",
            "averaged" if average else "one segment each",
            fmri_input.n_voxels,
        )

    def fmri_window(self, segment: int, t: int) -> np.ndarray:
        """float32 ``[w, V_padded]``: normalised, padded TRs ``t .. t + w - 1`` (clamped)."""
        x = self.fmri[segment][window_indices(t, self.window, self.n_trs)]
        x = self.fmri_input.normalizer.transform(x, "test")
        return pad_voxels(x, self.patch_size, self.pad_mode)

    def negative(self, source: str, window: int) -> np.ndarray | None:
        """The negative window: ``mean-test`` the mean TR of these runs (the paper: the mean of
        the fMRI being decoded), ``mean-train`` the saved training mean, ``null`` none."""
        if source == "null":
            return None
        if source == "mean-test":
            mean, split = mean_fmri(np.stack(self.fmri)), "test"
        else:
            mean, split = self.fmri_input.train_mean.astype(np.float64), "train"
        normalizer = self.fmri_input.normalizer
        return negative_window(mean, normalizer, split, window, self.patch_size, self.pad_mode)
