"""A linear encoder: ridge from the fMRI window to the generator's text condition
(``condition=linear``).

The oracle (``condition=caption``, :mod:`mindvideo.pipeline.oracle`) gives the generator the
condition a perfect encoder would give. This module gives it the condition a *linear* encoder
gives: a ridge map from each window's fMRI (TRs ``t .. t + w − 1``, flattened) to the text
condition of the window's caption — the text encoder's last hidden state ``[77, d]``, as the
oracle encodes it — fitted on the **training** split alone (its windows and their captions),
with the penalty chosen per target over whole training segments
(:class:`~mindvideo.data.ridge.RidgeDecoder`), then applied to the fMRI of the windows being
reconstructed. Decoding fMRI into a diffusion model's text condition with ridge regression is
what Brain-Diffuser did for images (Ozcelik & VanRullen 2023: ridge to CLIP text and image
embeddings, then Versatile Diffusion).

Through the same UNet, sampler, guidance and seeds, it measures how much of the fMRI a simple
encoder carries through the generator — the link between the linear ceiling of ``mindvideo
baseline`` and the reconstructions of the trained MinD-Video encoder
(docs/scientific-check.md). The negative condition is the empty caption, as with the oracle.

The fMRI is the prepared subject's (z-scored per run; test repetitions averaged), windowed as
the baseline windows it; the pipeline's own fMRI normalisation is not involved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import (
    DEFAULT_ALPHAS,
    RidgeDecoder,
    mean_repetitions,
    window_features,
)
from mindvideo.pipeline.oracle import CaptionEncoder, tr_caption
from mindvideo.utils import UserError

__all__ = ["LinearCondition"]

logger = logging.getLogger(__name__)


class LinearCondition:
    """Ridge from fMRI windows to text conditions ``[tokens, d]``; fit on the training split.

    ``fit(prepared, text, window)`` learns the map from the training windows and their
    captions' conditions (:meth:`CaptionEncoder.encode`); ``predict(prepared, split)`` decodes
    every TR of a split; ``conditions(windows)`` gives the pipeline ``[B, S, tokens, d]`` for
    window entries (their ``segment`` and ``frame_trs``), one condition per TR as the oracle
    gives one per caption.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, folds: int = 5) -> None:
        self.decoder = RidgeDecoder(alphas=alphas, folds=folds)
        self.window: int | None = None
        self.shape: tuple[int, int] | None = None
        self._predicted: np.ndarray | None = None  # [S, T, tokens, d] of the predicted split

    def fit(self, prepared: PreparedData, text: CaptionEncoder, window: int) -> LinearCondition:
        """Fit on the training split: each training TR's window → its caption's condition."""
        captions = prepared.captions("train")
        if captions is None:
            raise UserError(
                f"condition=linear learns from the training captions, but the prepared data "
                f"{prepared.root} has no captions_train.json; run `mindvideo prepare` with "
                "captions (a BLIP folder, pretrained.blip, or the captions the dataset ships)."
            )
        features = window_features(mean_repetitions(prepared.fmri("train")), window)  # [S, T, w·V]
        n_seg, n_tr = features.shape[:2]
        if len(captions) != n_seg or min((len(c) for c in captions), default=0) < n_tr:
            raise UserError(
                f"captions_train.json of {prepared.root} does not cover the {n_seg} × {n_tr} "
                "training TRs; re-run `mindvideo prepare`."
            )
        per_tr = [
            tr_caption(captions[s][t], "train", s, t) for s in range(n_seg) for t in range(n_tr)
        ]
        unique = sorted(set(per_tr))
        with torch.inference_mode():
            encoded = {c: text.encode(c).float().cpu().numpy() for c in unique}
        self.shape = tuple(encoded[unique[0]].shape)  # (tokens, d)
        targets = np.stack([encoded[c].reshape(-1) for c in per_tr])  # [S·T, tokens·d]
        groups = np.repeat(np.arange(n_seg), n_tr)
        logger.info(
            "Linear condition: ridge from %d training windows (%d features) to %d captions' "
            "conditions (%d values each) ...",
            len(targets),
            features.shape[-1],
            len(unique),
            targets.shape[1],
        )
        self.decoder.fit(features.reshape(n_seg * n_tr, -1), targets, groups)
        self.window = window
        logger.info(
            "Linear condition: median penalty %.3g over the targets.",
            float(np.median(self.decoder.alphas_)),
        )
        return self

    def predict(self, prepared: PreparedData, split: str) -> np.ndarray:
        """Every TR's decoded condition of ``split``: float32 ``[S, T, tokens, d]``."""
        if self.window is None or self.shape is None:
            raise RuntimeError("fit the linear condition first")
        features = window_features(mean_repetitions(prepared.fmri(split)), self.window)
        n_seg, n_tr = features.shape[:2]
        pred = self.decoder.predict(features.reshape(n_seg * n_tr, -1))
        self._predicted = pred.reshape(n_seg, n_tr, *self.shape).astype(np.float32)
        return self._predicted

    def conditions(self, windows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """The windows' conditions ``[B, S, tokens, d]``: the decoded condition of each TR in
        their ``frame_trs`` (after :meth:`predict` on their split)."""
        if self._predicted is None:
            raise RuntimeError("predict the split first")
        return torch.stack(
            [
                torch.stack(
                    [torch.from_numpy(self._predicted[w["segment"], t]) for t in w["frame_trs"]]
                )
                for w in windows
            ]
        )
