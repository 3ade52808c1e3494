"""CLIP image similarity between reconstructions and ground truth (a semantic pixel-free score).

For every frame, the cosine similarity of the CLIP image embeddings of the reconstruction and of
its ground-truth frame; a clip's value is the mean over its F frames, so the sample unit is the
window, as for every other metric (``docs/evaluation.md``). The embeddings are CLIP's projected
image features (``CLIPModel.get_image_features``), L2-normalised.

The reference level printed next to the score (the ``chance`` field) is empirical: the mean
similarity of a reconstruction with the ground truth of the *other* windows. CLIP embeddings of
any two natural images are far from orthogonal, so a raw similarity means little without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mindvideo.evaluation.metrics import MetricSamples
from mindvideo.utils import UserError
from mindvideo.utils.threads import adapt_threads

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CLIP_KEY = "clip_similarity"


class CLIPImageEmbedder:
    """CLIP's image tower, loaded once and run in batches: uint8 frames → unit embeddings.

    Args:
        model: a transformers ``CLIPModel`` (only its vision tower and projection are used).
        processor: its image processor (resize, centre crop, normalise).
        device: where the model runs (default: CUDA when available, else CPU).
        batch_size: frames per forward pass; results do not depend on it.
        dtype: optional dtype for the model (e.g. ``torch.float16`` on a GPU).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch

        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.model = model.to(self.device) if dtype is None else model.to(self.device, dtype=dtype)
        self.model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
    ) -> CLIPImageEmbedder:
        """Load a CLIP folder (``config.json``, weights, ``preprocessor_config.json``).

        The folder ``save_pretrained`` writes, or a downloaded snapshot of e.g.
        openai/clip-vit-large-patch14 (``pretrained.clip``, the contrastive stage's CLIP).
        """
        import transformers
        from transformers import AutoImageProcessor, CLIPModel

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(
                f"The CLIP folder {folder} (config key pretrained.clip) has no config.json; "
                "point it at a folder written by save_pretrained or a downloaded CLIP snapshot."
            )
        # The PIL backend: the image processor of the transformers versions CLIP was used with.
        major = int(transformers.__version__.split(".")[0])
        processor_kwargs = {"backend": "pil"} if major >= 5 else {"use_fast": False}
        try:
            model = CLIPModel.from_pretrained(str(folder))
            processor = AutoImageProcessor.from_pretrained(str(folder), **processor_kwargs)
        except (OSError, ValueError) as err:
            raise UserError(
                f"Could not load CLIP from {folder} ({err}); pretrained.clip must be a CLIPModel "
                "folder with its preprocessor_config.json."
            ) from err
        logger.info(
            "Loaded CLIP image tower %s (embedding %d)", folder, model.config.projection_dim
        )
        return cls(model, processor, device=device, batch_size=batch_size, dtype=dtype)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """``frames: uint8 [N, H, W, 3]`` → L2-normalised float64 embeddings ``[N, D]``."""
        import torch
        from tqdm.auto import tqdm

        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise UserError(
                f"CLIP embeds uint8 frames [N, H, W, 3], got {arr.dtype} {list(arr.shape)}."
            )
        chunks = []
        starts = range(0, arr.shape[0], self.batch_size)
        bar = tqdm(starts, desc="CLIP images", unit="batch", leave=False, disable=None)
        with torch.inference_mode():
            for start in bar:
                adapt_threads()
                pixels = self.processor(
                    images=list(arr[start : start + self.batch_size]), return_tensors="pt"
                )["pixel_values"]
                pixels = pixels.to(self.device, dtype=self.dtype or pixels.dtype)
                out = self.model.get_image_features(pixel_values=pixels)
                # transformers 5 returns an output object whose pooler_output is the projection
                feats = out if isinstance(out, torch.Tensor) else out.pooler_output
                feats = feats.double()
                chunks.append((feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu())
        if not chunks:
            return np.zeros((0, int(self.model.config.projection_dim)))
        return torch.cat(chunks).numpy()


def clip_similarity_matrix(
    pred: np.ndarray, gt: np.ndarray, embedder: CLIPImageEmbedder
) -> np.ndarray:
    """Mean frame-wise CLIP cosine similarity of every reconstruction with every ground truth.

    Args:
        pred: uint8 ``[S, F, H, W, 3]`` reconstructions.
        gt: uint8 ``[S, F, H', W', 3]`` ground truth (CLIP's processor resizes both).

    Returns:
        ``[S, S]``: entry ``(i, j)`` is the mean over frames f of
        ``cos(clip(pred[i, f]), clip(gt[j, f]))``; the diagonal pairs each window with its own
        ground truth.
    """
    if pred.ndim != 5 or gt.ndim != 5 or pred.shape[:2] != gt.shape[:2]:
        raise UserError(
            f"CLIP similarity needs paired clips [S, F, H, W, 3]; got {list(pred.shape)} "
            f"reconstructions and {list(gt.shape)} ground truth."
        )
    s, f = pred.shape[:2]
    e_pred = embedder.embed(pred.reshape(s * f, *pred.shape[2:])).reshape(s, f, -1)
    e_gt = embedder.embed(gt.reshape(s * f, *gt.shape[2:])).reshape(s, f, -1)
    return np.einsum("ifd,jfd->ij", e_pred, e_gt) / f


def clip_similarity_samples(
    pred: np.ndarray, gt: np.ndarray, embedder: CLIPImageEmbedder
) -> MetricSamples:
    """Per-window CLIP image similarity ``[S]`` and its mismatched-pair reference level.

    ``per_sample[i]`` is the diagonal of :func:`clip_similarity_matrix`; ``chance`` is the mean
    of its off-diagonal entries (each reconstruction against the other windows' ground truth;
    None for a single window).
    """
    sim = clip_similarity_matrix(pred, gt, embedder)
    s = sim.shape[0]
    chance = None if s < 2 else float((sim.sum() - np.trace(sim)) / (s * (s - 1)))
    return MetricSamples(per_sample=np.diag(sim).copy(), chance=chance)
