"""Functional alignment: the local (searchlight) stage on the cortical sphere, then global."""

import numpy as np
import pytest

from mindvideo.data import atlas
from mindvideo.data.alignment import fit_alignment, surface_neighbours
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def v1():
    """40 grayordinates of V1 on each hemisphere (91k indices)."""
    left = np.flatnonzero(atlas.area_mask(["V1"], "left"))[::50][:40]
    right = np.flatnonzero(atlas.area_mask(["V1"], "right"))[::50][:40]
    return np.concatenate([left, right])


def test_neighbours_are_the_nearest_on_the_same_hemisphere(v1):
    nb = surface_neighbours(v1, v1, 3)
    np.testing.assert_array_equal(nb[:, 0], np.arange(len(v1)))  # each vertex is its nearest
    assert (nb[:40] < 40).all() and (nb[40:] >= 40).all()  # never across hemispheres
    xyz = atlas.grayordinate_coordinates(v1, "sphere")
    d = ((xyz[:40, None] - xyz[None, :40]) ** 2).sum(-1)
    np.testing.assert_array_equal(nb[:40, 1], np.argsort(d, axis=1, kind="stable")[:, 1])
    with pytest.raises(UserError, match="fewer than neighbours=50"):
        surface_neighbours(v1, v1, 50)
    subcortical = np.array([atlas.structure_slices()["CIFTI_STRUCTURE_THALAMUS_LEFT"].start])
    with pytest.raises(UserError, match="cortical-surface grayordinates"):
        surface_neighbours(np.concatenate([v1, subcortical]), v1, 3)


def test_the_local_stage_finds_a_vertexwise_correspondence(v1):
    """Subject A's voxel j is subject B's voxel at the same vertex, scaled, plus noise: with
    neighbours the map is (nearly) that diagonal, and it predicts unseen TRs better than the
    global map fitted on the same few TRs."""
    rng = np.random.default_rng(0)
    n, v = 120, len(v1)  # few TRs for 80 voxels: where the local stage matters
    x = rng.normal(size=(n, v)).astype(np.float32)
    gain = rng.uniform(0.5, 2.0, v)
    y = (x * gain + 0.3 * rng.normal(size=(n, v))).astype(np.float32)
    groups = np.repeat(np.arange(4), n // 4)
    alphas = [0.1, 1.0, 10.0, 100.0]
    local = fit_alignment(x, y, groups, alphas, 4, surface_neighbours(v1, v1, 4))
    plain = fit_alignment(x, y, groups, alphas, 4)
    assert local.method == "local + global" and plain.method == "global"
    diagonal = np.diag(local.weight)
    np.testing.assert_allclose(diagonal, gain, rtol=0.15)
    assert np.abs(local.weight - np.diag(diagonal)).max() < 0.1
    x_new = rng.normal(size=(200, v)).astype(np.float32)
    y_new = x_new * gain
    err = [((x_new @ m.weight + m.bias - y_new) ** 2).mean() for m in (local, plain)]
    assert err[0] < 0.5 * err[1]
    r = [np.corrcoef(m.held_out.ravel(), y.ravel())[0, 1] for m in (local, plain)]
    assert r[0] > r[1] > 0.5
