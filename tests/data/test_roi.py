"""ROI selection by reproducibility (paper 3.2) on synthetic repeated viewings."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from mindvideo.data.preprocess import zscore
from mindvideo.data.roi import (
    ReferenceROI,
    ReproducibilityROI,
    read_reference_rois,
    reproducibility,
)
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


# --------------------------------------------------------------------------------------------
# the per-area rule

AREA_SNR = (1.5, 0.5, 0.0)  # a strong area, a weaker-but-reliable one, noise
AREA_SIZE = 100


def make_area_segments(seed: int = 11, n_seg: int = N_SEG):
    """Three areas of 100 vertices; area k's vertices share a stimulus signal at AREA_SNR[k]."""
    rng = np.random.default_rng(seed)
    snr = np.repeat(AREA_SNR, AREA_SIZE)
    segments = []
    for _ in range(n_seg):
        signal = rng.standard_normal((N_T, snr.size)) * snr
        segments.append(tuple(zscore(signal + rng.standard_normal(signal.shape)) for _ in "ab"))
    return segments, np.repeat(np.arange(len(AREA_SNR)), AREA_SIZE)


@pytest.fixture(scope="module")
def area_segments():
    return make_area_segments()


def test_per_area_keeps_a_weaker_area_the_papers_rule_drops(area_segments):
    segments, areas = area_segments
    paper = ReproducibilityROI().fit(segments, areas=areas)
    per_area = ReproducibilityROI(rule="per-area").fit(segments, areas=areas)
    weak = areas == 1
    # The weak area is reproducible: most of its vertices pass Bonferroni...
    assert per_area.significant_[weak].mean() >= 0.8
    np.testing.assert_array_equal(per_area.significant_, paper.significant_)
    # ... but its t values all lie below the strong area's, so the paper's top half has none.
    assert paper.mask_[weak].sum() == 0 and paper.mask_[areas == 0].sum() > 0
    n_weak = int(per_area.significant_[weak].sum())
    assert per_area.mask_[weak].sum() == math.ceil(0.5 * n_weak) > 0
    assert not per_area.mask_[areas == 2].any()
    # The paper's rule is unchanged by passing areas (which it only counts).
    np.testing.assert_array_equal(paper.mask_, ReproducibilityROI().fit(segments).mask_)
    assert paper.area_counts_[1] == (n_weak, 0)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_per_area_keeps_ceil_fraction_of_each_areas_significant(area_segments, fraction):
    segments, ids = area_segments
    # Labels as names, areas not contiguous and uneven: the noise area split over two labels.
    names = np.array(["V1", "MT", "A", "B"])[np.where(np.arange(ids.size) % 7 == 0, 3, ids)]
    roi = ReproducibilityROI(rule="per-area", top_fraction=fraction, correction="none")
    roi.fit(segments, areas=names)
    assert (roi.mask_ <= roi.significant_).all()
    expected = {}
    for name in np.unique(names):
        members = names == name
        n_sig = int(roi.significant_[members].sum())
        kept = roi.mask_ & members
        assert kept.sum() == math.ceil(fraction * n_sig), name
        if n_sig:
            expected[str(name)] = (n_sig, int(kept.sum()))
            dropped = roi.significant_ & members & ~kept
            if dropped.any():
                assert roi.t_[kept].min() >= roi.t_[dropped].max()
    assert roi.area_counts_ == expected
    summary = roi.summary()
    assert summary["rule"] == "per-area" and summary["n_kept"] == roi.n_voxels_
    assert summary["areas"] == {k: {"significant": n, "kept": m} for k, (n, m) in expected.items()}
    assert "rule='per-area'" in repr(roi)
    # Integer ids give the same mask as names.
    by_id = ReproducibilityROI(rule="per-area", top_fraction=fraction, correction="none")
    np.testing.assert_array_equal(
        by_id.fit(segments, areas=np.unique(names, return_inverse=True)[1]).mask_, roi.mask_
    )


def test_per_area_errors(area_segments):
    segments, areas = area_segments
    with pytest.raises(UserError, match="per-area ROI rule needs the area of each vertex"):
        ReproducibilityROI(rule="per-area").fit(segments)
    with pytest.raises(UserError, match=r"300 vertices but areas has shape \(299,\)"):
        ReproducibilityROI(rule="per-area").fit(segments, areas=areas[:-1])
    with pytest.raises(UserError, match="one area per vertex"):
        ReproducibilityROI().fit(segments, areas=areas[None])
    with pytest.raises(UserError, match="rule must be 'top' or 'per-area', got 'area'"):
        ReproducibilityROI(rule="area")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no statistics"):
        ReproducibilityROI.from_mask(np.ones(3, bool)).summary()
    # prepare refuses an unknown rule before it reads any run.
    from mindvideo.config import PrepareConfig, RoiConfig
    from mindvideo.data.wen2018 import check_prepare_config

    with pytest.raises(UserError, match=r"roi\.rule must be 'top' or 'per-area', not 'area'"):
        check_prepare_config(PrepareConfig(root="x", roi=RoiConfig(rule="area")))


def test_prepare_per_area_keeps_the_simulators_motion_voxels(
    prepare_config, prepared_dataset, simulated_dataset, tmp_path
):
    """Prepare with ``roi.rule=per-area``: the Glasser area of each vertex reaches the ROI, the
    manifest records the rule and the counts per area, and the motion areas keep voxels."""
    import dataclasses

    from mindvideo.data import atlas
    from mindvideo.data.prepared import PreparedData
    from mindvideo.data.wen2018 import prepare_wen2018

    cfg = dataclasses.replace(
        prepare_config, roi=dataclasses.replace(prepare_config.roi, rule="per-area")
    )
    new = PreparedData.open(prepare_wen2018(cfg, tmp_path / "per-area"))
    old = PreparedData.open(prepared_dataset)
    truth = np.load(simulated_dataset / "ground_truth.npz")
    labels = atlas.mmp_labels()[truth["grayordinate_index"]]  # the simulator writes cortex only
    roi, old_roi = new.manifest["roi"], old.manifest["roi"]
    assert roi["rule"] == "per-area" and old_roi["rule"] == "top"
    assert roi["n_significant"] == old_roi["n_significant"]
    areas = roi["areas"]
    assert sum(a["significant"] for a in areas.values()) == roi["n_significant"]
    assert sum(a["kept"] for a in areas.values()) == roi["n_kept"] == new.n_voxels
    for name, a in areas.items():
        assert a["kept"] == math.ceil(0.5 * a["significant"]), name
        assert a["kept"] == int((new.roi_mask & (labels == name)).sum()), name
        assert old_roi["areas"][name]["kept"] == int((old.roi_mask & (labels == name)).sum())
    motion = truth["responsive"] & (truth["role_names"][truth["role"]] == "motion")
    assert (new.roi_mask & motion).sum() >= (old.roi_mask & motion).sum()
    assert (new.roi_mask & motion).sum() > 0


# --------------------------------------------------------------------------------------------
# a group ROI from other subjects' prepared folders


def _references(*kept):
    return [({"path": f"ref{k}", "subject": k}, np.array(g)) for k, g in enumerate(kept, 1)]


def test_reference_roi_keeps_the_vertices_enough_references_kept():
    grayordinates = np.array([14, 10, 12, 11, 13, 99])  # this subject's vertices, file order
    refs = _references([10, 11, 500], [11, 12])
    union = ReferenceROI.from_references(grayordinates, refs)
    np.testing.assert_array_equal(union.mask_, [False, True, True, True, False, False])
    both = ReferenceROI.from_references(grayordinates, refs, min_subjects=2)
    np.testing.assert_array_equal(both.indices_, [3])
    x = np.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(union.transform(x), x[:, [1, 2, 3]])
    assert union.summary() == {
        "rule": "reference",
        "references": [{"path": "ref1", "subject": 1}, {"path": "ref2", "subject": 2}],
        "reference_min": 1,
        "n_vertices": 6,
        "n_reference_grayordinates": 4,
        "n_kept": 3,
    }


def test_reference_roi_errors_name_the_setting():
    grayordinates = np.array([1, 2, 3])
    with pytest.raises(UserError, match=r"reference_min must be between 1 and .* \(2\), got 3"):
        ReferenceROI.from_references(grayordinates, _references([1], [2]), min_subjects=3)
    with pytest.raises(UserError, match=r"None of this subject.s 3 vertices .* same grayordinates"):
        ReferenceROI.from_references(grayordinates, _references([7, 8]))
    with pytest.raises(UserError, match="at least one reference"):
        ReferenceROI.from_references(grayordinates, [])


def test_a_folder_that_is_not_a_prepared_subject_is_named(tmp_path, prepared_dataset):
    (tmp_path / "manifest.json").write_text('{"subject": 2}')
    with pytest.raises(UserError, match=f"roi.reference {tmp_path} is not a prepared subject"):
        read_reference_rois([tmp_path])
    [(info, kept)] = read_reference_rois([prepared_dataset])
    grayordinates = np.load(prepared_dataset / "voxel_grayordinates.npy")
    assert info["subject"] == 1 and info["n_voxels"] == grayordinates.size
    assert info["path"] == str(prepared_dataset) and len(info["sha256"]) == 64
    np.testing.assert_array_equal(kept, grayordinates)
    damaged = shutil.copytree(prepared_dataset, tmp_path / "damaged")
    np.save(damaged / "voxel_grayordinates.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(UserError, match=r"is not a prepared subject: .*voxel_grayordinates\.npy"):
        read_reference_rois([damaged])
