"""``--dry-run`` of the training and sampling stages: the real run's checks, no training, no output.

A dry run must count exactly the parameters the real run holds and trains, leave ``--out``
alone, fail with the real run's one-line error on a bad path or a voxel mismatch, and plan a
paper-size recipe from configs alone (models on the meta device, no weights allocated).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.clip import build_tiny_clip
from helpers.pipeline import tiny_pipeline
from helpers.sd import COND_DIM, build_sd_folder, run_cli, write_clip_tokenizer, write_tiny_prepared

from mindvideo.config import PretrainConfig, TrainConfig, load_config
from mindvideo.encoder import MBMAutoencoder, SpatiotemporalEncoder, mbm_tiny
from mindvideo.training.dry_run import plan_pretrain, plan_tune_video
from mindvideo.utils.dry_run import (
    Batching,
    MemoryEstimate,
    ModelPart,
    PhasePlan,
    RunPlan,
    trace_activations,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
VOXELS = 60  # padded to 64 = 4 patches of 16
TOTAL_LINE = re.compile(r"^ {4}total +([\d,]+) +([\d,]+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny prepared subject, SD-style folder, MBM, contrast-style encoder, CLIP and pipeline,
    plus an encoder and a pipeline made for 128 voxels (a voxel mismatch)."""
    root = tmp_path_factory.mktemp("dry-run")
    data = write_tiny_prepared(root / "data", voxels=VOXELS)
    sd = build_sd_folder(root / "sd")
    torch.manual_seed(0)
    mbm = mbm_tiny(64)
    mbm.save_pretrained(root / "pretrain" / "mbm")
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND_DIM)
    encoder.save_pretrained(root / "contrast" / "fmri_encoder")
    SpatiotemporalEncoder.from_mbm(mbm_tiny(128), window=2, cond_dim=COND_DIM).save_pretrained(
        root / "contrast-128" / "fmri_encoder"
    )
    captions = ["a red square", "a blue bar", "a green bar", "a yellow square"]
    clip = build_tiny_clip(root / "clip", [*captions, "the dark background"])
    tiny_pipeline().save_pretrained(root / "pipeline")
    return {
        "root": root,
        "data": data,
        "sd": sd,
        "mbm": root / "pretrain",
        "encoder": root / "contrast",
        "encoder-128": root / "contrast-128",
        "clip": clip,
        "pipeline": root / "pipeline",
    }


ONE_STEP = ["train.max_steps=1", "train.batch_size=2", "train.checkpoint_every=0", "train.cpu=true"]


def stage_argv(stage: str, f: dict[str, Path]) -> list[str]:
    """A tiny, one-step command line of ``stage`` (without ``--out``)."""
    tiny = ["--config", str(CONFIGS / "tiny" / f"{stage}.yaml")]
    if stage == "pretrain":
        return [
            "pretrain",
            *tiny,
            "--finetune-data",
            str(f["data"]),
            "finetune.max_steps=1",
            "finetune.batch_size=4",
            "finetune.checkpoint_every=0",
        ]
    if stage == "contrast":
        args = ["--data", str(f["data"]), "--encoder", str(f["mbm"]), "--clip", str(f["clip"])]
        return ["contrast", *tiny, *args, *ONE_STEP]
    if stage == "tune-video":
        args = ["--data", str(f["data"]), "--stable-diffusion", str(f["sd"])]
        return ["tune-video", *tiny, *args, "size=16", *ONE_STEP]
    if stage == "cotrain":
        args = ["--data", str(f["data"]), "--encoder", str(f["encoder"])]
        args += ["--generator", str(f["sd"])]
        return ["cotrain", *tiny, *args, "size=16", *ONE_STEP]
    if stage == "reconstruct":
        args = ["--data", str(f["data"]), "--checkpoint", str(f["pipeline"])]
        return ["reconstruct", *tiny, *args]
    raise ValueError(stage)


def totals(text: str) -> tuple[int, int]:
    """(parameters, trainable) of the plan's (last) model table."""
    found = TOTAL_LINE.findall(text)
    assert found, text
    total, trainable = found[-1]
    return int(total.replace(",", "")), int(trainable.replace(",", ""))


def numel(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class EngineLog(logging.Handler):
    """The training engine's own count: ``Training ...: N trainable parameters``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.trainable: list[int] = []
        self.logger = logging.getLogger("mindvideo.training.engine")

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"(\d+) trainable parameters", record.getMessage())
        if match:
            self.trainable.append(int(match.group(1)))

    def __enter__(self) -> EngineLog:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def real_parameters(stage: str, out: Path, f: dict[str, Path]) -> int:
    """Every parameter the real run held, read back from what it wrote."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel, CLIPTextModel

    from mindvideo.generator import VideoUNet
    from mindvideo.utils.base_folder import component_dir

    if stage == "pretrain":
        return numel(MBMAutoencoder.from_pretrained(out / "mbm"))
    if stage == "contrast":
        encoder = SpatiotemporalEncoder.from_pretrained(out / "fmri_encoder")
        return numel(encoder, CLIPModel.from_pretrained(f["clip"])) + 1  # + the temperature
    if stage == "tune-video":
        return numel(
            VideoUNet.from_pretrained(out / "unet"),
            # the frozen parts are read from the base Stable Diffusion folder
            AutoencoderKL.from_pretrained(component_dir(out, "vae")),
            CLIPTextModel.from_pretrained(component_dir(out, "text_encoder")),
        )
    pipe = out / "pipeline"
    return numel(
        SpatiotemporalEncoder.from_pretrained(pipe / "fmri_encoder"),
        VideoUNet.from_pretrained(pipe / "unet"),
        AutoencoderKL.from_pretrained(component_dir(pipe, "vae")),
    )


# --------------------------------------------------------------------------------------------
# Counts, and nothing written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["pretrain", "contrast", "tune-video", "cotrain"])
def test_a_dry_run_counts_what_the_real_run_holds_and_trains(stage, folders, tmp_path, capsys):
    out = tmp_path / "out"
    argv = stage_argv(stage, folders)
    assert run_cli([*argv, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written, not even the folder
    assert f"mindvideo {stage} --dry-run" in text
    assert "memory per process (an estimate)" in text and "activations (rough)" in text
    planned_total, planned_trainable = totals(text)

    with EngineLog() as log:
        assert run_cli([*argv, "--out", str(out)]) == 0
    assert log.trainable == [planned_trainable]
    assert planned_total == real_parameters(stage, out, folders)


def test_a_reconstruct_dry_run_counts_the_pipeline_and_writes_nothing(folders, tmp_path, capsys):
    from mindvideo.pipeline import MindVideoPipeline

    out = tmp_path / "recon"
    argv = [*stage_argv("reconstruct", folders), "--out", str(out), "--dry-run"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    pipe = MindVideoPipeline.from_pretrained(folders["pipeline"])
    assert totals(text) == (numel(pipe.fmri_encoder, pipe.unet, pipe.vae), 0)
    assert "4 of 2 TRs" in text  # the tiny recipe's limit of 4 windows
    assert "DDIMScheduler (scheduler=ddim, steps_offset=1), 2 steps" in text


def test_out_is_required_unless_dry_run(folders, capsys):
    assert run_cli(stage_argv("reconstruct", folders)) == 2
    assert "needs --out DIR (only --dry-run runs without it)" in capsys.readouterr().err
    assert run_cli([*stage_argv("reconstruct", folders), "--dry-run"]) == 0


# --------------------------------------------------------------------------------------------
# The real run's errors
# --------------------------------------------------------------------------------------------


def replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.parametrize(
    ("stage", "flag"),
    [
        ("pretrain", "--finetune-data"),
        ("contrast", "--clip"),
        ("contrast", "--encoder"),
        ("tune-video", "--stable-diffusion"),
        ("tune-video", "--data"),
        ("cotrain", "--encoder"),
        ("cotrain", "--generator"),
        ("reconstruct", "--checkpoint"),
        ("reconstruct", "--data"),
    ],
)
def test_a_missing_path_is_the_real_runs_one_line_error(stage, flag, folders, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    argv = [*replace(stage_argv(stage, folders), flag, missing), "--out", str(tmp_path / "o")]
    assert run_cli([*argv, "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert run_cli(argv) == 2
    real = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading progress bar
    assert dry.err == real + "\n"  # one line, the same as the real run's
    assert missing in real and dry.out == ""
    assert not (tmp_path / "o").exists()


def test_a_pretrained_folder_without_weights_is_an_error(folders, tmp_path, capsys):
    clip = tmp_path / "clip"
    clip.mkdir()
    for file in folders["clip"].iterdir():
        if file.suffix != ".safetensors":
            (clip / file.name).write_bytes(file.read_bytes())
    argv = replace(stage_argv("contrast", folders), "--clip", str(clip))
    assert run_cli([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"Could not load CLIP from {clip}" in err and "no weights file" in err


@pytest.mark.parametrize("stage", ["cotrain", "reconstruct"])
def test_a_voxel_count_that_does_not_fit_the_encoder_is_an_error(stage, folders, tmp_path, capsys):
    argv = stage_argv(stage, folders)
    if stage == "cotrain":  # an encoder trained on 128 voxels, data with 60
        argv = replace(argv, "--encoder", str(folders["encoder-128"]))
    else:  # data with 100 voxels (112 padded), a pipeline for 64
        data = write_tiny_prepared(tmp_path / "data-100", voxels=100)
        argv = replace(argv, "--data", str(data))
    argv += ["--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert run_cli([*argv, "--dry-run"]) == 2
    dry = capsys.readouterr().err
    assert "voxels" in dry and dry.count("\n") == 1
    assert run_cli(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] + "\n" == dry


# --------------------------------------------------------------------------------------------
# Paper size from configs alone
# --------------------------------------------------------------------------------------------


def vit_l_mbm_encoder(patch: int = 16, width: int = 1024, depth: int = 24) -> int:
    """The MBM encoder of Table B.1 (ViT-L, MLP ratio 1): patch embedding, CLS, blocks, norm."""
    block = 2 * width + (3 * width * width + 3 * width) + (width * width + width)  # norm1, attn
    block += 2 * width + 2 * (width * width + width)  # norm2, MLP (ratio 1)
    return patch * width + width + width + depth * block + 2 * width


def test_the_paper_pretrain_recipe_plans_vit_l_without_allocating_it(folders, tmp_path):
    """``configs/paper/pretrain.yaml`` (ViT-L, 8 GPUs) on a laptop: counts from the config alone,
    in a fresh process whose peak memory stays far below the 0.66 GB of ViT-L weights."""
    code = (
        "import resource, sys\n"
        "import mindvideo.encoder, mindvideo.training.dry_run\n"
        "from mindvideo.cli.main import main\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rc = main(sys.argv[1:])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('maxrss_kb', before, after)\n"
        "sys.exit(rc)\n"
    )
    argv = ["pretrain", "--config", str(CONFIGS / "paper" / "pretrain.yaml")]
    argv += ["--finetune-data", str(folders["data"]), "--dry-run", "finetune.batch_size=4"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    encoder = vit_l_mbm_encoder()
    assert re.search(rf"mbm encoder +{encoder:,} +{encoder:,}", text), text
    assert "8 = 4 per process × 2 processes × 1 accumulation" in text  # WORLD_SIZE=2
    # The peak resident memory the dry run adds to the imported libraries: far below the
    # 605 MB of the ViT-L encoder's float32 weights (the libraries' own share varies).
    before_kb, after_kb = (int(v) for v in text.split("maxrss_kb")[-1].split())
    added_mb = (after_kb - before_kb) / 1024
    assert added_mb < 400, f"the dry run added {added_mb:.0f} MB to {before_kb / 1024:.0f} MB"


SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=64,
)
SD15_VAE = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
SD15_TEXT = dict(
    architectures=["CLIPTextModel"],
    model_type="clip_text_model",
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
#: The parameter counts of runwayml/stable-diffusion-v1-5's parts, as published.
SD15_COUNTS = {"unet_2d": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def write_sd15_configs(root: Path) -> Path:
    """An SD-1.5 folder of configs only: every weights file is an empty placeholder."""
    from diffusers import PNDMScheduler
    from helpers.sd import SCHEDULER_CONFIG

    for sub, config, weights in (
        ("unet", {"_class_name": "UNet2DConditionModel", **SD15_UNET}, "diffusion_pytorch_model"),
        ("vae", {"_class_name": "AutoencoderKL", **SD15_VAE}, "diffusion_pytorch_model"),
        ("text_encoder", SD15_TEXT, "model"),
    ):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps(config))
        (root / sub / f"{weights}.safetensors").write_bytes(b"")
    write_clip_tokenizer(root / "tokenizer")
    PNDMScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    return root


def test_the_paper_tune_video_recipe_plans_stable_diffusion_size_from_configs(tmp_path):
    from mindvideo.config import TuneVideoConfig
    from mindvideo.generator import VideoUNet
    from mindvideo.generator.unet import is_temporal_key

    sd = write_sd15_configs(tmp_path / "sd15")
    data = write_tiny_prepared(tmp_path / "data", segments=4)  # 16 clips: one batch of 14
    cfg = load_config(
        TuneVideoConfig,
        CONFIGS / "paper" / "tune-video.yaml",
        [f"data={data}", f"pretrained.stable_diffusion={sd}"],
    )
    plan = plan_tune_video(cfg)
    parts = {p.name: p for p in plan.phases[0].models}
    with torch.device("meta"):
        temporal = sum(
            p.numel()
            for n, p in VideoUNet.from_config(SD15_UNET).named_parameters()
            if is_temporal_key(n)
        )
    assert parts["unet"].parameters == SD15_COUNTS["unet_2d"] + temporal
    assert parts["vae"].parameters == SD15_COUNTS["vae"]
    assert parts["text_encoder"].parameters == SD15_COUNTS["text_encoder"]
    assert 0 < parts["unet"].trainable < parts["unet"].parameters
    memory = plan.phases[0].memory
    trained = parts["unet"].trainable
    assert memory.weights == 4 * parts["unet"].parameters  # VAE, text encoder off the device
    assert (memory.gradients, memory.optimizer) == (4 * trained, 8 * trained)
    assert memory.activations and memory.activations > 2**30  # batch 14 × 6 frames at 256²
    if not torch.cuda.is_available():
        assert any("fp16" in note for note in plan.notes)  # a plan for a GPU, made here


# --------------------------------------------------------------------------------------------
# The plan and the estimate
# --------------------------------------------------------------------------------------------


def test_gradient_checkpointing_lowers_the_activation_estimate(folders):
    from mindvideo.config import tune_video_preset

    cfg = tune_video_preset("tiny")
    cfg.data, cfg.pretrained.stable_diffusion = str(folders["data"]), str(folders["sd"])
    cfg.size, cfg.train.batch_size = 16, 2
    plain = plan_tune_video(cfg).phases[0].memory.activations
    cfg.gradient_checkpointing = True
    checkpointed = plan_tune_video(cfg).phases[0].memory.activations
    assert plain and checkpointed and checkpointed < plain


def test_the_activation_trace_counts_what_the_backward_pass_keeps():
    """Ten tanh layers: the ten outputs of 100 × 1000 float32 are kept (4 MB), nothing else."""
    w = torch.nn.Parameter(torch.empty(1000, 1000, device="meta"))
    x = torch.empty(100, 1000, device="meta")

    def forward():
        h = x
        for _ in range(10):
            h = torch.tanh(h @ w)
        return h.sum()

    assert trace_activations(forward) == 10 * 100 * 1000 * 4 + 4
    with torch.no_grad():  # inference keeps nothing; its peak is two layers' tensors
        assert trace_activations(forward, peak=True) <= 3 * 100 * 1000 * 4 + 4


def test_plan_to_dict_and_format_agree(folders):
    cfg = load_config(PretrainConfig, CONFIGS / "tiny" / "pretrain.yaml")
    cfg.finetune_data = str(folders["data"])
    cfg.finetune = TrainConfig(max_steps=10, batch_size=4, cpu=True)
    plan = plan_pretrain(cfg)
    raw = json.loads(json.dumps(plan.to_dict()))
    phase = raw["phases"][0]
    assert raw["stage"] == "pretrain" and phase["name"] == "finetune"
    assert phase["parameters"] == numel(mbm_tiny(64)) == phase["trainable"]
    assert phase["batching"]["global_batch"] == 4 and phase["epochs"] == pytest.approx(10 * 4 / 8)
    assert phase["memory"]["total"] == plan.phases[0].memory.total
    assert f"{phase['parameters']:,}" in plan.format()


def test_a_hand_made_plan_formats_its_parts():
    part = ModelPart("unet", 1000, 10, resident=True)
    frozen = ModelPart("vae", 500, 0, resident=False)
    memory = MemoryEstimate(weights=4000, gradients=40, optimizer=80, activations=None)
    phase = PhasePlan(
        "tune-video",
        {"clips": 8},
        [part, frozen],
        memory,
        steps=5,
        batching=Batching(2, 4, 3),
        mixed_precision="bf16",
        samples=48,
    )
    text = RunPlan("tune-video", {"data": "x"}, [phase], ["a note"]).format()
    assert "24 = 2 per process × 4 processes × 3 accumulation" in text
    assert "5 optimiser steps ≈ 2.5 epochs of 48 samples" in text
    assert "(not on the device while training)" in text and "unknown" in text
    assert re.search(r"total +1,500 +10$", text, re.MULTILINE) and "  - a note" in text


def test_light_saves_at_stable_diffusion_size():
    """What tune-video and cotrain save at SD-1.5 size (meta device, no weights): the trained
    attention and the temporal layers, 15.7% of the inflated UNet (546 of 3,468 MiB in float32);
    the VAE and text encoder (319 and 469 MiB) are not copied at all."""
    from mindvideo.generator import VideoUNet, trained_keys

    with torch.device("meta"):
        unet = VideoUNet.from_config(SD15_UNET)
    params = dict(unet.named_parameters())
    full = sum(p.numel() for p in params.values())
    temporal = sum(p.numel() for k, p in params.items() if "_temp." in k)
    assert full - temporal == SD15_COUNTS["unet_2d"]  # the published 2D UNet
    light = sum(params[k].numel() for k in trained_keys(unet, ["attn1", "attn2", "attn_temp"]))
    assert (light, full) == (143_135_680, 909_120_004)
    assert round(4 * light / 2**20) == 546 and round(4 * full / 2**20) == 3468


def test_the_shared_recipes_plan_three_times_the_steps_over_every_subject(
    folders, tmp_path, capsys
):
    """configs/paper/{contrast,cotrain}_shared.yaml with two subjects: the plan names the
    further subject and its adapter (none is fitted by a dry run), counts both subjects'
    windows and keeps the single-subject recipe's batch, hence its memory."""
    import shutil

    from helpers.pipeline import write_mixed_subject

    from mindvideo.data.prepared import PreparedData, data_fingerprint
    from mindvideo.pipeline.shared import SharedSubject, save_subjects, subject_name

    other, adapter = write_mixed_subject(folders["data"], tmp_path / "subject-b", 70)
    data = [str(folders["data"]), str(other)]
    paper = CONFIGS / "paper"
    argv = ["contrast", "--config", str(paper / "contrast_shared.yaml"), "--data", *data]
    argv += ["--encoder", str(folders["mbm"]), "--clip", str(folders["clip"]), "--dry-run"]
    argv += ["train.batch_size=4"]  # the tiny subjects hold 8 windows each
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "subject-b (70 voxels): read through subject adapters; adapters fitted" in text
    assert "36,000 optimiser steps" in text and not (other / "subjects").exists()
    single = ["contrast", "--config", str(paper / "contrast.yaml"), "--data", data[0]]
    assert run_cli([*single, *argv[6:]]) == 0

    def memory(out: str) -> list[str]:
        return out.split("memory per process")[1].splitlines()

    assert memory(text) == memory(capsys.readouterr().out)

    encoder = tmp_path / "contrast"
    shutil.copytree(folders["encoder"], encoder)
    one = PreparedData.open(folders["data"])
    save_subjects(
        [
            SharedSubject(subject_name(one), data_fingerprint(one), VOXELS),
            SharedSubject("subject-b", data_fingerprint(PreparedData.open(other)), 70, adapter),
        ],
        encoder,
    )
    argv = ["cotrain", "--config", str(paper / "cotrain_shared.yaml"), "--data", *data]
    argv += ["--encoder", str(encoder), "--generator", str(folders["sd"]), "--dry-run"]
    argv += ["size=16", "train.batch_size=4"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "adapters read from beside the encoder" in text and "45,000 optimiser steps" in text
    assert "fMRI-video pairs" in text and "= 4 segments" in text
