"""The frozen CLIP towers of contrastive learning (paper 3.3, eq. 3) and their loading."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mindvideo.utils import UserError

__all__ = ["ClipTowers", "load_clip"]


class ClipTowers:
    """Frozen CLIP text and image encoders with their tokenizer and image processor (eq. 3).

    Embeddings are the *projected* ones (``text_embeds`` / ``image_embeds`` of CLIP, width
    ``projection_dim``): the space where CLIP's text and images meet. The model stays in eval mode
    without gradients.

    Attributes:
        model: a ``transformers.CLIPModel``.
        tokenizer: its ``CLIPTokenizer``; captions are padded to ``max_length`` (77) tokens.
        image_processor: its ``CLIPImageProcessor`` (resize, centre crop, normalise).
        text_hidden_size: width of the text encoder's tokens (the UNet's cross-attention width,
            768 for CLIP ViT-L/14 and SD-1.5): the ``cond_dim`` of the fMRI encoder.
        projection_dim: width of the joint embedding space: the pooled fMRI embedding's width.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        text_config = model.config.text_config
        self.text_hidden_size = int(text_config.hidden_size)
        self.projection_dim = int(model.config.projection_dim)
        self.max_length = int(text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ClipTowers:
        self.model.to(device)
        return self

    def tokenize(self, captions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``input_ids`` and ``attention_mask``, int64 ``[N, 77]`` (``[77]`` for one)."""
        single = isinstance(captions, str)
        enc = self.tokenizer(
            [captions] if single else list(captions),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = {k: enc[k] for k in ("input_ids", "attention_mask")}
        return {k: v[0] for k, v in out.items()} if single else out

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 frames ``[H, W, 3]`` (or a list / ``[N, H, W, 3]``) → pixel values
        ``[3, S, S]`` (``[N, 3, S, S]``), CLIP's resize, centre crop and normalisation."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
        return pixels[0] if single else pixels

    @torch.no_grad()
    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[N, 77]`` token ids → projected pooled text embeddings ``[N, projection_dim]``."""
        device = self.device
        out = self.model.get_text_features(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        )
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def text_embeds_and_condition(
        self, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, 77]`` token ids → (projected pooled embeddings ``[N, projection_dim]``, the
        text encoder's last hidden state ``[N, 77, hidden]``) from one forward of the text
        tower.

        The hidden state is the condition Stable Diffusion's UNet cross-attends to (SD-1.5's
        text encoder is CLIP ViT-L/14's text tower; its pipelines encode prompts without an
        attention mask, as here). The pooled embedding equals :meth:`text_embeds`' with the
        mask: the tower is causal and pools at the end-of-text token, which no padding token
        after it can reach.
        """
        out = self.model.text_model(input_ids=input_ids.to(self.device))
        return self.model.text_projection(out.pooler_output), out.last_hidden_state

    @torch.no_grad()
    def encode_conditions(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions → text conditions ``[N, 77, hidden]`` float32 (on the towers' device),
        encoded as Stable Diffusion encodes a prompt
        (:func:`mindvideo.pipeline.oracle.encode_captions`)."""
        from mindvideo.pipeline.oracle import encode_captions

        chunks = [
            encode_captions(
                self.model.text_model,
                self.tokenizer,
                captions[start : start + batch_size],
                self.device,
            ).float()
            for start in range(0, len(captions), batch_size)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` → projected image embeddings ``[N, projection_dim]``."""
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def encode_captions(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions → ``[N, projection_dim]`` float32 (on the towers' device)."""
        chunks = []
        for start in range(0, len(captions), batch_size):
            tokens = self.tokenize(list(captions[start : start + batch_size]))
            chunks.append(self.text_embeds(**tokens).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """uint8 frames ``[H, W, 3]`` → ``[N, projection_dim]`` float32."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(list(images[start : start + batch_size]))
            chunks.append(self.image_embeds(pixels).float())
        return torch.cat(chunks)


def load_clip(path: str | os.PathLike | None, empty_weights: bool = False) -> ClipTowers:
    """Load CLIP (model, tokenizer, image processor) from a local folder (``pretrained.clip``).

    The paper's model is openai/clip-vit-large-patch14 — the text encoder of Stable Diffusion
    1.5 — downloaded once (e.g. ``huggingface-cli download openai/clip-vit-large-patch14
    --local-dir ...``). A hub id also works for users who are online. ``empty_weights``: the
    model is built from its config on the meta device (a dry run; tokenizer and image processor
    are loaded as usual).
    """
    if not path:
        raise UserError(
            "No CLIP model: set pretrained.clip (flag --clip) to a local CLIP folder, e.g. a "
            "download of openai/clip-vit-large-patch14."
        )
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    try:
        if empty_weights:
            from mindvideo.utils.dry_run import empty_model

            model = empty_model(CLIPModel, path)
        else:
            model = CLIPModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not load CLIP from {path} ({_first_line(exc)}); set pretrained.clip to a "
            "folder with the CLIP model, its tokenizer and preprocessor_config.json."
        ) from exc
    return ClipTowers(model, tokenizer, image_processor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
