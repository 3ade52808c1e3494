"""Statistics for reporting and comparing runs (paper section 5, Table 1).

A score is a mean over samples with its standard error, a percentile bootstrap confidence interval
and the chance level; runs are compared with two-sample (Welch) or paired t-tests, as Table 1
colours its ablations by significance against the full model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mindvideo.utils import UserError

# Table 1's colour bands: p < 0.0001, p < 0.01, p < 0.05, otherwise not significant.
SIGNIFICANCE_BANDS: tuple[tuple[float, str], ...] = (
    (1e-4, "p<0.0001"),
    (1e-2, "p<0.01"),
    (5e-2, "p<0.05"),
)
NOT_SIGNIFICANT = "p>0.05"

# Resampled means computed per chunk when bootstrapping (bounds memory to ~32 MB of indices).
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22


def _as_samples(x: np.ndarray | list[float], name: str = "samples") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of per-sample scores, got shape {arr.shape}.")
    if arr.size == 0:
        raise UserError(f"{name} is empty; a score needs at least one sample.")
    if not np.isfinite(arr).all():
        raise UserError(f"{name} contains NaN or inf; check the per-sample scores.")
    return arr


def mean_se(x: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean of per-sample scores ``x: [S]``.

    The standard error is ``std(x, ddof=1) / sqrt(S)``; NaN when S < 2.
    """
    arr = _as_samples(x)
    if arr.size < 2:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def bootstrap_ci(
    x: np.ndarray | list[float],
    *,
    rng: np.random.Generator,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``x: [S]``.

    Resamples S values with replacement ``n_resamples`` times with the explicit ``rng`` and returns
    the ``(1 − confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    """
    arr = _as_samples(x)
    if n_resamples < 1:
        raise UserError(f"n_resamples={n_resamples} must be at least 1 (10000 is usual).")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95).")
    s = arr.size
    means = np.empty(n_resamples)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // s)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, s, size=(stop - start, s))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _json_float(v: float | None) -> float | None:
    """Floats for JSON: NaN / inf (undefined statistics) become None (null)."""
    if v is None or not math.isfinite(v):
        return None
    return float(v)


@dataclass(frozen=True)
class Score:
    """A reported metric: mean over samples, its standard error and bootstrap CI, chance level.

    ``chance`` is None for metrics without one (SSIM, PSNR).
    """

    mean: float
    se: float
    chance: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_samples(
        cls,
        x: np.ndarray | list[float],
        *,
        chance: float | None = None,
        rng: np.random.Generator | None = None,
        n_resamples: int = 10_000,
        confidence: float = 0.95,
    ) -> Score:
        """Summarise per-sample scores ``x: [S]``; a bootstrap CI is added when ``rng`` is given."""
        arr = _as_samples(x)
        mean, se = mean_se(arr)
        low = high = None
        if rng is not None and arr.size >= 2:
            low, high = bootstrap_ci(arr, rng=rng, n_resamples=n_resamples, confidence=confidence)
        return cls(mean=mean, se=se, chance=chance, n=int(arr.size), ci_low=low, ci_high=high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"mean", "se", "chance", "n", "ci_low", "ci_high"}``; undefined → None."""
        return {
            "mean": _json_float(self.mean),
            "se": _json_float(self.se),
            "chance": _json_float(self.chance),
            "n": int(self.n),
            "ci_low": _json_float(self.ci_low),
            "ci_high": _json_float(self.ci_high),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        """Inverse of :meth:`to_dict` (None mean/se read back as NaN)."""
        nan = float("nan")
        return cls(
            mean=nan if d.get("mean") is None else float(d["mean"]),
            se=nan if d.get("se") is None else float(d["se"]),
            chance=None if d.get("chance") is None else float(d["chance"]),
            n=int(d["n"]),
            ci_low=None if d.get("ci_low") is None else float(d["ci_low"]),
            ci_high=None if d.get("ci_high") is None else float(d["ci_high"]),
        )


@dataclass(frozen=True)
class TTest:
    """A t-test of run ``a`` against run ``b``: statistic, two-sided p-value, degrees of freedom."""

    statistic: float
    pvalue: float
    df: float
    test: str
    mean_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": _json_float(self.statistic),
            "pvalue": _json_float(self.pvalue),
            "df": _json_float(self.df),
            "test": self.test,
            "mean_difference": _json_float(self.mean_difference),
            "significance": significance_label(self.pvalue),
        }


def welch_ttest(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> TTest:
    """Two-sample t-test without assuming equal variances (Welch), for runs on different samples.

    Table 1 marks each ablation by such a test against the full model. Args: per-sample scores
    ``a: [Sa]``, ``b: [Sb]``.
    """
    return _ttest(a, b, "welch")


def paired_ttest(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> TTest:
    """Paired t-test for two runs scored on the same samples in the same order (``[S]`` each).

    Ablations of one subject reconstruct the same test windows, so pairing removes the
    between-window variance; use :func:`welch_ttest` across subjects.
    """
    return _ttest(a, b, "paired")


def _ttest(
    a: np.ndarray | list[float], b: np.ndarray | list[float], test: Literal["welch", "paired"]
) -> TTest:
    """The Welch or paired t-test of ``a`` against ``b`` (both check the same sample counts)."""
    from scipy import stats

    x, y = _pair(a, b, test == "paired", "t-test")
    if test == "paired":
        res = stats.ttest_rel(x, y)
    else:
        res = stats.ttest_ind(x, y, equal_var=False)
    return TTest(
        statistic=float(res.statistic),
        pvalue=float(res.pvalue),
        df=float(res.df),
        test=test,
        mean_difference=float(x.mean() - y.mean()),
    )


@dataclass(frozen=True)
class RankTest:
    """A distribution-free test of run ``a`` against run ``b``: Wilcoxon's signed-rank (paired) or
    rank-sum (two samples) test, or a permutation test of the mean difference."""

    statistic: float
    pvalue: float
    test: str
    mean_difference: float
    n_resamples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": _json_float(self.statistic),
            "pvalue": _json_float(self.pvalue),
            "test": self.test,
            "mean_difference": _json_float(self.mean_difference),
            "n_resamples": self.n_resamples,
            "significance": significance_label(self.pvalue),
        }


def _pair(a: Any, b: Any, paired: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' per-sample scores, checked for a test of ``a`` against ``b``."""
    x, y = _as_samples(a, "a"), _as_samples(b, "b")
    if paired and x.size != y.size:
        raise UserError(
            f"A paired {what} needs the same samples in both runs, got {x.size} and {y.size}; "
            "use the two-sample test instead (Welch's, for a t-test)."
        )
    if x.size < 2 or y.size < 2:
        raise UserError(f"A {what} needs at least 2 samples in each run.")
    return x, y


def wilcoxon_test(
    a: np.ndarray | list[float], b: np.ndarray | list[float], *, paired: bool
) -> RankTest:
    """Wilcoxon's test of run ``a`` against run ``b``, two-sided.

    ``paired=True``: the signed-rank test of the per-sample differences ``a − b`` (same samples
    in the same order; zero differences dropped, scipy's default), as Mind-Animator compares
    methods; otherwise the rank-sum test (Mann–Whitney U) of two independent samples. The
    p-value is undefined (None in JSON, band ``p>0.05``) when every difference is zero.
    """
    from scipy import stats

    x, y = _pair(a, b, paired, "Wilcoxon test")
    diff = float(x.mean() - y.mean())
    if paired:
        d = x - y
        if not np.any(d != 0):
            return RankTest(float("nan"), float("nan"), "wilcoxon signed-rank", diff)
        res = stats.wilcoxon(d, alternative="two-sided")
        return RankTest(float(res.statistic), float(res.pvalue), "wilcoxon signed-rank", diff)
    res = stats.mannwhitneyu(x, y, alternative="two-sided")
    return RankTest(float(res.statistic), float(res.pvalue), "wilcoxon rank-sum", diff)


def bootstrap_wilcoxon(
    a: np.ndarray | list[float],
    b: np.ndarray | list[float],
    *,
    rng: np.random.Generator,
    n_resamples: int = 100,
) -> RankTest:
    """Mind-Animator's comparison of two methods (``Evaluation_Metrics/bootstrap_with_
    wilcoxon.py``): ``n_resamples`` bootstrap means of ``a`` and, drawn independently, of ``b``,
    then Wilcoxon's signed-rank test of the ``n_resamples`` pairs of means.

    Kept to reproduce their p-values, not as a test to rely on: the bootstrap means scatter by
    the standard error, so the p-value falls as ``n_resamples`` grows for any fixed difference
    (100 in their script), and the resampling ignores any pairing of the windows. Use
    :func:`wilcoxon_test` or :func:`permutation_test` to decide.
    """
    from scipy import stats

    x, y = _as_samples(a, "a"), _as_samples(b, "b")
    if n_resamples < 2:
        raise UserError(f"n_resamples={n_resamples} must be at least 2 (Mind-Animator: 100).")
    mean_x = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    mean_y = y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(axis=1)
    diff = float(x.mean() - y.mean())
    if not np.any(mean_x != mean_y):
        return RankTest(float("nan"), float("nan"), "bootstrap wilcoxon", diff, n_resamples)
    res = stats.wilcoxon(mean_x, mean_y, alternative="two-sided")
    return RankTest(
        float(res.statistic), float(res.pvalue), "bootstrap wilcoxon", diff, n_resamples
    )


def permutation_test(
    a: np.ndarray | list[float],
    b: np.ndarray | list[float],
    *,
    paired: bool,
    rng: np.random.Generator,
    n_resamples: int = 10_000,
) -> RankTest:
    """Permutation test of the mean difference of run ``a`` and run ``b``, two-sided.

    ``paired=True``: the null exchanges the two runs within each sample, so every difference
    ``a_i − b_i`` keeps its size and takes a random sign; otherwise the null pools the samples
    and redraws which ``len(a)`` of them belong to ``a``. ``n_resamples`` draws from ``rng``;
    ``p = (1 + #{|null| ≥ |observed|}) / (1 + n_resamples)`` (never 0, as a Monte Carlo p-value
    should be). The statistic is the observed mean difference.
    """
    x, y = _pair(a, b, paired, "permutation test")
    if n_resamples < 1:
        raise UserError(f"n_resamples={n_resamples} must be at least 1 (10000 is usual).")
    observed = float(x.mean() - y.mean())
    null = np.empty(n_resamples)
    if paired:
        d = x - y
        chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // d.size)
        for start in range(0, n_resamples, chunk):
            stop = min(n_resamples, start + chunk)
            signs = rng.integers(0, 2, size=(stop - start, d.size)) * 2 - 1
            null[start:stop] = (signs * d).mean(axis=1)
    else:
        pooled = np.concatenate([x, y])
        for i in range(n_resamples):
            perm = rng.permutation(pooled)
            null[i] = perm[: x.size].mean() - perm[x.size :].mean()
    # A tolerance keeps the observed arrangement itself from missing its own tie by rounding.
    tol = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.count_nonzero(np.abs(null) >= abs(observed) - tol))
    pvalue = (1 + exceed) / (1 + n_resamples)
    name = "permutation (paired, sign flips)" if paired else "permutation (two samples)"
    return RankTest(observed, pvalue, name, observed, n_resamples)


def significance_label(pvalue: float) -> str:
    """Table 1's band of a p-value: ``p<0.0001``, ``p<0.01``, ``p<0.05`` or ``p>0.05``."""
    if not math.isfinite(pvalue):
        return NOT_SIGNIFICANT
    for threshold, label in SIGNIFICANCE_BANDS:
        if pvalue < threshold:
            return label
    return NOT_SIGNIFICANT
