"""A pipeline folder decodes raw CIFTI runs with nothing else (``fmri_input/``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.pipeline import COND_DIM, tiny_scheduler, tiny_unet, tiny_vae

from mindvideo.cli.main import main
from mindvideo.config import ReconstructConfig
from mindvideo.data.cifti import read_dtseries, write_dtseries
from mindvideo.data.datasets import FMRIWindowDataset
from mindvideo.data.pairing import padded_size
from mindvideo.data.prepared import PreparedData
from mindvideo.data.wen2018 import find_wen2018_runs
from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.evaluation.runner import load_reconstructions
from mindvideo.pipeline import MindVideoPipeline, reconstruct
from mindvideo.pipeline.fmri_input import FmriInput, RunWindows
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def pipeline_dir(prepared_dataset, tmp_path_factory):
    """A tiny pipeline whose encoder takes the tiny prepared subject's voxels, with the
    ``fmri_input/`` cotrain writes (training normaliser, ROI, window 2)."""
    prepared = PreparedData.open(prepared_dataset)
    torch.manual_seed(0)
    mbm = mbm_tiny(padded_size(prepared.n_voxels, 16, "zero"))
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND_DIM, max_window=4)
    pipe = MindVideoPipeline(
        vae=tiny_vae(), unet=tiny_unet(), fmri_encoder=encoder.eval(), scheduler=tiny_scheduler()
    )
    root = tmp_path_factory.mktemp("fmri_input") / "pipeline"
    pipe.save_pretrained(root)
    windows = FMRIWindowDataset(prepared, "train", window=2, with_captions=False)
    FmriInput.from_prepared(prepared, windows.normalizer, window=2).save(root)
    return root


def runs(simulated_dataset, split: str, k: int = 0):
    layout = find_wen2018_runs(simulated_dataset, 1)
    segments = layout.train if split == "train" else layout.test
    return [str(p) for p in segments[list(segments)[k]]]


@pytest.mark.parametrize("split", ["train", "test"])
def test_raw_runs_give_the_windows_the_prepared_subject_gave(
    pipeline_dir, prepared_dataset, simulated_dataset, split
):
    """Drop, ROI, detrend, z-score, average the repetitions, normalise, pad: the same windows
    as prepare + the dataset, from the CIFTI files and the pipeline folder alone."""
    fmri_input = FmriInput.load(pipeline_dir)
    raw = RunWindows(fmri_input, runs(simulated_dataset, split), 2, 16, "zero", average=True)
    prepared = FMRIWindowDataset(prepared_dataset, split, window=2, with_captions=False)
    assert raw.n_trs == prepared.n_trs
    for t in (0, 7, raw.n_trs - 1):
        np.testing.assert_allclose(
            raw.fmri_window(0, t), prepared.fmri_window(0, t), rtol=1e-5, atol=1e-5
        )
    config = json.loads((pipeline_dir / "fmri_input" / "config.json").read_text())
    assert config["window"] == 2 and config["normalizer"]["mode"] == "train"
    assert config["preprocessing"] == {"drop": "wen2018", "detrend_order": 4, "nan_policy": "raise"}


def test_reconstruct_decodes_raw_runs_without_the_prepared_folder(
    pipeline_dir, prepared_dataset, simulated_dataset, tmp_path
):
    base = dict(checkpoint=str(pipeline_dir), num_inference_steps=2, batch_size=2, limit=3)
    reconstruct(ReconstructConfig(data=str(prepared_dataset), **base), tmp_path / "prepared")
    test_runs = runs(simulated_dataset, "test")
    cfg = ReconstructConfig(fmri=test_runs, average_runs=True, **base)
    result = reconstruct(cfg, tmp_path / "raw")
    assert result.n_windows == 3
    from_raw = np.load(tmp_path / "raw" / "reconstructions.npy")
    from_prepared = np.load(tmp_path / "prepared" / "reconstructions.npy")
    # The same windows, negative and seeds: the same clips (to rounding of the averaging).
    assert np.abs(from_raw.astype(int) - from_prepared.astype(int)).max() <= 1
    index = json.loads((tmp_path / "raw" / "index.json").read_text())
    assert index["source"] == "fmri_runs" and set(index["arrays"]) == {"reconstructions"}
    assert not (tmp_path / "raw" / "ground_truth.npy").exists()
    assert index["settings"]["fmri"] == [str(Path(p).resolve()) for p in test_runs]
    with pytest.raises(UserError, match="no ground-truth video"):
        load_reconstructions(tmp_path / "raw")
    # From the command line, one run per segment without averaging: each window names its run.
    argv = ["reconstruct", "--checkpoint", str(pipeline_dir), "--fmri", *test_runs[:2]]
    argv += ["--out", str(tmp_path / "each"), "num_inference_steps=2", "tr_stride=8"]
    assert main([*argv, "--dry-run"]) == 0  # checks the runs and plans, writes nothing
    assert not (tmp_path / "each").exists()
    assert main(argv) == 0
    windows = json.loads((tmp_path / "each" / "index.json").read_text())["windows"]
    assert {w["segment"] for w in windows} == {0, 1}
    assert windows[0]["run"] == str(Path(test_runs[0]).resolve()) != windows[-1]["run"]


def test_a_run_of_another_voxel_space_is_one_clear_error(pipeline_dir, simulated_dataset, tmp_path):
    data, axis, tr_s = read_dtseries(runs(simulated_dataset, "test")[0])
    half = len(axis) // 2
    cut = write_dtseries(tmp_path / "cut.dtseries.nii", data[:, :half], axis[:half], tr_s)
    fmri_input = FmriInput.load(pipeline_dir)
    with pytest.raises(UserError, match="does not hold the pipeline's voxel space"):
        fmri_input.read_run(cut)
    slow = write_dtseries(tmp_path / "slow.dtseries.nii", data, axis, tr_s * 2)
    with pytest.raises(UserError, match="TR of"):
        fmri_input.read_run(slow)


def test_raw_runs_need_a_pipeline_that_records_its_input(prepared_dataset, tmp_path):
    from helpers.pipeline import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "bare")
    cfg = ReconstructConfig(checkpoint=str(tmp_path / "bare"), fmri=["run.dtseries.nii"])
    with pytest.raises(UserError, match="holds no fmri_input/"):
        reconstruct(cfg, tmp_path / "out")
    both = ReconstructConfig(
        checkpoint=str(tmp_path / "bare"), fmri=["a.dtseries.nii"], data=str(prepared_dataset)
    )
    with pytest.raises(UserError, match="not both"):
        reconstruct(both, tmp_path / "out")
