"""A tiny random BLIP captioning model, saved like a real model folder (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

#: The tiny BLIP's vocabulary: every caption it writes uses only these words.
WORDS = (
    "a an the of on in with and is are red green blue yellow circle square triangle moving "
    "left right up down small large man woman dog car tree sky grass street picture"
).split()


def write_tiny_blip(root: Path) -> Path:
    """A tiny random BLIP captioning model + processor under ``root``; returns its folder."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab_dir = root / "vocab"
    vocab_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "[DEC]"]
    (vocab_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(vocab_dir, bos_token="[DEC]")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.sep_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=0.2,  # large random weights: different images, different captions
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            initializer_range=0.2,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    folder = root / "blip-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
