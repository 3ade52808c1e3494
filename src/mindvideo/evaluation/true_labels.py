"""The true labels of a reconstruction folder's ground truth, in the judges' label spaces.

Simulated data knows what every frame shows (``scenes.json``, :mod:`mindvideo.data.labels`).
``mindvideo evaluate`` uses it to score reconstructions against the *true* class (mode ``true``)
and the judges against the ground truth (``{level}_judge_accuracy``). A window's frame labels are
the prepared frames' classes over its ``frame_trs`` (the rows of ``ground_truth.npy``); its video
label is the class × motion of the clip's middle frame. Labels reach a classifier's space by
*name* through its ``labels`` (``id2label``): the identity for the simulator's stand-ins, no match
for an ImageNet / Kinetics model, whose level is then left without true-label scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data.labels import SceneLabels, find_scenes_json, load_scene_labels
from mindvideo.data.pairing import window_indices
from mindvideo.data.prepared import PreparedData
from mindvideo.utils import UserError

__all__ = ["WindowLabels", "map_labels", "window_labels"]

logger = logging.getLogger(__name__)


@dataclass
class WindowLabels:
    """True labels of the windows in the classifiers' spaces (None: not available) and the
    ``meta["true_labels"]`` record ``{"source", "frame", "video"}``."""

    frame: np.ndarray | None = None  # [S, F] int64
    video: np.ndarray | None = None  # [S] int64
    source: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "frame": self.frame is not None,
            "video": self.video is not None,
        }


def _open_labels(data: str | None, scenes_json: str | None) -> tuple[SceneLabels, Path] | None:
    """The prepared data's scene labels and the ``scenes.json`` they came from; None (logged)
    when the data has none. An explicit ``scenes_json`` that fails raises its UserError."""
    if not data:
        if scenes_json is not None:
            raise UserError(
                f"scenes_json={scenes_json} was given but the reconstruction's index.json records "
                "no prepared data folder (settings.data) to label."
            )
        logger.info("No true labels: the reconstruction records no prepared data folder.")
        return None
    if scenes_json is not None:
        return load_scene_labels(PreparedData.open(data), scenes_json), Path(scenes_json)
    try:
        prepared = PreparedData.open(data)
        path = find_scenes_json(prepared)
    except UserError as err:
        logger.info("No true labels for the ground truth, so no true-label scores: %s", err)
        return None
    try:
        return load_scene_labels(prepared, path), path
    except UserError as err:
        logger.warning("Skipping the true-label scores: %s", err)
        return None


def _frame_index(
    windows: list[dict[str, Any]], shape: tuple[int, ...], n_frames: int
) -> tuple[np.ndarray, ...] | None:
    """Where the rows of ``ground_truth.npy`` come from in prepared ``[S, T, F]`` arrays: index
    arrays ``(segment, TR, frame)``, each ``[n_windows, n_frames]`` (a window's frames over its
    ``frame_trs``); None (logged) when the windows do not fit the data."""
    n_seg, n_trs, per_tr = shape
    rows = []
    for w in windows:
        seg, tr = int(w["segment"]), int(w["tr"])
        trs = w.get("frame_trs")
        if trs is None and 0 <= tr < n_trs:  # an older index.json: consecutive TRs
            trs = window_indices(tr, max(1, n_frames // per_tr), n_trs).tolist()
        if not (trs and 0 <= seg < n_seg and all(0 <= t < n_trs for t in trs)):
            logger.warning(
                "Skipping the true-label scores: window (segment %d, TR %d) is outside the "
                "prepared data's %d segments × %d TRs.",
                seg,
                tr,
                n_seg,
                n_trs,
            )
            return None
        rows.append([(seg, t, j) for t in trs for j in range(per_tr)])
    if any(len(r) != n_frames for r in rows):
        logger.warning(
            "Skipping the true-label scores: the windows' frame_trs do not give the %d frames "
            "of each ground-truth clip.",
            n_frames,
        )
        return None
    where = np.asarray(rows, dtype=np.int64).reshape(len(rows), n_frames, 3)
    return where[..., 0], where[..., 1], where[..., 2]


def map_labels(ids: np.ndarray, names: list[str], model: Any, level: str) -> np.ndarray | None:
    """Label indices ``ids`` into ``names`` → indices into ``model.labels`` by name; None (with a
    warning saying why) when the model has no class names or lacks some of the needed ones."""
    if model is None:
        return None
    model_names = getattr(model, "labels", None)
    if not model_names:
        logger.warning(
            "No %s true-label scores: the %s classifier has no class names (id2label) to match "
            "the simulator's labels with.",
            level,
            level,
        )
        return None
    index = {name: i for i, name in enumerate(model_names)}
    needed = [names[i] for i in np.unique(ids)]
    missing = [name for name in needed if name not in index]
    if missing:
        logger.warning(
            "No %s true-label scores: %d of the %d true labels (e.g. %r) are not among the %s "
            "classifier's class names (e.g. %r); it was not trained on the simulator's labels.",
            level,
            len(missing),
            len(needed),
            missing[0],
            level,
            model_names[0],
        )
        return None
    lookup = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    return lookup[ids]


def window_labels(
    index: dict[str, Any],
    n_frames: int,
    scenes_json: str | None,
    frame_model: Any = None,
    video_model: Any = None,
) -> WindowLabels:
    """The true labels of a reconstruction folder's windows (``index``: its ``index.json``,
    ``n_frames``: frames per ground-truth clip) in the frame and video classifiers' spaces."""
    if frame_model is None and video_model is None:
        return WindowLabels()
    found = _open_labels((index.get("settings") or {}).get("data"), scenes_json)
    if found is None:
        return WindowLabels()
    labels, path = found
    split = index.get("split") or "test"
    windows = list(index.get("windows", []))
    where = _frame_index(windows, labels.class_id[split].shape, n_frames)
    if where is None:
        return WindowLabels(source=str(path.resolve()))
    frame = map_labels(labels.class_id[split][where], labels.classes, frame_model, "frame")
    middle = labels.video_label(split)[where][:, n_frames // 2]
    video = map_labels(middle, labels.video_labels, video_model, "video")
    return WindowLabels(frame, video, str(path.resolve()))
