"""Tiny real pipeline parts for the pipeline tests and later stages: seconds on a CPU, fixed seeds.

Sizes: fMRI windows ``[N, 2, 64]`` (4 patches of 16 voxels); conditioning ``[N, 77, 32]``; video
latents ``[N, 4, F, 8, 8]``; frames ``[N, F, 16, 16, 3]`` (VAE scale factor 2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.generator import VideoUNet

NUM_VOXELS = 64
WINDOW = 2
COND_DIM = 32
LATENT_SIZE = 8
VAE_SCALE = 2
IMAGE_SIZE = LATENT_SIZE * VAE_SCALE  # 16

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=COND_DIM,
    attention_head_dim=4,
    norm_num_groups=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=IMAGE_SIZE,
)
#: Stable Diffusion 1.5's noise schedule (its ``scheduler/scheduler_config.json``).
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
)
#: SD-1.5's scheduler settings, as DDIM.
SCHEDULER_CONFIG = dict(**SD15_SCHEDULE, clip_sample=False)


def _perturb(module: torch.nn.Module, names: tuple[str, ...], seed: int, scale: float = 0.2):
    """Give zero-initialised layers non-zero weights, as training would (so tests see them)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if any(n in name for n in names):
            param.data = scale * torch.randn(param.shape, generator=generator)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG).eval()


def tiny_unet(seed: int = 0, trained: bool = True) -> VideoUNet:
    """A tiny inflated UNet; ``trained`` gives the temporal layers non-zero outputs."""
    torch.manual_seed(seed)
    unet = VideoUNet(**UNET_CONFIG).eval()
    if trained:
        _perturb(unet, (".attn_temp.to_out.",), seed + 1)
    return unet


def tiny_encoder(
    seed: int = 0, trained: bool = True, use_cls_token: bool = True, **overrides
) -> SpatiotemporalEncoder:
    """A tiny spatiotemporal encoder from ``mbm_tiny(64)``: ``[N, 2, 64]`` → ``[N, 77, 32]``."""
    torch.manual_seed(seed)
    mbm = mbm_tiny(NUM_VOXELS, use_cls_token=use_cls_token)
    kwargs = dict(window=WINDOW, cond_dim=COND_DIM, max_window=4)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, **{**kwargs, **overrides}).eval()
    if trained:
        _perturb(encoder, (".attn_temp.proj.", "temporal_pos_embed"), seed + 2)
    return encoder


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)


def tiny_components(seed: int = 0) -> dict:
    """``vae``, ``unet``, ``fmri_encoder``, ``scheduler`` for ``MindVideoPipeline(**...)``."""
    return dict(
        vae=tiny_vae(seed),
        unet=tiny_unet(seed),
        fmri_encoder=tiny_encoder(seed),
        scheduler=tiny_scheduler(),
    )


def tiny_pipeline(seed: int = 0, **config):
    """A tiny :class:`~mindvideo.pipeline.MindVideoPipeline` (progress bars off)."""
    from mindvideo.pipeline import MindVideoPipeline

    pipe = MindVideoPipeline(**tiny_components(seed), **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_fmri(n: int = 2, window: int = WINDOW, seed: int = 0) -> torch.Tensor:
    """fMRI windows ``[n, window, 64]``, standard normal like z-scored voxels."""
    return torch.randn(n, window, NUM_VOXELS, generator=torch.Generator().manual_seed(seed))


def write_window_prepared(root, n_voxels=60, seed=0, train_segments=2, test_trs=3):
    """A prepared subject for the tiny pipeline: ``train_segments`` training segments of 4 TRs,
    1 test segment of ``test_trs`` TRs, ``n_voxels`` voxels (60: padded to the encoder's 64),
    random 16 × 16 frames, scene 0 throughout."""
    import numpy as np

    from mindvideo.data.prepared import PreparedWriter

    rng = np.random.default_rng(seed)
    w = PreparedWriter(root)
    w.write_array("fmri_train", rng.normal(size=(train_segments, 4, n_voxels)).astype(np.float32))
    w.write_array("fmri_test", rng.normal(size=(1, test_trs, n_voxels)).astype(np.float32))
    frames = (train_segments, 4, 6, 16, 16, 3)
    w.write_array("frames_train", rng.integers(0, 256, frames, dtype=np.uint8))
    w.write_array("frames_test", rng.integers(0, 256, (1, test_trs, 6, 16, 16, 3), dtype=np.uint8))
    w.write_array("scene_ids_train", np.zeros((train_segments, 4, 6), np.int32))
    w.write_array("scene_ids_test", np.zeros((1, test_trs, 6), np.int32))
    w.finish()
    return root


def write_mixed_subject(reference_dir, out, voxels: int, seed: int = 1, scale: float = 3.0):
    """A second subject who watched the same clips: its fMRI a fixed linear mix of the
    reference's (``voxels`` of them, ``scale`` times larger); returns (folder, exact adapter)."""
    import numpy as np

    from mindvideo.data.prepared import PreparedData, PreparedWriter
    from mindvideo.encoder.subjects import SubjectAdapter

    reference_dir, out = Path(reference_dir), Path(out)
    reference = PreparedData.open(reference_dir)
    rng = np.random.default_rng(seed)
    mix = scale * rng.normal(size=(reference.n_voxels, voxels)).astype(np.float32)
    w = PreparedWriter(out)
    for name in ("fmri_train", "fmri_test"):
        w.write_array(name, np.asarray(getattr(reference, name)) @ mix)
    for name in ("frames_train", "frames_test", "scene_ids_train", "scene_ids_test"):
        w.write_array(name, np.asarray(getattr(reference, name)))
    w.finish()
    adapter = SubjectAdapter(
        voxels,
        reference.n_voxels,
        subject=out.name,
        reference=reference_dir.name,
        segments=list(range(reference.fmri_train.shape[0])),
    )
    adapter.set_linear_map(np.linalg.pinv(mix).astype(np.float32), np.zeros(reference.n_voxels))
    return out, adapter.eval().requires_grad_(False)
