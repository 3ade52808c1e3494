"""Ground-truth labels of a prepared subject, where its dataset has them.

Real Wen 2018 data has no labels. A simulated dataset ships its ground truth in ``scenes.json``
(docs/simulator.md): every scene's start time, class and motion. :func:`load_scene_labels`
labels every prepared frame with the scene on screen, so that decoders and judges can be scored
against the *true* class and motion — the ceilings of ``mindvideo baseline``, the stand-ins'
training targets and the evaluation's true-label scores. This module only reads the file; it
does not import the simulator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindvideo.data.prepared import PreparedData
from mindvideo.utils import UserError
from mindvideo.utils.freshness import sha256_file

__all__ = ["SceneLabels", "find_scenes_json", "load_scene_labels"]


@dataclass
class SceneLabels:
    """The simulator's labels of every prepared frame (docs/simulator.md, ``scenes.json``).

    ``class_id``, ``motion_id``: int64 ``[S, T, F]`` per split (index into ``classes`` /
    ``motions``). ``classes``: the 73 scene classes in id order; ``motions``: the 9 motions.
    """

    classes: list[str]
    motions: list[str]
    class_id: dict[str, np.ndarray]
    motion_id: dict[str, np.ndarray]

    def video_label(self, split: str) -> np.ndarray:
        """Class × motion label ``class_id * len(motions) + motion_id``, int64 ``[S, T, F]``."""
        return self.class_id[split] * len(self.motions) + self.motion_id[split]

    @property
    def video_labels(self) -> list[str]:
        """Names of the class × motion labels in index order (``"red circle, zoom-fast"``)."""
        return [f"{c}, {m}" for c in self.classes for m in self.motions]


def find_scenes_json(prepared: PreparedData) -> Path:
    """The simulator's ``scenes.json`` a prepared subject was made from (its manifest records
    the dataset root and the file's sha256); a :class:`UserError` when it cannot be found."""
    manifest = prepared.manifest
    root = (manifest.get("prepare_config") or manifest.get("config") or {}).get("root")
    if root and (Path(root) / "scenes.json").is_file():
        return Path(root) / "scenes.json"
    raise UserError(
        f"Cannot find the simulator's scenes.json for {prepared.root} (its manifest records the "
        f"dataset root {root!r}); pass scenes_json= (--scenes-json) with the file from the "
        "simulated dataset's folder."
    )


def load_scene_labels(
    prepared: PreparedData, scenes_json: str | os.PathLike | None = None
) -> SceneLabels:
    """Label every prepared frame with the scene on screen, from the simulator's ``scenes.json``.

    Frame ``j`` of TR ``t`` is shown at movie time ``2t + j/3`` s; the prepared
    ``scene_ids_{split}`` number the scenes of the split's segments (``manifest["segments"]``)
    in order. Both are checked against the file: a ``scenes.json`` of another dataset is a
    :class:`UserError` (its sha256 differs from the one the manifest records, or its scene
    times do not give the prepared scene ids).
    """
    from mindvideo.data.pairing import scene_ids_from_times

    path = Path(scenes_json) if scenes_json is not None else find_scenes_json(prepared)
    if not path.is_file():
        raise UserError(f"scenes.json {path} does not exist; pass the simulated dataset's file.")
    manifest = prepared.manifest
    recorded = (manifest.get("sources") or {}).get("scenes.json")
    if recorded is not None and sha256_file(path) != recorded:
        raise UserError(
            f"{path} is not the scenes.json {prepared.root} was prepared from (its sha256 "
            "differs from the manifest's); pass the file of the same simulated dataset."
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or "segments" not in meta or "classes" not in meta:
        raise UserError(f"{path} has no 'segments'/'classes'; it is not a simulator's scenes.json.")
    classes = [str(c) for c in meta["classes"]]
    motions = [str(m) for m in meta["motions"]]
    motion_index = {m: i for i, m in enumerate(motions)}
    names = manifest.get("segments") or {}
    fps = float(manifest.get("fps", 3.0))
    tr_s = float(manifest.get("tr_s", 2.0))
    class_id, motion_id = {}, {}
    for split in ("train", "test"):
        frames = prepared.frames(split)
        n_seg, n_tr = frames.shape[:2]
        segments = names.get(split)
        if not segments or len(segments) != n_seg:
            raise UserError(
                f"{prepared.root}/manifest.json does not name the {n_seg} {split} segments; "
                "re-run `mindvideo prepare` on the simulated dataset."
            )
        ids, cls, mot, offset = [], [], [], 0
        for name in segments:
            scenes = meta["segments"].get(name)
            if not scenes:
                raise UserError(f"{path} has no scenes for segment {name}; pass the right file.")
            local = scene_ids_from_times(
                [s["start_s"] for s in scenes], n_tr, fps=fps, tr_s=tr_s, source_fps=meta.get("fps")
            )  # [T, F] index into this segment's scenes
            cls.append(np.array([int(s["class_id"]) for s in scenes])[local])
            mot.append(np.array([motion_index[s["motion"]] for s in scenes])[local])
            ids.append(local + offset)
            offset += len(scenes)
        stored = prepared.scene_ids(split)
        if stored is not None and not np.array_equal(np.asarray(stored), np.stack(ids)):
            raise UserError(
                f"The scene times in {path} do not give the scene ids of {prepared.root} "
                f"({split}); pass the scenes.json of the dataset it was prepared from."
            )
        class_id[split] = np.stack(cls).astype(np.int64)
        motion_id[split] = np.stack(mot).astype(np.int64)
    return SceneLabels(classes, motions, class_id, motion_id)
