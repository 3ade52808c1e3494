"""Functional alignment of two subjects' voxels: a linear map fitted on shared stimuli.

Two subjects who watched the same training segments give, TR by TR, two responses to the same
frames. The map from subject B's voxels to subject A's (:func:`fit_alignment`) is fitted in two
ridge stages, each with its penalty chosen per A-voxel by cross-validation over whole segments:

1. **Local** (searchlight hyperalignment, Guntupalli et al. 2016): each A-voxel from the
   ``neighbours`` B-voxels nearest to its vertex on the same hemisphere's sphere (fsLR, the
   grayordinates both subjects' data live on). Retinotopic maps follow anatomy, so the few
   voxels around a vertex see the same part of the screen: few parameters per voxel, which a
   few segments can fit.
2. **Global**: ridge from all B-voxels to what the local map left unexplained (class-selective
   maps agree across subjects only loosely, and not voxel by voxel).

On the demo's simulated subjects fitted on 3 segments, the local stage raised how well a linear
decoder of subject A reads the aligned test fMRI of subject B (16×16 frames: 50-way pixel
identification 0.38 → 0.45) and the global stage kept the scene class (0.84); see
docs/cross-subject.md. Without grayordinates (e.g. the authors' arrays) only the global stage
runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mindvideo.data import atlas
from mindvideo.data.ridge import RidgeDecoder
from mindvideo.utils import UserError

__all__ = ["Alignment", "fit_alignment", "surface_neighbours"]


def surface_neighbours(source: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """For every target grayordinate ``[Vt]`` (91k indices), the positions of the ``k`` source
    grayordinates ``[Vs]`` nearest to it on its hemisphere's sphere, nearest first
    ``[Vt, k]``; a :class:`UserError` for grayordinates off the cortical surface, or a
    hemisphere with fewer than ``k`` source voxels."""
    source, target = np.asarray(source, np.int64), np.asarray(target, np.int64)
    s_struct, _ = atlas.surface_vertex(source)
    t_struct, _ = atlas.surface_vertex(target)
    surfaces = (atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT)
    if not (np.isin(s_struct, surfaces).all() and np.isin(t_struct, surfaces).all()):
        raise UserError(
            "Local alignment needs cortical-surface grayordinates for every voxel; set "
            "neighbours=0 for a global map."
        )
    s_xyz = atlas.grayordinate_coordinates(source, "sphere")
    t_xyz = atlas.grayordinate_coordinates(target, "sphere")
    out = np.empty((len(target), k), np.int64)
    for surface in surfaces:
        rows = np.flatnonzero(t_struct == surface)
        pool = np.flatnonzero(s_struct == surface)
        if not len(rows):
            continue
        if len(pool) < k:
            raise UserError(
                f"The source has {len(pool)} voxels on {surface}, fewer than neighbours={k}; "
                "lower neighbours (or 0 for a global map)."
            )
        d = ((t_xyz[rows, None, :] - s_xyz[None, pool, :]) ** 2).sum(-1)  # [rows, pool]
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        out[rows] = pool[nearest]
    return out


@dataclass
class Alignment:
    """A fitted map ``y ≈ x @ weight + bias`` (``weight`` ``[Vs, Vt]``) with what it chose."""

    weight: np.ndarray
    bias: np.ndarray
    method: str
    local_alpha_median: float | None
    global_alpha_median: float
    held_out: np.ndarray
    """``[N, Vt]``: every training sample predicted by the maps fitted without its segment."""


def _fold_ids(groups: np.ndarray, folds: int) -> np.ndarray:
    segments = np.unique(groups)
    fold_of = {s: i % min(folds, len(segments)) for i, s in enumerate(segments)}
    return np.array([fold_of[g] for g in groups])


def _local_ridge(
    x: np.ndarray,
    y: np.ndarray,
    fold: np.ndarray,
    neighbours: np.ndarray,
    alphas: np.ndarray,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge of each target column ``y[:, j]`` on ``x[:, neighbours[j]]`` (``x`` z-scored),
    the penalty per target by cross-validation over ``fold``. Returns (coefficients
    ``[Vt, k]``, intercepts ``[Vt]``, chosen penalties ``[Vt]``, held-out predictions
    ``[N, Vt]``)."""
    n_t, k = neighbours.shape
    coef = np.empty((n_t, k))
    intercept = np.empty(n_t)
    chosen = np.empty(n_t)
    held_out = np.empty((len(x), n_t))
    folds = np.unique(fold)
    for start in range(0, n_t, chunk):
        cols = np.arange(start, min(start + chunk, n_t))
        xs = np.transpose(x[:, neighbours[cols]], (1, 0, 2)).astype(np.float64)  # [c, N, k]
        ys = y[:, cols].T.astype(np.float64)  # [c, N]
        error = np.zeros((len(alphas), len(cols)))
        preds = np.empty((len(alphas), len(cols), len(x)))
        for f in folds:
            tr, te = fold != f, fold == f
            x_mean, y_mean = xs[:, tr].mean(1), ys[:, tr].mean(1)  # [c, k], [c]
            xt = xs[:, tr] - x_mean[:, None]
            e, v = np.linalg.eigh(np.einsum("cnk,cnl->ckl", xt, xt))  # [c, k], [c, k, k]
            proj = np.einsum(
                "ckl,ck->cl", v, np.einsum("cnk,cn->ck", xt, ys[:, tr] - y_mean[:, None])
            )
            basis = np.einsum("cnk,ckl->cnl", xs[:, te] - x_mean[:, None], v)  # [c, m, k]
            for a, alpha in enumerate(alphas):
                p = np.einsum("cnl,cl->cn", basis, proj / (np.maximum(e, 0) + alpha))
                p += y_mean[:, None]
                preds[a][:, te] = p
                error[a] += ((p - ys[:, te]) ** 2).sum(1)
        best = error.argmin(axis=0)  # [c]
        chosen[cols] = alphas[best]
        held_out[:, cols] = preds[best, np.arange(len(cols))].T
        x_mean, y_mean = xs.mean(1), ys.mean(1)
        xc = xs - x_mean[:, None]
        gram = np.einsum("cnk,cnl->ckl", xc, xc) + alphas[best][:, None, None] * np.eye(k)
        w = np.linalg.solve(gram, np.einsum("cnk,cn->ck", xc, ys - y_mean[:, None])[..., None])
        coef[cols] = w[..., 0]
        intercept[cols] = y_mean - np.einsum("ck,ck->c", x_mean, w[..., 0])
    return coef, intercept, chosen, held_out


def fit_alignment(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alphas: Sequence[float],
    folds: int,
    neighbours: np.ndarray | None = None,
) -> Alignment:
    """Fit the map from ``x`` ``[N, Vs]`` (subject B) to ``y`` ``[N, Vt]`` (subject A) on the
    same stimuli; ``groups`` ``[N]``: the segment of each TR. ``neighbours`` ``[Vt, k]``
    (:func:`surface_neighbours`): the local stage's B-voxels per A-voxel; ``None``: the global
    stage alone. See the module doc."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    alpha_grid = np.asarray(alphas, np.float64)
    fold = _fold_ids(np.asarray(groups), folds)
    weight = np.zeros((x.shape[1], y.shape[1]), np.float64)
    bias = np.zeros(y.shape[1], np.float64)
    local_alpha = None
    residual, local_held_out = y, np.zeros_like(y, dtype=np.float64)
    if neighbours is not None:
        x_mean, x_std = x.mean(0), x.std(0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        xz = (x - x_mean) / x_std
        coef, intercept, chosen, local_held_out = _local_ridge(xz, y, fold, neighbours, alpha_grid)
        # Back to raw features: y ≈ ((x - mean) / std)[:, nb] @ coef + intercept.
        scaled = coef / x_std[neighbours]  # [Vt, k]
        np.add.at(weight, (neighbours, np.arange(y.shape[1])[:, None]), scaled)
        bias = intercept - (x_mean[neighbours] * scaled).sum(1)
        residual = y - (x @ weight + bias)
        local_alpha = float(np.median(chosen))
    ridge = RidgeDecoder(alphas=list(alphas), folds=folds).fit(x, residual, groups, held_out=True)
    g_weight, g_bias = ridge.linear_map()
    if ridge.held_out_ is None:
        raise RuntimeError("ridge kept no held-out predictions")
    return Alignment(
        weight=(weight + g_weight).astype(np.float32),
        bias=(bias + g_bias).astype(np.float32),
        method="local + global" if neighbours is not None else "global",
        local_alpha_median=local_alpha,
        global_alpha_median=float(np.median(ridge.alphas_)),
        held_out=(local_held_out + ridge.held_out_).astype(np.float32),
    )
