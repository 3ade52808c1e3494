"""N-way top-K identification test (paper section 4.3, footnote 3; DESIGN.md "Evaluation, exactly").

One sample (a frame for the image classifier, a clip for the video classifier) is scored as follows:

1. ``gt`` = the top-3 classes of the classifier on the ground truth ("compat", the authors' rule)
   or its top-1 class ("strict").
2. ``p`` = the classifier's probabilities on the reconstruction.
3. Per trial, draw N−1 distractor classes uniformly without replacement from the classes not in
   ``gt``. The trial succeeds if, for any ``g`` in ``gt``, ``p[g]`` is within the top-K of
   ``{p[g]} ∪ p[distractors]``.
4. The sample's score is its success rate over the trials (100 in the paper); a run reports the mean
   over samples with its standard error, next to the chance level.

Everything here is a pure function of probability arrays and an explicit, seeded
``numpy.random.Generator``; the global numpy RNG is never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mindvideo.evaluation.identification import derangements
from mindvideo.utils import UserError

Mode = Literal["compat", "strict"]
MODES: tuple[str, ...] = ("compat", "strict")
COMPAT_GT_CLASSES = 3
"""Ground-truth classes per sample in compat mode (the paper's footnote 3: top-3)."""

# Random keys drawn per chunk of samples when sampling distractors (bounds memory to ~64 MB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class NWayResult:
    """The outcome of one N-way top-K test over S samples.

    Attributes:
        per_sample: ``[S]`` success rate of each sample over its trials.
        mean: mean of ``per_sample``.
        se: standard error of that mean over samples (``std(ddof=1) / sqrt(S)``; NaN when S < 2).
        chance: the success rate of a reconstruction unrelated to the ground truth
            (:func:`chance_level`).
        n: number of samples S.
        n_way, top_k, trials, mode: the test's settings.
        trial_se: the mean over samples of the binomial standard error within a sample,
            ``sqrt(r (1 − r) / trials)`` — the "±" printed by the authors' released evaluation
            script and shown in the paper's Table 1 (kept for comparison; ``se`` is the one to use).
    """

    per_sample: np.ndarray
    mean: float
    se: float
    chance: float
    n: int
    n_way: int
    top_k: int
    trials: int
    mode: str
    trial_se: float


def _gt_count(mode: str, n_gt: int = COMPAT_GT_CLASSES) -> int:
    if mode == "compat":
        return n_gt
    if mode == "strict":
        return 1
    raise UserError(f"Unknown N-way mode {mode!r}; use 'compat' (top-3 ground truth) or 'strict'.")


def _check_test(n_way: int, top_k: int, trials: int | None = None) -> None:
    if n_way < 2:
        raise UserError(f"n_way={n_way} is not a test; use n_way >= 2 (the paper uses 2 and 50).")
    if not 1 <= top_k < n_way:
        raise UserError(
            f"top_k={top_k} with n_way={n_way} always or never succeeds; use 1 <= top_k < n_way."
        )
    if trials is not None and trials < 1:
        raise UserError(f"trials={trials} must be at least 1 (the paper uses 100).")


def chance_level(
    n_way: int, top_k: int = 1, mode: Mode = "compat", n_gt: int = COMPAT_GT_CLASSES
) -> float:
    """Success rate of a reconstruction whose class probabilities are unrelated to the ground truth.

    With G ground-truth classes (compat: G = ``n_gt`` = 3, strict: G = 1) and n = N − 1 distractors,
    the G + n probabilities compared in a trial are exchangeable, so every arrangement of their
    order is equally likely. A trial succeeds iff fewer than K distractors rank above the best
    ground-truth class (if any ``g`` is in the top-K, the best one is). The best ground-truth class
    has exactly j distractors above it with probability ``C(n + G − 1 − j, G − 1) / C(n + G, G)``;
    summing j = 0..K−1 (hockey-stick identity) gives the closed form

        chance = 1 − C(N − 1 + G − K, G) / C(N − 1 + G, G).

    Strict (G = 1): K / N. Compat top-1 (G = 3): 3 / (N + 2), e.g. 2-way 3/4, 50-way 3/52.

    This is exact for exchangeable predictions; a classifier that favours some classes on every
    input can sit above it even for unrelated videos (see :func:`nway_shuffled_baseline`).
    """
    _check_test(n_way, top_k)
    g = _gt_count(mode, n_gt)
    n = n_way - 1
    return 1.0 - math.comb(n + g - top_k, g) / math.comb(n + g, g)


def ground_truth_classes(gt_probs: np.ndarray, n_gt: int) -> np.ndarray:
    """The top-``n_gt`` classes of the classifier on the ground truth.

    Args:
        gt_probs: ``[S, C]`` probabilities (or logits: only their order matters).
        n_gt: classes kept per sample.

    Returns:
        ``[S, n_gt]`` class indices, ascending by probability (the authors' ``argsort()[-3:]``;
        a stable sort, so ties go to the higher class index as in their script).
    """
    return np.argsort(gt_probs, axis=-1, kind="stable")[:, -n_gt:]


def sample_distractors(
    excluded: np.ndarray,
    n_classes: int,
    n_distractors: int,
    trials: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw distractor classes uniformly without replacement from the classes not excluded.

    Each trial's draw is the ``n_distractors`` smallest of i.i.d. uniform keys over the allowed
    classes (excluded classes get key +inf), which is a uniformly random subset; vectorised over
    samples and trials.

    Args:
        excluded: ``[S, G]`` class indices never drawn (the sample's ground-truth classes).
        n_classes: C, the classifier's number of classes.
        n_distractors: N − 1 classes per trial.
        trials: T trials per sample.
        rng: the explicit random generator (consumed in sample order, so drawing all samples at
            once or sample by sample gives the same classes).

    Returns:
        ``[S, T, N − 1]`` int64 class indices, distinct within a trial and never in ``excluded``.
    """
    excluded = np.asarray(excluded)
    if excluded.ndim != 2:
        raise UserError(f"excluded classes must be [S, G], got shape {excluded.shape}.")
    s, g = excluded.shape
    allowed = n_classes - g
    if n_distractors > allowed:
        raise UserError(
            f"{n_distractors} distractor classes are needed but the classifier has only {allowed} "
            f"classes outside the {g} ground-truth classes; use n_way <= {allowed + 1} or a "
            "classifier with more classes."
        )
    out = np.empty((s, trials, n_distractors), dtype=np.int64)
    if n_distractors == 0:
        return out
    chunk = max(1, _CHUNK_ELEMENTS // max(1, trials * n_classes))
    for start in range(0, s, chunk):
        stop = min(s, start + chunk)
        keys = rng.random((stop - start, trials, n_classes))
        rows = np.arange(stop - start)[:, None, None]
        keys[rows, np.arange(trials)[None, :, None], excluded[start:stop, None, :]] = np.inf
        if n_distractors < n_classes:
            picked = np.argpartition(keys, n_distractors - 1, axis=-1)[..., :n_distractors]
        else:
            picked = np.broadcast_to(np.arange(n_classes), keys.shape).copy()
        out[start:stop] = picked
    return out


def _check_probs(pred_probs: np.ndarray, gt_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_probs, dtype=np.float64)
    gt = np.asarray(gt_probs, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise UserError(
            f"Prediction and ground-truth probabilities must both be [samples, classes]; got "
            f"{pred.shape} and {gt.shape}."
        )
    if pred.shape[0] == 0:
        raise UserError("There are no samples to score; pass at least one reconstruction.")
    if not (np.isfinite(pred).all() and np.isfinite(gt).all()):
        raise UserError("Classifier probabilities contain NaN or inf; check the classifier inputs.")
    return pred, gt


def nway_topk(
    pred_probs: np.ndarray,
    gt_probs: np.ndarray,
    n_way: int,
    top_k: int = 1,
    trials: int = 100,
    mode: Mode = "compat",
    *,
    rng: np.random.Generator,
    n_gt: int = COMPAT_GT_CLASSES,
) -> NWayResult:
    """N-way top-K identification test of paper section 4.3 on S samples.

    Args:
        pred_probs: ``[S, C]`` classifier probabilities (softmax) on the reconstructions.
        gt_probs: ``[S, C]`` classifier probabilities on the ground truth (only their order is
            used, to pick the ground-truth classes).
        n_way: N, classes compared per trial (ground-truth class + N − 1 distractors).
        top_k: K; a trial succeeds if a ground-truth class is among the K most probable.
        trials: trials per sample (100 in the paper).
        mode: ``"compat"`` (top-3 ground-truth classes, any may succeed: the authors' rule) or
            ``"strict"`` (top-1 ground-truth class).
        rng: explicit seeded generator for the distractor draws.
        n_gt: ground-truth classes in compat mode.

    Returns:
        :class:`NWayResult` with per-sample success rates ``[S]``, their mean, standard error and
        the chance level.
    """
    _check_test(n_way, top_k, trials)
    pred, gt = _check_probs(pred_probs, gt_probs)
    s, c = pred.shape
    gt_classes = ground_truth_classes(gt, _gt_count(mode, n_gt))  # [S, G]

    # A ground-truth class g succeeds iff fewer than K distractors have p >= p[g] (ties count
    # against g, as in a stable ascending argsort with g first); if any g succeeds the most
    # probable one does, so "any g in gt" reduces to the best one.
    best_gt = np.take_along_axis(pred, gt_classes, axis=1).max(axis=1)  # [S]
    per_sample = np.empty(s)
    # Chunks of samples bound memory; the generator is consumed in sample order either way.
    chunk = max(1, _CHUNK_ELEMENTS // (trials * c))
    for start in range(0, s, chunk):
        stop = min(s, start + chunk)
        distractors = sample_distractors(gt_classes[start:stop], c, n_way - 1, trials, rng)
        p_distractors = pred[np.arange(start, stop)[:, None, None], distractors]  # [s, T, N-1]
        above = (p_distractors >= best_gt[start:stop, None, None]).sum(axis=-1)  # [s, T]
        per_sample[start:stop] = (above < top_k).mean(axis=-1)

    se = float(per_sample.std(ddof=1) / math.sqrt(s)) if s > 1 else float("nan")
    trial_se = float(np.sqrt(per_sample * (1.0 - per_sample) / trials).mean())
    return NWayResult(
        per_sample=per_sample,
        mean=float(per_sample.mean()),
        se=se,
        chance=chance_level(n_way, top_k, mode, n_gt),
        n=s,
        n_way=n_way,
        top_k=top_k,
        trials=trials,
        mode=mode,
        trial_se=trial_se,
    )


def nway_shuffled_baseline(
    pred_probs: np.ndarray,
    gt_probs: np.ndarray,
    n_way: int,
    *test: Any,
    rng: np.random.Generator,
    **settings: Any,
) -> NWayResult:
    """The same test with each reconstruction paired with another sample's ground truth.

    An empirical chance level that keeps the classifier's own class preferences (a classifier that
    rates "web site" high on every frame inflates both real and shuffled scores; the analytic
    :func:`chance_level` assumes no such preference). The pairing is a uniformly random
    permutation without fixed points, drawn from ``rng``.

    Args and returns as :func:`nway_topk` (``test``: ``top_k``, ``trials``, ``mode``;
    ``settings``: ``n_gt``); needs S >= 2.
    """
    pred, gt = _check_probs(pred_probs, gt_probs)
    if pred.shape[0] < 2:
        raise UserError("A shuffled baseline needs at least 2 samples to pair with each other.")
    (perm,) = derangements(pred.shape[0], 1, rng)
    return nway_topk(pred, gt[perm], n_way, *test, rng=rng, **settings)
