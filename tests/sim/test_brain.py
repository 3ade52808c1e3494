"""The simulated brain: features, HRF, encoding, noise."""

import numpy as np
import pytest

from mindvideo.data import atlas
from mindvideo.sim import brain as brain_sim


def _frames(n, size=32, value=128):
    return np.full((n, size, size, 3), value, np.uint8)


def test_hrf_peaks_where_asked_and_sums_to_one():
    peaks = np.array([4.0, 5.5, 7.0])
    h = brain_sim.double_gamma_hrf(peaks, rate_hz=10.0)
    assert h.shape == (400, 3)
    np.testing.assert_allclose(h.sum(axis=0), 1, rtol=1e-5)
    np.testing.assert_allclose((h.argmax(axis=0) + 0.5) / 10, peaks, atol=0.1)
    assert (h[-50:] <= 0).all() or np.abs(h[-50:]).max() < 1e-3  # undershoot, then ~0


def test_features_stream_chunk_by_chunk():
    """Adding frames in any chunking gives the same features (features of a stream)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (95, 32, 32, 3), dtype=np.uint8)
    one = brain_sim.FeatureExtractor(30, 5)
    one.add(frames, 2)
    split = brain_sim.FeatureExtractor(30, 5)
    for chunk in np.split(frames, [7, 40, 41]):
        split.add(chunk, 2)
    a, b = one.result(), split.result()
    assert a.image.shape == (32, 256, 4) and a.motion.shape == (32, 256, 3)  # 95 frames → 10 Hz
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)
    np.testing.assert_allclose(a.motion, b.motion, atol=1e-5)
    np.testing.assert_array_equal(a.classes[:, 2], 1)


def test_still_frames_have_no_motion_and_grey_is_blank():
    ex = brain_sim.FeatureExtractor(30, 3)
    ex.add_blank(1.0, size=(32, 32))
    ex.add(_frames(30, value=200), 1)
    f = ex.result()
    assert f.n_samples == 20
    np.testing.assert_allclose(
        f.image[:10], np.broadcast_to(f.blank_image, (10, 256, 4)), atol=1e-6
    )
    assert f.motion[:10].max() == 0 and f.motion[11:].max() == 0  # motion only at the change
    assert f.motion[10, :, 0].min() > 0
    assert f.classes[:10].sum() == 0 and (f.classes[10:, 1] == 1).all()


def test_retinotopic_receptive_fields():
    """Early voxels of the left hemisphere see the right visual field, and respond to a flash
    there more than to one on the left."""
    idx = np.flatnonzero(atlas.area_mask(["V1", "V2"]))
    brain = brain_sim.make_subject_brain(idx, 4, np.random.default_rng(0), responsive_fraction=1)
    left_hemi = np.flatnonzero(idx[brain.early] < 29696)
    assert (brain.rf_x[brain.early][left_hemi] > 0).mean() > 0.9

    def response(side):
        frames = _frames(60)
        if side == "right":
            frames[:, :, 16:] = 255
        else:
            frames[:, :, :16] = 255
        ex = brain_sim.FeatureExtractor(30, 4)
        ex.add_blank(2.0, size=(32, 32))
        ex.add(frames, None)
        ex.add_blank(20.0)
        bold = brain_sim.stimulus_bold(brain, ex.result(), n_volumes=12, tr_s=2.0)
        # Voxels preferring light (positive luminance weight): their peak response.
        light = brain.image_weights.reshape(256, 4, -1)[:, 0].sum(axis=0) > 0
        return np.abs(bold[:, left_hemi[light[left_hemi]]]).max(axis=0)

    assert np.median(response("right")) > 3 * np.median(response("left"))


def test_signal_is_identical_noise_is_not():
    idx = np.flatnonzero(atlas.area_mask(["V1", "MT", "FFC", "4"]))
    brain = brain_sim.make_subject_brain(idx, 3, np.random.default_rng(1))
    assert set(np.unique(brain.role[brain.responsive])) == {1, 2, 3}
    assert not brain.responsive[atlas.area_of(idx) == "4"].any()  # motor cortex: noise only
    rng = np.random.default_rng(2)
    ex = brain_sim.FeatureExtractor(30, 3)
    for i in range(12):
        ex.add(rng.integers(0, 256, (45, 32, 32, 3), dtype=np.uint8), i % 3)
    features = ex.result()
    a = brain_sim.stimulus_bold(brain, features, 9, 2.0)
    b = brain_sim.stimulus_bold(brain, features, 9, 2.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (9, int(brain.responsive.sum()))
    gain = brain_sim.calibrate_gain(a, snr=0.5)
    np.testing.assert_allclose((a * gain).std(axis=0), 0.5, rtol=1e-4)
    n1 = brain_sim.noise(brain.noise, 9, 2.0, np.random.default_rng(3))
    n2 = brain_sim.noise(brain.noise, 9, 2.0, np.random.default_rng(4))
    assert not np.allclose(n1, n2)


def test_noise_has_unit_variance_after_detrending():
    idx = np.flatnonzero(atlas.area_mask(["V1", "V2", "46"]))
    model = brain_sim.make_noise_model(idx, np.random.default_rng(0))
    x = brain_sim.noise(model, 600, 2.0, np.random.default_rng(1))
    t = np.linspace(-1, 1, 600)
    q, _ = np.linalg.qr(np.polynomial.legendre.legvander(t, 3))
    resid = x - q @ (q.T @ x)
    assert resid.std(axis=0).mean() == pytest.approx(1.0, abs=0.1)
    # Voxels of one network share fluctuations: V1–V2 voxels correlate more among themselves
    # than with area 46 (prefrontal).
    c = np.corrcoef(resid.T)
    vis = atlas.area_of(idx) != "46"
    assert c[np.ix_(vis, vis)].mean() > c[np.ix_(vis, ~vis)].mean() + 0.1
