"""Adversarial guidance (eq. 6) and the negative condition (the mean test fMRI)."""

import numpy as np
import pytest
import torch

from mindvideo.data.datasets import FMRINormalizer
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.pipeline import (
    adversarial_guidance,
    mean_fmri,
    mean_fmri_window,
    negative_fmri_from_prepared,
    null_condition,
)
from mindvideo.utils import UserError


def test_adversarial_guidance_is_eq_6():
    pos = torch.tensor([1.0, 2.0, -1.0])
    neg = torch.tensor([0.5, 2.0, 1.0])
    # ε(z, c̄) + s·(ε(z, c) − ε(z, c̄)) with s = 12.5, by hand:
    expected = torch.tensor([0.5 + 12.5 * 0.5, 2.0, 1.0 + 12.5 * -2.0])
    torch.testing.assert_close(adversarial_guidance(pos, neg, 12.5), expected)
    torch.testing.assert_close(adversarial_guidance(pos, neg, 1.0), pos)  # s = 1: no guidance
    torch.testing.assert_close(adversarial_guidance(pos, neg, 0.0), neg)


def test_with_the_null_condition_it_is_classifier_free_guidance():
    # eq. 5: ε(z) + s·(ε(z, c) − ε(z)) where ε(z) is the prediction for the null condition
    uncond, cond = torch.randn(2, 4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        adversarial_guidance(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond)
    )
    null = null_condition(2, 77, 32)
    assert null.shape == (2, 77, 32) and not null.any()


def test_mean_fmri_averages_every_tr():
    rng = np.random.default_rng(0)
    split = rng.normal(size=(3, 10, 20))  # [S, T, V]
    np.testing.assert_allclose(mean_fmri(split), split.reshape(-1, 20).mean(0))
    reps = rng.normal(size=(2, 4, 10, 20))  # [S, R, T, V]
    np.testing.assert_allclose(mean_fmri(reps), reps.reshape(-1, 20).mean(0))
    np.testing.assert_allclose(mean_fmri(torch.from_numpy(split)), split.reshape(-1, 20).mean(0))
    window = mean_fmri_window(split, 2)
    assert window.shape == (2, 20) and window.dtype == np.float32
    np.testing.assert_allclose(window[0], window[1])
    with pytest.raises(UserError, match="NaN"):
        mean_fmri(np.full((2, 3, 4), np.nan))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("prepared")
    w = PreparedWriter(root)
    w.write_array("fmri_train", (rng.normal(size=(2, 4, 30)) * 2 + 1).astype(np.float32))
    w.write_array("fmri_test", rng.normal(size=(1, 3, 30)).astype(np.float32) + 3)
    w.write_array("frames_train", rng.integers(0, 255, (2, 4, 6, 8, 8, 3), dtype=np.uint8))
    w.write_array("frames_test", rng.integers(0, 255, (1, 3, 6, 8, 8, 3), dtype=np.uint8))
    w.finish()
    return PreparedData.open(root)


def test_negative_from_prepared_is_the_normalised_padded_mean_test_fmri(prepared):
    neg = negative_fmri_from_prepared(prepared, "mean-test", window=2, patch_size=16)
    assert neg.shape == (2, 32) and neg.dtype == np.float32  # 30 voxels zero-padded to 32
    normalizer = FMRINormalizer("train").fit(np.asarray(prepared.fmri_train))
    test = normalizer.transform(np.asarray(prepared.fmri_test))  # what the model sees
    np.testing.assert_allclose(neg[0, :30], test.reshape(-1, 30).mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(neg[:, 30:], 0)
    np.testing.assert_array_equal(neg[0], neg[1])

    train = negative_fmri_from_prepared(prepared, "mean-train", window=3, patch_size=16)
    assert train.shape == (3, 32)
    # One mean/std over the training fMRI: its mean TR averages to 0, the shifted test one to ~1.
    assert abs(train[0, :30].mean()) < 1e-5 and neg[0, :30].mean() > 0.5
    wrap = negative_fmri_from_prepared(prepared, "mean-test", 2, 16, pad_mode="wrap_compat")
    np.testing.assert_allclose(wrap[:, 30:], neg[:, :2])  # the first voxels wrap around
    assert negative_fmri_from_prepared(prepared, "null") is None
    with pytest.raises(UserError, match="Unknown negative condition"):
        negative_fmri_from_prepared(prepared, "median-test")


def test_the_compat_negative_is_the_raw_mean_test_fmri(prepared):
    """The authors' uncon_fmri: the mean of the test fMRI their loader left as it is."""
    neg = negative_fmri_from_prepared(prepared, "mean-test", 2, 16, normalize="compat")
    raw = np.asarray(prepared.fmri_test, dtype=np.float64).reshape(-1, 30).mean(0)
    np.testing.assert_allclose(neg[0, :30], raw, rtol=1e-5)
    train = negative_fmri_from_prepared(prepared, "mean-train", 2, 16, normalize="compat")
    assert abs(train[0, :30].mean()) < 1e-5  # the training split is normalised as with "train"
