"""Stage 3, contrastive learning (paper 3.3, eq. 3): retrieval lift, augmentations, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.clip import PROJECTION_DIM, TEXT_HIDDEN, build_tiny_clip, write_class_prepared

from mindvideo.config import ContrastConfig, PrepareConfig, TrainConfig, load_config
from mindvideo.data.captions import load_lexicon
from mindvideo.data.prepared import PreparedData
from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.encoder.spatiotemporal import SpatiotemporalEncoderOutput
from mindvideo.training.contrast import (
    RetrievalEvaluator,
    build_contrast,
    contrast,
    load_clip,
    random_crop,
    sparsify_voxels,
)
from mindvideo.utils import UserError


def clip_for(prepared: Path, folder: Path, steps: int = 100) -> Path:
    """A tiny CLIP whose tokenizer knows the data's and the synonym lexicon's words, fitted on
    the middle frame of every training TR with its caption."""
    data = PreparedData.open(prepared)
    captions = {
        c for split in ("train", "test") for s in data.captions(split) for t in s for c in t
    }
    lexicon = {w for word, synonyms in load_lexicon().items() for w in (word, *synonyms)}
    frames, texts = [], []
    mid = data.frames_train.shape[2] // 2
    for s in range(data.frames_train.shape[0]):
        for t in range(data.frames_train.shape[1]):
            frames.append(np.asarray(data.frames_train[s, t, mid]))
            texts.append(data.captions_train[s][t][mid])
    return build_tiny_clip(folder, sorted(captions | lexicon), (frames, texts), steps=steps)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("contrast")


@pytest.fixture(scope="module")
def prepared(workdir) -> Path:
    """8 classes, 3 training segments and 1 test segment of 60 TRs, 100 voxels (112 padded)."""
    return write_class_prepared(workdir / "prepared")


@pytest.fixture(scope="module")
def clip_dir(workdir, prepared) -> Path:
    return clip_for(prepared, workdir / "clip")


@pytest.fixture(scope="module")
def mbm_dir(workdir) -> Path:
    torch.manual_seed(0)
    folder = workdir / "mbm"
    mbm_tiny(112).save_pretrained(folder)
    return folder


def make_config(prepared, mbm_dir, clip_dir, **train) -> ContrastConfig:
    values = dict(
        max_steps=4,
        batch_size=8,
        learning_rate=2e-3,
        warmup_steps=5,
        checkpoint_every=0,
        log_every=5,
        cpu=True,
    )
    values.update(train)
    cfg = ContrastConfig(
        data=str(prepared), encoder=str(mbm_dir), dropout=0.1, train=TrainConfig(**values)
    )
    cfg.pretrained.clip = str(clip_dir)
    return cfg


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------


def test_contrastive_learning_lifts_caption_retrieval_on_test_windows(
    prepared, mbm_dir, clip_dir, tmp_path
):
    cfg = make_config(prepared, mbm_dir, clip_dir, max_steps=150)
    out = tmp_path / "run"
    result = contrast(cfg, out)

    report = json.loads((out / "retrieval.json").read_text())
    assert report == json.loads(json.dumps(result.retrieval))
    assert report["split"] == "test" and report["queries"] == 60
    assert report["candidates"] == {"caption": 8, "image": len(set(report_scenes(prepared)))}
    chance = report["chance"]["caption_top1"]
    assert chance == pytest.approx(1 / 8)
    before, after = report["before"]["caption_top1"], report["after"]["caption_top1"]
    # measured: 0.10 → 0.87 (chance 0.125) in 150 steps of batch 8. Repeated runs of this very
    # test (same seeds, one thread) spread widely: before 0.02–0.22, after 0.43–0.90 over 10
    # runs — CPU kernels round differently from run to run and 150 steps at this learning rate
    # amplify it — so the lift asserted is one every run showed (at least 0.27).
    assert after > 3 * chance
    assert after > before + 0.2
    assert report["after"]["image_top5"] > report["chance"]["image_top5"]

    # the saved encoder is the trained one, sized for SD-style conditioning from CLIP's config
    encoder = SpatiotemporalEncoder.from_pretrained(out / "fmri_encoder")
    c = encoder.config
    assert (c.window, c.out_tokens, c.cond_dim, c.pooled_dim) == (
        2,
        77,
        TEXT_HIDDEN,
        PROJECTION_DIM,
    )
    assert (c.num_voxels, c.dropout) == (112, 0.1)
    setup = build_contrast(cfg)
    again = setup.evaluator(encoder)
    assert again == pytest.approx(report["after"])
    out_tokens = encoder(torch.stack([setup.dataset.windows[0]["fmri"]])).embeddings
    assert out_tokens.shape == (1, 77, TEXT_HIDDEN)

    assert load_config(ContrastConfig, out / "config.yaml") == cfg
    last = read_metrics(out)[-1]
    assert last["step"] == 150 and last["retrieval/caption_top1"] == pytest.approx(after)


def report_scenes(prepared: Path) -> list[int]:
    ids = PreparedData.open(prepared).scene_ids_test  # [S, T, F]
    return ids[:, :, ids.shape[2] // 2].ravel().tolist()


@pytest.mark.slow
def test_retrieval_rises_on_the_simulated_dataset(tmp_path_factory, simulated_dataset):
    """The simulated Wen 2018 set through ``prepare``: 960 training and 480 test windows, 190
    unique test captions. The simulated HRF peaks 4–7 s after the stimulus, so the window spans
    4 TRs (8 s) to hold the response to its first TR."""
    from mindvideo.data.wen2018 import prepare_wen2018

    work = tmp_path_factory.mktemp("contrast-sim")
    prep_cfg = PrepareConfig(root=str(simulated_dataset), frame_size=32)
    prep_cfg.roi.correction = "none"  # 3 test repetitions: Bonferroni would keep too little
    prepared = prepare_wen2018(prep_cfg, work / "prepared")
    V = PreparedData.open(prepared).n_voxels
    torch.manual_seed(0)
    mbm_tiny(-(-V // 16) * 16).save_pretrained(work / "mbm")
    clip = clip_for(prepared, work / "clip", steps=200)
    cfg = make_config(prepared, work / "mbm", clip, max_steps=150, batch_size=32)
    cfg = dataclasses.replace(cfg, window=4)
    report = contrast(cfg, work / "run").retrieval
    chance = report["chance"]
    # measured after 150 steps (one thread): caption top-1 6.7x chance (0.0053), top-5 5.1x
    # (0.026), image (scene) top-5 6.3x (0.026); over the encoder's and the stage's seeds 0-5,
    # 3.6-6.7x, 4.8-5.7x and 6.2-7.9x
    assert report["after"]["caption_top1"] > 3 * chance["caption_top1"]
    assert report["after"]["caption_top5"] > 3 * chance["caption_top5"]
    assert report["after"]["image_top5"] > 3 * chance["image_top5"]


# --------------------------------------------------------------------------------------------
# Data: scene-aware batches and resume-exact augmentations
# --------------------------------------------------------------------------------------------


def test_batches_never_hold_two_samples_of_one_scene(prepared, mbm_dir, clip_dir):
    setup = build_contrast(make_config(prepared, mbm_dir, clip_dir, batch_size=8))
    keys = setup.dataset.scene_keys
    for epoch in (0, 1, 2):
        setup.sampler.set_epoch(epoch)
        batches = list(setup.sampler)
        assert len(batches) >= len(setup.dataset) // 8 - 2  # only the last few are partial
        for batch in batches:
            assert len(batch) == 8
            scenes = [s for i in batch for s in keys[i]]
            assert len(scenes) == len(set(scenes)), batch


def test_augmentations_depend_only_on_seed_epoch_and_index(prepared, mbm_dir, clip_dir):
    cfg = make_config(prepared, mbm_dir, clip_dir)
    dataset = build_contrast(cfg).dataset
    dataset.set_epoch(3)
    first = dataset[5]
    dataset[6], dataset[100]
    assert all(torch.equal(first[k], v) for k, v in dataset[5].items())
    other = build_contrast(cfg).dataset  # a fresh process would build this
    other.set_epoch(3)
    assert all(torch.equal(first[k], v) for k, v in other[5].items())

    # 20 % of the 100 real voxels are zeroed, the same ones in both TRs of the window
    raw = dataset.windows[5]["fmri"]  # [2, 112]
    dropped = (first["fmri"][:, :100] == 0) & (raw[:, :100] != 0)
    assert dropped.sum(dim=1).tolist() == [20, 20]
    assert torch.equal(dropped[0], dropped[1])

    # another epoch draws other augmentations for the same sample
    epochs = []
    for epoch in range(8):
        dataset.set_epoch(epoch)
        epochs.append(dataset[5])
    masks = {tuple((e["fmri"][0, :100] == 0).tolist()) for e in epochs}
    captions = {tuple(e["input_ids"].tolist()) for e in epochs}
    pixels = {tuple(e["pixel_values"].flatten()[:64].tolist()) for e in epochs}
    assert len(masks) == 8 and len(captions) > 1 and len(pixels) > 1


def test_random_crop_and_sparsify_follow_their_settings():
    rng = np.random.default_rng(0)
    frame = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    for _ in range(20):
        crop = random_crop(frame, rng)
        area = crop.shape[0] * crop.shape[1] / (40 * 30)
        assert 0.45 <= area <= 1.0 and crop.shape[2] == 3
        assert crop.shape[0] / crop.shape[1] == pytest.approx(40 / 30, rel=0.1)
    window = np.ones((2, 48), dtype=np.float32)
    out = sparsify_voxels(window, 0.25, rng, num_voxels=40, patch_size=16, pad_mode="wrap_compat")
    assert out.shape == (2, 48) and int((out[0, :40] == 0).sum()) == 10
    assert np.array_equal(out[:, 40:], out[:, :8])  # padded voxels repeat the voxels they copy


def test_an_interrupted_run_resumes_to_the_same_parameters(prepared, mbm_dir, clip_dir, tmp_path):
    """6 steps in one go vs. 3 steps, stop, resume to 6 (constant learning rate, so the schedule
    does not depend on max_steps); every augmentation is on."""

    def cfg(steps: int) -> ContrastConfig:
        return make_config(
            prepared,
            mbm_dir,
            clip_dir,
            max_steps=steps,
            lr_schedule="constant",
            warmup_steps=0,
            checkpoint_every=3,
        )

    contrast(cfg(6), tmp_path / "a")
    contrast(cfg(3), tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / "step_3").is_dir()
    contrast(cfg(6), tmp_path / "b", resume="latest")
    a = SpatiotemporalEncoder.from_pretrained(tmp_path / "a" / "fmri_encoder").state_dict()
    b = SpatiotemporalEncoder.from_pretrained(tmp_path / "b" / "fmri_encoder").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = build_contrast(cfg(6)).model.encoder.state_dict()  # the freshly inflated encoder
    assert not torch.equal(a["proj_head.fc.weight"], initial["proj_head.fc.weight"])


@pytest.mark.parametrize("mode", ["text", "image"])
def test_ablation_modes_train_with_one_modality(prepared, mbm_dir, clip_dir, tmp_path, mode):
    cfg = dataclasses.replace(make_config(prepared, mbm_dir, clip_dir), mode=mode)
    setup = build_contrast(cfg)
    item = setup.dataset[0]
    assert ("input_ids" in item) == (mode == "text")
    assert ("pixel_values" in item) == (mode == "image")
    result = contrast(cfg, tmp_path / mode)
    assert result.retrieval["mode"] == mode
    losses = [m["loss"] for m in read_metrics(tmp_path / mode) if "loss" in m]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (tmp_path / mode / "fmri_encoder" / "config.json").is_file()


def test_an_mbm_of_another_voxel_count_is_resized(prepared, clip_dir, tmp_path):
    torch.manual_seed(0)
    mbm_tiny(64).save_pretrained(tmp_path / "hcp_mbm")  # e.g. pre-trained on HCP only
    cfg = make_config(prepared, tmp_path / "hcp_mbm", clip_dir, max_steps=1)
    result = contrast(cfg, tmp_path / "run")
    assert SpatiotemporalEncoder.from_pretrained(result.encoder_dir).config.num_voxels == 112


def test_retrieval_ties_count_against_a_collapsed_encoder(prepared, mbm_dir, clip_dir):
    setup = build_contrast(make_config(prepared, mbm_dir, clip_dir))
    encoder = setup.model.encoder
    with torch.no_grad():
        for p in encoder.proj_head.parameters():
            p.zero_()  # every window gets the same (zero) embedding
    scores = RetrievalEvaluator(setup.evaluator.windows, setup.towers)(encoder)
    assert scores["caption_top1"] == 0.0 and scores["image_top1"] == 0.0


class _FixedTokens(torch.nn.Module):
    """Stands in for an encoder: returns the given rows of ``tokens`` ``[N, 77, d]`` in the
    order the evaluator asks for the test windows."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.tokens, self.next = tokens, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, fmri: torch.Tensor):
        rows = self.tokens[self.next : self.next + len(fmri)]
        self.next = (self.next + len(fmri)) % len(self.tokens)
        return SpatiotemporalEncoderOutput(rows, rows.mean(dim=1)[:, :PROJECTION_DIM])


def test_condition_scores_match_their_definitions(prepared, mbm_dir, clip_dir):
    """The tokens of a perfect encoder (each window's own caption's text condition) score
    top-1 1 and error 0; the queries' mean condition scores the reference error; the
    candidates' mean condition, tied with every candidate, scores top-1 0."""
    setup = build_contrast(make_config(prepared, mbm_dir, clip_dir))
    evaluator = RetrievalEvaluator(setup.evaluator.windows, setup.towers)
    captions = evaluator.unique_captions
    with torch.no_grad():
        ids = setup.towers.tokenize(captions)["input_ids"]
        conditions = setup.towers.model.text_model(input_ids=ids).last_hidden_state  # [C, 77, d]
    own = conditions[evaluator.caption_index]  # [N, 77, d]
    perfect = evaluator(_FixedTokens(own))
    assert perfect["condition_top1"] == 1.0
    assert perfect["condition_mse"] == pytest.approx(0, abs=1e-6)
    constant = evaluator(_FixedTokens(own.mean(dim=0, keepdim=True).expand_as(own).clone()))
    expected = ((own - own.mean(dim=0)) ** 2).mean().item()
    assert constant["condition_mse"] == pytest.approx(expected, rel=1e-4)
    assert evaluator.chance["condition_mse"] == pytest.approx(expected, rel=1e-4)
    centre = conditions.mean(dim=0, keepdim=True).expand_as(own).clone()  # the candidates' mean
    assert evaluator(_FixedTokens(centre))["condition_top1"] == 0.0  # ties with every caption
    assert evaluator.chance["condition_top1"] == pytest.approx(1 / len(captions))


def test_one_text_forward_gives_the_masked_pooled_embedding_and_sd_condition(clip_dir):
    towers = load_clip(clip_dir)
    captions = ["a red dog", "a blue car drives left over the grass", "green"]
    tokens = towers.tokenize(captions)
    pooled, condition = towers.text_embeds_and_condition(tokens["input_ids"])
    torch.testing.assert_close(pooled, towers.text_embeds(**tokens), rtol=0, atol=1e-5)
    torch.testing.assert_close(condition, towers.encode_conditions(captions), rtol=0, atol=1e-6)
    with torch.no_grad():
        reference = towers.model.text_model(input_ids=tokens["input_ids"]).last_hidden_state
    torch.testing.assert_close(condition, reference, rtol=0, atol=0)


def test_condition_loss_brings_the_tokens_to_the_text_condition(
    prepared, mbm_dir, clip_dir, tmp_path
):
    """condition_loss regresses the conditioning tokens to the caption's text condition: the
    held-out error falls well below that of eq. 3 alone, and the term is logged."""
    errors = {}
    for weight in (0.0, 10.0):
        cfg = dataclasses.replace(
            make_config(prepared, mbm_dir, clip_dir, max_steps=60), condition_loss=weight
        )
        result = contrast(cfg, tmp_path / f"w{weight}")
        errors[weight] = result.retrieval["after"]["condition_mse"]
        logged = [m for m in read_metrics(tmp_path / f"w{weight}") if "loss" in m]
        assert ("condition_mse" in logged[-1]) == (weight > 0)
        if weight:
            first, last = logged[0]["condition_mse"], logged[-1]["condition_mse"]
            assert last < 0.9 * first, (first, last)  # measured: 1.36 at step 5, 1.02 at 60
    # measured: 1.61 without the term, 1.00 with it; the best constant condition scores 0.72,
    # which this tiny encoder does not reach in 60 steps (nor in 150: 1.01)
    assert errors[10.0] < 0.8 * errors[0.0], errors


def test_linear_readout_starts_the_tokens_at_the_ridge_prediction(prepared, mbm_dir, clip_dir):
    """linear_readout: before any training the encoder's tokens are the ridge map's prediction
    of the caption's text condition (the head starts at zero), which identifies the held-out
    windows' captions far above chance; without it the fresh tokens carry nothing."""
    scores = {}
    for rank in (0, 8):
        cfg = dataclasses.replace(make_config(prepared, mbm_dir, clip_dir), linear_readout=rank)
        setup = build_contrast(cfg)
        encoder = setup.model.encoder.eval()
        scores[rank] = setup.evaluator(encoder)
    window = torch.stack([setup.evaluator.windows[i]["fmri"] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(encoder(window).embeddings, encoder.readout(window))
    chance = setup.evaluator.chance
    # measured: top-1 0.80 (chance 0.125), error 0.14 against the best constant's 0.67
    assert scores[8]["condition_top1"] > 0.5, scores[8]
    assert scores[8]["condition_mse"] < 0.5 * chance["condition_mse"], (scores[8], chance)
    assert scores[0]["condition_mse"] > chance["condition_mse"]


def test_condition_loss_needs_captions(prepared, mbm_dir, clip_dir):
    cfg = dataclasses.replace(
        make_config(prepared, mbm_dir, clip_dir), mode="image", condition_loss=1.0
    )
    with pytest.raises(UserError, match=r"condition_loss.*mode 'image'"):
        build_contrast(cfg)
    with pytest.raises(UserError, match="'condition_loss' must be at least 0"):
        build_contrast(dataclasses.replace(cfg, mode="both", condition_loss=-1.0))


DDP_SCRIPT = """
import gc, json, sys, torch, torch.distributed as dist
from mindvideo.encoder import contrastive_loss
from mindvideo.training.contrast import gather_with_grad, _gather_no_grad

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Linear(12, 6)
x, t, i = torch.randn(8, 12), torch.randn(8, 6), torch.randn(8, 6)
full = contrastive_loss(model(x), t, i, 10.0)  # one process, the global batch of 8
full.backward()
reference = model.weight.grad.clone()
model.zero_grad()
ddp = torch.nn.parallel.DistributedDataParallel(model)
part = slice(rank * 4, rank * 4 + 4)  # 4 samples per process
emb = gather_with_grad(ddp(x[part]))
loss = contrastive_loss(emb, _gather_no_grad(t[part]), _gather_no_grad(i[part]), 10.0)
loss.backward()  # DDP averages the gradients of the two processes
result = {"full": full.item(), "gathered": loss.item(),
          "grad_diff": (model.weight.grad - reference).abs().max().item()}
open(f"rank{rank}.json", "w").write(json.dumps(result))
dist.barrier()
# The DDP reducer holds the process group: free it before the group, while the interpreter is
# alive (a gloo group freed during interpreter shutdown can abort the process).
del ddp
gc.collect()
dist.destroy_process_group()
"""


def test_ddp_gathers_embeddings_so_the_loss_sees_the_global_batch(tmp_path):
    """Two processes with 4 samples each: the loss and the DDP gradient equal one process's
    with all 8 samples (every process's negatives come from both)."""
    import os
    import socket
    import subprocess
    import sys

    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "ddp.py",
    ]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["gathered"] == pytest.approx(result["full"], rel=1e-6)
        assert result["grad_diff"] < 1e-6


# --------------------------------------------------------------------------------------------
# CLIP loading and the command line
# --------------------------------------------------------------------------------------------


def test_load_clip_reads_a_saved_folder_and_names_the_key_when_missing(clip_dir, tmp_path):
    towers = load_clip(clip_dir)
    assert (towers.text_hidden_size, towers.projection_dim, towers.max_length) == (
        TEXT_HIDDEN,
        PROJECTION_DIM,
        77,
    )
    assert not any(p.requires_grad for p in towers.model.parameters())
    tokens = towers.tokenize("A red square moves on a grey background.")
    assert tokens["input_ids"].shape == (77,)
    with pytest.raises(UserError, match=r"pretrained\.clip"):
        load_clip(None)
    with pytest.raises(UserError, match=r"pretrained\.clip"):
        load_clip(tmp_path / "no_such_clip")


@pytest.fixture
def cli():
    """``mindvideo.cli.main.main``, in-process."""
    from mindvideo.cli import main as cli_main

    return cli_main.main


def test_cli_writes_an_encoder_folder_that_loads(cli, prepared, mbm_dir, clip_dir, tmp_path):
    out = tmp_path / "run"
    code = cli(
        [
            "contrast",
            "--data",
            str(prepared),
            "--encoder",
            str(mbm_dir),
            "--clip",
            str(clip_dir),
            "--out",
            str(out),
            "train.max_steps=2",
            "train.batch_size=4",
            "train.cpu=true",
        ]
    )
    assert code == 0
    encoder = SpatiotemporalEncoder.from_pretrained(out / "fmri_encoder")
    assert encoder.config.window == 2 and encoder.config.dropout == 0.6  # the paper's default
    saved = load_config(ContrastConfig, out / "config.yaml")
    assert saved.encoder == str(mbm_dir) and saved.pretrained.clip == str(clip_dir)
    assert (out / "retrieval.json").is_file()
    assert (out / "checkpoints" / "step_2").is_dir()


def test_cli_without_encoder_exits_2_with_one_line(cli, prepared, tmp_path, capsys):
    code = cli(["contrast", "--data", str(prepared), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mindvideo contrast: error:") and "--encoder" in err
    assert not (tmp_path / "run").exists()  # nothing is written before the settings are checked


# --------------------------------------------------------------------------------------------
# A shared encoder: several subjects
# --------------------------------------------------------------------------------------------


def test_several_subjects_train_one_encoder_through_adapters_fitted_onto_the_first(
    prepared, mbm_dir, clip_dir, tmp_path
):
    """``--data S1 S2`` (the overrides after the folders stay overrides): subject 2's adapter
    is fitted by ridge on every training segment, saved in ``OUT/subjects/``, and maps its
    held-out test fMRI onto subject 1's; the encoder trains on both subjects' windows."""
    from helpers.pipeline import write_mixed_subject

    from mindvideo.cli.main import main
    from mindvideo.pipeline.aligned import aligned_data
    from mindvideo.pipeline.shared import load_subjects

    other, _ = write_mixed_subject(prepared, tmp_path / "subject-b", 120)
    out = tmp_path / "run"
    argv = ["contrast", "--encoder", str(mbm_dir), "--clip", str(clip_dir), "--out", str(out)]
    argv += ["--data", str(prepared), str(other), "train.max_steps=3", "train.batch_size=8"]
    argv += ["train.checkpoint_every=0", "train.cpu=true", "dropout=0.1"]
    assert main(argv) == 0
    cfg = load_config(ContrastConfig, out / "config.yaml")
    assert (cfg.data, cfg.subjects, cfg.train.max_steps) == (str(prepared), [str(other)], 3)
    subjects = load_subjects(out)
    assert [s.name for s in subjects] == ["subject1", "subject-b"]
    adapter = subjects[1].adapter
    assert (adapter.config.in_voxels, adapter.config.out_voxels) == (120, 100)
    assert list(adapter.config.segments) == [0, 1, 2]
    one, two = PreparedData.open(prepared), PreparedData.open(other)
    mapped = aligned_data(two, adapter).fmri_test.reshape(-1, 100)
    truth = np.asarray(one.fmri_test).reshape(-1, 100)
    r = np.corrcoef(mapped.ravel(), truth.ravel())[0, 1]
    assert r > 0.95  # the test split was never fitted
    setup = build_contrast(cfg)
    assert len(setup.dataset) == 2 * 3 * 60 and setup.shared.pooled.fmri_train.shape[0] == 6
    assert setup.evaluator.windows.n_segments == 1  # retrieval on subject 1's test windows
