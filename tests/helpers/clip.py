"""Tiny offline stand-ins for the encoder-stage tests: a CLIP model and a prepared subject.

:func:`build_tiny_clip` writes a folder with the files of openai/clip-vit-large-patch14's
(``config.json`` + safetensors, tokenizer files, ``preprocessor_config.json``), so the stage loads
it through the same code a user's downloaded CLIP goes through. Sizes: text and vision towers
2 layers × 32 wide, 77 tokens, 32 × 32 images in 8 × 8 patches, projection 16. The tokenizer is
a byte-level BPE (CLIP's pre-tokenisation, ``</w>`` word ends) learned from the given texts, so
their words are whole tokens; any other word falls back to smaller pieces, never to unknowns. Given
(frame, caption) pairs it is trained for a few seconds with CLIP's own loss, so that it separates
captions and pictures as a trained CLIP does.

:func:`write_class_prepared` writes a small prepared subject (the format of ``mindvideo
prepare``) whose fMRI carries a known signal: each scene shows one of ``n_classes`` classes (a
coloured square with the caption "a red square moves on a grey background", ...), and the fMRI of
TR ``t`` is the class pattern of the scene on screen at TR ``t - 1`` (a one-TR hemodynamic lag)
plus noise. Contrastive learning can then lift retrieval far above chance within seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

TEXT_HIDDEN = 32
PROJECTION_DIM = 16
IMAGE_SIZE = 32
MAX_TOKENS = 77


def build_tiny_clip(
    folder: str | Path,
    texts: Iterable[str],
    pairs: tuple[Sequence[np.ndarray], Sequence[str]] | None = None,
    steps: int = 100,
    seed: int = 0,
) -> Path:
    """Write a tiny CLIP (model, tokenizer, image processor) to ``folder``; returns ``folder``.

    ``texts`` are what the tokenizer learns its merges from, as the demo's CLIP stand-in does
    (:func:`~mindvideo.demo.standins.clip.build_clip_tokenizer`). With ``pairs`` = (uint8
    frames ``[H, W, 3]``, their captions) the model is first trained ``steps`` steps with CLIP's
    own contrastive loss (batches of up to 32 pairs with distinct captions), so that, like a
    real CLIP, it embeds different captions and pictures apart (a random CLIP of this size
    embeds all captions of one length almost alike).
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mindvideo.demo.standins.clip import build_clip_tokenizer

    folder = Path(folder)
    tokenizer = build_clip_tokenizer(list(texts))
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=2 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    if pairs is not None:
        _fit_clip(model, tokenizer, image_processor, *pairs, steps=steps, seed=seed)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def _fit_clip(
    model,
    tokenizer,
    image_processor,
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    steps: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> None:
    """A few steps of CLIP training on (image, caption) pairs, no two equal captions per batch."""
    rng = np.random.default_rng(seed)
    pixels = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = tokenizer(
        list(captions), padding="max_length", max_length=MAX_TOKENS, return_tensors="pt"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch, seen = [], set()
        for i in rng.permutation(len(captions)).tolist():
            if captions[i] not in seen:
                batch.append(i)
                seen.add(captions[i])
                if len(batch) == batch_size:
                    break
        out = model(
            input_ids=tokens["input_ids"][batch],
            attention_mask=tokens["attention_mask"][batch],
            pixel_values=pixels[batch],
            return_loss=True,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


COLOURS = {
    "red": (220, 30, 30),
    "yellow": (230, 220, 30),
    "green": (30, 200, 50),
    "cyan": (30, 210, 230),
    "blue": (40, 70, 240),
    "magenta": (230, 40, 210),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
MOTIONS = ("moves", "spins", "rests", "glides")


def class_caption(c: int) -> str:
    """The caption of class ``c``: colour ``c % 8``, verb ``c // 8``."""
    colour, verb = list(COLOURS)[c % len(COLOURS)], MOTIONS[c // len(COLOURS)]
    return f"A {colour} square {verb} on a grey background."


def write_class_prepared(
    out: str | Path,
    n_classes: int = 8,
    train_segments: int = 3,
    test_segments: int = 1,
    n_trs: int = 60,
    n_voxels: int = 100,
    frame_size: int = 16,
    noise: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a prepared subject with class-driven fMRI (see the module docstring); returns ``out``.

    Scenes last 2–4 TRs and never repeat the previous class; scene ids are unique within a split.
    fMRI ``[S, T, V]``: unit-variance class patterns (fixed per class) plus ``noise`` × N(0, 1).
    Frames ``[S, T, 6, H, W, 3]``: a grey field with a centred square of the class colour (two
    classes per colour differ only by their caption's verb), slightly noisy.
    """
    from mindvideo.data.prepared import PreparedWriter

    if n_classes > len(COLOURS) * len(MOTIONS):
        raise ValueError(f"at most {len(COLOURS) * len(MOTIONS)} classes")
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((n_classes, n_voxels))
    colours = np.array(list(COLOURS.values()), dtype=np.float64)
    writer = PreparedWriter(out)
    for split, n_segments in (("train", train_segments), ("test", test_segments)):
        classes = np.zeros((n_segments, n_trs), dtype=np.int64)
        scenes = np.zeros((n_segments, n_trs), dtype=np.int32)
        next_scene, last = 0, -1
        for s in range(n_segments):
            t = 0
            while t < n_trs:
                c = int(rng.integers(n_classes - 1))
                c = c + 1 if c >= last else c  # never the previous class
                length = int(rng.integers(2, 5))
                classes[s, t : t + length] = c
                scenes[s, t : t + length] = next_scene
                next_scene, last, t = next_scene + 1, c, t + length
        lagged = np.concatenate([classes[:, :1], classes[:, :-1]], axis=1)  # class at t - 1
        fmri = patterns[lagged] + noise * rng.standard_normal((n_segments, n_trs, n_voxels))
        frames = np.full((n_segments, n_trs, 6, frame_size, frame_size, 3), 128.0)
        lo, hi = frame_size // 4, frame_size - frame_size // 4
        frames[:, :, :, lo:hi, lo:hi, :] = colours[classes % len(colours)][:, :, None, None, None]
        frames += 8 * rng.standard_normal(frames.shape)
        writer.write_array(f"fmri_{split}", fmri.astype(np.float32))
        writer.write_array(f"frames_{split}", np.clip(frames, 0, 255).astype(np.uint8))
        writer.write_array(
            f"scene_ids_{split}", np.repeat(scenes[:, :, None], 6, axis=2).astype(np.int32)
        )
        captions = [[[class_caption(int(c))] * 6 for c in seg] for seg in classes]
        writer.write_captions(split, captions)
    writer.finish(subject=1, source="synthetic class-pattern test data")
    return Path(out)
