"""A new subject's prepared data, seen through its subject adapter in the shared voxel space.

``mindvideo reconstruct adapter=DIR --data NEW`` (and ``mindvideo adapt``'s scores) read the
new subject's prepared folder through the :class:`~mindvideo.encoder.subjects.SubjectAdapter`
that ``mindvideo adapt`` fitted: its fMRI, every TR mapped into the voxel space of the subject the
pipeline was trained on; its frames, captions and scenes unchanged. Every part that reads a
prepared subject (the windows of the fMRI encoder, its normaliser, the low-level decoder, the
linear condition) then works on the new subject as it does on the reference. The training split
is the adapter's own training segments: the new subject has no others.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mindvideo.data.prepared import PreparedData
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.utils import UserError

__all__ = ["ADAPTER_DIR", "adapter_folder", "aligned_data", "load_adapter", "segment_rows"]

ADAPTER_DIR = "adapter"
"""The adapter's folder inside ``mindvideo adapt``'s output."""


def adapter_folder(path: str | os.PathLike) -> Path:
    """The adapter's ``save_pretrained`` folder: ``path`` itself or ``path/adapter`` (the output
    of ``mindvideo adapt``)."""
    path = Path(path)
    for folder in (path, path / ADAPTER_DIR):
        if (folder / "config.json").is_file():
            return folder
    raise UserError(
        f"{path} holds no subject adapter (config.json in it or in {ADAPTER_DIR}/); pass the "
        "output folder of `mindvideo adapt`."
    )


def load_adapter(path: str | os.PathLike) -> SubjectAdapter:
    """Load a subject adapter for inference (CPU, float32, eval mode)."""
    return SubjectAdapter.from_pretrained(adapter_folder(path)).eval().requires_grad_(False)


def segment_rows(segments: list[int]) -> slice | list[int]:
    """Index rows ``segments`` of an array: a slice when they are consecutive (a view of a
    memory-mapped array, nothing read), else the list."""
    if segments and segments == list(range(segments[0], segments[-1] + 1)):
        return slice(segments[0], segments[-1] + 1)
    return list(segments)


def aligned_data(prepared: PreparedData, adapter: SubjectAdapter) -> PreparedData:
    """``prepared`` in the adapter's shared space: fMRI of both splits mapped TR by TR (float32,
    in memory), the training split cut to the adapter's training segments; frames, captions and
    scenes as they are. A :class:`UserError` if the voxel count is not the adapter's."""
    c = adapter.config
    if prepared.n_voxels != c.in_voxels:
        raise UserError(
            f"The subject adapter maps {c.in_voxels} voxels but {prepared.root} has "
            f"{prepared.n_voxels}; use the adapter that `mindvideo adapt` fitted on this "
            "subject's prepared data."
        )
    segments = [int(s) for s in c.segments] or list(range(prepared.fmri_train.shape[0]))
    if max(segments) >= prepared.fmri_train.shape[0]:
        raise UserError(
            f"The subject adapter was fitted on training segments {segments}, but "
            f"{prepared.root} has only {prepared.fmri_train.shape[0]}."
        )
    rows = segment_rows(segments)

    def cut(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[rows]

    captions = prepared.captions_train
    named = prepared.manifest.get("segments")
    if isinstance(named, dict) and isinstance(named.get("train"), list):
        named = {**named, "train": [named["train"][s] for s in segments]}
    manifest = {
        **prepared.manifest,
        **({"segments": named} if named is not None else {}),
        "n_voxels": int(c.out_voxels),
        "aligned": {"adapter": c.subject, "reference": c.reference, "segments": segments},
    }
    return dataclasses.replace(
        prepared,
        root=None,
        manifest=manifest,
        fmri_train=adapter.transform(prepared.fmri_train[rows]),
        fmri_test=adapter.transform(prepared.fmri_test),
        frames_train=prepared.frames_train[rows],
        captions_train=None if captions is None else [captions[s] for s in segments],
        scene_ids_train=cut(prepared.scene_ids_train),
        voxel_grayordinates=None,
        roi_mask=None,
    )
