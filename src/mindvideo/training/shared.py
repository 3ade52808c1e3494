"""Training one model on several subjects: their adapters and their pooled training data.

``mindvideo contrast --data S1 S2 S3`` (config keys ``data: S1``, ``subjects: [S2, S3]``) trains
one fMRI encoder on every subject (:mod:`mindvideo.pipeline.shared`): S1 is the reference, whose
voxel space is shared, and each further subject is mapped into it by a
:class:`~mindvideo.encoder.subjects.SubjectAdapter` fitted here, in closed form, as ``mindvideo
adapt`` fits one (ridge with surface-local and global stages, penalties cross-validated over
whole segments) but on all training segments. The adapters are saved beside the encoder
(``OUT/subjects/``); ``mindvideo cotrain`` with the same ``--data`` reads them from there, so the
encoder and the generator see every subject through the same maps, and the pipeline folder keeps
them for ``reconstruct --subject``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mindvideo.config.stages import AdaptConfig
from mindvideo.data.prepared import PreparedData, data_fingerprint
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.shared import (
    SharedSubject,
    load_subjects,
    pooled_data,
    subject_name,
)
from mindvideo.training.adapt import _voxel_r, fit_subject_adapter
from mindvideo.utils import UserError

logger = logging.getLogger(__name__)

__all__ = ["SharedData", "open_subjects", "subjects_folder"]


@dataclasses.dataclass
class SharedData:
    """The subjects of a shared model and its training data."""

    reference: PreparedData
    subjects: list[SharedSubject]
    """Every subject, the reference first (its adapter ``None``)."""
    pooled: PreparedData
    """:func:`~mindvideo.pipeline.shared.pooled_data` of them."""


def subjects_folder(*candidates: str | os.PathLike | None) -> Path | None:
    """The first of ``candidates`` that holds ``subjects/subjects.json`` — a stage's output
    folder, or the folder around a model folder given (``OUT/mbm``, ``OUT/fmri_encoder``)."""
    from mindvideo.pipeline.shared import SUBJECTS_DIR, SUBJECTS_JSON

    for c in candidates:
        if c is None:
            continue
        folders = [Path(c)]
        if (Path(c) / "config.json").is_file():  # a model folder: its stage's output around it
            folders.append(Path(c).parent)
        for folder in folders:
            if (folder / SUBJECTS_DIR / SUBJECTS_JSON).is_file():
                return folder
    return None


def _check_same_stimuli(reference: PreparedData, others: Sequence[PreparedData]) -> None:
    for other in others:
        if (
            other.fmri_train.shape[:-1] != reference.fmri_train.shape[:-1]
            or other.frames_train.shape != reference.frames_train.shape
        ):
            raise UserError(
                f"{other.root} and {reference.root} differ in training segments, TRs or frame "
                "shape; a shared model needs every subject's responses to the same training "
                "clips, prepared with the same settings."
            )
        for s in range(reference.frames_train.shape[0]):
            if not np.array_equal(other.frames_train[s], reference.frames_train[s]):
                raise UserError(
                    f"Training segment {s + 1} of {other.root} shows other frames than that of "
                    f"{reference.root}: a shared model needs every subject's responses to the "
                    "same training clips (prepare all from one dataset with the same settings)."
                )


def open_subjects(
    data: str,
    subjects: Sequence[str],
    adapters_from: str | os.PathLike | None = None,
    normalize: str = "train",
    fit: bool = True,
) -> SharedData:
    """Open the reference ``data`` and the further ``subjects`` (prepared folders), check that
    they watched the same training clips, and give each further subject its adapter: the ones
    saved in ``adapters_from/subjects/`` (they must be of exactly these subjects, in this order),
    else fitted now (``fit=False``: unfitted maps of the right shape, for a dry run)."""
    reference = PreparedData.open(data)
    others = [PreparedData.open(p) for p in subjects]
    everyone = [reference, *others]
    names = [subject_name(p) for p in everyone]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UserError(
                f"{everyone[i].root} and {everyone[names.index(name)].root} are both {name}; "
                "pass each subject's prepared folder once."
            )
    _check_same_stimuli(reference, others)
    prints = [data_fingerprint(p) for p in everyone]
    saved = load_subjects(adapters_from) if adapters_from is not None else None
    if saved is not None:
        if [(s.name, s.fingerprint) for s in saved] != list(zip(names, prints, strict=True)):
            raise UserError(
                f"{adapters_from} was trained on the subjects {', '.join(s.name for s in saved)} "
                f"(their prepared folders, in that order), not on {', '.join(names)} as given; "
                "pass the same --data folders in the same order."
            )
        adapters: list[SubjectAdapter | None] = [s.adapter for s in saved]
        logger.info("subject adapters of %s from %s", ", ".join(names[1:]), adapters_from)
    else:
        adapters = [None]
        segments = list(range(reference.fmri_train.shape[0]))
        spec = AdaptConfig()
        for prepared, name in zip(others, names[1:], strict=True):
            if fit:
                adapter, alignment, target, _ = fit_subject_adapter(
                    prepared, reference, segments, spec.alphas, spec.folds, spec.neighbours, name
                )
                logger.info(
                    "adapter of %s (%s): held-out voxel r %.3f (median over %s's voxels, each "
                    "segment predicted by the maps fitted without it)",
                    name,
                    alignment.method,
                    float(np.median(_voxel_r(alignment.held_out, target))),
                    names[0],
                )
            else:
                adapter = SubjectAdapter(
                    in_voxels=prepared.n_voxels,
                    out_voxels=reference.n_voxels,
                    subject=name,
                    reference=names[0],
                    segments=segments,
                )
            adapters.append(adapter.eval().requires_grad_(False))
    shared = [
        SharedSubject(name, fp, p.n_voxels, a)
        for name, fp, p, a in zip(names, prints, everyone, adapters, strict=True)
    ]
    pooled = pooled_data(
        reference,
        [(p, a) for p, a in zip(others, adapters[1:], strict=True)],  # type: ignore[misc]
        normalize,
    )
    logger.info(
        "shared model: %d subjects (%s), %d training segments in the voxel space of %s (%d)",
        len(everyone),
        ", ".join(names),
        pooled.fmri_train.shape[0],
        names[0],
        reference.n_voxels,
    )
    return SharedData(reference, shared, pooled)
