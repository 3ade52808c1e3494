"""The fMRI encoder (paper 3.3): MBM masked autoencoder, spatiotemporal encoder, contrastive losses.

- :class:`MBMAutoencoder` — masked brain modeling on single TRs ``[N, V]`` (stage 2, pretrain);
  presets :func:`mbm_paper`, :func:`mbm_demo`, :func:`mbm_tiny`.
- :class:`SpatiotemporalEncoder` — the MBM encoder inflated over a window of TRs ``[N, w, V]``,
  giving conditioning tokens ``[N, 77, cond_dim]`` and a pooled embedding (stages 3, 5, 6, 8).
- :class:`SubjectAdapter` — a subject's voxels → the voxels of the subject a pipeline was
  trained on (``mindvideo adapt``).
- :mod:`mindvideo.encoder.losses` — :func:`masked_mse`, :func:`clip_loss`,
  :func:`contrastive_loss`, :class:`LearnableTemperature`, :func:`retrieval_top1`.
"""

from mindvideo.encoder.losses import (
    CONTRASTIVE_MODES,
    LearnableTemperature,
    clip_loss,
    contrastive_loss,
    masked_mse,
    retrieval_top1,
    retrieval_topk,
)
from mindvideo.encoder.mbm import MBMAutoencoder, mbm_demo, mbm_paper, mbm_tiny
from mindvideo.encoder.spatiotemporal import SpatiotemporalEncoder, SpatiotemporalEncoderOutput
from mindvideo.encoder.subjects import SubjectAdapter

__all__ = [
    "CONTRASTIVE_MODES",
    "LearnableTemperature",
    "MBMAutoencoder",
    "SpatiotemporalEncoder",
    "SpatiotemporalEncoderOutput",
    "SubjectAdapter",
    "clip_loss",
    "contrastive_loss",
    "masked_mse",
    "mbm_demo",
    "mbm_paper",
    "mbm_tiny",
    "retrieval_top1",
    "retrieval_topk",
]
