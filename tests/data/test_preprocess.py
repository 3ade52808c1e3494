"""Per-run preprocessing: the volume-drop rule, detrending, z-scoring, the composition."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mindvideo.data.preprocess import detrend, preprocess_run, volumes_to_drop, zscore
from mindvideo.utils import UserError


def test_volumes_to_drop_follows_the_authors_rule():
    assert volumes_to_drop(245) == (1, 4)
    assert volumes_to_drop(246) == (2, 4)
    for n in (245, 246):
        first, last = volumes_to_drop(n)
        assert n - first - last == 240


def test_volumes_to_drop_rejects_unknown_counts_and_accepts_overrides():
    with pytest.raises(UserError, match=r"run\.nii has 300 volumes.*245.*246.*drop_first"):
        volumes_to_drop(300, source="run.nii")
    assert volumes_to_drop(300, drop_first=3) == (3, 4)
    assert volumes_to_drop(300, drop_first=0, drop_last=0) == (0, 0)
    assert volumes_to_drop(245, drop_last=0) == (1, 0)
    with pytest.raises(UserError, match="leaves none"):
        volumes_to_drop(5, drop_first=3, drop_last=2)


def _legendre_poly(t: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.polynomial.polynomial.polyval(t, coef)


def test_detrend_removes_an_exact_4th_order_polynomial():
    rng = np.random.default_rng(0)
    n_t, n_v = 245, 50
    t = np.linspace(-1, 1, n_t)
    coef = rng.normal(size=(5, n_v)) * np.array([100, 10, 10, 10, 10])[:, None]
    x = np.stack([_legendre_poly(t, coef[:, v]) for v in range(n_v)], axis=1)
    out = detrend(x.astype(np.float32), order=4)
    assert out.dtype == np.float32 and out.shape == (n_t, n_v)
    assert np.abs(out).max() < 1e-3 * np.abs(x).max()
    # A 5th-order term is *not* removed.
    out5 = detrend((x + 5 * t[:, None] ** 5).astype(np.float32), order=4)
    assert np.abs(out5).max() > 0.1


def test_detrend_leaves_the_part_orthogonal_to_the_polynomials():
    rng = np.random.default_rng(1)
    n_t = 240
    t = np.linspace(-1, 1, n_t)
    sinus = np.sin(2 * np.pi * 20 * np.arange(n_t) / n_t)  # 20 cycles: ~orthogonal to trends
    trend = 3 + 2 * t - 4 * t**2 + t**3 + 0.5 * t**4
    a = rng.uniform(0.5, 2, size=(1, 10))
    b = rng.uniform(-50, 50, size=(1, 10))
    x = sinus[:, None] * a + trend[:, None] * b
    out = detrend(x.astype(np.float32))
    # Same as the per-vertex least-squares polynomial fit (the slow reference) ...
    fits = np.stack(
        [
            np.polynomial.polynomial.polyval(t, np.polynomial.polynomial.polyfit(t, x[:, v], 4))
            for v in range(x.shape[1])
        ],
        axis=1,
    )
    np.testing.assert_allclose(out, x - fits, atol=1e-4)
    # ... the trend's amplitude does not matter, and the sinusoid survives nearly whole.
    np.testing.assert_allclose(out, detrend(sinus[:, None] * a), atol=1e-4)
    assert np.corrcoef(out[:, 0], sinus)[0, 1] > 0.99
    # The output is orthogonal to every polynomial of degree <= 4.
    basis = np.polynomial.legendre.legvander(t, 4)
    assert np.abs(basis.T @ out).max() < 1e-2  # float32 rounding; the input projects to ~10^3


def test_zscore_gives_zero_mean_unit_std_and_zeroes_constant_vertices(caplog):
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 3.0, size=(240, 6)).astype(np.float32)
    x[:, 2] = 7.0
    with caplog.at_level(logging.INFO, logger="mindvideo.data.preprocess"):
        z = zscore(x, source="seg1_1.nii")
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-6)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(z[:, keep].std(axis=0), 1, atol=1e-5)
    assert np.all(z[:, 2] == 0)
    assert "1 constant vertices" in caplog.text


def test_zscore_names_the_file_and_count_of_nan_vertices():
    x = np.random.default_rng(4).normal(size=(100, 10))
    x[3, 1] = np.nan
    x[7, 4] = np.inf
    with pytest.raises(UserError, match=r"seg3_2\.nii has 2 of 10 vertices with NaN or Inf"):
        zscore(x, source="seg3_2.nii")
    z = zscore(x, nan_policy="zero")
    assert np.all(z[:, [1, 4]] == 0) and np.isfinite(z).all()
    with pytest.raises(UserError, match="nan_policy"):
        zscore(x, nan_policy="omit")


def test_preprocess_run_drops_keeps_cortex_detrends_and_zscores():
    rng = np.random.default_rng(5)
    n_t, n_g = 246, 40
    cortex = np.arange(0, 40, 2)  # every other grayordinate is "cortex"
    t = np.linspace(-1, 1, n_t)
    data = (rng.normal(size=(n_t, n_g)) + 1000 + 50 * t[:, None] ** 2).astype(np.float32)
    out = preprocess_run(data, cortex, source="test2_1.nii")
    assert out.shape == (240, 20) and out.dtype == np.float32
    expected = zscore(detrend(data[2:-4][:, cortex]))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-5)
    # An explicit drop for data of another length.
    assert preprocess_run(data[:100], None, drop=(0, 0)).shape == (100, 40)
    with pytest.raises(UserError, match="100 volumes"):
        preprocess_run(data[:100], None)


def test_preprocess_run_rejects_nan_vertices_in_cortex_only():
    data = np.random.default_rng(6).normal(size=(245, 8)).astype(np.float32)
    data[:, 7] = np.nan  # not cortex: fine
    assert np.isfinite(preprocess_run(data, np.arange(7))).all()
    data[10, 0] = np.nan
    with pytest.raises(UserError, match=r"seg1_1\.nii has 1 of 7 cortical vertices"):
        preprocess_run(data, np.arange(7), source="seg1_1.nii")
    out = preprocess_run(data, np.arange(7), nan_policy="zero")
    assert np.all(out[:, 0] == 0)
