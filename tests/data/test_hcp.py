"""The HCP pre-training corpus: V1-V4 in hierarchy order, sharded, memory-mapped."""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from mindvideo.config import HcpConfig, PrepareConfig
from mindvideo.data import atlas
from mindvideo.data.cifti import read_dtseries, write_dtseries
from mindvideo.data.hcp import HCPCorpus, find_hcp_runs, prepare_hcp
from mindvideo.utils import UserError

SHARD = 256  # the tiny corpus has 2 runs x 300 volumes: shards of 256, 256, 88


def hcp_config(root, **kwargs) -> PrepareConfig:
    return PrepareConfig(dataset="hcp", root=str(root), hcp=HcpConfig(shard_frames=SHARD), **kwargs)


@pytest.fixture(scope="module")
def corpus_dir(simulated_rest, tmp_path_factory):
    return prepare_hcp(hcp_config(simulated_rest), tmp_path_factory.mktemp("hcp") / "corpus")


def _reference(path, order=4):
    """Independent reference: nibabel, V1-V4 columns by area, per-vertex polyfit, z-score."""
    img = nib.load(path)
    gray = atlas.grayordinate_index(img.header.get_axis(1))
    area = atlas.area_of(np.maximum(gray, 0))
    cols = np.concatenate(
        [np.flatnonzero((area == a) & (gray >= 0)) for a in atlas.VISUAL_HIERARCHY]
    )
    x = np.asarray(img.get_fdata(), np.float64)[:, cols]
    t = np.arange(len(x))
    x = x - np.polynomial.polynomial.polyval(t, np.polynomial.polynomial.polyfit(t, x, order)).T
    return (x - x.mean(0)) / x.std(0), gray[cols]


def test_corpus_layout_voxels_and_order(corpus_dir, simulated_rest):
    runs = find_hcp_runs(simulated_rest)
    assert [p.name for p in runs] == [
        "rfMRI_REST1_LR_Atlas.dtseries.nii",
        "rfMRI_REST1_RL_Atlas.dtseries.nii",
    ]
    index = json.loads((corpus_dir / "index.json").read_text())
    assert [s["frames"] for s in index["shards"]] == [256, 256, 88]
    assert sorted(p.name for p in corpus_dir.glob("shard_*.npy")) == [
        "shard_00000.npy",
        "shard_00001.npy",
        "shard_00002.npy",
    ]
    ref, gray = _reference(runs[0])
    # V = the V1-V4 grayordinates present in the files, V1 first, then V2, V3, V4.
    assert index["n_voxels"] == ref.shape[1] == len(gray)
    np.testing.assert_array_equal(index["grayordinates"], gray)
    levels = atlas.hierarchy_level(np.asarray(index["grayordinates"]))
    assert (np.diff(levels) >= 0).all() and levels[0] == 0 and levels[-1] == 3
    assert sum(index["voxels_per_area"].values()) == index["n_voxels"]
    assert index["voxels_per_area"]["V1"] == (levels == 0).sum()
    assert len(index["runs"]) == 2 and all(len(r["sha256"]) == 64 for r in index["runs"])
    assert index["runs"][0]["volumes"] == 300 and index["runs"][0]["tr_s"] == pytest.approx(0.72)

    shard0 = np.load(corpus_dir / "shard_00000.npy")
    np.testing.assert_allclose(shard0, ref[:256], atol=2e-4)
    ref2, _ = _reference(runs[1])
    shard2 = np.load(corpus_dir / "shard_00002.npy")
    np.testing.assert_allclose(shard2, ref2[-88:], atol=2e-4)


def test_corpus_items_are_padded_and_memory_mapped(corpus_dir):
    corpus = HCPCorpus(corpus_dir, patch_size=16)
    v = corpus.n_voxels
    assert len(corpus) == 600 and corpus.n_voxels_padded == -(-v // 16) * 16
    assert all(isinstance(s, np.memmap) for s in corpus.shards)
    item = corpus[300]  # frame 44 of shard 1
    assert item.dtype == torch.float32 and item.shape == (corpus.n_voxels_padded,)
    np.testing.assert_array_equal(item[:v].numpy(), corpus.shards[1][44])
    assert (item[v:] == 0).all()
    np.testing.assert_array_equal(corpus[-1][:v].numpy(), corpus.shards[2][87])
    with pytest.raises(IndexError):
        corpus[600]
    wrap = HCPCorpus(corpus_dir, patch_size=16, pad_mode="wrap_compat")
    np.testing.assert_array_equal(
        wrap[0][v:].numpy(), wrap.shards[0][0][: wrap.n_voxels_padded - v]
    )
    # DataLoader workers get the path, not the data, and map the shards again.
    clone = pickle.loads(pickle.dumps(corpus))
    assert len(pickle.dumps(corpus)) < 100_000
    assert isinstance(clone.shards[0], np.memmap) and torch.equal(clone[5], corpus[5])
    loader = torch.utils.data.DataLoader(corpus, batch_size=64, shuffle=True)
    assert next(iter(loader)).shape == (64, corpus.n_voxels_padded)


def test_rerun_is_a_no_op_and_a_changed_config_rebuilds(
    corpus_dir, simulated_rest, tmp_path, caplog
):
    mtimes = {p: p.stat().st_mtime_ns for p in corpus_dir.iterdir()}
    with caplog.at_level(logging.INFO, logger="mindvideo.data.hcp"):
        prepare_hcp(hcp_config(simulated_rest), corpus_dir)
    assert "up to date" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in corpus_dir.iterdir()} == mtimes

    out = tmp_path / "copy"
    shutil.copytree(corpus_dir, out)
    cfg = hcp_config(simulated_rest)
    cfg.hcp.shard_frames = 1000
    cfg.hcp.areas = ["V1"]
    prepare_hcp(cfg, out)
    corpus = HCPCorpus(out)
    assert len(corpus.shards) == 1 and not (out / "shard_00001.npy").exists()  # stale removed
    assert (atlas.area_of(corpus.voxel_grayordinates) == "V1").all()


def test_task_runs_are_found_and_an_empty_tree_is_an_error(simulated_rest, tmp_path):
    root = tmp_path / "hcp"
    subject = next(p.name for p in simulated_rest.iterdir() if p.is_dir())
    src = simulated_rest / subject / "MNINonLinear/Results/rfMRI_REST1_LR"
    task = root / subject / "MNINonLinear/Results/tfMRI_WM_LR"
    task.mkdir(parents=True)
    shutil.copy(src / "rfMRI_REST1_LR_Atlas.dtseries.nii", task / "tfMRI_WM_LR_Atlas.dtseries.nii")
    (task / "tfMRI_WM_LR_Atlas_MSMAll.dtseries.nii").write_bytes(b"")  # other variants: ignored
    assert [p.name for p in find_hcp_runs(root)] == ["tfMRI_WM_LR_Atlas.dtseries.nii"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"No HCP runs found .*MNINonLinear/Results/rfMRI_REST1_LR"):
        find_hcp_runs(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        prepare_hcp(hcp_config(tmp_path / "nowhere"), tmp_path / "out")


def test_nan_vertices_and_mismatched_grayordinates(simulated_rest, tmp_path):
    root = tmp_path / "hcp"
    shutil.copytree(simulated_rest, root)
    path = find_hcp_runs(root)[1]
    data, axis, tr = read_dtseries(path)
    corpus = HCPCorpus(prepare_hcp(hcp_config(simulated_rest), tmp_path / "ref"))
    first_voxel = np.flatnonzero(atlas.grayordinate_index(axis) == corpus.voxel_grayordinates[0])
    data[5, first_voxel] = np.nan
    write_dtseries(path, data, axis, tr)
    with pytest.raises(UserError, match=rf"{re.escape(path.name)} has 1 of .* vertices with NaN"):
        prepare_hcp(hcp_config(root), tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()
    prepare_hcp(hcp_config(root, nan_policy="zero"), tmp_path / "out")
    frames = np.concatenate(HCPCorpus(tmp_path / "out").shards)  # [600, V]
    assert (frames[300:, 0] == 0).all() and (frames[:300, 0] != 0).all()

    keep = np.ones(len(axis), bool)
    keep[first_voxel] = False  # one V1 vertex fewer in the second run
    write_dtseries(path, np.nan_to_num(data)[:, keep], axis[keep], tr)
    with pytest.raises(UserError, match="all runs must be on the same grayordinates"):
        prepare_hcp(hcp_config(root), tmp_path / "out2")


def test_incomplete_corpus_is_refused(corpus_dir, tmp_path):
    out = tmp_path / "broken"
    shutil.copytree(corpus_dir, out)
    (out / "index.json").unlink()
    with pytest.raises(UserError, match=r"no readable index\.json"):
        HCPCorpus(out)
