"""Mean ± SE, bootstrap intervals, t-tests and the Score record."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from mindvideo.evaluation import (
    Score,
    bootstrap_ci,
    mean_se,
    paired_ttest,
    significance_label,
    welch_ttest,
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
