"""Video reconstruction (paper 3.4, B): the diffusers pipeline, guidance, samplers, outputs.

- :class:`MindVideoPipeline` — ``vae``, ``unet``, ``fmri_encoder``, ``scheduler``; fMRI windows
  ``[N, w, V]`` → uint8 videos ``[N, F, H, W, 3]`` with adversarial guidance (eq. 6).
- :mod:`~mindvideo.pipeline.guidance` — :func:`adversarial_guidance`, the negative condition
  (mean fMRI) and the null condition.
- :func:`make_scheduler` — DDIM (the paper), DPM-Solver++ and any diffusers sampler by name.
- :func:`reconstruct` — a whole split to clips, resumable (``mindvideo reconstruct``).
- :func:`convert_authors_pipeline` — the authors' released folder to ours (``mindvideo convert``).
"""

from mindvideo.pipeline.convert import convert_authors_pipeline, encoder_from_authors
from mindvideo.pipeline.guidance import (
    NEGATIVE_SOURCES,
    adversarial_guidance,
    mean_fmri,
    mean_fmri_window,
    negative_fmri_from_prepared,
    null_condition,
)
from mindvideo.pipeline.output import MindVideoPipelineOutput
from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline, steps_from_video
from mindvideo.pipeline.reconstruct import ReconstructionResult, reconstruct, window_seed
from mindvideo.pipeline.schedulers import SCHEDULERS, make_scheduler

__all__ = [
    "NEGATIVE_SOURCES",
    "SCHEDULERS",
    "MindVideoPipeline",
    "MindVideoPipelineOutput",
    "ReconstructionResult",
    "adversarial_guidance",
    "convert_authors_pipeline",
    "encoder_from_authors",
    "make_scheduler",
    "mean_fmri",
    "mean_fmri_window",
    "negative_fmri_from_prepared",
    "null_condition",
    "reconstruct",
    "steps_from_video",
    "window_seed",
]
