"""Recording the fMRI encoder's attention over the test set (paper 3.5, 5.1).

Paper 3.5: "we visualize average attention maps from the first, middle, and last layers of the
fMRI encoder across all testing samples", for the encoder after each learning stage
(MBM pre-training, contrastive learning, co-training). :func:`record_attention` runs the encoder
over every test fMRI window and keeps, per recorded layer, running means of

- the **spatial** attention each patch token *receives*: the spatial attention matrix
  ``A: [T, T]`` of one TR (heads averaged, rows = queries, each row sums to 1) is averaged over
  its query rows (every query, the CLS token's included) — a column mean — and the CLS column is
  dropped, leaving one value per patch token ``[L]``. Averaged over the ``w`` TRs of a window and
  over all samples this is the token importance ``[n_layers, L]``. A token's value is the share
  of all attention that lands on it; over the ``L`` patch tokens the values sum to
  ``1 - (attention received by the CLS token)``;
- the **temporal** attention across the window (eq. 2), ``[n_layers, w, w]`` (rows = query TR),
  averaged over samples and patch positions (the CLS position excluded).

Each patch token is ``p`` consecutive voxels (MBM's 1D patchify), so :func:`token_to_voxel` gives
every voxel its patch's value; :mod:`mindvideo.interpretation.maps` puts voxels on the brain.

The MBM stage has no temporal attention: an :class:`~mindvideo.encoder.MBMAutoencoder` is
recorded through ``SpatiotemporalEncoder.from_mbm(mbm, window=1)`` on each TR separately, which
equals the MBM encoder (unmasked) exactly, and its summary has ``temporal = None``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.encoder import MBMAutoencoder, SpatiotemporalEncoder
from mindvideo.utils import UserError, atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "LAYER_NAMES",
    "STAGES",
    "AttentionSummary",
    "record_attention",
    "resolve_layers",
    "token_to_voxel",
]

STAGES: tuple[str, ...] = ("mbm", "contrast", "cotrain")
"""The encoder's learning stages in the paper's order (3.3–3.4; Fig. 7B)."""
LAYER_NAMES: tuple[str, ...] = ("first", "middle", "last")
"""The paper's recorded layers (3.5): 0, ``depth // 2`` and ``depth - 1``."""

_FORMAT = "mindvideo.attention_summary/1"


# --------------------------------------------------------------------------------------------
# the summary


@dataclass
class AttentionSummary:
    """Encoder attention averaged over a set of fMRI windows (paper 3.5).

    Attributes:
        token_scores: ``[n_layers, L]`` float64, attention received per patch token, averaged
            over query tokens, heads, the TRs of the window and all samples (module docstring).
        token_scores_per_tr: ``[n_layers, w, L]``, the same before averaging over the window.
        temporal: ``[n_layers, w, w]`` mean temporal attention (rows = query TR, each sums to 1),
            or ``None`` for the MBM stage (no temporal attention).
        layers: encoder block index of each row (0-based; may repeat in a shallow encoder).
        layer_names: a name per row (``"first"``, ``"middle"``, ``"last"`` or ``"layer i"``).
        stage: the learning stage (``"mbm"``, ``"contrast"``, ``"cotrain"``) or ``None``.
        n_samples: fMRI windows averaged.
        patch_size: ``p``, voxels per token.
        num_voxels: ``V`` the encoder takes (padded to a multiple of ``p``).
        depth: blocks in the encoder.
    """

    token_scores: np.ndarray
    token_scores_per_tr: np.ndarray
    temporal: np.ndarray | None
    layers: tuple[int, ...]
    layer_names: tuple[str, ...]
    stage: str | None
    n_samples: int
    patch_size: int
    num_voxels: int
    depth: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """``L``, patch tokens per TR."""
        return int(self.token_scores.shape[-1])

    @property
    def window(self) -> int:
        """``w``, TRs per fMRI window."""
        return int(self.token_scores_per_tr.shape[1])

    def voxel_scores(self, n_voxels: int | None = None) -> np.ndarray:
        """Per-voxel scores ``[n_layers, n_voxels]`` (:func:`token_to_voxel`).

        n_voxels: the ROI's voxels before padding (default: the encoder's ``num_voxels``).
        """
        n = self.num_voxels if n_voxels is None else n_voxels
        return token_to_voxel(self.token_scores, self.patch_size, n)

    def layer(self, name: str | int) -> np.ndarray:
        """Token scores ``[L]`` of one row, by name (``"first"``) or encoder block index."""
        if isinstance(name, str) and name in self.layer_names:
            return self.token_scores[self.layer_names.index(name)]
        if isinstance(name, int) and name % self.depth in self.layers:
            return self.token_scores[self.layers.index(name % self.depth)]
        raise UserError(
            f"Layer {name!r} was not recorded; recorded: {', '.join(self.layer_names)}."
        )

    # ---------------------------------------------------------------- save / load (npz + json)
    def save(self, path: str | os.PathLike) -> Path:
        """Write the summary to one ``.npz`` (plain arrays, metadata as a JSON string)."""
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "layers": list(self.layers),
            "layer_names": list(self.layer_names),
            "stage": self.stage,
            "n_samples": self.n_samples,
            "patch_size": self.patch_size,
            "num_voxels": self.num_voxels,
            "depth": self.depth,
            "extra": self.extra,
        }
        arrays = {
            "token_scores": self.token_scores,
            "token_scores_per_tr": self.token_scores_per_tr,
            "meta": np.array(json.dumps(meta)),
        }
        if self.temporal is not None:
            arrays["temporal"] = self.temporal
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttentionSummary:
        """Read a summary written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"Attention summary {path} does not exist; run `mindvideo explain`.")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != _FORMAT:
                raise UserError(f"{path} is not a mindvideo attention summary ({_FORMAT}).")
            temporal = z["temporal"] if "temporal" in z.files else None
            return cls(
                token_scores=z["token_scores"],
                token_scores_per_tr=z["token_scores_per_tr"],
                temporal=temporal,
                layers=tuple(meta["layers"]),
                layer_names=tuple(meta["layer_names"]),
                stage=meta["stage"],
                n_samples=int(meta["n_samples"]),
                patch_size=int(meta["patch_size"]),
                num_voxels=int(meta["num_voxels"]),
                depth=int(meta["depth"]),
                extra=meta.get("extra", {}),
            )


# --------------------------------------------------------------------------------------------
# tokens -> voxels


def token_to_voxel(token_scores: Any, patch_size: int, n_voxels: int) -> np.ndarray:
    """Give every voxel its patch token's score (MBM's 1D patchify, paper 3.3).

    Token ``j`` covers voxels ``j·p … (j+1)·p - 1`` of the padded voxel axis; the padding at the
    end (``pad_voxels``: at most one patch) is dropped.

    Args:
        token_scores: ``[..., L]`` (numpy or torch).
        patch_size: ``p``.
        n_voxels: the ROI's voxels before padding, ``(L-1)·p ≤ n_voxels ≤ L·p``.

    Returns:
        ``[..., n_voxels]`` float64.
    """
    if isinstance(token_scores, torch.Tensor):
        token_scores = token_scores.detach().cpu().double().numpy()
    scores = np.asarray(token_scores, np.float64)
    if scores.ndim < 1 or patch_size < 1:
        raise ValueError("token_scores must be [..., L] and patch_size at least 1")
    covered = scores.shape[-1] * patch_size
    if not covered - patch_size <= n_voxels <= covered:
        raise UserError(
            f"{scores.shape[-1]} tokens of {patch_size} voxels cover {covered} padded voxels, "
            f"which does not fit an ROI of {n_voxels} voxels; pass the voxel count of the data "
            "the encoder was trained on (before padding)."
        )
    return np.repeat(scores, patch_size, axis=-1)[..., :n_voxels]


# --------------------------------------------------------------------------------------------
# recording


def resolve_layers(layers: Sequence[int | str], depth: int) -> tuple[list[int], list[str]]:
    """Layer names / indices → (block indices, row names).

    ``"first"`` = 0, ``"middle"`` = ``depth // 2``, ``"last"`` = ``depth - 1``; integers may be
    negative (counted from the end).
    """
    if isinstance(layers, (str, int)):
        layers = [layers]
    named = {"first": 0, "middle": depth // 2, "last": depth - 1}
    indices, names = [], []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                raise UserError(
                    f"Unknown encoder layer {layer!r}; use 'first', 'middle', 'last' or a "
                    "block index."
                )
            indices.append(named[layer])
            names.append(layer)
        else:
            i = int(layer)
            if not -depth <= i < depth:
                raise UserError(f"Encoder layer {i} does not exist; the encoder has {depth}.")
            indices.append(i % depth)
            names.append(f"layer {i % depth}")
    if not indices:
        raise UserError("No encoder layers to record; give at least one.")
    return indices, names


def _batches(fmri: Any, batch_size: int) -> tuple[Iterator[torch.Tensor], int | None]:
    """fMRI windows (array, tensor or iterable of batches) → (iterator of ``[B, w, V]``, count)."""
    if isinstance(fmri, np.ndarray):
        fmri = torch.from_numpy(np.ascontiguousarray(fmri))
    if isinstance(fmri, torch.Tensor):
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}.")
        chunks = fmri.split(batch_size)
        return iter(chunks), len(chunks)
    if not isinstance(fmri, Iterable):
        raise TypeError(f"fmri must be a tensor, an array or an iterable of batches, not {fmri!r}")

    def extract(batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            batch = batch["fmri"]  # FMRIWindowDataset / collate_windows
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        return batch

    try:
        total = len(fmri)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return (extract(b) for b in fmri), total


def record_attention(
    encoder: SpatiotemporalEncoder | MBMAutoencoder,
    fmri: Any,
    layers: Sequence[int | str] = LAYER_NAMES,
    batch_size: int = 32,
    stage: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> AttentionSummary:
    """Average the encoder's attention over all fMRI windows (paper 3.5).

    Args:
        encoder: a :class:`~mindvideo.encoder.SpatiotemporalEncoder` (contrast / cotrain stages)
            or an :class:`~mindvideo.encoder.MBMAutoencoder` (MBM stage; each TR separately).
        fmri: test windows ``[N, w, V]`` (``V`` = the encoder's padded ``num_voxels``; a
            ``[N, V]`` array is ``w = 1``) as a tensor / array, or an iterable of batches (a
            ``DataLoader`` over :class:`~mindvideo.data.datasets.FMRIWindowDataset`: dicts with
            ``"fmri"``; tuples whose first item is the fMRI; or tensors).
        layers: names (``"first"``, ``"middle"``, ``"last"``) or block indices to record.
        batch_size: windows per forward pass when ``fmri`` is a tensor / array.
        stage: the learning stage label kept in the summary (:data:`STAGES`).
        device: where to run (default: the encoder's device); the encoder is moved there.
        progress: show a progress bar.

    Returns:
        :class:`AttentionSummary` with token scores ``[n_layers, L]`` and temporal attention
        ``[n_layers, w, w]`` (``None`` for the MBM).
    """
    is_mbm = isinstance(encoder, MBMAutoencoder)
    if is_mbm:
        # equals the MBM encoder per TR exactly (zero temporal branch, window of one TR)
        model = SpatiotemporalEncoder.from_mbm(encoder, window=1, out_tokens=1, cond_dim=8)
    elif isinstance(encoder, SpatiotemporalEncoder):
        model = encoder
    else:
        raise TypeError(f"encoder must be a SpatiotemporalEncoder or MBMAutoencoder, not {encoder}")
    if stage is not None and stage not in STAGES:
        logger.warning("Stage %r is not one of the paper's stages %s.", stage, STAGES)

    depth = len(model.blocks)
    indices, names = resolve_layers(layers, depth)
    recorded = sorted(set(indices))
    row_of = [recorded.index(i) for i in indices]  # requested row -> recorded layer
    P = model.num_prefix_tokens
    L = model.num_patches
    V = model.config.num_voxels
    if device is not None:
        model = model.to(device)
    param = next(model.parameters())

    batches, total = _batches(fmri, batch_size)
    spatial_sum: torch.Tensor | None = None  # [n_rec, w, L] float64
    temporal_sum: torch.Tensor | None = None  # [n_rec, w, w] float64
    n = 0
    window: int | None = None
    was_training = model.training
    model.eval()  # no dropout / stochastic depth while recording
    try:
        from tqdm.auto import tqdm

        bar = tqdm(
            batches,
            total=total,
            desc=f"attention {stage or ''}".strip(),
            unit="batch",
            disable=not progress,
        )
        with torch.inference_mode():
            for x in bar:
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"an fMRI batch must be a tensor or array, not {type(x)}")
                if x.ndim == 2:
                    x = x[:, None]  # single TRs: a window of one
                if x.ndim != 3 or x.shape[-1] != V:
                    raise UserError(
                        f"The encoder expects fMRI windows [N, w, {V}] (num_voxels in its "
                        f"config.json, padded) but got {list(x.shape)}; pad the ROI voxels "
                        "with the same patch size as in training."
                    )
                if window is None:
                    window = x.shape[1]
                elif x.shape[1] != window:
                    raise UserError(
                        f"All fMRI windows must have the same number of TRs; got {window} "
                        f"and {x.shape[1]}."
                    )
                B, W = x.shape[0], x.shape[1]
                if B == 0:
                    continue
                x = x.to(device=param.device, dtype=param.dtype)
                if is_mbm:
                    x = x.reshape(B * W, 1, V)  # every TR on its own
                _, (spatial, temporal, _) = model.forward_encoder(
                    x, output_attentions=True, attention_layers=recorded, average_heads=True
                )
                # spatial: [B·W, T, T] per layer -> attention received per patch token [B, W, L]
                received = torch.stack([a.double().mean(dim=1)[:, P:] for a in spatial])
                received = received.reshape(len(recorded), B, W, L).sum(dim=1)  # [n_rec, W, L]
                spatial_sum = received if spatial_sum is None else spatial_sum + received
                if not is_mbm:
                    # temporal: [B·T, W, W] per layer; patch positions only
                    t = torch.stack([a.double().reshape(B, P + L, W, W)[:, P:] for a in temporal])
                    t = t.mean(dim=2).sum(dim=1)  # [n_rec, W, W]
                    temporal_sum = t if temporal_sum is None else temporal_sum + t
                n += B
    finally:
        model.train(was_training)
    if n == 0 or spatial_sum is None:
        raise UserError("No fMRI windows to record attention on; the test set is empty.")

    per_tr = (spatial_sum / n).cpu().numpy()[row_of]  # [n_layers, W, L]
    temporal_mean = None if temporal_sum is None else (temporal_sum / n).cpu().numpy()[row_of]
    logger.info(
        "Recorded attention of layers %s over %d fMRI windows (stage %s).", indices, n, stage
    )
    return AttentionSummary(
        token_scores=per_tr.mean(axis=1),
        token_scores_per_tr=per_tr,
        temporal=temporal_mean,
        layers=tuple(indices),
        layer_names=tuple(names),
        stage=stage,
        n_samples=n,
        patch_size=int(model.config.patch_size),
        num_voxels=int(V),
        depth=depth,
    )
