"""The CLIP stand-in: a small ``CLIPModel`` trained contrastively on the simulated stimuli.

Replaces openai/clip-vit-large-patch14 (paper 3.3: the frozen CLIP text and image encoders the
fMRI embeddings are contrasted against, and Stable Diffusion 1.5's text encoder). The folder
holds what the real one holds — ``config.json`` + ``model.safetensors``, the tokenizer
(``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``) and
``preprocessor_config.json`` (a ``CLIPImageProcessor``) — so ``CLIPModel.from_pretrained``,
``CLIPProcessor.from_pretrained``, ``AutoTokenizer`` and ``AutoImageProcessor`` load it.

Training: CLIP's symmetric contrastive loss over a batch of training frames and the unique
captions among them (frames of one scene share a caption, so a caption's column is the target
of all its frames: the loss is CLIP's with soft targets).
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mindvideo.demo.standins.base import (
    MAX_TOKENS,
    ClipPreset,
    EpochDataset,
    StandinJob,
    final_loss,
    fit,
    normalise,
    seeded,
    write_marker,
)
from mindvideo.utils import atomic_dir

__all__ = [
    "ClipFrames",
    "build_clip",
    "build_clip_tokenizer",
    "caption_words",
    "clip_contrastive_loss",
    "evaluate_retrieval",
    "learn_bpe_merges",
    "text_encoder_from_clip",
    "train_clip_standin",
]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@functools.cache
def _clip_backend() -> Any:
    """A blank CLIP tokenizer backend: CLIP's normaliser and pre-tokeniser, no vocabulary."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer().backend_tokenizer


def caption_words(texts: Sequence[str]) -> list[str]:
    """CLIP's pre-tokenisation of ``texts`` (lower case, words and punctuation, byte-level
    characters), concatenated: what each caption's tokens must spell, one word per token."""
    backend = _clip_backend()
    words = []
    for text in texts:
        normal = backend.normalizer.normalize_str(text)
        words += [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normal)]
    return words


def learn_bpe_merges(word_counts: Mapping[str, int]) -> list[tuple[str, str]]:
    """Byte-pair merges learned from pre-tokenised words and their counts, until every word is
    one symbol. A word's symbols are its characters, the last marked ``</w>``; each step merges
    the pair with the highest count (summed over the words that hold it), ties broken by the
    pair's text order.

    The result depends on ``word_counts`` alone. The ``tokenizers`` BPE trainer breaks ties by
    ids it assigns in hash-map order, so two processes given the same texts can learn different
    merges (huggingface/tokenizers#1794), and with them a different vocabulary and model.
    """
    ordered = sorted(w for w, c in word_counts.items() if w and c > 0)
    words = [[*w[:-1], w[-1] + "</w>"] for w in ordered]
    weight = [word_counts[w] for w in ordered]
    counts: Counter[tuple[str, str]] = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in pairwise(symbols):
            counts[pair] += weight[i]
            holders[pair].add(i)
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negative, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negative:
            continue  # an entry from before its count changed
        merges.append(pair)
        first, second = pair
        touched: set[tuple[str, str]] = set()
        for i in sorted(holders.pop(pair)):
            symbols = words[i]
            for old in pairwise(symbols):
                counts[old] -= weight[i]
                touched.add(old)
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            words[i] = merged
            for new in pairwise(merged):
                counts[new] += weight[i]
                holders[new].add(i)
                touched.add(new)
        for other in touched:
            if counts[other] > 0:
                heapq.heappush(heap, (-counts[other], other))
            else:
                del counts[other]
                holders.pop(other, None)
        counts.pop(pair, None)
    return merges


def build_clip_tokenizer(texts: Sequence[str], folder: str | os.PathLike | None = None) -> Any:
    """A CLIP byte-level BPE tokenizer whose merges make every word of ``texts`` one token.

    The vocabulary is laid out as CLIP's: the 256 byte characters, the same with the end-of-word
    mark ``</w>``, one entry per merge (learned from the words of ``texts`` by
    :func:`learn_bpe_merges` until every word is whole: the same texts give the same tokenizer
    in every process), then ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding token,
    as in Stable Diffusion 1.5). A word not in ``texts`` falls back to smaller pieces, never to
    an unknown token. Captions pad to ``model_max_length`` = 77.

    With ``folder``, ``vocab.json`` + ``merges.txt`` (Stable Diffusion's ``tokenizer/`` files)
    and the tokenizer's own files are written there. Returns the ``CLIPTokenizer``.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    words = Counter(w for w in caption_words(sorted(set(texts))) if w not in SPECIAL_TOKENS)
    merges = learn_bpe_merges(words)
    base = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*base, *(b + "</w>" for b in base), *("".join(m) for m in merges)]:
        vocab.setdefault(token, len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(folder)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")
    return tokenizer


def check_tokenizer(tokenizer: Any, texts: Sequence[str]) -> None:
    """Every caption must tokenize to whole words that fit 77 tokens (a ValueError otherwise)."""
    for text in dict.fromkeys(texts):
        ids = tokenizer(text)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids[1:-1])
        if tokens != [w + "</w>" for w in caption_words([text])] or len(ids) > MAX_TOKENS:
            raise ValueError(f"the stand-in tokenizer splits or truncates {text!r}: {tokens}")


def build_clip(spec: ClipPreset, tokenizer: Any, image_size: int) -> Any:
    """A randomly initialised ``CLIPModel`` of the preset's size for ``tokenizer``'s vocabulary
    and ``image_size`` × ``image_size`` images (``spec.grid`` × ``spec.grid`` patches)."""
    from transformers import CLIPConfig, CLIPModel

    if image_size % spec.grid:
        raise ValueError(f"frame size {image_size} is not a multiple of {spec.grid} patches")
    vocab = tokenizer.get_vocab()
    tower = dict(
        hidden_size=spec.width,
        intermediate_size=4 * spec.width,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
    )
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(vocab),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(**tower, image_size=image_size, patch_size=image_size // spec.grid),
        projection_dim=spec.projection_dim,
    )
    return CLIPModel(config)


def image_processor_for(image_size: int) -> Any:
    """CLIP's image processor (resize, centre crop, CLIP's mean/std) at ``image_size``; saved
    as a ``CLIPImageProcessor`` (the PIL backend: no torchvision needed)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


class ClipFrames(EpochDataset):
    """(frame, caption) pairs: item ``i`` = training frame ``i`` (uint8 ``[H, W, 3]``) and the
    index of its caption."""

    def __init__(self, frames: np.ndarray, captions: np.ndarray) -> None:
        self.frames = torch.from_numpy(np.ascontiguousarray(frames))
        self.captions = torch.from_numpy(np.asarray(captions, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"frames": self.frames[index], "caption": self.captions[index]}


def clip_contrastive_loss(logits_per_image: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss when several images share a caption (paper 3.3's CLIP, eq. 3 style).

    ``logits_per_image``: ``[B, U]`` scaled cosine similarities of B images and U unique
    captions; ``column``: ``[B]`` the caption of each image. Image → text is cross-entropy to
    the image's caption; text → image is cross-entropy to the uniform distribution over the
    caption's images. With one image per caption this is CLIP's loss exactly.
    """
    target = F.one_hot(column, logits_per_image.shape[1]).to(logits_per_image.dtype)  # [B, U]
    i2t = F.cross_entropy(logits_per_image, column)
    per_text = target.t() / target.sum(0, keepdim=True).t()  # [U, B] rows sum to 1
    t2i = -(per_text * logits_per_image.t().log_softmax(dim=1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def _loss_fn(tokens: torch.Tensor, mean: Any, std: Any):
    """``loss_fn(model, batch)`` for the engine; ``tokens``: ``[C, L]`` ids of every caption."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        unique, column = torch.unique(batch["caption"], return_inverse=True)
        ids = tokens[unique.cpu()].to(batch["frames"].device)
        pixels = normalise(batch["frames"], mean, std)
        out = model(input_ids=ids, pixel_values=pixels)
        loss = clip_contrastive_loss(out.logits_per_image.float(), column)
        return loss, {"captions_per_batch": float(len(unique))}

    return loss_fn


def text_encoder_from_clip(model: Any) -> Any:
    """The text tower of a ``CLIPModel`` as a ``CLIPTextModel`` (Stable Diffusion's
    ``text_encoder/``), sharing no tensors with it."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(model.config.text_config)
    # transformers 5: CLIPModel.text_model is a CLIPTextModel; 4.x: the inner transformer.
    getattr(text, "text_model", text).load_state_dict(model.text_model.state_dict())
    return text.eval()


@torch.no_grad()
def evaluate_retrieval(
    model: Any,
    tokenizer: Any,
    image_processor: Any,
    frames: np.ndarray,
    frame_class: np.ndarray,
    frame_caption: np.ndarray,
    captions: list[str],
    device: torch.device,
) -> dict[str, float]:
    """Image → text retrieval of held-out frames with the saved model's own preprocessing.

    ``frames``: uint8 ``[N, H, W, 3]``, ``frame_class`` / ``frame_caption``: ``[N]`` (index into
    ``captions``). Two tests: among one caption per class present (the first frame's caption of
    that class), is the top-1 caption of the frame's class (chance 1/K); among all unique
    captions of the frames, is the top-1 the frame's own caption (chance 1/U).
    """
    model = model.to(device).eval()
    used = list(dict.fromkeys(frame_caption.tolist()))
    tokens = tokenizer(
        [captions[c] for c in used],
        padding="max_length",
        max_length=MAX_TOKENS,
        truncation=True,
        return_tensors="pt",
    )
    text = model.get_text_features(input_ids=tokens["input_ids"].to(device))
    text = F.normalize(getattr(text, "pooler_output", text).float(), dim=-1)  # [U, P]
    chunks = []
    for start in range(0, len(frames), 256):
        pixels = image_processor(images=list(frames[start : start + 256]), return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels["pixel_values"].to(device))
        chunks.append(F.normalize(getattr(image, "pooler_output", image).float(), dim=-1))
    sim = torch.cat(chunks) @ text.t()  # [N, U]
    position = {c: i for i, c in enumerate(used)}
    own = torch.tensor([position[c] for c in frame_caption.tolist()])
    caption_top1 = (sim.argmax(1).cpu() == own).float().mean().item()
    per_class: dict[int, int] = {}
    for cls, cap in zip(frame_class.tolist(), frame_caption.tolist(), strict=True):
        per_class.setdefault(cls, position[cap])
    classes = list(per_class)
    columns = torch.tensor([per_class[c] for c in classes])
    pick = sim[:, columns].argmax(1).cpu()
    class_top1 = (torch.tensor(classes)[pick] == torch.from_numpy(frame_class)).float().mean()
    return {
        "retrieval_class_top1": float(class_top1),
        "retrieval_class_n": len(classes),
        "retrieval_class_chance": 1.0 / len(classes),
        "retrieval_caption_top1": float(caption_top1),
        "retrieval_caption_n": len(used),
        "retrieval_caption_chance": 1.0 / len(used),
        "n_test_frames": len(frames),
    }


def train_clip_standin(job: StandinJob) -> dict[str, Any]:
    """Train the CLIP stand-in and write ``folder`` (see the module docstring); returns its
    marker (sizes, training time, loss and the retrieval scores on held-out test frames)."""
    data, folder, spec, key, seed, device, log_dir = job.astuple()
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

    start = time.perf_counter()
    preset: ClipPreset = spec.clip
    tokenizer = build_clip_tokenizer(data.captions)
    check_tokenizer(tokenizer, data.captions)
    seeded(seed, 1)
    model = build_clip(preset, tokenizer, data.frame_size)
    processor = image_processor_for(data.frame_size)
    # Causal attention: padding after <|endoftext|> cannot change the pooled embedding, so the
    # captions are padded only to the longest one during training (77 at use).
    tokens = tokenizer(data.captions, padding="longest", return_tensors="pt")["input_ids"]
    dataset = ClipFrames(data.train_frames, data.train_caption)
    loss_fn = _loss_fn(tokens, processor.image_mean, processor.image_std)
    model = fit("CLIP", model, dataset, loss_fn, preset.train, log_dir, seed, device)
    train_s = time.perf_counter() - start
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        build_clip_tokenizer(data.captions, tmp)  # vocab.json + merges.txt, as the real folder
        CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(tmp)
        processor.save_pretrained(tmp)  # preprocessor_config.json, as the real folder has
        # Measure what a user loads, through the same calls as the contrast stage.
        loaded = CLIPModel.from_pretrained(tmp)
        metrics = evaluate_retrieval(
            loaded,
            AutoTokenizer.from_pretrained(tmp),
            AutoImageProcessor.from_pretrained(tmp),
            data.test_frames,
            data.test_class,
            data.test_caption,
            data.captions,
            device,
        )
        metrics["final_train_loss"] = final_loss(log_dir)
        marker = write_marker(
            tmp,
            key,
            model="CLIPModel",
            replaces="openai/clip-vit-large-patch14",
            parameters=sum(p.numel() for p in model.parameters()),
            text_hidden_size=preset.width,
            projection_dim=preset.projection_dim,
            image_size=data.frame_size,
            vocab_size=len(tokenizer),
            train=preset.train,
            train_seconds=round(train_s, 2),
            seconds=round(time.perf_counter() - start, 2),
            metrics=metrics,
        )
    logger.info(
        "CLIP stand-in: test frame → class caption top-1 %.3f (chance %.3f), → own caption "
        "%.3f (chance %.3f).",
        metrics["retrieval_class_top1"],
        metrics["retrieval_class_chance"],
        metrics["retrieval_caption_top1"],
        metrics["retrieval_caption_chance"],
    )
    return marker
