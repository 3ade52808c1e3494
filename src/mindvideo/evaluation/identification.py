"""Classifier-free N-way identification: of patterns (pixels, embeddings) among samples, and
of labels from decoded class scores (strict: the true class against N − 1 distractor classes).

Used by the linear ceiling (:mod:`mindvideo.evaluation.baseline`) and by pixel identification of
reconstructions (:mod:`mindvideo.evaluation.metrics`). Ties count as failures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mindvideo.utils import UserError

__all__ = [
    "above_shuffled",
    "derangements",
    "label_identification",
    "pattern_identification",
    "shuffled_chance",
]


def _corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b``: ``[len(a), len(b)]``."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _nway_success(
    scores: np.ndarray,
    own: np.ndarray,
    n_way: int,
    trials: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per sample ``i``, the fraction of ``trials`` in which ``scores[i, own[i]]`` beats the
    scores of ``n_way − 1`` distractor columns drawn without replacement from all columns but
    ``own[i]`` (ties count as failures). ``scores`` ``[N, C]``; returns ``[N]``."""
    n, n_cols = scores.shape
    if n_way - 1 > n_cols - 1:
        raise UserError(
            f"{n_way}-way identification needs {n_way - 1} distractors; only {n_cols - 1} are "
            "available. Lower n_way."
        )
    rows = np.arange(n)[:, None]
    target = scores[np.arange(n), own][:, None]  # [N, 1]
    wins = np.zeros(n)
    for _ in range(trials):
        # n_way - 1 of the other n_cols - 1 columns: random keys, the smallest k, then skip own.
        pick = np.argpartition(rng.random((n, n_cols - 1)), n_way - 2, axis=1)[:, : n_way - 1]
        pick = pick + (pick >= own[:, None])
        wins += (target > scores[rows, pick]).all(axis=1)
    return wins / trials


def pattern_identification(
    pred: np.ndarray, truth: np.ndarray, n_way: int, trials: int = 100, seed: int = 0
) -> tuple[np.ndarray, float]:
    """N-way identification of patterns (pixels, embeddings): sample ``i`` succeeds in a trial
    when its prediction correlates more with ``truth[i]`` than with each of ``n_way − 1`` other
    samples' truths. Returns the per-sample success rates ``[N]`` and the chance ``1/n_way``."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    if pred.shape != truth.shape:
        raise UserError(f"Predictions {pred.shape} and ground truth {truth.shape} differ.")
    rng = np.random.default_rng(seed)
    r = _corr_rows(pred, truth)  # [N, N]
    rate = _nway_success(r, np.arange(len(pred)), n_way, trials, rng)
    return rate, 1.0 / n_way


def label_identification(
    scores: np.ndarray, labels: np.ndarray, n_way: int, trials: int = 100, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Strict N-way identification of labels: ``scores`` ``[N, C]`` (decoded class scores),
    ``labels`` ``[N]`` the true classes; sample ``i`` succeeds in a trial when its true class
    scores above ``n_way − 1`` distractor classes drawn from the other ``C − 1``. Chance
    ``1/n_way``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    rate = _nway_success(scores, labels, n_way, trials, rng)
    return rate, 1.0 / n_way


# --------------------------------------------------------------------------------------------
# Empirical chance: the same score with the pairing shuffled
# --------------------------------------------------------------------------------------------


def derangements(n: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random permutations of ``range(n)`` without fixed points (``n >= 2``): no sample
    keeps its own ground truth."""
    if n < 2:
        raise UserError("A shuffled pairing needs at least 2 samples.")
    out: list[np.ndarray] = []
    while len(out) < count:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            out.append(perm)
    return out


def shuffled_chance(
    score_fn: Callable[[np.ndarray], float],
    n: int,
    repeats: int = 20,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Empirical chance of a score: ``score_fn(perm)`` re-pairs the ``n`` outputs with the ground
    truths ``perm`` (a derangement); the mean and sd over ``repeats`` pairings."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values = [float(score_fn(perm)) for perm in derangements(n, repeats, rng)]
    return float(np.mean(values)), float(np.std(values, ddof=1) if repeats > 1 else 0.0)


def above_shuffled(value: float, sem: float, shuffled: float, shuffled_sd: float) -> bool:
    """Whether a score beats its shuffled chance by more than two combined standard deviations
    (the score's standard error and the pairings' sd)."""
    return value > shuffled + 2.0 * math.hypot(sem or 0.0, shuffled_sd or 0.0)
