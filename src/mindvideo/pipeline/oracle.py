"""The generator's ceiling: reconstruct from the oracle condition (``condition=caption``).

A reconstruction is only as good as its two halves: the fMRI encoder (how close its ``[77, d]``
tokens come to the condition the generator understands) and the generator (what it makes of a
good condition). ``mindvideo reconstruct condition=caption`` separates them: each window is
generated from the condition a perfect encoder would give — the window's caption through the
text encoder the generator was tuned with (Stable Diffusion 1.5's CLIP text encoder, also in the
output of ``mindvideo tune-video``) — through the same UNet, sampler, guidance scale, steps,
windows and per-window seeds as the fMRI reconstruction, into the same output format, so
``mindvideo evaluate`` scores it unchanged. Its scores are the generator's ceiling: what the fMRI
reconstruction would reach with a perfect encoder.

- The window's caption: :func:`~mindvideo.data.captions.clip_caption` (the most common) of the
  frame captions of each TR whose frames the clip shows (``frame_trs``): one caption at the
  trained window, one per sub-window of a longer one (as the fMRI encoder gives one condition per
  sub-window). ``index.json`` records them (``caption``: the first; ``captions``: all).
- The text condition, SD-1.5's way (as video tuning's text cache): tokens padded to the
  tokenizer's ``model_max_length`` (77), truncated, and the text encoder's last hidden state
  ``[77, d]`` (no attention mask). Each caption is encoded alone (batch of one) and once, so its
  condition does not depend on which other captions a run holds, and in float32 whatever
  ``dtype`` (the UNet still runs under ``dtype``'s autocast).
- The negative condition: the empty caption ``""`` through the same text encoder — standard
  classifier-free guidance of a text-to-video model. ``negative`` (the mean fMRI) applies to the
  fMRI condition only; with ``condition=caption`` it must stay at its default and the settings
  record ``negative: empty-caption``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mindvideo.config import ReconstructConfig
from mindvideo.data.captions import clip_caption
from mindvideo.data.prepared import PreparedData
from mindvideo.utils import UserError
from mindvideo.utils.base_folder import component_dir

__all__ = [
    "CONDITIONS",
    "EMPTY_CAPTION_NEGATIVE",
    "TEXT_CONDITIONS",
    "CaptionEncoder",
    "add_window_captions",
    "check_condition",
    "encode_captions",
    "tr_caption",
]

logger = logging.getLogger(__name__)

#: The values of ``ReconstructConfig.condition``.
CONDITIONS = ("fmri", "caption", "linear")
#: The conditions made with a text encoder (the caption's, or decoded into its space).
TEXT_CONDITIONS = ("caption", "linear")
#: What the settings record as ``negative`` with ``condition=caption`` or ``linear``.
EMPTY_CAPTION_NEGATIVE = "empty-caption"
TEXT_PARTS = ("text_encoder", "tokenizer")
_DEFAULT_NEGATIVE = next(
    f.default for f in dataclasses.fields(ReconstructConfig) if f.name == "negative"
)


def _has_part(folder: Path, part: str) -> bool:
    """Whether ``folder`` has ``part`` itself or through its base (a light tune-video folder)."""
    try:
        component_dir(folder, part)
    except UserError:
        return False
    return True


def check_condition(cfg: ReconstructConfig) -> None:
    """Check ``condition``, and with ``caption`` or ``linear`` the ``text_encoder`` folder and
    ``negative`` (cheap checks: nothing is loaded). Mistakes are :class:`UserError`."""
    if cfg.condition not in CONDITIONS:
        raise UserError(
            f"Unknown condition {cfg.condition!r} (config key condition); choose one of "
            f"{', '.join(CONDITIONS)}."
        )
    if cfg.condition not in TEXT_CONDITIONS:
        if cfg.text_encoder is not None:
            logger.warning(
                "text_encoder is only used with condition=caption or linear; ignoring it."
            )
        return
    what = f"condition={cfg.condition}"
    if cfg.text_encoder is None:
        raise UserError(
            f"{what} needs a text encoder: set text_encoder=DIR to a folder with "
            "text_encoder/ and tokenizer/ (Stable Diffusion 1.5, or the output of "
            "`mindvideo tune-video`)."
        )
    folder = Path(cfg.text_encoder)
    if not folder.is_dir():
        raise UserError(
            f"The text_encoder folder {folder} does not exist; set text_encoder to a folder with "
            "text_encoder/ and tokenizer/ (Stable Diffusion 1.5, or the output of "
            "`mindvideo tune-video`)."
        )
    missing = [p + "/" for p in TEXT_PARTS if not _has_part(folder, p)]
    if missing:
        raise UserError(
            f"The text_encoder folder {folder} has no {' or '.join(missing)}; set text_encoder "
            "to Stable Diffusion 1.5's folder or the output of `mindvideo tune-video`."
        )
    if cfg.negative != _DEFAULT_NEGATIVE:
        raise UserError(
            f"negative={cfg.negative} chooses the negative fMRI condition, which {what} "
            "does not use: its negative is the empty caption through the text encoder. Leave "
            f"negative unset (or {_DEFAULT_NEGATIVE})."
        )


def add_window_captions(
    windows: list[dict[str, Any]], prepared: PreparedData, split: str, shape: tuple[int, int]
) -> None:
    """Give every window entry its ``captions`` (one per TR of ``frame_trs``: the most common of
    that TR's frame captions) and ``caption`` (the first). ``shape``: the split's segments and
    TRs. No captions in the prepared data is a :class:`UserError`."""
    captions = prepared.captions(split)
    if captions is None:
        raise UserError(
            f"condition=caption needs the frame captions of the {split} split, but the prepared "
            f"data {prepared.root} has no captions_{split}.json; run `mindvideo prepare` with "
            "captions (a BLIP folder, pretrained.blip, or the captions the dataset ships)."
        )
    got = (len(captions), min((len(seg) for seg in captions), default=0))
    if got[0] != shape[0] or got[1] < shape[1]:
        raise UserError(
            f"captions_{split}.json of {prepared.root} has {got[0]} segments × {got[1]} TRs but "
            f"the {split} frames have {shape[0]} × {shape[1]}; re-run `mindvideo prepare`."
        )
    for w in windows:
        seg = captions[w["segment"]]
        per_tr = [tr_caption(seg[t], split, w["segment"], t) for t in w["frame_trs"]]
        w["caption"] = per_tr[0]
        w["captions"] = per_tr


def tr_caption(frame_captions: Sequence[str], split: str, segment: int, tr: int) -> str:
    if not frame_captions:
        raise UserError(
            f"The prepared {split} split has no frame captions for segment {segment}, TR {tr}; "
            "re-run `mindvideo prepare` with captions."
        )
    return clip_caption(frame_captions)


@torch.no_grad()
def encode_captions(
    text_encoder: Any, tokenizer: Any, captions: Sequence[str], device: torch.device | str
) -> torch.Tensor:
    """Stable Diffusion 1.5's condition of each caption: the text encoder's last hidden state
    ``[n, 77, d]``, the tokens padded to the tokenizer's ``model_max_length`` (77), no attention
    mask. Video tuning and the oracle condition both encode captions this way."""
    ids = tokenizer(
        list(captions),
        padding="max_length",
        max_length=int(tokenizer.model_max_length),
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(device))[0]


class CaptionEncoder:
    """Captions → text conditions ``[77, d]`` (SD-1.5's way), each caption encoded once.

    ``folder``: holds ``text_encoder/`` (a ``CLIPTextModel``) and ``tokenizer/`` (a
    ``CLIPTokenizer``), loaded as video tuning loads Stable Diffusion's. ``tokens`` and ``dim``:
    what the pipeline takes (the fMRI encoder's ``out_tokens``, the UNet's
    ``cross_attention_dim``); a text encoder of another width is a :class:`UserError`.
    """

    def __init__(
        self, folder: str | Path, device: torch.device | str, tokens: int, dim: int
    ) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = str(folder)
        try:  # a light tune-video folder reads both from its base Stable Diffusion
            self.text_encoder = CLIPTextModel.from_pretrained(component_dir(folder, "text_encoder"))
            self.tokenizer = CLIPTokenizer.from_pretrained(component_dir(folder, "tokenizer"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"Could not load the text encoder and tokenizer of {folder} ({exc}); set "
                "text_encoder to Stable Diffusion 1.5's folder or the output of "
                "`mindvideo tune-video`."
            ) from exc
        self.text_encoder.requires_grad_(False).eval().to(device)
        self.device = torch.device(device)
        self.max_length = int(self.tokenizer.model_max_length)
        hidden = int(self.text_encoder.config.hidden_size)
        if hidden != dim:
            raise UserError(
                f"The text encoder in {folder} gives {hidden}-wide tokens but the pipeline's "
                f"UNet attends to {dim} (cross_attention_dim); use the text encoder of the "
                "Stable Diffusion the pipeline was tuned from."
            )
        if self.max_length != tokens:
            raise UserError(
                f"The tokenizer in {folder} pads to {self.max_length} tokens but the pipeline "
                f"takes {tokens} condition tokens; use Stable Diffusion 1.5's tokenizer."
            )
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, caption: str) -> torch.Tensor:
        """One caption's condition: the text encoder's last hidden state float32 ``[77, d]``."""
        if caption not in self._cache:
            hidden = encode_captions(self.text_encoder, self.tokenizer, [caption], self.device)
            self._cache[caption] = hidden[0].float()
        return self._cache[caption]

    def negative(self) -> torch.Tensor:
        """The negative condition: the empty caption, ``[1, 77, d]``."""
        return self.encode("")[None]

    def conditions(self, windows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """The windows' conditions ``[B, S, 77, d]`` from their ``captions`` (S per window)."""
        return torch.stack([torch.stack([self.encode(c) for c in w["captions"]]) for w in windows])
