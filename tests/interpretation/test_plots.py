"""Figures (paper 5.1, Fig. 7): flat maps, Yeo-17 bar charts, the stage × layer grid.

The figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot); the
shared conftest sets ``MPLBACKEND=Agg`` as well.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mindvideo.data import atlas
from mindvideo.data.pairing import pad_voxels, padded_size
from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.interpretation import (
    NO_NETWORK,
    network_sums,
    normalise,
    plot_flat_map,
    plot_network_bars,
    plot_stage_grid,
    record_attention,
    voxel_to_grayordinates,
    write_explanation,
)
from mindvideo.interpretation.plots import PIXEL_MM, _flat_mesh, _flat_raster
from mindvideo.utils import UserError

G = atlas.GRAYORDINATES
GREY = np.array([204, 204, 204])  # the medial wall / no-voxel colour
TOP = np.array([252, 255, 164])  # inferno at 1.0


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)


def _count(pixels: np.ndarray, colour: np.ndarray, tol: int = 6) -> int:
    return int((np.abs(pixels - colour).max(axis=1) <= tol).sum())


@pytest.fixture(scope="module")
def v1() -> np.ndarray:
    return np.flatnonzero(atlas.area_mask(["V1"]))


def test_flat_map_is_a_deterministic_png_coloured_where_the_scores_are(tmp_path, v1):
    scores = np.full(G, np.nan)
    scores[v1] = 1.0
    a = plot_flat_map(scores, tmp_path / "a.png", title="V1", vmin=0.0, vmax=1.0)
    b = plot_flat_map(scores, tmp_path / "b.png", title="V1", vmin=0.0, vmax=1.0)
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.stat().st_size > 10_000
    assert a.read_bytes() == b.read_bytes()  # same input, same bytes
    with Image.open(a) as im:
        im.verify()
    pixels = _pixels(a)
    v1_px, grey_px = _count(pixels, TOP), _count(pixels, GREY)
    assert v1_px > 1000 and grey_px > 10 * v1_px  # V1 is a small part of the cortex
    # nothing on the brain: only grey, no colour of the map
    empty = _pixels(plot_flat_map(np.full(G, np.nan), tmp_path / "empty.png", vmin=0, vmax=1))
    assert _count(empty, TOP) == 0 and _count(empty, GREY) > grey_px
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp files left


def test_medial_wall_is_grey_even_under_a_full_map(tmp_path):
    pixels = _pixels(plot_flat_map(np.ones(G), tmp_path / "full.png", vmin=0.0, vmax=1.0))
    assert _count(pixels, TOP) > 20_000
    assert _count(pixels, GREY) > 20  # faces at medial-wall vertices (no grayordinate)


@pytest.mark.parametrize("hemisphere", ["left", "right"])
def test_flat_surface_raster_covers_the_mesh(hemisphere):
    """The cached raster: every pixel centre in its triangle, the area of the surface kept."""
    xy, faces, _ = _flat_mesh(hemisphere)
    image, (x0, x1, y0, y1) = _flat_raster(hemisphere)
    corners = xy[faces]  # [F, 3, 2]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()  # mm²
    assert (image >= 0).sum() * PIXEL_MM**2 == pytest.approx(area, rel=1e-3)
    # pixel centres lie inside (or on the edge of) the triangle they were given
    rows, cols = np.nonzero(image >= 0)
    centre = np.stack([x0 + (cols + 0.5) * PIXEL_MM, y0 + (rows + 0.5) * PIXEL_MM], axis=1)
    tri = corners[image[rows, cols]]  # [K, 3, 2]
    for i in range(3):
        p, q = tri[:, i], tri[:, (i + 1) % 3]
        cross = (q[:, 0] - p[:, 0]) * (centre[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (
            centre[:, 0] - p[:, 0]
        )
        assert (cross >= -1e-6).all()
    assert image.shape == (round((y1 - y0) / PIXEL_MM), round((x1 - x0) / PIXEL_MM))


def test_flat_map_rejects_voxel_scores(tmp_path):
    with pytest.raises(UserError, match="voxel_to_grayordinates"):
        plot_flat_map(np.ones(100), tmp_path / "x.png")


def test_network_bars_png(tmp_path, v1):
    brain = normalise(voxel_to_grayordinates(np.ones(len(v1)), v1))
    sums = {"first": network_sums(brain), "last": network_sums(np.nan_to_num(brain) * 0.5)}
    path = plot_network_bars(sums, tmp_path / "bars.png", title="V1", include_none=True)
    pixels = _pixels(path)
    assert path.stat().st_size > 5_000 and np.ptp(pixels) > 100
    with pytest.raises(UserError, match="No network sums"):
        plot_network_bars({}, tmp_path / "none.png")
    with pytest.raises(UserError, match="not one number"):
        plot_network_bars({"a": {"VisCent": np.ones(3)}}, tmp_path / "bad.png")


def test_stage_grid_has_a_panel_per_stage_and_layer(tmp_path, v1):
    rng = np.random.default_rng(0)
    maps = {
        stage: {layer: voxel_to_grayordinates(rng.random(len(v1)), v1) for layer in layers}
        for stage, layers in (("mbm", ("first",)), ("cotrain", ("first", "middle", "last")))
    }
    path = plot_stage_grid(maps, tmp_path / "grid.png", title="stages × layers")
    with Image.open(path) as im:
        w, h = im.size
    assert w > 2.5 * h  # 3 columns of two hemispheres, 2 rows
    with pytest.raises(UserError, match="No attention maps"):
        plot_stage_grid({}, tmp_path / "none.png")


def test_write_explanation_end_to_end(tmp_path):
    """Tiny encoders on the V1–V4 ROI → summaries → networks.json, bar charts, flat maps."""
    roi = np.flatnonzero(atlas.area_mask(list(atlas.VISUAL_HIERARCHY)))
    roi = roi[atlas.order_by_visual_hierarchy(roi)]
    V = padded_size(len(roi), 16)
    torch.manual_seed(0)
    mbm = mbm_tiny(V).eval()
    enc = SpatiotemporalEncoder.from_mbm(mbm, window=2, out_tokens=4, cond_dim=16).eval()
    fmri = pad_voxels(torch.randn(6, 2, len(roi)), 16)
    summaries = [
        record_attention(enc, fmri, stage="contrast", progress=False),
        record_attention(mbm, fmri, stage="mbm", progress=False),
    ]
    written = write_explanation(summaries, roi, tmp_path / "explain")
    names = {p.name for p in (tmp_path / "explain").iterdir()}
    assert names == {
        "attention_mbm.npz",
        "attention_contrast.npz",
        "networks_mbm.png",
        "networks_contrast.png",
        "networks_stages.png",
        "networks.json",
        "flat_maps.png",
    }
    assert set(written) == {n.rsplit(".", 1)[0] for n in names}
    table = json.loads((tmp_path / "explain" / "networks.json").read_text())
    assert list(table["stages"]) == ["mbm", "contrast"]  # the paper's stage order
    for stage in table["stages"].values():
        assert stage["n_samples"] == 6
        for sums in stage["networks"].values():
            assert abs(sum(sums.values()) - 1.0) < 1e-6
            assert sums["VisCent"] + sums["VisPeri"] > 0.9  # the ROI is visual cortex
            assert NO_NETWORK in sums
    assert table["stages"]["mbm"]["temporal"] is None
    assert np.asarray(table["stages"]["contrast"]["temporal"]["first"]).shape == (2, 2)
    with pytest.raises(UserError, match="same stage"):
        write_explanation([summaries[0], summaries[0]], roi, tmp_path / "dup")
