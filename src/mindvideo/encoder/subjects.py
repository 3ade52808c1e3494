"""Subject adapters: a linear map from one subject's voxels into a shared voxel space.

Subjects differ in their voxel count, their ROI and the fine layout of their responses, so a
model trained on one subject cannot read another's fMRI. A :class:`SubjectAdapter` maps a TR of
subject B's fMRI ``[..., V_B]`` to the voxel space the shared model reads ``[..., V]``: every
later part — the fMRI encoder, the low-level decoder, the linear condition — stays as it is.
This is the per-subject linear input map of the cross-subject models (MindEye2's subject
layers; functional alignment as in hyperalignment and GLFA), here on voxels, so that the
patching of the MBM encoder does not change.

``mindvideo adapt`` fits it in closed form (ridge from B's training fMRI to the reference
subject's fMRI on the same training stimuli, :mod:`mindvideo.training.adapt`); it saves and
loads like every model of a pipeline folder (``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mindvideo.utils import UserError

__all__ = ["SubjectAdapter"]


class SubjectAdapter(ModelMixin, ConfigMixin):
    """One subject's fMRI ``[..., in_voxels]`` → the shared space ``[..., out_voxels]``, per TR.

    Args:
        in_voxels: the subject's voxel count (its prepared ROI, unpadded).
        out_voxels: the shared space's voxel count (the reference subject's ROI, unpadded).
        subject: a name for the subject (recorded, shown in messages).
        reference: a name for the shared space (e.g. the reference subject), recorded.
        segments: the training segments the map was fitted on (recorded).
    """

    @register_to_config
    def __init__(
        self,
        in_voxels: int = 1,
        out_voxels: int = 1,
        subject: str = "",
        reference: str = "",
        segments: tuple[int, ...] | list[int] = (),
    ):
        super().__init__()
        if in_voxels < 1 or out_voxels < 1:
            raise UserError(
                f"A subject adapter needs positive voxel counts, not {in_voxels} → {out_voxels}."
            )
        self.linear = nn.Linear(in_voxels, out_voxels)

    def set_linear_map(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Load ``x @ weight + bias`` (``weight`` ``[in_voxels, out_voxels]``, ``bias``
        ``[out_voxels]``), e.g. :meth:`mindvideo.data.ridge.RidgeDecoder.linear_map`."""
        c = self.config
        if weight.shape != (c.in_voxels, c.out_voxels) or bias.shape != (c.out_voxels,):
            raise ValueError(
                f"expected weight [{c.in_voxels}, {c.out_voxels}] and bias [{c.out_voxels}], "
                f"got {list(weight.shape)} and {list(bias.shape)}"
            )
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
            self.linear.bias.copy_(torch.from_numpy(np.asarray(bias)))

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """``[..., in_voxels]`` → ``[..., out_voxels]``; a clear error for another voxel count."""
        if fmri.shape[-1] != self.config.in_voxels:
            who = f" of {self.config.subject}" if self.config.subject else ""
            raise UserError(
                f"The subject adapter{who} maps {self.config.in_voxels} voxels but the fMRI has "
                f"{fmri.shape[-1]}; use the adapter fitted on this subject's prepared data."
            )
        return self.linear(fmri)

    @torch.inference_mode()
    def transform(self, fmri: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """NumPy in, NumPy out (float32), ``[..., in_voxels]`` → ``[..., out_voxels]``, a chunk
        of TRs at a time (memory-mapped inputs are read once)."""
        fmri = np.asarray(fmri)
        if fmri.shape[-1] != self.config.in_voxels:
            self(torch.zeros(fmri.shape[-1]))  # raises the voxel-count error
        lead = fmri.shape[:-1]
        flat = fmri.reshape(-1, fmri.shape[-1])
        out = np.empty((len(flat), self.config.out_voxels), np.float32)
        weight = self.linear.weight.detach().float().cpu()
        bias = self.linear.bias.detach().float().cpu()
        for i in range(0, len(flat), chunk):
            x = torch.from_numpy(np.array(flat[i : i + chunk], dtype=np.float32))
            out[i : i + chunk] = (x @ weight.T + bias).numpy()
        return out.reshape(*lead, self.config.out_voxels)
