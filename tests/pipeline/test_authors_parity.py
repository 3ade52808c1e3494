"""Parity with the authors' model: a checkpoint in their layout, built from a reference of their
modules (tests/helpers/authors_reference.py) with their key names — not from our state dict —
converted by ``mindvideo convert``, gives their noise predictions and their sampling loop's
output."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from helpers.authors_reference import AuthorsFMRIEncoder, AuthorsUNet3D
from helpers.pipeline import COND_DIM, SD15_SCHEDULE, UNET_CONFIG, tiny_vae

from mindvideo.pipeline import MindVideoPipeline, convert_authors_pipeline

from .test_convert import AUTHORS_MODEL_INDEX, BLOCKS_3D

AUTHORS_CONFIG = {
    "_class_name": "UNet3DConditionModel",
    "_diffusers_version": "0.11.1",
    **UNET_CONFIG,
    "down_block_types": [BLOCKS_3D[b] for b in UNET_CONFIG["down_block_types"]],
    "up_block_types": [BLOCKS_3D[b] for b in UNET_CONFIG["up_block_types"]],
    "mid_block_type": BLOCKS_3D["UNetMidBlock2DCrossAttn"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_eps": 1e-5,
    "act_fn": "silu",
}
#: Their fMRIEncoder's config.json (its argument names): 64 voxels, 2-TR windows, temporal blocks.
ENCODER_CONFIG = {
    "_class_name": "fMRIEncoder",
    "num_voxels": 64,
    "patch_size": 16,
    "embed_dim": 32,
    "in_chans": 1,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "out_channel": 77,
    "out_dim": COND_DIM,
    "use_norm": False,
    "dropout": 0.0,
    "window_size": 2,
    "use_temp_attn": True,
    "logit_scale_init_value": 1.0,
}


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """Their UNet and fMRI encoder (random weights, every norm's affine parameters moved off 1
    and 0, temporal attention non-zero), a tiny VAE, their scheduler saved with
    ``steps_offset=0``; written in the released layout and converted."""
    torch.manual_seed(0)
    reference = AuthorsUNet3D(AUTHORS_CONFIG).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    root = tmp_path_factory.mktemp("authors")
    folder = root / "release"
    (folder / "unet").mkdir(parents=True)
    state = reference.state_dict()
    assert "down_blocks.0.resnets.0.norm1.weight" in state
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight" in state
    assert "up_blocks.1.upsamplers.0.conv.weight" not in state  # the last up block has none
    (folder / "unet" / "config.json").write_text(json.dumps(AUTHORS_CONFIG))
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    vae = tiny_vae()
    vae.save_pretrained(folder / "vae", safe_serialization=False)
    DDIMScheduler(**{**SD15_SCHEDULE, "steps_offset": 0}).save_pretrained(folder / "scheduler")
    encoder = AuthorsFMRIEncoder(ENCODER_CONFIG).eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if param.requires_grad:  # not the fixed position embedding
                param.add_(0.2 * torch.randn_like(param) if "norm" in name else 0.0)
    state = encoder.state_dict()
    assert "blocks.1.attn_temp.qkv.bias" in state and "proj_head.channel_mapper.weight" in state
    (folder / "fmri_encoder").mkdir()
    (folder / "fmri_encoder" / "config.json").write_text(json.dumps(ENCODER_CONFIG))
    torch.save({"model": state, "epoch": 7}, folder / "fmri_encoder" / "model.pth")
    (folder / "model_index.json").write_text(json.dumps(AUTHORS_MODEL_INDEX))
    report = convert_authors_pipeline(folder, root / "converted", resolution=16)
    assert report.unet["missing"] == [] and report.unet["unexpected"] == []
    converted = MindVideoPipeline.from_pretrained(root / "converted")
    converted.set_progress_bar_config(disable=True)
    return reference, encoder, converted, folder


def test_the_converted_encoder_gives_the_authors_tokens(authors):
    _, encoder, converted, _ = authors
    fmri = torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = encoder(fmri)
        ours = converted.fmri_encoder(fmri).embeddings
    assert theirs.shape == (3, 77, COND_DIM) and theirs.std() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_the_converted_unet_predicts_the_authors_noise(authors):
    reference, _, converted, _ = authors
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 4, 8, 8, generator=g)  # 4 frames: i − 2 and i − 1 both matter
    context = torch.randn(2, 77, COND_DIM, generator=g)
    with torch.no_grad():
        for t in (999, 500, 1):
            ours = converted.unet(latents, torch.tensor(t), context).sample
            theirs = reference(latents, torch.tensor(t), context)
            assert theirs.abs().max() > 0.1
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        # Per-frame statistics are a different model: the parity is not a loose one.
        converted.unet.set_cross_frame_norm(False)
        differs = (converted.unet(latents, torch.tensor(500), context).sample - theirs).abs()
        converted.unet.set_cross_frame_norm(True)
    assert differs.max() > 1e-3


def test_the_converted_pipeline_reproduces_the_authors_sampling_loop(authors):
    """Their loop: the fMRI window and the negative through their encoder, their saved
    scheduler with steps_offset forced to 1 (and no clipping), the negative and positive
    conditions in one batch, ε(c̄) + s (ε(c) − ε(c̄)), DDIM η = 0, the
    latents scaled by 1 / 0.18215 and decoded frame by frame."""
    reference, encoder, converted, folder = authors
    g = torch.Generator().manual_seed(2)
    fmri = torch.randn(1, 2, 64, generator=g)
    negative = torch.randn(1, 2, 64, generator=g)  # their uncon_fmri: the mean test window
    noise = torch.randn(1, 4, 6, 8, 8, generator=g)  # 6 frames of 8 × 8 latents (16² pixels)
    steps, scale = 5, 12.5

    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.steps_offset == 0  # as saved; their pipeline's __init__ sets 1
    config = {**scheduler.config, "steps_offset": 1, "clip_sample": False}
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        embeddings = torch.cat([encoder(negative), encoder(fmri)])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_uncond, eps_cond = reference(model_input, t, embeddings).chunk(2)
            guided = eps_uncond + scale * (eps_cond - eps_uncond)
            latents = scheduler.step(guided, t, latents, eta=0.0).prev_sample
        frames = latents.transpose(1, 2).flatten(0, 1) / 0.18215
        video = (converted.vae.decode(frames).sample / 2 + 0.5).clamp(0, 1)
        theirs = video.reshape(1, 6, *video.shape[1:])  # [1, F, 3, H, W]

        # Ours: the converted folder's saved scheduler (steps_offset=1), the same noise.
        assert converted.scheduler.config.steps_offset == 1
        ours = converted(
            fmri,
            negative_fmri=negative,
            guidance_scale=scale,
            num_inference_steps=steps,
            latents=noise,
            output_type="pt",
        ).frames
    assert theirs.std() > 0.01
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
