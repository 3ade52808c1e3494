"""N-way top-K identification: hand-computed answers, the authors' rule, chance levels, seeds."""

import math

import numpy as np
import pytest
from scipy import stats

from mindvideo.evaluation import (
    chance_level,
    ground_truth_classes,
    nway_shuffled_baseline,
    nway_topk,
    sample_distractors,
)
from mindvideo.utils import UserError

C = 10
# Ground truth whose top-3 classes are 7, 8, 9 (9 is the top-1) for every sample.
GT_ROW = np.linspace(0.01, 0.1, C) / np.linspace(0.01, 0.1, C).sum()


def _rows(row: np.ndarray, s: int) -> np.ndarray:
    return np.tile(row, (s, 1))


def _pred(values: dict[int, float], rest: float = 0.01) -> np.ndarray:
    p = np.full(C, rest)
    for cls, v in values.items():
        p[cls] = v
    return p / p.sum()


def _authors_loop(pred, gt_classes, distractors, top_k):
    """The authors' per-trial rule written literally (stable ascending argsort, gt first)."""
    out = []
    for p, gts, draws in zip(pred, gt_classes, distractors, strict=True):
        corrects = 0
        for idxs in draws:
            for g in gts:
                picked = np.concatenate([[p[g]], p[idxs]])
                if 0 in np.argsort(picked, kind="stable")[-top_k:]:
                    corrects += 1
                    break
        out.append(corrects / len(draws))
    return np.array(out)


def test_ground_truth_classes_are_the_top3():
    assert ground_truth_classes(_rows(GT_ROW, 2), 3).tolist() == [[7, 8, 9], [7, 8, 9]]
    assert ground_truth_classes(_rows(GT_ROW, 1), 1).tolist() == [[9]]


@pytest.mark.parametrize("mode", ["compat", "strict"])
@pytest.mark.parametrize("n_way", [2, 5, 8])
def test_all_mass_on_the_top_gt_class_always_succeeds(mode, n_way):
    pred = _rows(_pred({9: 0.9}), 5)
    res = nway_topk(pred, _rows(GT_ROW, 5), n_way, mode=mode, rng=np.random.default_rng(0))
    assert res.per_sample.tolist() == [1.0] * 5
    assert res.mean == 1.0 and res.se == 0.0 and res.n == 5


def test_any_of_the_top3_counts_in_compat_but_only_top1_in_strict():
    # The prediction favours gt class 7 (third of the top-3); gt's top-1 (9) is below every other.
    pred = _rows(_pred({7: 0.8, 9: 0.001}), 4)
    gt = _rows(GT_ROW, 4)
    compat = nway_topk(pred, gt, 8, mode="compat", rng=np.random.default_rng(0))
    strict = nway_topk(pred, gt, 8, mode="strict", rng=np.random.default_rng(0))
    assert compat.mean == 1.0
    assert strict.mean == 0.0


def test_a_non_gt_class_above_every_gt_class_follows_the_hypergeometric_law():
    # Class 0 (never in gt) beats every gt class: a trial fails iff class 0 is drawn, which among
    # N-1 distinct draws from the 7 non-gt classes happens with probability (N-1)/7.
    s = 400
    pred = _rows(_pred({0: 0.5, 7: 0.1, 8: 0.1, 9: 0.1}), s)
    gt = _rows(GT_ROW, s)
    for n_way in (2, 4):
        res = nway_topk(pred, gt, n_way, rng=np.random.default_rng(1))
        expected = 1 - (n_way - 1) / 7
        assert abs(res.mean - expected) < 3 * res.se + 1e-9, (n_way, res.mean, expected)
    # With all 7 non-gt classes drawn (8-way), class 0 is always there: top-1 never succeeds,
    # top-2 always does.
    assert nway_topk(pred, gt, 8, top_k=1, rng=np.random.default_rng(2)).mean == 0.0
    assert nway_topk(pred, gt, 8, top_k=2, rng=np.random.default_rng(2)).mean == 1.0


def test_ties_count_against_the_ground_truth():
    uniform = np.full((3, C), 1.0 / C)
    for mode in ("compat", "strict"):
        assert (
            nway_topk(uniform, _rows(GT_ROW, 3), 2, mode=mode, rng=np.random.default_rng(0)).mean
            == 0.0
        )


@pytest.mark.parametrize("mode,n_gt", [("compat", 3), ("strict", 1)])
@pytest.mark.parametrize("n_way,top_k", [(2, 1), (5, 2), (12, 3)])
def test_equals_the_authors_rule_on_the_same_draws(mode, n_gt, n_way, top_k):
    rng = np.random.default_rng(7)
    s, c, trials = 30, 20, 40
    pred = rng.dirichlet(np.full(c, 0.3), size=s)
    gt = rng.dirichlet(np.full(c, 0.3), size=s)
    res = nway_topk(pred, gt, n_way, top_k, trials, mode, rng=np.random.default_rng(11))
    gt_classes = ground_truth_classes(gt, n_gt)
    draws = sample_distractors(gt_classes, c, n_way - 1, trials, np.random.default_rng(11))
    np.testing.assert_array_equal(res.per_sample, _authors_loop(pred, gt_classes, draws, top_k))


def test_chance_level_closed_form():
    assert chance_level(2, 1, "compat") == pytest.approx(0.75)
    assert chance_level(50, 1, "compat") == pytest.approx(3 / 52)
    assert chance_level(2, 1, "strict") == pytest.approx(0.5)
    assert chance_level(50, 1, "strict") == pytest.approx(0.02)
    assert chance_level(50, 5, "strict") == pytest.approx(0.1)
    # The sum over "j distractors above the best gt class" that the closed form collapses.
    for n_way in (2, 5, 10, 50, 100):
        for top_k in (1, 2, 5):
            if top_k >= n_way:
                continue
            for g in (1, 3):
                n = n_way - 1
                total = sum(math.comb(n + g - 1 - j, g - 1) for j in range(min(top_k, n + 1)))
                mode = "strict" if g == 1 else "compat"
                assert chance_level(n_way, top_k, mode) == pytest.approx(
                    total / math.comb(n + g, g)
                )


@pytest.mark.parametrize("mode", ["compat", "strict"])
@pytest.mark.parametrize("n_way,top_k", [(2, 1), (50, 1), (10, 3)])
def test_random_predictions_score_at_chance(mode, n_way, top_k):
    rng = np.random.default_rng(123)
    s, c = 1500, 60
    pred = rng.dirichlet(np.ones(c), size=s)
    gt = rng.dirichlet(np.ones(c), size=s)
    res = nway_topk(pred, gt, n_way, top_k, mode=mode, rng=rng)
    assert res.chance == pytest.approx(chance_level(n_way, top_k, mode))
    assert abs(res.mean - res.chance) < 3 * res.se, (res.mean, res.chance, res.se)


def test_seed_reproduces_and_different_seeds_differ():
    rng = np.random.default_rng(0)
    pred = rng.dirichlet(np.ones(30), size=50)
    gt = rng.dirichlet(np.ones(30), size=50)
    a = nway_topk(pred, gt, 5, rng=np.random.default_rng(42))
    b = nway_topk(pred, gt, 5, rng=np.random.default_rng(42))
    c = nway_topk(pred, gt, 5, rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a.per_sample, b.per_sample)
    assert not np.array_equal(a.per_sample, c.per_sample)


def test_distractors_are_distinct_uniform_and_never_ground_truth():
    rng = np.random.default_rng(5)
    s, c, trials, n = 40, 25, 200, 6
    excluded = np.stack([rng.choice(c, 3, replace=False) for _ in range(s)])
    draws = sample_distractors(excluded, c, n, trials, rng)
    assert draws.shape == (s, trials, n)
    assert not (draws[..., :, None] == excluded[:, None, None, :]).any()
    assert (np.sort(draws, axis=-1)[..., 1:] != np.sort(draws, axis=-1)[..., :-1]).all()
    # Every allowed class is drawn equally often (chi-square on one sample's draws).
    counts = np.bincount(draws[0].ravel(), minlength=c)
    allowed = np.setdiff1d(np.arange(c), excluded[0])
    assert (counts[excluded[0]] == 0).all()
    assert stats.chisquare(counts[allowed]).pvalue > 1e-3


def test_drawing_in_chunks_consumes_the_generator_like_one_draw():
    excluded = np.tile([0, 1, 2], (6, 1))
    whole = sample_distractors(excluded, 12, 4, 10, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    parts = [sample_distractors(excluded[i : i + 2], 12, 4, 10, rng) for i in range(0, 6, 2)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_too_few_classes_and_bad_settings_are_user_errors():
    pred = np.full((2, C), 1.0 / C)
    with pytest.raises(UserError, match="n_way <= 8"):
        nway_topk(pred, pred, 9, rng=np.random.default_rng(0))
    assert nway_topk(pred, pred, 10, mode="strict", rng=np.random.default_rng(0)).n == 2
    with pytest.raises(UserError, match="top_k"):
        nway_topk(pred, pred, 2, top_k=2, rng=np.random.default_rng(0))
    with pytest.raises(UserError, match="samples, classes"):
        nway_topk(pred, pred[:, :5], 2, rng=np.random.default_rng(0))
    with pytest.raises(UserError, match="compat"):
        nway_topk(pred, pred, 2, mode="loose", rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_trial_se_is_the_authors_binomial_plus_minus():
    pred = _rows(_pred({0: 0.5, 7: 0.1, 8: 0.1, 9: 0.1}), 20)
    res = nway_topk(pred, _rows(GT_ROW, 20), 3, rng=np.random.default_rng(0))
    r = res.per_sample
    assert res.trial_se == pytest.approx(np.mean(np.sqrt(r * (1 - r) / 100)))


def test_shuffled_baseline_reveals_a_biased_classifier():
    rng = np.random.default_rng(9)
    s, c = 300, 60
    # Every input, real or reconstructed, rates classes 0..2 highest: unrelated videos still
    # "succeed" far above the analytic chance level.
    logits_pred = rng.normal(size=(s, c))
    logits_gt = rng.normal(size=(s, c))
    logits_pred[:, :3] += 4.0
    logits_gt[:, :3] += 4.0
    pred = np.exp(logits_pred) / np.exp(logits_pred).sum(1, keepdims=True)
    gt = np.exp(logits_gt) / np.exp(logits_gt).sum(1, keepdims=True)
    base = nway_shuffled_baseline(pred, gt, 50, rng=rng)
    assert base.mean > base.chance + 0.5
