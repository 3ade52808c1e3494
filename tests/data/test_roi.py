"""ROI selection by reproducibility (paper 3.2) on synthetic repeated viewings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mindvideo.data.preprocess import zscore
from mindvideo.data.roi import ReproducibilityROI, reproducibility
from mindvideo.utils import UserError

N_T, N_V, N_SEG = 120, 1000, 18
RESPONSIVE = np.zeros(N_V, dtype=bool)
RESPONSIVE[np.random.default_rng(100).choice(N_V, N_V // 5, replace=False)] = True  # 20%


def make_segments(seed: int, n_seg: int = N_SEG, n_rep: int = 2, snr: float = 0.5):
    """Per segment, ``n_rep`` z-scored viewings; responsive vertices share a stimulus signal."""
    rng = np.random.default_rng(seed)
    segments = []
    for _ in range(n_seg):
        signal = rng.standard_normal((N_T, N_V)) * snr * RESPONSIVE
        reps = [zscore(signal + rng.standard_normal((N_T, N_V))) for _ in range(n_rep)]
        segments.append(tuple(reps))
    return segments


@pytest.fixture(scope="module")
def train_segments():
    return make_segments(seed=0)


@pytest.fixture(scope="module")
def fitted(train_segments):
    return ReproducibilityROI(alpha=0.01, top_fraction=0.5).fit(train_segments)


def reference_fisher_z(segments) -> np.ndarray:
    """[S, V] Fisher z of the rep-1 / rep-2 Pearson correlation, one vertex at a time."""
    return np.array(
        [
            [np.arctanh(np.corrcoef(a[:, v], b[:, v])[0, 1]) for v in range(a.shape[1])]
            for a, b in segments
        ]
    )


def test_recovers_the_reproducible_vertices(train_segments):
    roi = ReproducibilityROI(top_fraction=1.0).fit(train_segments)
    sel = roi.mask_
    precision = (sel & RESPONSIVE).sum() / sel.sum()
    recall = (sel & RESPONSIVE).sum() / RESPONSIVE.sum()
    assert precision >= 0.95
    assert recall >= 0.8
    assert roi.mask_.dtype == bool and roi.mask_.shape == (N_V,)
    np.testing.assert_array_equal(roi.indices_, np.flatnonzero(roi.mask_))
    assert roi.n_segments_ == N_SEG and roi.n_repetitions_ == 2 and roi.n_features_in_ == N_V


def test_statistics_match_scipy_ttest_with_dof_segments_minus_one(train_segments, fitted):
    z = reference_fisher_z(train_segments[:3] + train_segments[3:])  # [18, V]
    np.testing.assert_allclose(fitted.mean_z_, z.mean(axis=0), atol=1e-5)
    ref = stats.ttest_1samp(z, 0.0, axis=0, alternative="greater")
    np.testing.assert_allclose(fitted.t_, ref.statistic, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fitted.p_, ref.pvalue, rtol=1e-3, atol=1e-12)
    assert ref.df[0] == N_SEG - 1 == 17
    # DOF 17 by hand: p = survival function of Student's t with 17 degrees of freedom.
    np.testing.assert_allclose(fitted.p_, stats.t.sf(fitted.t_, df=17), rtol=1e-6, atol=1e-14)


def test_bonferroni_threshold(train_segments, fitted):
    assert fitted.threshold_p_ == pytest.approx(0.01 / N_V)
    np.testing.assert_array_equal(fitted.significant_, fitted.p_ < 0.01 / N_V)
    plain = ReproducibilityROI(correction="none", top_fraction=1.0).fit(train_segments)
    np.testing.assert_array_equal(plain.significant_, plain.p_ < 0.01)
    # There are vertices between the two thresholds: Bonferroni really is stricter here.
    between = (fitted.p_ >= 0.01 / N_V) & (fitted.p_ < 0.01)
    assert between.any()
    assert not (fitted.significant_ & between).any() and plain.significant_[between].all()


def test_top_fraction_keeps_the_most_significant_half_of_the_significant(fitted):
    n_sig = int(fitted.significant_.sum())
    assert fitted.mask_.sum() == math.ceil(0.5 * n_sig)
    assert (fitted.mask_ <= fitted.significant_).all()
    kept_t = fitted.t_[fitted.mask_]
    dropped_t = fitted.t_[fitted.significant_ & ~fitted.mask_]
    assert kept_t.min() >= dropped_t.max()


def test_more_than_two_repetitions_average_the_pairwise_fisher_z():
    segs = make_segments(seed=1, n_seg=3, n_rep=3)
    z = reproducibility(segs[0])
    a = segs[0]
    ref = np.mean(
        [
            [np.arctanh(np.corrcoef(a[i][:, v], a[j][:, v])[0, 1]) for v in range(N_V)]
            for i, j in itertools.combinations(range(3), 2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(z, ref, atol=1e-5)
    roi = ReproducibilityROI(top_fraction=1.0, correction="none").fit(segs)
    assert roi.n_repetitions_ == 3


def test_transform_selects_roi_voxels_in_file_order(fitted):
    x = np.random.default_rng(2).standard_normal((4, 7, N_V)).astype(np.float32)
    y = fitted.transform(x)
    assert y.shape == (4, 7, fitted.mask_.sum())
    np.testing.assert_array_equal(y, x[..., fitted.mask_])
    roi = ReproducibilityROI(top_fraction=1.0, correction="none")
    out = roi.fit_transform(make_segments(3, n_seg=3))
    assert len(out) == 3 and len(out[0]) == 2
    assert out[0][0].shape == (N_T, roi.mask_.sum())


def test_test_data_never_enters_a_fitted_statistic(train_segments):
    roi = ReproducibilityROI().fit(train_segments)
    before = {k: np.copy(v) for k, v in vars(roi).items() if isinstance(v, np.ndarray)}
    # Test data with a *different* set of reproducible vertices, at very high SNR.
    test = [
        tuple(zscore(r) for r in reps) for reps in make_segments(seed=7, n_seg=5, n_rep=10, snr=5.0)
    ]
    for reps in test:
        for rep in reps:
            roi.transform(rep)
    for k, v in vars(roi).items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[k], err_msg=k)
    # The fitted object holds no reference to (no view of) any array it was given.
    inputs = [rep for reps in train_segments for rep in reps]
    for k, v in vars(roi).items():
        if isinstance(v, np.ndarray):
            assert not any(np.shares_memory(v, x) for x in inputs), k
    # Refitting on the same training data with other test data around gives the same ROI.
    again = ReproducibilityROI().fit(iter(train_segments))  # a generator works too
    np.testing.assert_array_equal(again.mask_, roi.mask_)


def test_errors_are_clear(train_segments, fitted):
    with pytest.raises(UserError, match="at least 2 training segments"):
        ReproducibilityROI().fit(train_segments[:1])
    with pytest.raises(UserError, match="segment 2 has 1 repetition"):
        ReproducibilityROI().fit([train_segments[0], train_segments[1][:1]])
    a, b = train_segments[0]
    with pytest.raises(UserError, match="same shape"):
        ReproducibilityROI().fit([(a, b[:-1]), (a, b)])
    with pytest.raises(UserError, match="segment 2 has 999 vertices but segment 1 has 1000"):
        ReproducibilityROI().fit([(a, b), (a[:, :-1], b[:, :-1])])
    with pytest.raises(UserError, match="not fitted"):
        ReproducibilityROI().transform(a)
    with pytest.raises(UserError, match=r"999 vertices.*fitted on 1000"):
        fitted.transform(a[:, :-1])
    with pytest.raises(UserError, match="top_fraction"):
        ReproducibilityROI(top_fraction=0)
    noise = make_segments(seed=5, n_seg=4)
    noise = [(r1 * ~RESPONSIVE, r2 * ~RESPONSIVE) for r1, r2 in noise]
    with pytest.raises(UserError, match="No vertex passed"):
        ReproducibilityROI().fit(noise)


def test_from_mask_rebuilds_a_fitted_selector(fitted):
    roi = ReproducibilityROI.from_mask(fitted.mask_)
    x = np.random.default_rng(4).standard_normal((3, N_V))
    np.testing.assert_array_equal(roi.transform(x), fitted.transform(x))
    assert roi.n_voxels_ == fitted.mask_.sum() and roi.t_ is None
    with pytest.raises(UserError, match="boolean"):
        ReproducibilityROI.from_mask(np.zeros(5, dtype=int))


def test_roi_recovers_the_simulators_responsive_voxels(simulated_dataset):
    """Paper 3.2 on the tiny simulated Wen 2018 set: CIFTI → preprocess → fit on training runs."""
    import json

    from mindvideo.data.cifti import cortex_indices, read_dtseries
    from mindvideo.data.preprocess import preprocess_run

    root = simulated_dataset
    timing = json.loads((root / "scenes.json").read_text())["timing"]
    train = sorted((k for k in timing if k.startswith("seg")), key=lambda k: int(k[3:]))
    segments = []
    for seg in train:
        reps = []
        for r in range(1, timing[seg]["repetitions"] + 1):
            path = root / "subject1" / "fmri" / seg / "cifti" / f"{seg}_{r}_Atlas.dtseries.nii"
            data, axis, _ = read_dtseries(path)
            cortex = cortex_indices(axis)
            reps.append(preprocess_run(data, cortex, source=str(path)))
        segments.append(tuple(reps))
    responsive = np.load(root / "ground_truth.npz")["responsive"][cortex]

    def scores(roi):
        hit = (roi.mask_ & responsive).sum()
        return hit / roi.mask_.sum(), hit / responsive.sum()

    # The paper's settings. With only 4 training segments (DOF 3) Bonferroni is very strict,
    # so few voxels pass — but those are right.
    paper = ReproducibilityROI(alpha=0.01, top_fraction=0.5).fit(segments)
    precision, recall = scores(paper)
    print(
        f"paper settings: {paper.mask_.sum()} voxels, precision {precision:.3f}, "
        f"recall {recall:.3f}"
    )
    assert paper.n_segments_ == len(train) and precision >= 0.9
    # Without the correction and keeping every significant vertex, most of them are found.
    loose = ReproducibilityROI(alpha=0.01, top_fraction=1.0, correction="none").fit(segments)
    precision, recall = scores(loose)
    print(
        f"uncorrected, all significant: {loose.mask_.sum()} voxels, precision "
        f"{precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= 0.9 and recall >= 0.8
