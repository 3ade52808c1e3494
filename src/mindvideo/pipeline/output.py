"""The output of :class:`~mindvideo.pipeline.MindVideoPipeline`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

__all__ = ["MindVideoPipelineOutput"]


@dataclass
class MindVideoPipelineOutput(BaseOutput):
    """Reconstructed videos, one per fMRI window.

    frames: with ``output_type="np"``, uint8 ``[N, F, H, W, 3]``; with ``"pt"``, float
    ``[N, F, 3, H, W]`` in ``[0, 1]``; with ``"latent"``, the final latents ``[N, 4, F, h, w]``.
    """

    frames: np.ndarray | torch.Tensor
