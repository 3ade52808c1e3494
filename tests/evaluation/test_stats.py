"""Mean ± SE, bootstrap intervals, t-tests and the Score record."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from mindvideo.evaluation import (
    Score,
    bootstrap_ci,
    bootstrap_wilcoxon,
    mean_se,
    paired_ttest,
    permutation_test,
    significance_label,
    welch_ttest,
    wilcoxon_test,
)
from mindvideo.utils import UserError


def test_mean_se():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    mean, se = mean_se(x)
    assert mean == 3.0
    assert se == pytest.approx(math.sqrt(((4 + 1 + 0 + 9) / 3) / 4))
    assert math.isnan(mean_se([0.5])[1])
    with pytest.raises(UserError, match="NaN"):
        mean_se([1.0, float("nan")])


def test_bootstrap_ci_covers_the_mean_narrows_with_n_and_is_seeded():
    rng = np.random.default_rng(0)
    small = rng.normal(0.3, 1.0, size=40)
    large = rng.normal(0.3, 1.0, size=2000)
    lo_s, hi_s = bootstrap_ci(small, rng=np.random.default_rng(1), n_resamples=4000)
    lo_l, hi_l = bootstrap_ci(large, rng=np.random.default_rng(1), n_resamples=4000)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    # For a large sample the percentile interval matches mean ± 1.96 SE.
    _, se = mean_se(large)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * se, rel=0.1)
    again = bootstrap_ci(small, rng=np.random.default_rng(1), n_resamples=4000)
    assert again == (lo_s, hi_s)
    assert bootstrap_ci(small, rng=np.random.default_rng(2), n_resamples=4000) != (lo_s, hi_s)


def test_welch_ttest_matches_the_formula_and_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.80, 0.10, size=60)
    b = rng.normal(0.75, 0.25, size=45)
    res = welch_ttest(a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert res.statistic == pytest.approx(t)
    assert res.df == pytest.approx(df)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert res.pvalue == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert res.mean_difference == pytest.approx(a.mean() - b.mean())


def test_paired_ttest_matches_the_formula_and_needs_equal_lengths():
    rng = np.random.default_rng(4)
    a = rng.normal(0.5, 0.2, size=30)
    b = a - 0.05 + rng.normal(0, 0.05, size=30)
    res = paired_ttest(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert res.statistic == pytest.approx(t)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(abs(t), d.size - 1))
    # Pairing removes the between-sample spread the two-sample test has to carry.
    assert res.pvalue < welch_ttest(a, b).pvalue
    with pytest.raises(UserError, match="Welch"):
        paired_ttest(a, b[:-1])


def test_significance_bands_follow_table1():
    assert significance_label(1e-6) == "p<0.0001"
    assert significance_label(0.005) == "p<0.01"
    assert significance_label(0.03) == "p<0.05"
    assert significance_label(0.2) == "p>0.05"
    assert significance_label(float("nan")) == "p>0.05"


def test_score_to_dict_has_stable_json_keys():
    x = np.linspace(0, 1, 11)
    score = Score.from_samples(x, chance=0.5, rng=np.random.default_rng(0), n_resamples=500)
    d = score.to_dict()
    assert list(d) == ["mean", "se", "chance", "n", "ci_low", "ci_high"]
    assert d["mean"] == pytest.approx(0.5) and d["chance"] == 0.5 and d["n"] == 11
    assert d["ci_low"] < 0.5 < d["ci_high"]
    assert Score.from_dict(json.loads(json.dumps(d))) == score
    single = Score.from_samples([0.7]).to_dict()
    assert single["se"] is None and single["ci_low"] is None and single["chance"] is None
    json.dumps(single, allow_nan=False)


def test_wilcoxon_matches_scipy_paired_and_two_sample():
    rng = np.random.default_rng(5)
    a = rng.normal(0.5, 0.2, size=30)
    b = a - 0.05 + rng.normal(0, 0.05, size=30)
    res = wilcoxon_test(a, b, paired=True)
    ref = stats.wilcoxon(a - b)
    assert res.test == "wilcoxon signed-rank"
    assert res.statistic == ref.statistic and res.pvalue == pytest.approx(ref.pvalue)
    # The signed-rank statistic by hand: the smaller rank sum of the positive / negative d.
    d = a - b
    ranks = stats.rankdata(np.abs(d))
    assert res.statistic == min(ranks[d > 0].sum(), ranks[d < 0].sum())
    assert res.to_dict()["significance"] == significance_label(ref.pvalue)
    two = wilcoxon_test(a, b[:20], paired=False)
    assert two.test == "wilcoxon rank-sum"
    assert two.pvalue == pytest.approx(stats.mannwhitneyu(a, b[:20]).pvalue)
    same = wilcoxon_test(a, a, paired=True)
    assert math.isnan(same.pvalue) and same.to_dict()["pvalue"] is None
    with pytest.raises(UserError, match="two-sample"):
        wilcoxon_test(a, b[:-1], paired=True)


def test_permutation_test_matches_exact_enumeration():
    """With 8 pairs the sign-flip null has 256 arrangements: the Monte Carlo p-value must land
    on the exact one, and the two-sample version on the exact 70 splits of 4 + 4."""
    import itertools

    a = np.array([0.9, 0.7, 0.8, 0.6, 0.75, 0.85, 0.65, 0.7])
    b = np.array([0.6, 0.72, 0.5, 0.55, 0.7, 0.6, 0.66, 0.5])
    d = a - b
    signs = np.array(list(itertools.product([-1, 1], repeat=8)))
    exact = np.mean(np.abs((signs * d).mean(1)) >= abs(d.mean()) - 1e-12)
    res = permutation_test(a, b, paired=True, rng=np.random.default_rng(0), n_resamples=20000)
    assert res.pvalue == pytest.approx(exact, abs=0.005)
    assert res.statistic == pytest.approx(d.mean()) and res.n_resamples == 20000
    x, y = a[:4], b[:4]
    pooled = np.concatenate([x, y])
    splits = [
        pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()
        for c in itertools.combinations(range(8), 4)
    ]
    exact2 = np.mean(np.abs(splits) >= abs(x.mean() - y.mean()) - 1e-12)
    res2 = permutation_test(x, y, paired=False, rng=np.random.default_rng(1), n_resamples=20000)
    assert res2.pvalue == pytest.approx(exact2, abs=0.01)
    # Seeded, and never 0.
    again = permutation_test(a, b, paired=True, rng=np.random.default_rng(0), n_resamples=20000)
    assert again.pvalue == res.pvalue
    far = permutation_test(a + 10, b, paired=True, rng=np.random.default_rng(0), n_resamples=99)
    assert far.pvalue == pytest.approx(1 / 100)


def test_bootstrap_wilcoxon_is_mind_animators_procedure_and_shrinks_with_resamples():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.52, 0.1, 100), rng.normal(0.5, 0.1, 80)
    res = bootstrap_wilcoxon(a, b, rng=np.random.default_rng(1))
    # Their script: 100 bootstrap means of each method, drawn independently, then the
    # signed-rank test of the 100 pairs of means.
    r = np.random.default_rng(1)
    mean_a = a[r.integers(0, 100, (100, 100))].mean(axis=1)
    mean_b = b[r.integers(0, 80, (100, 80))].mean(axis=1)
    assert res.pvalue == pytest.approx(stats.wilcoxon(mean_a, mean_b).pvalue)
    assert res.test == "bootstrap wilcoxon" and res.n_resamples == 100
    # The same data, more resamples: a smaller p-value - why it is not the test to decide by.
    many = bootstrap_wilcoxon(a, b, rng=np.random.default_rng(1), n_resamples=5000)
    assert many.pvalue < res.pvalue / 100
    assert wilcoxon_test(a, b, paired=False).pvalue > many.pvalue
