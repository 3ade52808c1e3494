"""What a stage will write, estimated from its inputs before any work (``--out``'s room check).

Each function takes the parsed arguments, resolves the stage's config as the run will, and
returns bytes. The figures are estimates of the large outputs only (arrays, weights, checkpoints);
:data:`mindvideo.utils.outputs.ROOM_MARGIN` covers configs, logs and reports. They read headers
and manifests, never data, so they take well under a second even at full scale. An input that
cannot be read is left to the stage, which names it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mindvideo.cli._stage import input_paths, resolve_config
from mindvideo.utils.integrity import WEIGHT_SUFFIXES

FLOAT32 = 4
ADAMW_COPIES = 3
"""A checkpoint holds the trained weights and AdamW's two states per weight."""


def _weights_bytes(paths: Iterable[Path]) -> int:
    """Bytes of the weight files under ``paths`` (checkpoint folders left out)."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else root.rglob("*")
        for path in files:
            if path.suffix in WEIGHT_SUFFIXES and "checkpoints" not in path.parts:
                total += path.stat().st_size
    return total


def _checkpoints(train: Any) -> int:
    if not train.checkpoint_every:
        return 0
    saved = -(-int(train.max_steps) // int(train.checkpoint_every))
    return saved if not train.keep_checkpoints else min(saved, int(train.keep_checkpoints))


def _safely(estimate: Any) -> Any:
    """An estimate that gives 0 when an input or the config cannot be read yet: the stage then
    reports the problem itself, with its own checks and in their order."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(estimate(args))
        except Exception:  # the stage's own checks name the problem
            return 0

    return run


@_safely
def training(args: argparse.Namespace) -> int:
    """The models the stage saves (the size of the weights it starts from), its checkpoints
    (weights plus AdamW states each) and its latent cache."""
    cfg = resolve_config(args)
    weights = _weights_bytes(Path(path) for _, path, _ in input_paths(cfg, args.stage))
    return weights * (1 + ADAMW_COPIES * _checkpoints(cfg.train)) + _latent_cache(cfg)


def _latent_cache(cfg: Any) -> int:
    """tune-video and cotrain cache the VAE posterior (mean and std, float32) of every
    training window's clip: the VAE's latent channels × ``frames`` × (``size`` / its scale)²."""
    if not (hasattr(cfg, "size") and hasattr(cfg, "frames") and cfg.data):
        return 0
    import json

    import numpy as np

    from mindvideo.data.prepared import PreparedData

    generator = getattr(cfg, "generator", None) or cfg.pretrained.stable_diffusion
    from mindvideo.utils.base_folder import component_dir

    vae_dir = component_dir(generator, "vae") if Path(generator).is_dir() else Path(generator)
    vae = json.loads((vae_dir / "config.json").read_text(encoding="utf-8"))
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    channels = int(vae.get("latent_channels", 4))
    windows = int(np.prod(PreparedData.open(cfg.data).frames_train.shape[:2]))
    return windows * 2 * FLOAT32 * channels * int(cfg.frames) * (int(cfg.size) // scale) ** 2


@_safely
def pretrain(args: argparse.Namespace) -> int:
    """The MBM autoencoder (its size preset, counted on the meta device) and the checkpoints of
    both phases."""
    import torch

    from mindvideo.training.common import mbm_from_size_config

    cfg = resolve_config(args)
    patch = int(cfg.encoder.patch_size)
    with torch.device("meta"):
        model = mbm_from_size_config(cfg.encoder, 64 * patch)  # the voxel count barely matters
    weights = FLOAT32 * sum(p.numel() for p in model.parameters())
    phases = [cfg.train] if cfg.data else []
    phases += [cfg.finetune] if cfg.finetune_data else []
    return weights * (len(phases) + ADAMW_COPIES * sum(_checkpoints(t) for t in phases))


@_safely
def prepare(args: argparse.Namespace) -> int:
    from mindvideo.data.prepare import estimate_prepare_bytes

    return estimate_prepare_bytes(resolve_config(args))


@_safely
def reconstruct(args: argparse.Namespace) -> int:
    """The clips (uint8, at the generator's resolution) and their ground truth, for every test
    window of the prepared data."""
    import json

    import numpy as np

    from mindvideo.data.prepared import PreparedData

    cfg = resolve_config(args)
    data = PreparedData.open(cfg.data)
    windows = int(np.prod(data.fmri_test.shape[:-1]))
    frames = data.frames_test.shape[2]
    unet = json.loads((Path(cfg.checkpoint) / "unet" / "config.json").read_text())
    size = 8 * int(unet.get("sample_size") or 32)
    if cfg.limit is not None:
        windows = min(windows, int(cfg.limit))
    gt = int(np.prod(data.frames_test.shape[3:]))
    return windows * frames * (size * size * 3 + gt)


@_safely
def simulate(args: argparse.Namespace) -> int:
    from mindvideo.config import simulate_preset
    from mindvideo.sim.simulate import estimate_simulate_bytes

    cfg = resolve_config(args, base=simulate_preset(args.preset))
    return estimate_simulate_bytes(cfg, rest=args.rest)


DEMO_MODELS_SHARE = 0.5
"""The demo's models, caches and clips, as a share of its datasets (measured on the default
preset: about 0.4 GB next to 0.9 GB of simulated and prepared data)."""
HCP_VISUAL_VOXELS = 5000
"""About how many voxels the HCP corpus keeps per volume (Glasser V1–V4)."""


@_safely
def demo(args: argparse.Namespace) -> int:
    """The demo's datasets from its preset (simulated runs, stimuli, prepared frames and fMRI,
    the HCP corpus) and a share for its models; the finished stages it reuses are counted too."""
    from mindvideo.config import prepare_preset, simulate_preset
    from mindvideo.sim.simulate import TR_S, estimate_simulate_bytes

    sim = simulate_preset(args.preset)
    prepare = prepare_preset(args.preset)
    segments = sim.train_segments + sim.test_segments
    frames = segments * 240 * round(prepare.fps * TR_S) * prepare.frame_size**2 * 3
    rest = sim.rest.subjects * len(sim.rest.runs) * sim.rest.volumes * HCP_VISUAL_VOXELS * 4
    data = estimate_simulate_bytes(sim) + estimate_simulate_bytes(sim, rest=True) + frames + rest
    subjects = getattr(args, "subjects", 1)
    if subjects > 1:  # --subjects K: K subjects simulated again, K - 1 more prepared
        import dataclasses

        many = dataclasses.replace(sim, subjects=subjects)
        data += estimate_simulate_bytes(many) + (subjects - 1) * frames
    return int(data * (1 + DEMO_MODELS_SHARE))


@_safely
def lowlevel(args: argparse.Namespace) -> int:
    """The decoder's linear map (float32): window × voxels × frames × frame_size² × 3."""
    from mindvideo.data.prepared import PreparedData

    cfg = resolve_config(args)
    prepared = PreparedData.open(cfg.data)
    targets = prepared.frames_per_tr * cfg.frame_size**2 * 3
    return FLOAT32 * (cfg.window * prepared.n_voxels + 1) * targets


@_safely
def adapt(args: argparse.Namespace) -> int:
    """The adapter (float32): the new subject's voxels × the reference's, plus a bias."""
    from mindvideo.data.prepared import PreparedData

    cfg = resolve_config(args)
    new, reference = PreparedData.open(cfg.data), PreparedData.open(cfg.reference)
    return FLOAT32 * (new.n_voxels + 1) * reference.n_voxels
