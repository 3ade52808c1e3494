"""A tiny Stable-Diffusion-1.5-style folder, built offline from configs (seconds on a CPU).

The layout is runwayml/stable-diffusion-v1-5's: ``unet/`` (a 2D ``UNet2DConditionModel``),
``vae/`` (``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (a
``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt``, as SD ships it) and ``scheduler/`` (a
``PNDMScheduler`` config with SD-1.5's noise schedule), so the stages read it exactly as they read
a user's SD-1.5 folder.

Sizes: frames 16 × 16 → latents ``[4, 8, 8]`` (VAE scale factor 2); text embeddings
``[77, 32]``; the UNet's ``cross_attention_dim`` is 32. Its ``sample_size`` is 16 (32² images),
as SD-1.5's 64 (512²) is larger than the 256² the paper tunes at.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch

from helpers.pipeline import COND_DIM, IMAGE_SIZE, LATENT_SIZE, SD15_SCHEDULE, VAE_CONFIG
from helpers.pipeline import UNET_CONFIG as VIDEO_UNET_CONFIG

MAX_LENGTH = 77

#: The pipeline's tiny UNet, made (like SD-1.5) for a larger size than it is tuned at.
UNET_CONFIG = {**VIDEO_UNET_CONFIG, "sample_size": 2 * LATENT_SIZE}
#: SD-1.5's ``scheduler/scheduler_config.json`` (a PNDM scheduler).
SCHEDULER_CONFIG = dict(**SD15_SCHEDULE, skip_prk_steps=True)
TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "do_lower_case": True,
    "errors": "replace",
    "model_max_length": MAX_LENGTH,
    "tokenizer_class": "CLIPTokenizer",
}


def write_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE vocabulary (plus a few merges); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,'!?-")
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG), encoding="utf-8")
    return len(vocab)


def build_sd_folder(root: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write the tiny SD-1.5-style folder under ``root``; returns ``root``."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    vocab_size = write_clip_tokenizer(root / "tokenizer")
    torch.manual_seed(seed)
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(root / "unet")
    torch.manual_seed(seed + 1)
    AutoencoderKL(**VAE_CONFIG).save_pretrained(root / "vae")
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=COND_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    CLIPTextModel(text_config).eval().save_pretrained(root / "text_encoder")
    PNDMScheduler(**SCHEDULER_CONFIG, prediction_type=prediction_type).save_pretrained(
        root / "scheduler"
    )
    return root


COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
}
SHAPES = ("square", "bar")


def write_tiny_prepared(
    root: Path, segments: int = 2, trs: int = 4, voxels: int = 60, seed: int = 0
) -> Path:
    """A prepared subject with structured clips: a coloured object moving over a background.

    frames ``[S, T, 6, 16, 16, 3]``; a scene is 2 TRs (object colour and shape fixed within it,
    moving one pixel per frame); captions name the colour and shape ("a red square"), the
    last frame of every other TR says something else (so the most common caption wins);
    fMRI ``[S, T, V]`` is a fixed random read-out of the scene's colour plus noise.
    """
    from mindvideo.data.prepared import PreparedWriter

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    readout = rng.standard_normal((3, voxels))
    writer = PreparedWriter(root)
    for split, n_seg in (("train", segments), ("test", 1)):
        frames = np.zeros((n_seg, trs, 6, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        fmri = np.zeros((n_seg, trs, voxels), np.float32)
        scene_ids = np.zeros((n_seg, trs, 6), np.int32)
        captions = []
        for s in range(n_seg):
            seg_caps = []
            for t in range(trs):
                scene = s * trs // 2 + t // 2
                colour = names[(scene + (split == "test")) % len(names)]
                shape = SHAPES[scene % len(SHAPES)]
                rgb = np.array(COLOURS[colour], np.uint8)
                frames[s, t] = 30 + 10 * (scene % 3)
                for f in range(6):
                    x = (2 * t + f) % (IMAGE_SIZE - 6)
                    h = 6 if shape == "square" else 3
                    frames[s, t, f, 5 : 5 + h, x : x + 6] = rgb
                fmri[s, t] = rgb / 255.0 @ readout + 0.3 * rng.standard_normal(voxels)
                scene_ids[s, t] = scene
                caps = [f"a {colour} {shape}"] * 6
                if t % 2:
                    caps[0] = "the dark background"
                seg_caps.append(caps)
            captions.append(seg_caps)
        writer.write_array(f"frames_{split}", frames)
        writer.write_array(f"fmri_{split}", fmri)
        writer.write_array(f"scene_ids_{split}", scene_ids)
        writer.write_captions(split, captions)
    writer.finish(subject=1)
    return Path(root)


class VaeEncodeCounter:
    """Counts forward calls of every VAE encoder (diffusers' ``Encoder``) while active.

    A global module forward hook: it observes the real model, nothing is replaced.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._handle = None

    def __enter__(self) -> VaeEncodeCounter:
        from diffusers.models.autoencoders.vae import Encoder

        def hook(module, args, output):
            if isinstance(module, Encoder):
                self.calls += 1

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def run_cli(argv: list[str]) -> int:
    """``mindvideo.cli.main.main(argv)`` in-process."""
    from mindvideo.cli import main as cli_main

    return cli_main.main(argv)


def train_args(**overrides) -> list[str]:
    """``key=value`` overrides for a tiny, fast run on the CPU."""
    values = {
        "size": IMAGE_SIZE,
        "train.batch_size": 4,
        "train.learning_rate": 1e-3,
        "train.lr_schedule": "constant",
        "train.log_every": 1,
        "train.checkpoint_every": 0,
        "train.cpu": "true",
        **overrides,
    }
    return [f"{k}={v}" for k, v in values.items()]
