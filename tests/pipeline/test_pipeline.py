"""MindVideoPipeline: shapes, seeds, batched adversarial guidance, save/load, longer videos."""

import json

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PNDMScheduler
from helpers.pipeline import (
    COND_DIM,
    IMAGE_SIZE,
    NUM_VOXELS,
    random_fmri,
    tiny_components,
    tiny_pipeline,
)

from mindvideo.pipeline import MindVideoPipeline, make_scheduler, null_condition
from mindvideo.utils import UserError

STEPS = 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe() -> MindVideoPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def fmri() -> torch.Tensor:
    return random_fmri(2)  # [2, 2, 64]


@pytest.fixture(scope="module")
def baseline(pipe, fmri) -> np.ndarray:
    """The tiny pipeline's video for ``fmri``, seed 0, the default negative."""
    return run(pipe, fmri, seed=0)


def run(pipe, fmri, seed=0, **kwargs):
    kwargs.setdefault("negative_fmri", random_fmri(1, seed=99)[0])
    kwargs.setdefault("generator", seeded(seed))
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(fmri, **kwargs).frames


def test_returns_uint8_frames_and_is_deterministic_for_a_seed(pipe, fmri, baseline):
    a = baseline
    assert a.shape == (2, 6, IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, run(pipe, fmri, seed=0))
    b = run(pipe, fmri, seed=1)
    assert np.abs(a.astype(int) - b).mean() > 5  # a different seed draws a different video


def test_output_types(pipe, fmri, baseline):
    pt = run(pipe, fmri, output_type="pt")
    assert pt.shape == (2, 6, 3, IMAGE_SIZE, IMAGE_SIZE) and pt.dtype == torch.float32
    assert 0 <= pt.min() and pt.max() <= 1
    np.testing.assert_array_equal(pipe.to_uint8(pt), baseline)
    latents = run(pipe, fmri, output_type="latent")
    assert latents.shape == (2, 4, 6, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    (frames,) = pipe(
        fmri.numpy()[0],  # one window as a numpy [w, V] array
        num_inference_steps=1,
        generator=seeded(0),
        return_dict=False,
    )
    assert frames.shape == (1, 6, IMAGE_SIZE, IMAGE_SIZE, 3)


def _latents_and_conditions(pipe, fmri):
    latents = torch.randn(2, 4, 6, 8, 8, generator=seeded(3))
    condition = pipe.encode_fmri(fmri)[:, 0]  # [2, 77, d]
    negative = pipe.encode_negative(2, random_fmri(1, seed=99))[:, 0]  # [2, 77, d]
    pipe.scheduler.set_timesteps(STEPS)
    return latents, pipe.scheduler.timesteps[1], condition, negative


def test_batched_guidance_equals_the_two_call_formula(pipe, fmri):
    latents, t, condition, negative = _latents_and_conditions(pipe, fmri)
    with torch.no_grad():
        batched = pipe.predict_noise(latents, t, condition, negative, 12.5)
        pos = pipe.unet(latents, t, condition).sample  # two separate UNet calls
        neg = pipe.unet(latents, t, negative).sample
    torch.testing.assert_close(batched, neg + 12.5 * (pos - neg), rtol=1e-4, atol=1e-4)
    assert (pos - neg).abs().mean() > 1e-3  # the negative really changes the prediction


def test_one_batched_unet_call_per_step(pipe, fmri):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        run(pipe, fmri)
        run(pipe, fmri, guidance_scale=1.0)
    finally:
        handle.remove()
    assert calls == [4] * STEPS + [2] * STEPS  # [c̄; c] in one call; no guidance: c alone


def test_guidance_scale_one_is_the_positive_prediction(pipe, fmri):
    latents, t, condition, negative = _latents_and_conditions(pipe, fmri)
    with torch.no_grad():
        guided = pipe.predict_noise(latents, t, condition, negative, 1.0)
        positive = pipe.unet(latents, t, condition).sample
    torch.testing.assert_close(guided, positive, rtol=1e-4, atol=1e-5)
    # Without guidance the negative is not used at all.
    np.testing.assert_array_equal(
        run(pipe, fmri, guidance_scale=1.0),
        run(pipe, fmri, guidance_scale=1.0, negative_fmri=random_fmri(1, seed=5)[0]),
    )


def test_no_negative_means_the_null_condition(pipe, fmri, baseline):
    zeros = null_condition(1, 77, COND_DIM)
    without = run(pipe, fmri, negative_fmri=None)
    np.testing.assert_array_equal(
        without, run(pipe, fmri, negative_fmri=None, negative_embeddings=zeros)
    )
    assert np.abs(without.astype(int) - baseline).mean() > 0.5  # the negative matters


def test_save_and_load_the_pipeline_folder(pipe, fmri, baseline, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe.save_pretrained(tmp_path / "pipe")
    assert {p.name for p in (tmp_path / "pipe").iterdir()} == {
        "model_index.json",
        "vae",
        "unet",
        "fmri_encoder",
        "scheduler",
    }
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["fmri_encoder"][1] == "SpatiotemporalEncoder"
    assert index["frames_per_tr"] == 6 and index["fmri_pad_mode"] == "zero"
    loaded = MindVideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert not loaded.unet.training and not loaded.fmri_encoder.training
    np.testing.assert_array_equal(run(loaded, fmri), baseline)


def test_a_folder_without_model_index_is_a_user_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(UserError, match=r"model_index\.json"):
        MindVideoPipeline.from_pretrained(tmp_path)


def test_longer_windows_give_six_frames_per_extra_tr(pipe):
    fmri = random_fmri(1, window=4)  # 4 TRs, window 2 → 3 conditions → 18 frames
    condition = pipe.encode_fmri(fmri)
    assert condition.shape == (1, 3, 77, COND_DIM)
    per_frame = pipe.condition_per_frame(condition, 18)
    assert per_frame.shape == (1, 18, 77, COND_DIM)
    for chunk in range(3):
        torch.testing.assert_close(
            per_frame[:, 6 * chunk : 6 * chunk + 6],
            condition[:, chunk : chunk + 1].expand(-1, 6, -1, -1),
        )
    frames = run(pipe, fmri, output_type="latent")  # decoding is tested elsewhere
    assert frames.shape == (1, 4, 18, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert run(pipe, fmri, num_frames=9).shape[1] == 9  # 3 frames per condition
    with pytest.raises(UserError, match="multiple of the 3 conditions"):
        run(pipe, fmri, num_frames=10)


def test_wrong_voxel_count_names_both_numbers(pipe):
    with pytest.raises(UserError) as err:
        run(pipe, torch.randn(1, 2, 50))
    assert "50" in str(err.value) and str(NUM_VOXELS) in str(err.value)
    assert "pad_voxels" in str(err.value)


@pytest.mark.parametrize(
    ("fmri", "match"),
    [
        (torch.randn(1, 1, NUM_VOXELS), "windows of 2 TRs"),
        (torch.randn(1, 5, NUM_VOXELS), "max_window = 4"),
        (torch.full((1, 2, NUM_VOXELS), float("nan")), "NaN"),
        (torch.randn(2, 2, 2, NUM_VOXELS), r"\[N, w, V\]"),
    ],
)
def test_bad_fmri_is_a_user_error(pipe, fmri, match):
    with pytest.raises(UserError, match=match):
        run(pipe, fmri, negative_fmri=None)


def test_bad_negative_and_options_are_user_errors(pipe, fmri):
    with pytest.raises(UserError, match="not both"):
        run(pipe, fmri, negative_embeddings=torch.zeros(77, COND_DIM))
    with pytest.raises(UserError, match="negative_embeddings must be"):
        run(pipe, fmri, negative_fmri=None, negative_embeddings=torch.zeros(76, COND_DIM))
    with pytest.raises(UserError, match="output_type"):
        run(pipe, fmri, output_type="pil")
    with pytest.raises(UserError, match="one per fMRI window"):
        pipe(fmri, num_inference_steps=1, generator=[seeded(0)])
    with pytest.raises(UserError, match="multiples of the VAE scale factor"):
        run(pipe, fmri, height=15)


def test_a_window_depends_only_on_its_own_generator(pipe, fmri):
    both = pipe.prepare_latents(
        2, 6, 16, 16, torch.float32, torch.device("cpu"), [seeded(5), seeded(7)]
    )
    alone = pipe.prepare_latents(1, 6, 16, 16, torch.float32, torch.device("cpu"), [seeded(7)])
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)


def test_bf16_autocast_on_cpu(pipe, fmri, baseline):
    fp32 = baseline
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = run(pipe, fmri)
    assert bf16.shape == fp32.shape and bf16.dtype == np.uint8
    assert np.abs(bf16.astype(int) - fp32).mean() < 5  # same video up to bf16 rounding


def test_any_diffusers_scheduler_by_name(pipe, fmri):
    dpm = make_scheduler("dpm-solver++", pipe.scheduler.config)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.beta_schedule == pipe.scheduler.config.beta_schedule  # same noise schedule
    assert type(make_scheduler("EulerDiscreteScheduler", pipe.scheduler.config)).__name__ == (
        "EulerDiscreteScheduler"
    )
    # Stable Diffusion 1.5 ships a PNDM config without clip_sample: DDIM must not clip latents.
    pndm = PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    assert "clip_sample" not in pndm.config
    assert make_scheduler("ddim", pndm.config).config.clip_sample is False
    with pytest.raises(UserError, match="Unknown scheduler 'ddimm'"):
        make_scheduler("ddimm", pipe.scheduler.config)
    fast = MindVideoPipeline(**{**tiny_components(), "scheduler": dpm})
    fast.set_progress_bar_config(disable=True)
    a, b = run(fast, fmri), run(fast, fmri)
    assert a.shape == (2, 6, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(a, b)


def test_encoder_and_unet_widths_must_agree():
    components = tiny_components()
    from helpers.pipeline import tiny_encoder

    components["fmri_encoder"] = tiny_encoder(cond_dim=16)
    with pytest.raises(UserError, match="cross_attention_dim"):
        MindVideoPipeline(**components)


def test_callback_sees_every_step_and_eta_noise_follows_the_seed(pipe, fmri):
    seen = []

    def callback(_pipe, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape), tuple(tensors["noise_pred"].shape)))
        return {}

    run(pipe, fmri, callback_on_step_end=callback, output_type="latent")
    assert seen == [(i, (2, 4, 6, 8, 8), (2, 4, 6, 8, 8)) for i in range(STEPS)]
    # DDIM with η > 0 draws fresh noise at every step, from the same generator(s).
    generators = [[seeded(1), seeded(2)] for _ in range(2)]
    a, b = (run(pipe, fmri, eta=1.0, generator=g, output_type="latent") for g in generators)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _vae_latents(pipe, images: np.ndarray) -> torch.Tensor:
    """uint8 frames [..., h, w, 3] → their VAE latents [..., 4, 8, 8], each frame resized
    bicubically to the output size and clamped, as the pipeline encodes a start video."""
    lead = images.shape[:-3]
    frames = torch.from_numpy(images).flatten(0, -4).permute(0, 3, 1, 2).float() / 255
    frames = torch.nn.functional.interpolate(
        frames, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic"
    ).clamp(0, 1)
    with torch.no_grad():
        x0 = pipe.vae.encode(frames * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    return x0.unflatten(0, lead)


def test_a_start_video_is_noised_to_the_strength_and_denoised_from_there(pipe, fmri):
    """SDEdit: with 10 steps and strength 0.3, the last 3 steps run, starting from the video's
    VAE latents noised to the 8th timestep with the window's own noise."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 6, 4, 4, 3), dtype=np.uint8)  # resized to 16 × 16
    inputs = []
    handle = pipe.unet.register_forward_hook(lambda _m, args, _o: inputs.append(args))
    try:
        out = run(pipe, fmri, video=video, strength=0.3, num_inference_steps=10, output_type="pt")
    finally:
        handle.remove()
    assert len(inputs) == 3
    pipe.scheduler.set_timesteps(10)
    t_first = pipe.scheduler.timesteps[7]
    assert int(inputs[0][1]) == int(t_first)
    x0 = _vae_latents(pipe, video).transpose(1, 2)  # [2, 4, 6, 8, 8]
    noise = torch.randn(x0.shape, generator=seeded(0))
    alpha = pipe.scheduler.alphas_cumprod[int(t_first)]
    expected = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    torch.testing.assert_close(inputs[0][0][:2], expected, atol=1e-5, rtol=1e-5)  # [c̄; c]
    # The same video and seed: the same clip; another start video: another clip.
    again = run(pipe, fmri, video=video, strength=0.3, num_inference_steps=10, output_type="pt")
    torch.testing.assert_close(out, again)
    other = run(
        pipe, fmri, video=255 - video, strength=0.3, num_inference_steps=10, output_type="pt"
    )
    assert (other - out).abs().max() > 1e-3


def test_bad_start_videos_and_strengths_are_user_errors(pipe, fmri):
    video = np.zeros((2, 6, 16, 16, 3), np.uint8)
    with pytest.raises(UserError, match=r"strength must be in \(0, 1\]"):
        run(pipe, fmri, video=video, strength=0.0)
    with pytest.raises(UserError, match="leaves no denoising step"):
        run(pipe, fmri, video=video, strength=0.2)  # 0.2 of 2 steps
    with pytest.raises(UserError, match="makes 2 of 6"):
        run(pipe, fmri, video=video[:, :3])
    with pytest.raises(UserError, match="video must be uint8"):
        run(pipe, fmri, video=np.zeros((2, 6, 16, 16), np.float32))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver++"])
def test_a_keyframe_is_held_at_every_step_and_ends_as_the_first_frame(fmri, scheduler):
    """The replacement method: before every UNet call the first frame's latents are the
    keyframe's noised to that step with the window's own noise, and the clip's first frame is
    the keyframe's VAE latents; the other frames are the model's."""
    pipe = tiny_pipeline()
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (2, 6, 4, 4, 3), dtype=np.uint8)
    key = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    inputs = []
    handle = pipe.unet.register_forward_hook(lambda _m, args, _o: inputs.append(args))
    try:
        kwargs = {"video": video, "strength": 0.5, "num_inference_steps": 8}
        latents = run(pipe, fmri, keyframe=key, output_type="latent", **kwargs)
    finally:
        handle.remove()
    x0 = _vae_latents(pipe, key)
    torch.testing.assert_close(latents[:, :, 0], x0, atol=1e-5, rtol=1e-5)
    pipe.scheduler.set_timesteps(8)
    timesteps = pipe.scheduler.timesteps[4:]
    assert [int(a[1]) for a in inputs] == [int(t) for t in timesteps]
    noise = torch.randn(x0.shape[0], 4, 6, 8, 8, generator=seeded(0))[:, :, 0]
    alphas = pipe.scheduler.alphas_cumprod
    for args, t in zip(inputs, timesteps, strict=True):
        a = alphas[int(t)]
        expected = a.sqrt() * x0 + (1 - a).sqrt() * noise
        torch.testing.assert_close(args[0][2:, :, 0], expected, atol=1e-4, rtol=1e-4)  # [c̄; c]
    # Without a keyframe the first frame is the model's.
    plain = run(pipe, fmri, output_type="latent", **kwargs)
    assert (plain[:, :, 0] - x0).abs().max() > 0.1
    # The keyframe reaches the other frames through their attention to the first frame.
    assert (plain[:, :, 1:] - latents[:, :, 1:]).abs().max() > 1e-3


def test_a_keyframe_works_from_noise_and_as_floats(pipe, fmri):
    """Without a start video (keyframe-to-video), and given as float [N, 3, H, W] in [0, 1]:
    the same clip as from uint8."""
    key = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    as_uint8 = run(pipe, fmri, keyframe=key, output_type="latent")
    as_float = torch.from_numpy(key).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(run(pipe, fmri, keyframe=as_float, output_type="latent"), as_uint8)
    torch.testing.assert_close(as_uint8[:, :, 0], _vae_latents(pipe, key), atol=1e-5, rtol=1e-5)


def test_bad_keyframes_are_user_errors(pipe, fmri):
    with pytest.raises(UserError, match="keyframe must be uint8"):
        run(pipe, fmri, keyframe=np.zeros((2, 6, 16, 16, 3), np.uint8))
    with pytest.raises(UserError, match="keyframe has 1 images; the call makes 2"):
        run(pipe, fmri, keyframe=np.zeros((1, 16, 16, 3), np.uint8))


def test_a_start_video_works_with_a_multistep_sampler(fmri):
    """DPM-Solver++ keeps a step index: the shortened schedule starts where the video enters."""
    pipe = tiny_pipeline()
    pipe.scheduler = make_scheduler("dpm-solver++", pipe.scheduler.config)
    calls = []
    pipe.unet.register_forward_hook(lambda _m, args, _o: calls.append(int(args[1])))
    video = np.full((2, 6, 16, 16, 3), 128, np.uint8)
    frames = run(pipe, fmri, video=video, strength=0.5, num_inference_steps=8)
    pipe.scheduler.set_timesteps(8)
    assert calls == [int(t) for t in pipe.scheduler.timesteps[4:]]
    assert frames.shape == (2, 6, IMAGE_SIZE, IMAGE_SIZE, 3)
