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
        processor: Any = None,
    ) -> CLIPImageEmbedder:
        """Load a CLIP folder (``config.json``, weights, ``preprocessor_config.json``).

        The folder ``save_pretrained`` writes, or a downloaded snapshot of e.g.
        openai/clip-vit-large-patch14 (``pretrained.clip``, the contrastive stage's CLIP).
        ``processor`` replaces the folder's image processor (e.g. :class:`ViFiCLIPProcessor`).
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
            if processor is None:
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

    def embed(self, frames: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """``frames: uint8 [N, H, W, 3]`` → float64 image embeddings ``[N, D]``, L2-normalised
        unless ``normalize=False`` (CLIP's projected features as they are)."""
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
                if normalize:
                    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                chunks.append(feats.cpu())
        if not chunks:
            return np.zeros((0, int(self.model.config.projection_dim)))
        return torch.cat(chunks).numpy()


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ViFiCLIPProcessor:
    """ViFi-CLIP's test-time input pipeline, as Mind-Animator's VIFI-CLIP score runs it.

    Per frame: optionally swap red and blue (``swap_rb``: the reference writes its RGB frames to
    an XVID file through OpenCV, which stores them as BGR, and decodes them as RGB), resize so
    that the longer side is ``resize`` (mmcv's ``Resize(scale=(256, 256), keep_ratio=True)``,
    bilinear), centre-crop ``crop`` × ``crop`` and normalise with the ImageNet mean and std on
    0–255 (ViFi-CLIP's configs; not CLIP's own statistics). The reference's lossy XVID round
    trip is not reproduced. Called like a transformers image processor.
    """

    def __init__(self, *, resize: int = 256, crop: int = 224, swap_rb: bool = True) -> None:
        if crop > resize:
            raise UserError(f"ViFi-CLIP crop {crop} must not exceed the resize {resize}.")
        self.resize, self.crop, self.swap_rb = resize, crop, swap_rb

    def __call__(self, images: list[np.ndarray], return_tensors: str = "pt") -> dict[str, Any]:
        import cv2
        import torch

        out = []
        for image in images:
            frame = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
            if self.swap_rb:
                frame = np.ascontiguousarray(frame[..., ::-1])
            h, w = frame.shape[:2]
            scale = self.resize / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
            h, w = frame.shape[:2]
            if min(h, w) < self.crop:
                raise UserError(
                    f"A {h}×{w} frame after ViFi-CLIP's resize is smaller than its "
                    f"{self.crop}-pixel crop; the clips must be close to square."
                )
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            frame = frame[top : top + self.crop, left : left + self.crop].astype(np.float32)
            out.append((frame - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD))
        pixels = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
        return {"pixel_values": pixels}


def clip_architecture(model: Any) -> str:
    """``"ViT-B/32"``, ``"ViT-L/14"``, ...: a CLIP model's vision tower by width and patch."""
    vision = model.config.vision_config
    width = {768: "B", 1024: "L", 1280: "H"}.get(int(vision.hidden_size))
    name = width or f"{vision.hidden_size}d"
    return f"ViT-{name}/{vision.patch_size}"


def embed_clips(clips: np.ndarray, embedder: CLIPImageEmbedder) -> np.ndarray:
    """Unnormalised CLIP image embeddings of every frame: uint8 ``[S, F, H, W, 3]`` →
    ``[S, F, D]`` (normalise them for cosines; the VIFI-CLIP score pools them first)."""
    s, f = clips.shape[:2]
    return embedder.embed(clips.reshape(s * f, *clips.shape[2:]), normalize=False).reshape(s, f, -1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (float64) with every vector along the last axis scaled to unit length."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def own_and_others(sim: np.ndarray) -> tuple[np.ndarray, float | None]:
    """A reconstructions × ground truths similarity matrix ``[S, S]`` → each window's value with
    its own ground truth (the diagonal) and the mean with the other windows' (off-diagonal; None
    for one window)."""
    s = sim.shape[0]
    others = None if s < 2 else float((sim.sum() - np.trace(sim)) / (s * (s - 1)))
    return np.diag(sim).copy(), others


def _frame_similarity(e_pred: np.ndarray, e_gt: np.ndarray) -> np.ndarray:
    """``[S, S]``: mean over frames of the cosine of per-frame embeddings ``[S, F, D]``."""
    return np.einsum("ifd,jfd->ij", unit_rows(e_pred), unit_rows(e_gt)) / e_pred.shape[1]


def similarity_from_embeddings(e_pred: np.ndarray, e_gt: np.ndarray) -> MetricSamples:
    """:func:`clip_similarity_samples` from per-frame embeddings ``[S, F, D]`` (any norm)."""
    own, others = own_and_others(_frame_similarity(e_pred, e_gt))
    return MetricSamples(per_sample=own, chance=others)


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
    return _frame_similarity(embed_clips(pred, embedder), embed_clips(gt, embedder))


def clip_similarity_samples(
    pred: np.ndarray, gt: np.ndarray, embedder: CLIPImageEmbedder
) -> MetricSamples:
    """Per-window CLIP image similarity ``[S]`` and its mismatched-pair reference level.

    ``per_sample[i]`` is the diagonal of :func:`clip_similarity_matrix`; ``chance`` is the mean
    of its off-diagonal entries (each reconstruction against the other windows' ground truth;
    None for a single window).
    """
    own, others = own_and_others(clip_similarity_matrix(pred, gt, embedder))
    return MetricSamples(per_sample=own, chance=others)
