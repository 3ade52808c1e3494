"""Stage 5, co-training (paper 3.4): the loss goes down, the pipeline folder, encoder sources."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from helpers.sd import (
    COND_DIM,
    IMAGE_SIZE,
    VaeEncodeCounter,
    build_sd_folder,
    run_cli,
    train_args,
    write_tiny_prepared,
)

from mindvideo.config import CotrainConfig, PretrainedPaths, TrainConfig, TuneVideoConfig
from mindvideo.data.datasets import FMRIWindowDataset
from mindvideo.encoder import MBMAutoencoder, SpatiotemporalEncoder, mbm_tiny
from mindvideo.generator import VideoUNet
from mindvideo.training.cotrain import (
    CotrainDataset,
    cotrain,
    find_encoder_folder,
    load_fmri_encoder,
    load_generator,
)
from mindvideo.training.diffusion import DenoisingProbe, VideoDenoiser, open_latent_cache
from mindvideo.training.tune_video import tune_video
from mindvideo.utils import UserError

VOXELS = 60  # padded to 64 = 4 patches of 16
STEPS = 20


def tiny_mbm(seed: int = 0) -> MBMAutoencoder:
    torch.manual_seed(seed)
    return mbm_tiny(64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny SD folder, prepared subject, tune-video output (1 step), contrast-style encoder
    folder (``fmri_encoder/``) and MBM folder."""
    root = tmp_path_factory.mktemp("cotrain")
    sd = build_sd_folder(root / "sd")
    data = write_tiny_prepared(root / "data", voxels=VOXELS)
    generator = root / "tune-video"
    tune_video(
        TuneVideoConfig(
            data=str(data),
            size=IMAGE_SIZE,
            pretrained=PretrainedPaths(stable_diffusion=str(sd)),
            train=TrainConfig(max_steps=1, batch_size=4, checkpoint_every=0, cpu=True),
        ),
        generator,
    )
    encoder = SpatiotemporalEncoder.from_mbm(tiny_mbm(), window=2, cond_dim=COND_DIM)
    encoder.save_pretrained(root / "contrast" / "fmri_encoder")
    tiny_mbm(1).save_pretrained(root / "pretrain" / "mbm")
    return {
        "root": root,
        "sd": sd,
        "data": data,
        "generator": generator,
        "encoder": root / "contrast",
        "mbm": root / "pretrain",
    }


@pytest.fixture(scope="module")
def cotrained(folders):
    """``mindvideo cotrain`` for STEPS steps from the contrast-style encoder; VAE calls counted."""
    out = folders["root"] / "cotrain"
    argv = ["cotrain", "--data", str(folders["data"]), "--encoder", str(folders["encoder"])]
    argv += ["--generator", str(folders["generator"]), "--out", str(out)]
    argv += train_args(
        **{
            "train.max_steps": STEPS,
            "train.batch_size": 2,
            "train.learning_rate": 2e-3,
            "train.log_every": 10,
        }
    )
    with VaeEncodeCounter() as counter:
        assert run_cli(argv) == 0
    return out, counter.calls


def probe_for(folders) -> DenoisingProbe:
    """16 fixed (latents, fMRI window, noise, timestep) of the training pairs."""
    latents = open_latent_cache(folders["generator"] / "cache")
    windows = FMRIWindowDataset(folders["data"], "train", window=2, with_captions=False)
    dataset = CotrainDataset(windows, latents)
    return DenoisingProbe.from_dataset(dataset, latents.scaling_factor, n=16, seed=123)


def test_a_tiny_cotrain_run_lowers_the_denoising_loss(folders, cotrained):
    out, _ = cotrained
    probe = probe_for(folders)
    generator = load_generator(folders["generator"])
    encoder, _, _ = load_fmri_encoder(folders["encoder"], window=2, cond_dim=COND_DIM)
    before_model = VideoDenoiser(generator.unet, generator.noise_scheduler, encoder).eval()
    trained_unet = VideoUNet.from_pretrained(out / "pipeline" / "unet")
    trained_encoder = SpatiotemporalEncoder.from_pretrained(out / "pipeline" / "fmri_encoder")
    after_model = VideoDenoiser(trained_unet, generator.noise_scheduler, trained_encoder).eval()
    before, after = probe.loss(before_model), probe.loss(after_model)
    print(f"probe denoising loss: before {before:.4f}, after {STEPS} steps {after:.4f}")
    assert after < 0.95 * before


def test_cotrain_writes_a_pipeline_that_loads_and_generates(folders, cotrained):
    from mindvideo.pipeline import MindVideoPipeline

    out, _ = cotrained
    assert json.loads((out / "pipeline" / "model_index.json").read_text())["unet"][1] == "VideoUNet"
    assert (out / "config.yaml").is_file()
    pipe = MindVideoPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False  # latents are not clipped to [-1, 1]
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.config.fmri_pad_mode == "zero" and pipe.num_voxels == 64
    assert pipe.default_size == IMAGE_SIZE  # the trained size, from the UNet's sample_size
    fmri = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(0))
    video = pipe(fmri, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    again = pipe(fmri, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert (video == again).all()
    assert video.shape == (2, 6, IMAGE_SIZE, IMAGE_SIZE, 3) and video.dtype.name == "uint8"
    # The folder carries its fMRI input: the normaliser fitted on the training split, the window.
    from mindvideo.data.datasets import FMRINormalizer
    from mindvideo.data.prepared import PreparedData
    from mindvideo.pipeline.fmri_input import FmriInput

    saved = FmriInput.load(out / "pipeline")
    train = PreparedData.open(folders["data"]).fmri_train
    assert saved.normalizer.mean_ == pytest.approx(FMRINormalizer("train").fit(train).mean_)
    assert saved.window == 2 and saved.n_voxels == VOXELS
    with pytest.raises(UserError, match="did not come from CIFTI runs"):
        saved.read_run("run.dtseries.nii")  # arrays written directly: no ROI on grayordinates


def test_cotrain_trains_the_whole_encoder_and_only_the_unets_attention(folders, cotrained):
    out, _ = cotrained
    start_encoder = SpatiotemporalEncoder.from_pretrained(folders["encoder"] / "fmri_encoder")
    encoder = SpatiotemporalEncoder.from_pretrained(out / "pipeline" / "fmri_encoder")
    start = start_encoder.state_dict()
    unchanged = [n for n, v in encoder.state_dict().items() if torch.equal(v, start[n])]
    # Every encoder weight that reaches the condition moves (the temporal attention's q/k/v only
    # once its zero output projection has, which it does within the first steps).
    assert unchanged == [], unchanged
    start_unet = VideoUNet.from_pretrained(folders["generator"] / "unet").state_dict()
    for name, value in VideoUNet.from_pretrained(out / "pipeline" / "unet").state_dict().items():
        trained = any(f".{m}." in f".{name}." for m in ("attn1", "attn2", "attn_temp"))
        if not trained:
            assert torch.equal(value, start_unet[name]), name


def test_cotrain_reuses_video_tunings_latent_cache(cotrained):
    out, vae_calls = cotrained
    assert vae_calls == 0
    assert not (out / "cache" / "latents_mean.npy").exists()


def test_cotrain_from_an_mbm_folder_inflates_it(folders, tmp_path):
    """Table 1's ablation without contrastive learning: the MBM encoder is inflated directly."""
    cfg = CotrainConfig(
        data=str(folders["data"]),
        encoder=str(folders["mbm"]),
        generator=str(folders["generator"]),
        size=IMAGE_SIZE,
        train=TrainConfig(max_steps=1, batch_size=4, checkpoint_every=0, cpu=True),
    )
    pipeline = cotrain(cfg, tmp_path / "out")
    encoder = SpatiotemporalEncoder.from_pretrained(pipeline / "fmri_encoder")
    assert encoder.config.cond_dim == COND_DIM and encoder.config.window == 2
    assert encoder.config.num_voxels == 64


def test_cotrain_straight_from_stable_diffusion_inflates_its_unet(folders, tmp_path):
    """Without video tuning: the SD folder's 2D UNet is inflated (identity temporal layers)."""
    cfg = CotrainConfig(
        data=str(folders["data"]),
        encoder=str(folders["encoder"]),
        generator=str(folders["sd"]),
        size=IMAGE_SIZE,
        train=TrainConfig(max_steps=1, batch_size=4, checkpoint_every=0, cpu=True),
    )
    with VaeEncodeCounter() as counter:
        pipeline = cotrain(cfg, tmp_path / "out")
    assert counter.calls > 0  # no video-tuning cache to reuse: its own is written
    assert open_latent_cache(tmp_path / "out" / "cache") is not None
    unet = VideoUNet.from_pretrained(pipeline / "unet")
    assert any(".attn_temp." in name for name in unet.state_dict())


def test_encoder_and_unet_width_mismatch_names_both(folders, tmp_path):
    narrow = SpatiotemporalEncoder.from_mbm(tiny_mbm(), window=2, cond_dim=24)
    narrow.save_pretrained(tmp_path / "narrow" / "fmri_encoder")
    cfg = CotrainConfig(
        data=str(folders["data"]),
        encoder=str(tmp_path / "narrow"),
        generator=str(folders["generator"]),
        size=IMAGE_SIZE,
        train=TrainConfig(max_steps=1, batch_size=4, cpu=True),
    )
    with pytest.raises(UserError, match=r"cond_dim 24.*cross_attention_dim 32"):
        cotrain(cfg, tmp_path / "out")


def test_encoder_window_differing_from_the_config_is_a_user_error(folders, tmp_path):
    cfg = CotrainConfig(
        data=str(folders["data"]),
        encoder=str(folders["encoder"]),
        generator=str(folders["generator"]),
        window=3,
        size=IMAGE_SIZE,
        train=TrainConfig(max_steps=1, batch_size=4, cpu=True),
    )
    with pytest.raises(UserError, match=r"windows of 2 TRs.*window=3"):
        cotrain(cfg, tmp_path / "out")


def test_find_encoder_folder_prefers_the_spatiotemporal_encoder(folders, tmp_path):
    both = tmp_path / "both"
    tiny_mbm().save_pretrained(both / "mbm")
    SpatiotemporalEncoder.from_mbm(tiny_mbm(), cond_dim=COND_DIM).save_pretrained(both / "enc")
    assert find_encoder_folder(both) == (both / "enc", "SpatiotemporalEncoder")
    assert find_encoder_folder(folders["mbm"]) == (folders["mbm"] / "mbm", "MBMAutoencoder")
    with pytest.raises(UserError, match="holds no fMRI encoder"):
        find_encoder_folder(folders["generator"])


def test_cli_without_generator_exits_2_with_one_line(capsys, folders, tmp_path):
    argv = ["cotrain", "--data", str(folders["data"]), "--encoder", str(folders["encoder"])]
    code = run_cli([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mindvideo cotrain: error:")
    assert "--generator" in err[0]


def test_the_pipeline_holds_what_was_trained_and_exports_standalone(folders, cotrained, tmp_path):
    """No VAE and only the trained UNet tensors (video tuning's and co-training's), by reference
    to Stable Diffusion; the standalone export samples the same clips."""
    from safetensors.torch import load_file

    from mindvideo.pipeline import MindVideoPipeline
    from mindvideo.pipeline.export import export_folder, folder_bytes
    from mindvideo.utils.base_folder import read_base

    out, _ = cotrained
    light = out / "pipeline"
    assert not (light / "vae").exists() and read_base(light) == folders["sd"].resolve()
    assert (light / "fmri_input" / "config.json").is_file()
    trained = load_file(light / "unet" / "trained.safetensors")
    for module in ("attn1", "attn2", "attn_temp"):
        assert any(f".{module}." in key for key in trained), module
    assert not any(".resnets." in key for key in trained)  # frozen: read from the base
    copy = tmp_path / "standalone"
    assert run_cli(["export", "--from", str(light), "--out", str(copy)]) == 0
    assert (copy / "vae").is_dir() and (copy / "fmri_input").is_dir()
    assert not (copy / "base.json").exists()
    with pytest.raises(UserError, match="not empty"):  # never over an existing folder
        export_folder(light, copy)
    assert folder_bytes(light) < folder_bytes(copy)
    fmri = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0))
    clips = []
    for folder in (light, copy):
        pipe = MindVideoPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        clips.append(pipe(fmri, num_inference_steps=2, generator=generator).frames)
    assert (clips[0] == clips[1]).all()


# --------------------------------------------------------------------------------------------
# A shared model: several subjects
# --------------------------------------------------------------------------------------------


def test_a_shared_encoder_cotrains_on_every_subject_and_the_pipeline_reads_each(folders, tmp_path):
    """``--data S1 S2`` with the adapters ``contrast`` saved beside the encoder: one UNet and
    encoder trained on both subjects' windows (the same clips, once through the VAE), the
    adapters kept in the pipeline folder, and ``reconstruct`` reading subject 2 through its own
    adapter. Subject 2's fMRI is an exactly invertible mix of subject 1's, so its clips are
    subject 1's."""
    import shutil

    import numpy as np
    from helpers.pipeline import write_mixed_subject

    from mindvideo.config import ReconstructConfig
    from mindvideo.data.prepared import PreparedData, data_fingerprint
    from mindvideo.pipeline import reconstruct
    from mindvideo.pipeline.shared import (
        SharedSubject,
        load_subjects,
        save_subjects,
        subject_name,
    )

    other, adapter = write_mixed_subject(folders["data"], tmp_path / "subject-b", 70)
    encoder = tmp_path / "contrast"
    shutil.copytree(folders["encoder"], encoder)
    one, two = PreparedData.open(folders["data"]), PreparedData.open(other)
    save_subjects(
        [
            SharedSubject(subject_name(one), data_fingerprint(one), VOXELS),
            SharedSubject("subject-b", data_fingerprint(two), 70, adapter),
        ],
        encoder,
    )
    argv = ["cotrain", "--data", str(folders["data"]), str(other), "--encoder", str(encoder)]
    argv += ["--generator", str(folders["generator"]), "--out", str(tmp_path / "out")]
    with VaeEncodeCounter() as counter:
        assert run_cli([*argv, *train_args(**{"train.max_steps": 2})]) == 0
    assert counter.calls == 0  # the reference's clips, cached by video tuning, serve both
    pipeline = tmp_path / "out" / "pipeline"
    saved = load_subjects(pipeline)
    assert [s.name for s in saved] == [subject_name(one), "subject-b"]
    assert saved[0].adapter is None and saved[1].adapter.config.in_voxels == 70
    metrics = [json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").open()]
    assert metrics[-1]["step"] == 2

    def clips(data, out, **changes):
        cfg = ReconstructConfig(
            checkpoint=str(pipeline), data=str(data), num_inference_steps=2, limit=2,
            window=2, frames_per_tr=6, gif=False, **changes,
        )  # fmt: skip
        reconstruct(cfg, out)
        return np.load(out / "reconstructions.npy").astype(int)

    first, second = clips(folders["data"], tmp_path / "r1"), clips(other, tmp_path / "r2")
    assert np.abs(first - second).mean() < 0.5  # float32 round-off through the sampler
    index = json.loads((tmp_path / "r2" / "index.json").read_text())
    assert index["settings"]["subject"] is None
    named = clips(other, tmp_path / "r3", subject="subject-b")
    np.testing.assert_array_equal(named, second)
    with pytest.raises(UserError, match="holds no subject 'subject-c'"):
        clips(other, tmp_path / "r4", subject="subject-c")

    # The encoder's subjects must be given, all of them, and only to a shared encoder.
    for data, match in (
        ([str(folders["data"])], "trained on several subjects"),
        ([str(other), str(folders["data"])], "takes 64 voxels"),
    ):
        cfg = CotrainConfig(
            data=data[0], subjects=data[1:], encoder=str(encoder),
            generator=str(folders["generator"]), size=IMAGE_SIZE,
            train=TrainConfig(max_steps=1, batch_size=4, checkpoint_every=0, cpu=True),
        )  # fmt: skip
        with pytest.raises(UserError, match=match):
            cotrain(cfg, tmp_path / "refused")
    cfg = CotrainConfig(
        data=str(folders["data"]), subjects=[str(other)], encoder=str(folders["encoder"]),
        generator=str(folders["generator"]), size=IMAGE_SIZE,
        train=TrainConfig(max_steps=1, batch_size=4, checkpoint_every=0, cpu=True),
    )  # fmt: skip
    with pytest.raises(UserError, match="was trained on one subject"):
        cotrain(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
