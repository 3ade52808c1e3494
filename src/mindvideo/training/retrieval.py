"""Retrieval on held-out test windows: how well the contrastive stage's encoder matches CLIP.

fMRI → caption and fMRI → image top-1 / top-5 (paper 3.3), logged during ``mindvideo contrast``
and written to its ``retrieval.json`` with chance levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.encoder import SpatiotemporalEncoder
from mindvideo.training.clip_towers import ClipTowers

__all__ = ["RetrievalEvaluator"]


def _topk_hits(sim: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows of ``sim`` ``[N, C]`` whose ``target`` column ranks within the top k.

    Ties count against the right answer (a collapsed encoder scores 0, not 1)."""
    correct = sim.gather(1, target[:, None])  # [N, 1]
    rank = (sim >= correct).sum(dim=1) - 1  # [N], 0 = strictly best
    return {k: (rank < k).float().mean().item() for k in ks}


class RetrievalEvaluator:
    """fMRI → caption and fMRI → image top-1 / top-5 retrieval on the *test* windows.

    Every test TR ``t`` of every test segment is one query: its fMRI window (repetitions
    averaged, no augmentation) through the encoder's pooled embedding. Its reference is its clip's
    middle frame ``F // 2`` (frame 3 of 6):

    - **caption**: candidates are the *unique* captions of the test windows' middle frames,
      embedded by CLIP's text tower; a query is right when its own caption is the most similar
      (cosine). Chance = 1 / number of unique captions.
    - **image**: candidates are the test *scenes* (of the middle frames), each the mean CLIP image
      embedding of the middle frames of its windows; a query is right when its own scene is the
      most similar. Chance = 1 / number of scenes.

    Top-5 likewise (chance 5 / candidates). Ties count against the right answer.

    The pooled embedding is what eq. 3 aligns; the generator reads the ``[77, d]`` tokens. So the
    tokens are scored too, against the text condition the generator was trained on (the text
    encoder's last hidden state of the caption, :meth:`ClipTowers.encode_conditions`):

    - **condition_mse**: mean squared error against the query's own caption's condition;
    - **condition_top1 / top5**: token-level caption retrieval — the cosine of the flattened
      tokens with every candidate caption's flattened condition, both centred on the
      candidates' mean condition (which every caption shares and so identifies none).
    """

    def __init__(self, windows: Any, towers: ClipTowers, batch_size: int = 64) -> None:
        self.windows = windows
        self.towers = towers
        self.batch_size = batch_size
        n_frames = windows.frames.shape[2]
        self.frame = n_frames // 2
        captions, scenes = [], []
        for index in range(len(windows)):
            seg, _, t = windows.locate(index)
            captions.append(windows.captions[seg][t][self.frame])
            scenes.append(int(windows.scene_ids[seg, t, self.frame]))
        self.unique_captions = sorted(set(captions))
        lookup = {c: i for i, c in enumerate(self.unique_captions)}
        self.caption_index = torch.tensor([lookup[c] for c in captions])  # [N]
        self.unique_scenes = sorted(set(scenes))
        lookup = {s: i for i, s in enumerate(self.unique_scenes)}
        self.scene_index = torch.tensor([lookup[s] for s in scenes])  # [N]
        self._targets: tuple[torch.Tensor, torch.Tensor] | None = None
        self._conditions: torch.Tensor | None = None
        self.last: tuple[int, dict[str, float]] | None = None
        """(step, metrics) of the last evaluation run through :meth:`eval_fn`."""

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def chance(self) -> dict[str, float]:
        c, s = len(self.unique_captions), len(self.unique_scenes)
        return {
            "caption_top1": 1 / c,
            "caption_top5": min(5, c) / c,
            "image_top1": 1 / s,
            "image_top5": min(5, s) / s,
            "condition_top1": 1 / c,
            "condition_top5": min(5, c) / c,
            "condition_mse": self._constant_mse(),
        }

    @torch.no_grad()
    def _constant_mse(self) -> float:
        """The reference of ``condition_mse``: the error of one constant condition for every
        query, the mean of the queries' own captions' conditions (the best constant)."""
        conditions = self._candidate_conditions().flatten(1)  # [C, 77·d]
        counts = torch.bincount(self.caption_index, minlength=len(conditions)).to(conditions)
        mean = (counts[:, None] * conditions).sum(dim=0) / counts.sum()
        squared = (counts * ((conditions - mean) ** 2).sum(dim=1)).sum()
        return (squared / (counts.sum() * conditions.shape[1])).item()

    def _candidate_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(captions ``[C, D]``, scenes ``[S, D]``), L2-normalised, computed once."""
        if self._targets is None:
            text = self.towers.encode_captions(self.unique_captions, self.batch_size)  # [C, D]
            images = []
            for start in range(0, len(self), self.batch_size):
                frames = []
                for index in range(start, min(start + self.batch_size, len(self))):
                    seg, _, t = self.windows.locate(index)
                    frames.append(np.asarray(self.windows.frames[seg, t, self.frame]))
                images.append(self.towers.encode_images(frames, self.batch_size))
            per_window = torch.cat(images)  # [N, D]
            scene = self.scene_index.to(per_window.device)
            sums = torch.zeros(len(self.unique_scenes), per_window.shape[1], device=scene.device)
            sums.index_add_(0, scene, F.normalize(per_window, dim=-1))
            self._targets = (F.normalize(text, dim=-1), F.normalize(sums, dim=-1))
        return self._targets

    def _candidate_conditions(self) -> torch.Tensor:
        """The unique captions' text conditions ``[C, 77, d]`` (float32), computed once."""
        if self._conditions is None:
            self._conditions = self.towers.encode_conditions(self.unique_captions, self.batch_size)
        return self._conditions

    @torch.no_grad()
    def _encode(self, encoder: SpatiotemporalEncoder) -> tuple[torch.Tensor, dict[str, float]]:
        """Pooled embeddings of all test windows ``[N, D]`` and the condition scores of their
        tokens (:meth:`__call__`), the encoder in eval mode."""
        was_training = encoder.training
        encoder.eval()
        conditions = self._candidate_conditions().to(encoder.device)  # [C, 77, d]
        mean = conditions.mean(dim=0)  # [77, d]
        candidates = F.normalize((conditions - mean).flatten(1), dim=-1)  # [C, 77·d]
        index = self.caption_index.to(encoder.device)
        pooled, ranks, squared = [], [], 0.0
        for start in range(0, len(self), self.batch_size):
            stop = min(start + self.batch_size, len(self))
            windows = []
            for i in range(start, stop):
                seg, rep, t = self.windows.locate(i)
                windows.append(self.windows.fmri_window(seg, t, rep))  # [w, V]
            fmri = torch.from_numpy(np.stack(windows))  # [n, w, V]
            out = encoder(fmri.to(device=encoder.device, dtype=encoder.dtype))
            pooled.append(out.pooled.float())
            tokens = out.embeddings.float()  # [n, 77, d]
            if tokens.shape[1:] == conditions.shape[1:]:
                squared += ((tokens - conditions[index[start:stop]]) ** 2).sum().item()
                sim = F.normalize((tokens - mean).flatten(1), dim=-1) @ candidates.T  # [n, C]
                correct = sim.gather(1, index[start:stop, None])
                ranks.append((sim >= correct).sum(dim=1) - 1)
        encoder.train(was_training)
        scores: dict[str, float] = {}
        if ranks:
            rank = torch.cat(ranks)
            scores = {
                "condition_top1": (rank < 1).float().mean().item(),
                "condition_top5": (rank < 5).float().mean().item(),
                "condition_mse": squared / (len(self) * conditions[0].numel()),
            }
        return torch.cat(pooled), scores

    def pooled(self, encoder: SpatiotemporalEncoder) -> torch.Tensor:
        """Pooled embeddings of all test windows, ``[N, D]`` float32 (encoder in eval mode)."""
        return self._encode(encoder)[0]

    @torch.no_grad()
    def __call__(self, encoder: SpatiotemporalEncoder) -> dict[str, float]:
        """Retrieval accuracies of ``encoder``: ``caption_top1``, ``caption_top5``,
        ``image_top1``, ``image_top5`` (fractions in [0, 1]); and, where the encoder's tokens
        have the text condition's shape, ``condition_top1`` / ``condition_top5`` /
        ``condition_mse``."""
        if self.towers.device != encoder.device:
            self.towers.to(encoder.device)
            self._targets = self._conditions = None
        text, scenes = self._candidate_embeddings()
        pooled, condition = self._encode(encoder)
        emb = F.normalize(pooled.to(text.device), dim=-1)  # [N, D]
        cap = _topk_hits(emb @ text.T, self.caption_index.to(text.device), (1, 5))
        img = _topk_hits(emb @ scenes.T, self.scene_index.to(text.device), (1, 5))
        return {
            "caption_top1": cap[1],
            "caption_top5": cap[5],
            "image_top1": img[1],
            "image_top5": img[5],
            **condition,
        }

    def eval_fn(self, model: nn.Module, step: int) -> dict[str, float]:
        """The engine's ``eval_fn`` for a :class:`ContrastiveModel`: logs ``retrieval/*``."""
        values = self(model.encoder)  # type: ignore[arg-type]
        self.last = (step, values)
        return {f"retrieval/{k}": v for k, v in values.items()}
