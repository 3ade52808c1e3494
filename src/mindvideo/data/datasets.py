"""Torch datasets over a prepared subject (paper sections 3.3–3.4, 4.2).

- :class:`FMRIWindowDataset`: one sample per (segment, TR): the fMRI window of ``w`` TRs
  (``t .. t + w - 1``, clamped at the segment end), the 6-frame clip shown during TR ``t``, its
  captions, and scene information (used by contrastive learning, video tuning, co-training and
  reconstruction).
- :class:`FMRIFramesDataset`: single fMRI frames of the *training* split only, without labels,
  for fine-tuning the MBM autoencoder on the target subject (it has no test split by design).
- :class:`SceneAwareBatchSampler`: batches in which no two samples show the same scene — paper
  3.3: "Extra care is needed to reduce similar frames in a batch for better contrastive pairs".
- :class:`FMRINormalizer`: the dataset-level normalisation, fitted on the training fMRI only and
  applied unchanged to the test fMRI (the authors' ``normalize``: one mean and one standard
  deviation over the whole training array); mode ``compat`` leaves the test fMRI as it is, as
  the authors' test loader does.

Scenes. A sample's scenes are the scene ids of its 6 frames. They come from the prepared
``scene_ids_{split}.npy`` (written from annotations, e.g. the simulator's ``scenes.json``) or,
when absent, are estimated from the frames with a colour-histogram cut detector
(:func:`mindvideo.data.pairing.scene_ids_from_frames`, computed once when the dataset is built).
``scene_cut`` is True when the 6 frames span more than one scene; ``scene_id`` is the scene of the
first frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mindvideo.data.pairing import PadMode, pad_voxels, padded_size, scene_ids_from_frames
from mindvideo.data.prepared import PreparedData
from mindvideo.utils import UserError

logger = logging.getLogger(__name__)

NormalizeMode = Literal["none", "train", "train_voxel", "compat"]
NORMALIZE_MODES = ("none", "train", "train_voxel", "compat")


class FMRINormalizer:
    """Normalise fMRI with statistics of the training fMRI only (fit/transform).

    ``mode="train"`` (the authors' ``normalize``): one mean and one standard deviation over the
    whole training array; ``"train_voxel"``: a mean and standard deviation per voxel over all
    training segments and TRs; ``"none"``: identity; ``"compat"``: the training split as
    ``"train"``, the test split left as it is — what the authors' released evaluation does
    (``create_Wen_test_data_only`` normalises the test fMRI with mean 0 and standard deviation 1),
    so a converted checkpoint of theirs sees the inputs it was evaluated on. :meth:`fit` accepts
    only training data (``PreparedData.fmri_train``); :meth:`transform` never updates the
    statistics. Learned: ``mean_``, ``std_`` (float64 scalars or ``[V]``).
    """

    def __init__(self, mode: NormalizeMode = "train") -> None:
        if mode not in NORMALIZE_MODES:
            raise UserError(
                f"Unknown fMRI normalisation {mode!r}; choose one of {', '.join(NORMALIZE_MODES)}."
            )
        self.mode = mode

    def fit(self, fmri_train: np.ndarray) -> FMRINormalizer:
        """``fmri_train: [S, T, V]`` (or any ``[..., V]``), read one segment at a time."""
        n_vox = fmri_train.shape[-1]
        if self.mode == "none":
            self.mean_, self.std_ = np.zeros(()), np.ones(())
            return self
        total, total_sq, count = np.zeros(n_vox), np.zeros(n_vox), 0
        for seg in fmri_train:  # memmap friendly: one [T, V] block in float64 at a time
            x = np.asarray(seg, dtype=np.float64).reshape(-1, n_vox)
            total += x.sum(axis=0)
            total_sq += (x * x).sum(axis=0)
            count += x.shape[0]
        if self.mode in ("train", "compat"):
            total, total_sq, count = total.sum(), total_sq.sum(), count * n_vox
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        self.mean_ = mean
        self.std_ = np.where(std > 1e-8, std, 1.0)  # constant voxels are left centred at 0
        return self

    def transform(self, x: np.ndarray, split: str = "train") -> np.ndarray:
        """``x: [..., V]`` of ``split`` → float32 ``(x - mean_) / std_`` (mode ``compat``: the
        test split unchanged)."""
        if not hasattr(self, "mean_"):
            raise UserError("FMRINormalizer is not fitted; call fit() on the training fMRI.")
        if self.mode == "compat" and split == "test":
            return np.asarray(x, dtype=np.float32)
        return ((np.asarray(x, dtype=np.float64) - self.mean_) / self.std_).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The mode and the fitted statistics as plain lists (JSON), for a pipeline folder."""
        if not hasattr(self, "mean_"):
            raise UserError("FMRINormalizer is not fitted; call fit() on the training fMRI.")
        return {
            "mode": self.mode,
            "mean": np.asarray(self.mean_, dtype=np.float64).tolist(),
            "std": np.asarray(self.std_, dtype=np.float64).tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FMRINormalizer:
        """The normaliser :meth:`state_dict` saved, fitted as it was."""
        normalizer = cls(state["mode"])
        normalizer.mean_ = np.asarray(state["mean"], dtype=np.float64)
        normalizer.std_ = np.asarray(state["std"], dtype=np.float64)
        return normalizer


def _as_prepared(prepared: PreparedData | str | os.PathLike) -> PreparedData:
    if isinstance(prepared, PreparedData):
        return prepared
    return PreparedData.open(Path(prepared))


def _scene_ids(prepared: PreparedData, split: str, **kwargs: Any) -> np.ndarray:
    """``[S, T, F]`` int scene ids, unique within the split: saved ones or estimated per segment."""
    saved = prepared.scene_ids(split)
    if saved is not None:
        return np.asarray(saved)
    from tqdm.auto import tqdm

    frames = prepared.frames(split)
    logger.info("no scene_ids_%s in the prepared data: detecting scene cuts from frames", split)
    out, next_id = [], 0
    for seg in tqdm(frames, desc=f"scene cuts ({split})", unit="segment", leave=False):
        ids = scene_ids_from_frames(np.asarray(seg), first_id=next_id, **kwargs)
        out.append(ids)
        next_id = int(ids.max()) + 1
    return np.stack(out)


class FMRIWindowDataset(Dataset):
    """(fMRI window, clip, captions) samples of one split of a prepared subject (paper 3.3).

    Index ``i`` is segment ``i // T``, TR ``t = i % T`` (with ``test_repetitions="each"`` on a
    ``[S, R, T, V]`` test array: segment, repetition, TR in that order). An item is a dict:

    - ``fmri``: float32 ``[w, V_padded]`` — TRs ``t .. t + w - 1`` clamped at the segment end
      (the last TR repeats), normalised with training statistics, voxels padded to a multiple of
      ``patch_size`` (``pad_mode`` ``"zero"``, or ``"wrap_compat"`` for the authors' checkpoints);
    - ``frames``: uint8 ``[F, H, W, 3]`` — the F = 6 frames shown during TR ``t``;
    - ``captions``: list of F str (requires captions in the prepared data unless
      ``with_captions=False``, when the list is empty);
    - ``subject``, ``segment``, ``tr``, ``repetition`` (-1 when averaged) — ints;
    - ``scene_cut``: bool, the F frames span more than one scene; ``scene_id``: int, the scene of
      the first frame (unique within the split).

    ``normalize`` (:class:`FMRINormalizer` mode) is always fitted on ``prepared.fmri_train``,
    also for ``split="test"``. ``subject_id`` defaults to the manifest's subject (else 1).
    """

    def __init__(
        self,
        prepared: PreparedData | str | os.PathLike,
        split: Literal["train", "test"] = "train",
        window: int = 2,
        patch_size: int = 16,
        pad_mode: PadMode = "zero",
        subject_id: int | None = None,
        normalize: NormalizeMode = "train",
        test_repetitions: Literal["average", "each"] = "average",
        with_captions: bool = True,
        scene_threshold: float = 0.35,
    ) -> None:
        self.prepared = _as_prepared(prepared)
        if split not in ("train", "test"):
            raise UserError(f"Unknown split {split!r}; choose 'train' or 'test'.")
        if window < 1:
            raise UserError(f"The fMRI window size must be at least 1, got {window}.")
        if test_repetitions not in ("average", "each"):
            raise UserError(
                f"test_repetitions must be 'average' or 'each', got {test_repetitions!r}."
            )
        self.split = split
        self.window = window
        self.patch_size = patch_size
        self.pad_mode = pad_mode
        self.subject_id = int(
            subject_id if subject_id is not None else (self.prepared.subject or 1)
        )
        self.n_voxels_padded = padded_size(self.prepared.n_voxels, patch_size, pad_mode)
        self.normalizer = FMRINormalizer(normalize).fit(self.prepared.fmri_train)

        self.n_segments, self.n_trs = self.frames.shape[:2]
        self.repetitions = (
            self.fmri.shape[1] if (self.fmri.ndim == 4 and test_repetitions == "each") else 0
        )
        if with_captions and self.captions is None:
            raise UserError(
                f"The prepared data {self.prepared.root} has no captions_{split}.json; caption "
                "the frames first (mindvideo prepare with a captioner) or pass "
                "with_captions=False."
            )
        self.with_captions = with_captions
        ids = _scene_ids(self.prepared, split, threshold=scene_threshold)  # [S, T, F]
        self.scene_ids = ids
        per_tr = [tuple(sorted(set(row.tolist()))) for row in ids.reshape(-1, ids.shape[-1])]
        reps = max(self.repetitions, 1)
        # Scene keys per index, in index order (segment, [repetition,] TR).
        self.scene_keys: list[tuple[int, ...]] = [
            per_tr[s * self.n_trs + t]
            for s in range(self.n_segments)
            for _ in range(reps)
            for t in range(self.n_trs)
        ]

    @property
    def fmri(self) -> np.ndarray:
        """The split's fMRI, ``[S, T, V]`` or ``[S, R, T, V]`` (memory-mapped)."""
        return self.prepared.fmri(self.split)

    @property
    def frames(self) -> np.ndarray:
        """The split's frames, ``[S, T, F, H, W, 3]`` uint8 (memory-mapped)."""
        return self.prepared.frames(self.split)

    @property
    def captions(self) -> list[list[list[str]]] | None:
        """The split's captions ``[S][T][F]``, or None."""
        return self.prepared.captions(self.split)

    def __len__(self) -> int:
        return self.n_segments * max(self.repetitions, 1) * self.n_trs

    def locate(self, index: int) -> tuple[int, int, int]:
        """``index`` → ``(segment, repetition or -1, TR)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        seg, rest = divmod(index, max(self.repetitions, 1) * self.n_trs)
        rep, t = divmod(rest, self.n_trs)
        return seg, (rep if self.repetitions else -1), t

    def fmri_window(self, segment: int, t: int, repetition: int = -1) -> np.ndarray:
        """float32 ``[w, V_padded]``: normalised, padded TRs ``t .. t + w - 1`` (clamped)."""
        idx = np.minimum(np.arange(t, t + self.window), self.n_trs - 1)
        if self.fmri.ndim == 4 and repetition < 0:  # average the repetitions: [R, w, V] → [w, V]
            x = np.asarray(self.fmri[segment][:, idx], dtype=np.float64).mean(axis=0)
        elif self.fmri.ndim == 4:
            x = self.fmri[segment, repetition, idx]
        else:
            x = self.fmri[segment, idx]
        x = self.normalizer.transform(x, self.split)
        return pad_voxels(x, self.patch_size, self.pad_mode)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seg, rep, t = self.locate(index)
        keys = self.scene_keys[index % len(self)]
        return {
            "fmri": torch.from_numpy(self.fmri_window(seg, t, rep)),
            "frames": torch.from_numpy(np.array(self.frames[seg, t])),
            "captions": list(self.captions[seg][t]) if self.with_captions else [],
            "subject": self.subject_id,
            "segment": seg,
            "tr": t,
            "repetition": rep,
            "scene_cut": len(keys) > 1,
            "scene_id": int(self.scene_ids[seg, t, 0]),
        }


def collate_windows(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate :class:`FMRIWindowDataset` items: tensors stacked, ``captions`` kept as a list of
    B lists of F str (torch's default collate would transpose them)."""
    out: dict[str, Any] = {
        "fmri": torch.stack([b["fmri"] for b in batch]),
        "frames": torch.stack([b["frames"] for b in batch]),
        "captions": [b["captions"] for b in batch],
        "scene_cut": torch.tensor([b["scene_cut"] for b in batch], dtype=torch.bool),
    }
    for key in ("subject", "segment", "tr", "repetition", "scene_id"):
        out[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
    return out


class FMRIFramesDataset(Dataset):
    """Single fMRI frames of the *training* fMRI of a prepared subject, unlabeled (paper 3.3).

    For fine-tuning the MBM autoencoder on the target subject. It reads ``fmri_train`` only —
    there is deliberately no way to build it over the test fMRI. Item: float32 ``[V_padded]``
    (normalised with training statistics, padded as in :class:`FMRIWindowDataset`).
    """

    def __init__(
        self,
        prepared: PreparedData | str | os.PathLike,
        patch_size: int = 16,
        pad_mode: PadMode = "zero",
        normalize: NormalizeMode = "train",
    ) -> None:
        self.prepared = _as_prepared(prepared)
        self.patch_size = patch_size
        self.pad_mode = pad_mode
        self.n_voxels_padded = padded_size(self.prepared.n_voxels, patch_size, pad_mode)
        self.normalizer = FMRINormalizer(normalize).fit(self.fmri)

    @property
    def fmri(self) -> np.ndarray:
        """The training fMRI ``[S, T, V]`` (memory-mapped)."""
        return self.prepared.fmri_train

    def __len__(self) -> int:
        return int(self.fmri.shape[0] * self.fmri.shape[1])

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} fMRI frames")
        seg, t = divmod(index % len(self), self.fmri.shape[1])
        x = self.normalizer.transform(self.fmri[seg, t])
        return torch.from_numpy(pad_voxels(x, self.patch_size, self.pad_mode))


class SceneAwareBatchSampler(Sampler[list[int]]):
    """Batches with no two samples from the same scene (paper 3.3: fewer similar frames per batch).

    ``dataset`` has ``scene_keys`` (one tuple of scene ids per index, e.g.
    :class:`FMRIWindowDataset`), or is that sequence itself. Two samples conflict when their
    scene sets intersect. Each epoch shuffles the indices with ``numpy.random.default_rng((seed,
    epoch))`` and places each index into the first open batch it does not conflict with (opening
    a new batch if there is none); full batches are yielded as they fill, and the remaining
    partial batches at the end (dropped with ``drop_last``). Every index appears exactly once per
    epoch (unless dropped), and the batches are the same for the same seed and epoch.

    The epoch advances by one after every full iteration; :meth:`set_epoch` sets it explicitly
    (as with ``DistributedSampler``).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        keys = getattr(dataset, "scene_keys", dataset)
        self.scene_keys = [frozenset(np.atleast_1d(k).tolist()) for k in keys]
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng((self.seed, epoch))
        done: list[list[int]] = []
        open_batches: list[tuple[list[int], set[int]]] = []
        for i in rng.permutation(len(self.scene_keys)).tolist():
            keys = self.scene_keys[i]
            for j, (members, scenes) in enumerate(open_batches):
                if scenes.isdisjoint(keys):
                    members.append(i)
                    scenes.update(keys)
                    if len(members) == self.batch_size:
                        done.append(members)
                        del open_batches[j]
                    break
            else:
                if self.batch_size == 1:
                    done.append([i])
                else:
                    open_batches.append(([i], set(keys)))
        if not self.drop_last:
            done.extend(members for members, _ in open_batches)
        self._cache = (epoch, done)
        return done

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        yield from (list(b) for b in batches)

    def __len__(self) -> int:
        return len(self._batches(self.epoch))
