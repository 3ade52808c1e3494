"""Stage 2, masked brain modeling (paper 3.3, B): HCP pre-training, target fine-tuning, resizing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.clip import write_class_prepared

from mindvideo.config import PrepareConfig, PretrainConfig, TrainConfig, load_config
from mindvideo.encoder import MBMAutoencoder, mbm_tiny
from mindvideo.encoder.layers import get_1d_sincos_pos_embed
from mindvideo.training.common import mbm_from_size_config
from mindvideo.training.pretrain import (
    HeldOutMaskedLoss,
    check_pretrain_config,
    pretrain,
    resize_mbm,
)
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def hcp_corpus(tmp_path_factory, simulated_rest):
    """The simulated rest corpus through ``prepare --dataset hcp``: Glasser V1–V4 frames."""
    from mindvideo.data.hcp import prepare_hcp

    cfg = PrepareConfig(dataset="hcp", root=str(simulated_rest))
    return prepare_hcp(cfg, tmp_path_factory.mktemp("pretrain") / "hcp")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A prepared target subject with 100 voxels (padded to 112 = 7 patches): class patterns
    (variance 1) plus noise (variance 0.25), so masked patches are predictable from visible ones."""
    folder = tmp_path_factory.mktemp("pretrain") / "target"
    return write_class_prepared(folder, n_voxels=100, noise=0.5)


def train_config(steps: int, **overrides) -> TrainConfig:
    values = dict(
        max_steps=steps,
        batch_size=32,
        learning_rate=2e-3,
        warmup_steps=5,
        checkpoint_every=0,
        log_every=5,
        cpu=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(folder: Path) -> list[dict]:
    lines = (folder / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# --------------------------------------------------------------------------------------------
# Resizing to another voxel count
# --------------------------------------------------------------------------------------------


def test_resize_keeps_every_weight_and_recomputes_position_embeddings():
    torch.manual_seed(0)
    mbm = mbm_tiny(208)  # e.g. HCP V1–V4: 13 patches
    resized = resize_mbm(mbm, 112)  # the target ROI: 7 patches

    assert resized.config.num_voxels == 112 and resized.num_patches == 7
    old, new = mbm.state_dict(), resized.state_dict()
    assert old.keys() == new.keys()
    for name, value in old.items():
        assert torch.equal(value, new[name]), name
    D = mbm.config.embed_dim
    assert torch.equal(resized.pos_embed, get_1d_sincos_pos_embed(D, 7, cls_token=True))
    assert resized.decoder_pos_embed.shape == (8, mbm.config.decoder_embed_dim)
    loss, pred, mask = resized(torch.randn(4, 112))
    assert pred.shape == (4, 7, 16) and mask.shape == (4, 7) and torch.isfinite(loss)

    # the first patches keep their positions, so growing back is exact
    back = resize_mbm(resized, 208)
    x = torch.randn(3, 208)
    assert torch.equal(back.encode(x), mbm.encode(x))
    assert resize_mbm(mbm, 208) is mbm


def test_resize_to_a_non_multiple_of_the_patch_size_is_a_user_error():
    with pytest.raises(UserError, match="multiple of the patch size 16"):
        resize_mbm(mbm_tiny(64), 100)


def test_encoder_presets_and_overrides_build_the_requested_size():
    cfg = load_config(PretrainConfig, overrides=["encoder.preset=tiny", "encoder.depth=3"])
    mbm = mbm_from_size_config(cfg.encoder, 64)
    assert (mbm.config.embed_dim, mbm.config.depth, mbm.config.num_voxels) == (32, 3, 64)
    cfg = load_config(PretrainConfig, overrides=["encoder.preset=huge"])
    with pytest.raises(UserError, match=r"encoder\.preset"):
        mbm_from_size_config(cfg.encoder, 64)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_phase_run(tmp_path_factory, hcp_corpus, target):
    """HCP pre-training (phase 1) then fine-tuning on the target's training fMRI (phase 2)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = PretrainConfig(
        data=str(hcp_corpus),
        finetune_data=str(target),
        train=train_config(120),
        finetune=train_config(500, checkpoint_every=250),
    )
    cfg.encoder.preset = "tiny"
    return cfg, out, pretrain(cfg, out)


def test_masked_loss_falls_on_the_rest_corpus(two_phase_run, hcp_corpus):
    from mindvideo.data.hcp import HCPCorpus

    cfg, out, _ = two_phase_run
    corpus = HCPCorpus(hcp_corpus)
    frames = torch.stack([corpus[i] for i in range(0, len(corpus), 3)])  # [200, V]
    heldout = HeldOutMaskedLoss(frames, mask_ratio=0.75, seed=1)
    torch.manual_seed(cfg.train.seed)
    fresh = mbm_from_size_config(cfg.encoder, corpus.n_voxels_padded)  # the run's initial model
    trained = MBMAutoencoder.from_pretrained(out / "pretrain" / "mbm")
    before, after = heldout(fresh), heldout(trained)
    # measured: 1.96 → 0.84, against 0.99 for predicting zeros (z-scored voxels)
    assert after["masked_mse"] < 0.85 * before["masked_mse"]
    assert after["masked_mse"] < 0.9 * after["masked_mse_zero"]
    losses = [m["loss"] for m in read_metrics(out / "pretrain") if "loss" in m]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


def test_finetuning_on_the_target_resizes_and_improves_held_out_loss(two_phase_run, hcp_corpus):
    from mindvideo.data.hcp import HCPCorpus

    cfg, out, result = two_phase_run
    assert result.phases == ["pretrain", "finetune"]
    phase1 = MBMAutoencoder.from_pretrained(out / "pretrain" / "mbm")
    final = MBMAutoencoder.from_pretrained(out / "mbm")
    assert phase1.config.num_voxels == HCPCorpus(hcp_corpus).n_voxels_padded
    assert final.config.num_voxels == 112
    assert (out / "config.yaml").is_file()
    assert load_config(PretrainConfig, out / "config.yaml").finetune_data == str(cfg.finetune_data)

    heldout = json.loads((out / "heldout.json").read_text())
    assert heldout["split"] == "test" and heldout["mask_ratio"] == 0.75
    # measured: 1.04 → 0.72 (predicting zeros: 0.93; the noise floor is 0.2)
    assert heldout["masked_mse_after"] < 0.9 * heldout["masked_mse_zero"]
    assert heldout["masked_mse_after"] < 0.9 * heldout["masked_mse_before"]
    logged = [m for m in read_metrics(out / "finetune") if "heldout_masked_mse" in m]
    assert logged[-1]["step"] == 500
    assert logged[-1]["heldout_masked_mse"] == pytest.approx(heldout["masked_mse_after"])


def test_resume_latest_skips_the_finished_phase(two_phase_run):
    cfg, out, _ = two_phase_run
    weights = MBMAutoencoder.from_pretrained(out / "mbm").state_dict()
    result = pretrain(cfg, out, resume="latest")
    assert result.phases == ["finetune"]  # phase 1 finished: loaded, not trained again
    again = MBMAutoencoder.from_pretrained(out / "mbm").state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_resume_from_a_finetune_checkpoint_matches_the_uninterrupted_run(two_phase_run, tmp_path):
    import shutil

    cfg, out, _ = two_phase_run
    final = MBMAutoencoder.from_pretrained(out / "mbm").state_dict()
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "mbm")
    step_250 = copy / "finetune" / "checkpoints" / "step_250"
    assert step_250.is_dir()
    result = pretrain(cfg, copy, resume=step_250)
    assert result.phases == ["finetune"]
    resumed = MBMAutoencoder.from_pretrained(copy / "mbm").state_dict()
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_a_run_without_data_is_a_user_error():
    with pytest.raises(UserError, match="--finetune-data"):
        check_pretrain_config(PretrainConfig())
    with pytest.raises(UserError, match="mask_ratio"):
        check_pretrain_config(PretrainConfig(finetune_data="x", mask_ratio=1.0))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    """``mindvideo.cli.main.main``, in-process."""
    from mindvideo.cli import main as cli_main

    return cli_main.main


def test_cli_finetune_only_writes_an_mbm_folder(cli, target, tmp_path):
    out = tmp_path / "run"
    code = cli(
        [
            "pretrain",
            "--finetune-data",
            str(target),
            "--out",
            str(out),
            "encoder.preset=tiny",
            "finetune.max_steps=3",
            "finetune.batch_size=16",
            "finetune.cpu=true",
            "finetune.checkpoint_every=0",
        ]
    )
    assert code == 0
    mbm = MBMAutoencoder.from_pretrained(out / "mbm")
    assert mbm.config.num_voxels == 112 and mbm.config.embed_dim == 32
    assert (out / "finetune" / "logs" / "metrics.jsonl").is_file()
    assert not (out / "pretrain").exists()


def test_cli_without_data_exits_2_with_one_line(cli, tmp_path, capsys):
    assert cli(["pretrain", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mindvideo pretrain: error:") and "--data" in err


def test_fine_tuning_on_several_subjects_saves_their_adapters_for_contrast(target, tmp_path):
    """``--finetune-data S1 S2``: subject 2's adapter is fitted onto subject 1's voxels, the MBM
    fine-tunes on both subjects' training frames, and ``contrast --data S1 S2`` from that MBM
    reads the same adapter instead of fitting another."""
    import numpy as np
    from helpers.pipeline import write_mixed_subject

    from mindvideo.cli.main import main
    from mindvideo.pipeline.shared import load_subjects
    from mindvideo.training.shared import open_subjects, subjects_folder

    other, _ = write_mixed_subject(target, tmp_path / "subject-b", 90)
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), "--finetune-data", str(target), str(other)]
    argv += ["encoder.preset=tiny", "finetune.max_steps=2", "finetune.batch_size=32"]
    argv += ["finetune.checkpoint_every=0", "finetune.cpu=true"]
    assert main(argv) == 0
    cfg = load_config(PretrainConfig, out / "config.yaml")
    assert (cfg.finetune_data, cfg.finetune_subjects) == (str(target), [str(other)])
    log = (out / "finetune" / "logs" / "metrics.jsonl").read_text()
    assert json.loads(log.splitlines()[-1])["step"] == 2
    saved = load_subjects(out)
    assert [s.voxels for s in saved] == [100, 90] and saved[1].adapter is not None
    assert subjects_folder(out / "mbm") == out  # found from the MBM folder contrast is given
    shared = open_subjects(str(target), [str(other)], adapters_from=subjects_folder(out))
    np.testing.assert_array_equal(
        shared.subjects[1].adapter.linear.weight.numpy(), saved[1].adapter.linear.weight.numpy()
    )
    assert shared.pooled.fmri_train.shape[0] == 2 * 3  # both subjects' 3 training segments
    with pytest.raises(UserError, match="not on subject1 as given"):
        open_subjects(str(target), [], adapters_from=subjects_folder(out))
    with pytest.raises(UserError, match="set finetune_data"):
        pretrain(PretrainConfig(finetune_subjects=[str(other)], data="x"), tmp_path / "no")
