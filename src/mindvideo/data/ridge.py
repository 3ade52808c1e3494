"""Ridge regression from fMRI windows, with the penalty chosen per target over whole segments.

The linear model the project's ceilings and its linear encoder share: ``mindvideo baseline``
(the linear ceiling, :mod:`mindvideo.evaluation.baseline`) and ``mindvideo reconstruct
condition=linear`` (a linear map from the fMRI window to the generator's text condition,
:mod:`mindvideo.pipeline.linear_condition`). For every TR ``t`` the window is TRs
``t .. t + w − 1`` (clamped at the segment end, as :func:`mindvideo.data.pairing.window_indices`
does) flattened to ``[w · V]``.

Regularisation is chosen by cross-validation over *whole training segments* (neighbouring TRs
are autocorrelated, so leave-one-out would pick alpha too small), as himalaya's ``RidgeCV``
does with a segment splitter; the closed form here shares one eigendecomposition per fold among
all targets and penalties, which is several times faster on a CPU than fitting each target set
on its own. The penalty is chosen per target by held-out squared error (``selection="mse"``), or,
for a decoder whose output is scored by pattern identification (frames, embeddings), one penalty
for the whole target set by held-out identification (``selection="identification"``): squared
error favours predictions shrunk toward the mean pattern, which every truth resembles, so they
identify their own window less well (the demo's low-level decoder, seed 0: held-out squared
error chose penalties of 10^3.5–10^4, held-out identification 10^3, and its 16 × 16 videos
identify their test window 50-way at 0.72 and 0.78).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mindvideo.data.pairing import window_indices
from mindvideo.utils import UserError

__all__ = [
    "DEFAULT_ALPHAS",
    "SELECTIONS",
    "RidgeDecoder",
    "check_selection",
    "mean_repetitions",
    "pairwise_identification",
    "window_features",
]

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(0, 7, 15))
"""Ridge penalties tried by cross-validation (per target), for z-scored fMRI features."""

SELECTIONS = ("mse", "identification")
"""How :class:`RidgeDecoder` chooses its penalty from the held-out folds."""


def check_selection(selection: str) -> None:
    """A :class:`UserError` unless ``selection`` is one of :data:`SELECTIONS`."""
    if selection not in SELECTIONS:
        raise UserError(
            f"Unknown penalty selection {selection!r}: selection must be one of "
            f"{', '.join(SELECTIONS)}."
        )


def mean_repetitions(fmri: np.ndarray) -> np.ndarray:
    """fMRI ``[S, T, V]`` as it is, or a test split's ``[S, R, T, V]`` averaged over its ``R``
    repetitions; float32."""
    fmri = np.asarray(fmri, dtype=np.float32)
    return fmri.mean(axis=1) if fmri.ndim == 4 else fmri


def window_features(fmri: np.ndarray, window: int) -> np.ndarray:
    """fMRI ``[S, T, V]`` → windows ``[S, T, window · V]``: TR ``t`` sees TRs ``t .. t + w − 1``
    (clamped at the segment end), concatenated in time order."""
    fmri = np.asarray(fmri, dtype=np.float32)
    if fmri.ndim != 3:
        raise UserError(f"fMRI must be [segments, TRs, voxels], got shape {fmri.shape}.")
    n_trs = fmri.shape[1]
    index = np.stack([window_indices(t, window, n_trs) for t in range(n_trs)])  # [T, w]
    windows = fmri[:, index]  # [S, T, w, V]
    return windows.reshape(fmri.shape[0], n_trs, -1)


def pairwise_identification(pred: Any, truth: Any) -> Any:
    """Held-out pattern identification over all pairs: for each sample, the fraction of the
    other samples whose truth correlates less with its prediction than its own truth does
    (Pearson r across the pattern; a tie counts against it). ``pred`` ``[..., m, K]`` (torch,
    leading dimensions e.g. penalties), ``truth`` ``[m, K]``; returns ``[..., m]``. The mean is
    the 2-way identification over every pair, and chance is 0.5."""
    import torch

    def unit(a: Any) -> Any:
        a = a - a.mean(dim=-1, keepdim=True)
        return a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    m = truth.shape[0]
    if m < 2:
        raise UserError("Identification needs at least 2 held-out samples.")
    t = unit(truth.to(pred.dtype))
    out = []
    for p in unit(pred).reshape(-1, m, truth.shape[1]):
        corr = p @ t.T  # [m, m]: prediction i against truth j
        own = corr.diagonal()[:, None]
        out.append((corr < own).sum(dim=1).to(torch.float64) / (m - 1))
    return torch.stack(out).reshape(*pred.shape[:-1])


def _ridge_solver(X: Any, alphas: Any) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """Closed-form ridge on a fixed design ``X`` ``[n, p]`` (torch, float32) for many targets
    and penalties at once, from one eigendecomposition: of ``XᵀX`` when ``p ≤ n`` (primal),
    else of ``XXᵀ`` (dual). Returns ``fit(Y)`` → ``predict(X_new, alpha_index)`` where
    ``alpha_index`` ``[K]`` picks each target's penalty, or ``None`` for every penalty
    (``[n_alphas, m, K]``)."""
    import torch

    n, p = X.shape
    primal = p <= n
    evals, evecs = torch.linalg.eigh(X.T @ X if primal else X @ X.T)
    evals = evals.clamp_min(0)
    shrink = 1.0 / (evals[None, :] + alphas[:, None])  # [A, r]

    def fit(Y: Any) -> Callable[[Any, Any], Any]:
        proj = evecs.T @ (X.T @ Y if primal else Y)  # [r, K]

        def predict(X_new: Any, alpha_index: Any = None) -> Any:
            basis = X_new @ evecs if primal else (X_new @ X.T) @ evecs  # [m, r]
            if alpha_index is None:
                return torch.stack(
                    [basis @ (shrink[a, :, None] * proj) for a in range(len(alphas))]
                )
            coef = shrink[alpha_index].T * proj  # [r, K]: each target with its own penalty
            return basis @ coef

        def weights(alpha_index: Any) -> Any:
            """The map ``W`` ``[p, K]`` with ``predict(X_new, alpha_index) = X_new @ W``."""
            coef = evecs @ (shrink[alpha_index].T * proj)  # [p or n, K]
            return coef if primal else X.T @ coef

        predict.weights = weights  # type: ignore[attr-defined]
        return predict

    return fit


@dataclass
class RidgeDecoder:
    """Ridge regression from fMRI windows to targets, the penalty by leave-segments-out CV.

    ``fit(X, Y, groups)``: ``X`` ``[N, D]``, ``Y`` ``[N, K]``, ``groups`` ``[N]`` the training
    segment of each sample; the segments are dealt into ``folds`` folds, so a fold never splits
    a segment. With ``selection="mse"`` each target keeps the penalty with the least held-out
    squared error summed over the folds; with ``"identification"`` every target shares the
    penalty whose held-out predictions identify their own sample best among the fold's others
    (:func:`pairwise_identification`, averaged over every held-out sample) — for a decoder of
    patterns scored by identification. X is z-scored and Y centred with training statistics
    only. Learned attributes end in ``_``: ``x_mean_``, ``x_scale_``, ``y_mean_``, ``alphas_``
    ``[K]`` (and with ``fit(..., held_out=True)`` the cross-validated predictions
    ``held_out_``).

    The closed form comes from one eigendecomposition per fold (PyTorch), shared by every
    target and penalty: decoding thousands of targets costs about as much as decoding one.
    """

    alphas: Sequence[float] = DEFAULT_ALPHAS
    folds: int = 5
    selection: str = "mse"
    x_mean_: np.ndarray | None = field(default=None, repr=False)
    x_scale_: np.ndarray | None = field(default=None, repr=False)
    y_mean_: np.ndarray | None = field(default=None, repr=False)
    alphas_: np.ndarray | None = field(default=None, repr=False)
    held_out_: np.ndarray | None = field(default=None, repr=False)
    _predict: Any = field(default=None, repr=False)
    _weights: Any = field(default=None, repr=False)

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        groups: np.ndarray,
        held_out: bool = False,
        identify: Sequence[tuple[int, int]] | None = None,
    ) -> RidgeDecoder:
        """Fit on ``X`` ``[N, D]`` → ``Y`` ``[N, K]`` (``groups`` ``[N]``: the segments).

        ``identify``: column ranges ``(start, stop)`` of ``Y`` (target sets, e.g. frames beside
        labels) each of which gets one penalty, chosen by held-out identification; the other
        columns get theirs by squared error. Default: all of ``Y`` with
        ``selection="identification"``, none with ``"mse"``. One fit serves every set: the
        folds' decompositions are shared.

        ``held_out``: also keep ``held_out_`` ``[N, K]``, every sample predicted by the fold's
        map that never saw its segment, each target at its chosen penalty — what the decoder
        makes of unseen fMRI, for a model trained on its output (one more pass over the
        folds' decompositions, which are kept until then)."""
        import torch

        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        groups = np.asarray(groups)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or len(groups) != len(X):
            raise UserError(
                f"Ridge needs X [N, D], Y [N, K] and groups [N]; got {X.shape}, {Y.shape}, "
                f"{groups.shape}."
            )
        check_selection(self.selection)
        segments = np.unique(groups)
        if len(segments) < 2:
            raise UserError("Cross-validation over segments needs at least 2 training segments.")
        fold_of = {s: i % min(self.folds, len(segments)) for i, s in enumerate(segments)}
        fold = np.array([fold_of[g] for g in groups])
        self.x_mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.x_scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        self.y_mean_ = Y.mean(axis=0)
        x = torch.from_numpy(self._x(X))
        y = torch.from_numpy(Y - self.y_mean_)
        alphas = torch.as_tensor(np.asarray(self.alphas, dtype=np.float32))
        if identify is None:
            identify = [(0, Y.shape[1])] if self.selection == "identification" else []
        for start, stop in identify:
            if not 0 <= start < stop <= Y.shape[1]:
                raise UserError(f"identify range {start}:{stop} is not within 0:{Y.shape[1]}.")
        error = torch.zeros(len(alphas), Y.shape[1])  # held-out squared error per target
        hits = torch.zeros(len(alphas), len(identify), dtype=torch.float64)
        offset = torch.from_numpy(self.y_mean_)
        fold_maps = []
        for k in np.unique(fold):
            train, held = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
            # Centre within the fold as the refit centres on all training data.
            x_mean, y_mean = x[train].mean(0), y[train].mean(0)
            predict = _ridge_solver(x[train] - x_mean, alphas)(y[train] - y_mean)
            pred = predict(x[held] - x_mean) + y_mean  # [A, m, K]
            held_y = y[held]
            error += ((pred - held_y) ** 2).sum(dim=1)
            for i, (start, stop) in enumerate(identify):
                # Patterns as they are scored: the training mean added back (part of each).
                part = slice(start, stop)
                truth = held_y[:, part] + offset[part]
                hits[:, i] += pairwise_identification(pred[..., part] + offset[part], truth).sum(1)
            if held_out:
                fold_maps.append((held, x_mean, y_mean, predict))
        best = error.argmin(dim=0)  # [K]
        for i, (start, stop) in enumerate(identify):  # one penalty per identified range
            best[start:stop] = hits[:, i].argmax()
        self.alphas_ = alphas[best].numpy().astype(np.float64)
        if held_out:
            out = torch.empty_like(y)
            for held, x_mean, y_mean, predict in fold_maps:
                out[held] = predict(x[held] - x_mean, best) + y_mean
            self.held_out_ = (out + torch.from_numpy(self.y_mean_)).numpy()
            del fold_maps
        predict = _ridge_solver(x, alphas)(y)
        self._predict = lambda x_new: predict(x_new, best)
        self._weights = predict.weights(best)
        return self

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """The fitted decoder as one affine map on raw features: ``(W [D, K], b [K])`` with
        ``predict(X) = X @ W + b`` (the z-scoring folded in)."""
        if self._predict is None or self._weights is None:
            raise RuntimeError("fit the decoder first")
        weight = self._weights.numpy() / self.x_scale_[:, None]  # [D, K]
        return weight, self.y_mean_ - self.x_mean_ @ weight

    def _x(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float32) - self.x_mean_) / self.x_scale_

    def predict(self, X: np.ndarray) -> np.ndarray:
        import torch

        if self._predict is None:
            raise RuntimeError("fit the decoder first")
        with torch.inference_mode():
            pred = self._predict(torch.from_numpy(self._x(X))).numpy()
        return pred + self.y_mean_
