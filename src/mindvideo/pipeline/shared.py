"""Several subjects in one voxel space: the training data of a shared model, and its subjects.

A shared model (``mindvideo contrast`` / ``cotrain`` with ``--data S1 S2 S3``) is trained on
every subject at once. Its voxel space is the first subject's (the *reference*); each further
subject reads its fMRI through its own :class:`~mindvideo.encoder.subjects.SubjectAdapter`, a
linear map fitted on the training segments all subjects watched. The fMRI encoder, its
spatiotemporal blocks and the generator are shared.

:func:`pooled_data` is that training data as one :class:`~mindvideo.data.prepared.PreparedData`:
the training segments of every subject one after another (subject 1's, then subject 2's, ...),
each subject's fMRI in the shared space and normalised with its own training statistics (what
``reconstruct`` does when it reads that subject alone), so a shuffled batch mixes subjects. The
frames are the reference's, read in place (every subject watched the same training clips); the
test split is the reference's.

The subjects travel with the models: ``subjects/subjects.json`` and one adapter folder per
further subject (:func:`save_subjects`, :func:`load_subjects`) beside the contrastive encoder
and inside the co-trained pipeline folder, where ``reconstruct --subject NAME`` finds them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data.datasets import FMRINormalizer
from mindvideo.data.prepared import PreparedData, data_fingerprint
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.aligned import aligned_data
from mindvideo.utils import UserError
from mindvideo.utils.io import atomic_write_text

__all__ = [
    "SUBJECTS_DIR",
    "SUBJECTS_JSON",
    "SegmentStack",
    "SharedSubject",
    "load_subjects",
    "match_subject",
    "pooled_data",
    "save_subjects",
    "subject_name",
]

SUBJECTS_DIR = "subjects"
"""The subjects of a shared model, beside its encoder or inside its pipeline folder."""
SUBJECTS_JSON = "subjects.json"


def subject_name(prepared: PreparedData) -> str:
    """``subjectN`` from the prepared manifest, else the prepared folder's name."""
    if prepared.subject is not None:
        return f"subject{prepared.subject}"
    return Path(prepared.root).name if prepared.root is not None else "subject"


@dataclasses.dataclass
class SharedSubject:
    """One subject of a shared model: its name, its prepared data's fingerprint and voxel count,
    and its adapter (``None`` for the reference, whose voxel space is the shared one)."""

    name: str
    fingerprint: str
    voxels: int
    adapter: SubjectAdapter | None = None


class SegmentStack:
    """Arrays ``[S_i, ...]`` (memory-mapped ones stay so) read as one ``[sum S_i, ...]`` array
    along the first axis, without copying: ``x[i]``, ``x[i, ...]``, ``x[slice or list]``,
    iteration, ``shape``, ``ndim``, ``dtype``, ``len`` and ``np.asarray``."""

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise ValueError("SegmentStack needs at least one array")
        tail = tuple(parts[0].shape[1:])
        if any(tuple(p.shape[1:]) != tail for p in parts):
            raise ValueError("the stacked arrays differ in shape beyond the first axis")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *tail)
        self.ndim = len(self.shape)
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _locate(self, i: int) -> tuple[Any, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} segments")
        i %= len(self)
        p = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[p], i - int(self.offsets[p])

    def __getitem__(self, key: Any) -> Any:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            part, local = self._locate(int(first))
            return part[(local, *rest)]
        rows = np.arange(len(self))[first]
        return np.stack([np.asarray(self[(int(i), *rest)]) for i in rows])

    def __iter__(self):
        for part in self.parts:
            yield from part

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype)


def _normalised(prepared: PreparedData, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Both splits' fMRI, float32, normalised with the subject's own training statistics."""
    normaliser = FMRINormalizer(mode).fit(prepared.fmri_train)  # type: ignore[arg-type]
    train = normaliser.transform(np.asarray(prepared.fmri_train), "train")
    test = normaliser.transform(np.asarray(prepared.fmri_test), "test")
    return train.astype(np.float32, copy=False), test.astype(np.float32, copy=False)


def pooled_data(
    reference: PreparedData,
    others: Sequence[tuple[PreparedData, SubjectAdapter]],
    normalize: str = "train",
) -> PreparedData:
    """The training data of a shared model (module doc): every subject's training segments in
    the reference's voxel space, each normalised with its own statistics (``normalize``, a
    :class:`~mindvideo.data.datasets.FMRINormalizer` mode); the reference's frames and test
    split. Every adapter must map onto the reference's voxels and cover all its training
    segments, and every subject must have watched the reference's training clips."""
    if normalize == "compat":
        raise UserError(
            "A shared model normalises each subject with its own training statistics; the "
            "'compat' normalisation (for the authors' checkpoints) reads one subject only."
        )
    n_seg = reference.fmri_train.shape[0]
    train, test = _normalised(reference, normalize)
    parts, names = [train], [subject_name(reference)]
    for prepared, adapter in others:
        c = adapter.config
        if c.out_voxels != reference.n_voxels:
            raise UserError(
                f"The subject adapter of {c.subject} maps onto {c.out_voxels} voxels, but the "
                f"reference {reference.root} has {reference.n_voxels}."
            )
        aligned = aligned_data(prepared, adapter)
        if aligned.fmri_train.shape[0] != n_seg or aligned.frames_train.shape != (
            reference.frames_train.shape
        ):
            raise UserError(
                f"{prepared.root} ({c.subject}) brings {aligned.fmri_train.shape[0]} training "
                f"segments through its adapter, the reference {n_seg}: a shared model needs "
                "every subject's responses to all of the reference's training clips."
            )
        parts.append(_normalised(aligned, normalize)[0])
        names.append(c.subject or subject_name(prepared))
    stack = len(parts)
    captions = reference.captions_train
    named = reference.manifest.get("segments")
    if isinstance(named, dict) and isinstance(named.get("train"), list):
        named = {**named, "train": list(named["train"]) * stack}
    manifest = {
        **reference.manifest,
        **({"segments": named} if named is not None else {}),
        "shared": {"subjects": names, "segments_per_subject": int(n_seg)},
    }
    ids = reference.scene_ids_train
    if ids is None:  # one scene keeps one id in every subject's copy (no shared batch)
        from mindvideo.data.datasets import _scene_ids

        ids = _scene_ids(reference, "train")
    return dataclasses.replace(
        reference,
        manifest=manifest,
        fmri_train=np.concatenate(parts),
        fmri_test=test,
        frames_train=SegmentStack([reference.frames_train] * stack),
        captions_train=None if captions is None else list(captions) * stack,
        scene_ids_train=SegmentStack([ids] * stack),
    )


# --------------------------------------------------------------------------------------------
# The subjects of a model folder
# --------------------------------------------------------------------------------------------


def save_subjects(subjects: Sequence[SharedSubject], folder: str | os.PathLike) -> Path:
    """Write ``folder/subjects/``: ``subjects.json`` (every subject, the reference first) and
    one adapter folder per further subject. Returns the ``subjects`` folder."""
    root = Path(folder) / SUBJECTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in subjects:
        entry: dict[str, Any] = {"name": s.name, "fingerprint": s.fingerprint, "voxels": s.voxels}
        if s.adapter is not None:
            s.adapter.save_pretrained(root / s.name)
            entry["adapter"] = s.name
        entries.append(entry)
    atomic_write_text(root / SUBJECTS_JSON, json.dumps({"subjects": entries}, indent=2) + "\n")
    return root


def load_subjects(folder: str | os.PathLike) -> list[SharedSubject] | None:
    """The subjects saved in ``folder/subjects/`` (the reference first), adapters loaded for
    inference; ``None`` when the folder holds a single-subject model."""
    root = Path(folder) / SUBJECTS_DIR
    path = root / SUBJECTS_JSON
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["subjects"]
        out = []
        for e in entries:
            adapter = None
            if e.get("adapter"):
                adapter = SubjectAdapter.from_pretrained(root / e["adapter"])
                adapter = adapter.eval().requires_grad_(False)
            out.append(SharedSubject(e["name"], e["fingerprint"], int(e["voxels"]), adapter))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise UserError(
            f"{path} is damaged ({exc}); re-run the stage that wrote {folder}."
        ) from exc
    return out


def match_subject(
    subjects: Sequence[SharedSubject], prepared: PreparedData, name: str | None, where: Path
) -> SharedSubject:
    """The subject of a shared model that ``prepared`` is: the one called ``name``, or (unset)
    the one whose prepared data has ``prepared``'s fingerprint. A :class:`UserError` naming the
    model's subjects when there is none or the data are not that subject's."""
    names = ", ".join(s.name for s in subjects)
    fingerprint = data_fingerprint(prepared)
    if name is not None:
        found = [s for s in subjects if s.name == name]
        if not found:
            raise UserError(f"{where} holds no subject {name!r}; its subjects: {names}.")
        subject = found[0]
        if prepared.n_voxels != subject.voxels:
            raise UserError(
                f"{subject.name} of {where} has {subject.voxels} voxels but {prepared.root} "
                f"has {prepared.n_voxels}: pass that subject's prepared folder."
            )
        return subject
    found = [s for s in subjects if s.fingerprint == fingerprint and s.voxels == prepared.n_voxels]
    if not found:
        raise UserError(
            f"{prepared.root} is none of the subjects {where} was trained on ({names}); pass "
            "--subject NAME to read it as one of them."
        )
    return found[0]
