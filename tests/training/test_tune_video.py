"""Stage 4, video tuning (paper 3.4, B): the loss, the caches, what is trained, the outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from helpers.sd import (
    UNET_CONFIG,
    VaeEncodeCounter,
    build_sd_folder,
    run_cli,
    train_args,
    write_tiny_prepared,
)
from transformers import CLIPTextModel, CLIPTokenizer

from mindvideo.generator import VideoUNet
from mindvideo.training.diffusion import (
    VideoDenoiser,
    clip_caption,
    frames_to_pixels,
    load_noise_scheduler,
    open_latent_cache,
    sample_latents,
)
from mindvideo.training.tune_video import load_stable_diffusion
from mindvideo.utils import UserError

TRAINABLE = ("attn1", "attn2", "attn_temp")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "stable-diffusion")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_tiny_prepared(tmp_path_factory.mktemp("prepared") / "subject1")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, sd_folder, prepared):
    """``mindvideo tune-video`` for 4 steps (checkpoints at 2 and 4), with the authors'
    cross-frame GroupNorm; the VAE calls counted."""
    out = tmp_path_factory.mktemp("tune") / "tune-video"
    argv = ["tune-video", "--data", str(prepared), "--stable-diffusion", str(sd_folder)]
    argv += ["--out", str(out), *train_args(**{"train.max_steps": 4, "train.checkpoint_every": 2})]
    argv += ["cross_frame_norm=true"]
    with VaeEncodeCounter() as counter:
        assert run_cli(argv) == 0
    return out, counter.calls


def test_noising_and_targets_match_diffusers():
    """z_t and the v target equal diffusers' DDPMScheduler.add_noise / get_velocity (5D)."""
    unet = VideoUNet(**UNET_CONFIG)
    latents = torch.randn(3, 4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 500, 999])
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type=prediction_type,
        )
        model = VideoDenoiser(unet, scheduler)
        torch.testing.assert_close(
            model.add_noise(latents, noise, t), scheduler.add_noise(latents, noise, t)
        )
        expected = noise
        if prediction_type == "v_prediction":
            expected = scheduler.get_velocity(latents, noise, t)
        torch.testing.assert_close(model.target(latents, noise, t), expected)


def test_loss_is_the_mse_of_the_unet_prediction():
    torch.manual_seed(0)
    unet = VideoUNet(**UNET_CONFIG).eval()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    model = VideoDenoiser(unet, scheduler)
    latents, noise = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    cond, t = torch.randn(2, 77, 32), torch.tensor([10, 900])
    with torch.no_grad():
        loss = model(latents, cond, noise=noise, timesteps=t)
        pred = unet(scheduler.add_noise(latents, noise, t), t, cond).sample
    assert loss.item() == pytest.approx(torch.mean((pred - noise) ** 2).item(), rel=1e-5)


def test_sample_latents_scales_the_posterior():
    mean, std = torch.full((2, 4, 1, 2, 2), 2.0), torch.full((2, 4, 1, 2, 2), 0.5)
    assert torch.equal(sample_latents(mean, None, 0.18215), mean * 0.18215)
    torch.manual_seed(0)
    z = sample_latents(mean, std, 0.5)
    torch.manual_seed(0)
    assert torch.equal(z, (mean + std * torch.randn_like(mean)) * 0.5)


def test_clip_caption_is_the_most_common_then_the_earliest():
    assert clip_caption(["a", "b", "b", "a", "b", "c"]) == "b"
    assert clip_caption(["x", "y", "z"]) == "x"
    assert clip_caption(["y", "x", "x", "y"]) == "y"


def test_frames_to_pixels_maps_uint8_to_unit_range_and_crops_to_size():
    frames = torch.zeros(2, 6, 24, 32, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    pixels = frames_to_pixels(frames, 16)
    assert pixels.shape == (2, 6, 3, 16, 16)
    assert torch.allclose(pixels[:, :, 0], torch.ones(()))
    assert torch.allclose(pixels[:, :, 1:], -torch.ones(()))
    square = torch.arange(16 * 16 * 3, dtype=torch.int64).remainder(256).to(torch.uint8)
    square = square.reshape(1, 16, 16, 3)
    assert torch.equal(frames_to_pixels(square, 16), square.permute(0, 3, 1, 2) / 127.5 - 1)


def test_training_scheduler_reads_stable_diffusions_pndm_config(sd_folder):
    scheduler = load_noise_scheduler(sd_folder)
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000
    with pytest.raises(UserError, match=r"scheduler_config\.json"):
        load_noise_scheduler(sd_folder / "unet")


def test_missing_stable_diffusion_part_is_a_user_error(tmp_path, sd_folder):
    broken = tmp_path / "sd"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(UserError, match=r"no tokenizer/ folder"):
        load_stable_diffusion(broken)
    with pytest.raises(UserError, match="does not exist"):
        load_stable_diffusion(tmp_path / "nowhere")


def test_tune_video_trains_only_the_attention_layers(tuned, sd_folder):
    out, _ = tuned
    tuned_unet = VideoUNet.from_pretrained(out / "unet")
    start = VideoUNet.from_pretrained_2d(sd_folder, subfolder="unet").state_dict()
    changed = []
    for name, value in tuned_unet.state_dict().items():
        trainable = any(f".{m}." in f".{name}." for m in TRAINABLE)
        if not trainable:
            assert torch.equal(value, start[name]), f"frozen {name} changed"
        elif not torch.equal(value, start[name]):
            changed.append(name)
    for module in TRAINABLE:
        assert any(f".{module}." in name for name in changed), f"no {module} weight was trained"
    # The zero-initialised temporal output projection has left zero: the UNet is now temporal.
    assert any("attn_temp.to_out.0.weight" in name for name in changed)
    # sample_size now records the tuned resolution (16² frames → 8² latents), not SD's.
    assert tuned_unet.config.sample_size == 8


def test_tune_video_writes_a_light_generator_folder(tuned, sd_folder, tmp_path):
    """Only what was trained, plus a reference to Stable Diffusion for the frozen parts; the
    UNet it rebuilds is the trained one to the last bit, and export writes a standalone copy."""
    from safetensors.torch import load_file

    from mindvideo.pipeline.export import export_folder, folder_bytes
    from mindvideo.utils.base_folder import component_dir, read_base

    out, _ = tuned
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "base.json", "config.yaml"}
    assert not any((out / name).exists() for name in ("vae", "text_encoder", "tokenizer"))
    assert read_base(out) == sd_folder.resolve()
    for name in ("vae", "text_encoder", "tokenizer"):
        assert component_dir(out, name) == sd_folder.resolve() / name
    trained = load_file(out / "unet" / "trained.safetensors")
    unet = VideoUNet.from_pretrained(out / "unet")
    assert len(trained) < len(unet.state_dict()) / 2  # the frozen convolutions stay in SD
    # The last checkpoint holds the whole model as it was trained: every tensor is the same.
    final = load_file(out / "checkpoints" / "step_4" / "model.safetensors")
    state = unet.state_dict()
    assert {k.removeprefix("unet.") for k in final if k.startswith("unet.")} == set(state)
    for key, value in final.items():
        if key.startswith("unet."):
            assert torch.equal(value, state[key.removeprefix("unet.")]), key
    assert unet.config.sample_size == 8 and unet.cross_frame_norm  # settings kept
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "PNDMScheduler" and config["beta_end"] == 0.012
    assert (out / "config.yaml").is_file()
    lines = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    assert any("probe_loss" in x for x in lines)

    # A standalone copy: Stable Diffusion's layout, loads to the same weights without the base.
    result = export_folder(out, tmp_path / "standalone")
    copy = tmp_path / "standalone"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (copy / name).is_dir(), name
    assert not (copy / "base.json").exists() and not (copy / "checkpoints").exists()
    assert result.light_bytes < result.standalone_bytes == folder_bytes(copy)
    full = VideoUNet.from_pretrained(copy / "unet")
    assert all(torch.equal(v, state[k]) for k, v in full.state_dict().items())
    vae, sd_vae = (AutoencoderKL.from_pretrained(p, subfolder="vae") for p in (copy, sd_folder))
    for (name, a), b in zip(vae.state_dict().items(), sd_vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    text, sd_text = (
        CLIPTextModel.from_pretrained(p, subfolder="text_encoder") for p in (copy, sd_folder)
    )
    for (name, a), b in zip(text.state_dict().items(), sd_text.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    tokenizer = CLIPTokenizer.from_pretrained(copy, subfolder="tokenizer")
    sd_tokenizer = CLIPTokenizer.from_pretrained(sd_folder, subfolder="tokenizer")
    assert tokenizer("a red square").input_ids == sd_tokenizer("a red square").input_ids
    # A 2D UNet loads the standalone tuned weights too (as Stable Diffusion's, no temporal).
    UNet2DConditionModel.from_pretrained(copy / "unet")


def test_a_light_folder_whose_base_is_gone_says_so(tuned, sd_folder, tmp_path):
    from mindvideo.pipeline.export import export_folder

    out, _ = tuned
    moved = tmp_path / "run" / "tune-video"
    shutil.copytree(out / "unet", moved / "unet")
    shutil.copy2(out / "base.json", moved / "base.json")
    # The relative path no longer points at it, the absolute one still does.
    assert VideoUNet.from_pretrained(moved / "unet").config.sample_size == 8
    record = json.loads((moved / "unet" / "base.json").read_text())
    record["stable_diffusion"]["path"] = str(tmp_path / "gone")
    (moved / "unet" / "base.json").write_text(json.dumps(record))
    (moved / "base.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"which is missing.*mindvideo export"):
        VideoUNet.from_pretrained(moved / "unet")
    with pytest.raises(UserError, match="which is missing"):
        export_folder(moved, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_latents_are_cached_once_and_reused_on_resume(tuned, tmp_path, sd_folder, prepared):
    out, vae_calls = tuned
    cache = open_latent_cache(out / "cache")
    # 2 segments × 4 TRs = 8 clips of 6 frames: one probe call, then 2 batches of 4 clips.
    assert cache.mean.shape == (8, 4, 6, 8, 8) and vae_calls == 3
    assert np.all(np.asarray(cache.std) > 0)
    assert cache.scaling_factor == pytest.approx(0.18215)

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    before = (resumed / "cache" / "latents_mean.npy").stat()
    argv = ["tune-video", "--data", str(prepared), "--stable-diffusion", str(sd_folder)]
    argv += ["--out", str(resumed), "--resume", "latest"]
    argv += train_args(**{"train.max_steps": 6, "train.checkpoint_every": 2})
    with VaeEncodeCounter() as counter:
        assert run_cli(argv) == 0
    assert counter.calls == 0
    after = (resumed / "cache" / "latents_mean.npy").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (resumed / "checkpoints" / "step_6").is_dir()


def test_a_new_run_in_a_folder_with_checkpoints_is_refused(tuned, tmp_path, sd_folder, prepared):
    out, _ = tuned
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = (copy / "config.yaml").read_text()
    argv = ["tune-video", "--data", str(prepared), "--stable-diffusion", str(sd_folder)]
    argv += ["--out", str(copy), *train_args(**{"train.max_steps": 9})]
    assert run_cli(argv) == 2
    assert (copy / "config.yaml").read_text() == config  # the earlier run's recipe survives


def test_cli_without_stable_diffusion_exits_2_with_one_line(capsys, prepared, tmp_path):
    code = run_cli(["tune-video", "--data", str(prepared), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mindvideo tune-video: error:")
    assert "--stable-diffusion" in err[0]


def test_frames_beyond_the_prepared_clip_are_a_user_error(capsys, prepared, sd_folder, tmp_path):
    argv = ["tune-video", "--data", str(prepared), "--stable-diffusion", str(sd_folder)]
    argv += ["--out", str(tmp_path / "o"), *train_args(frames=8)]
    assert run_cli(argv) == 2
    assert "frames=8" in capsys.readouterr().err
