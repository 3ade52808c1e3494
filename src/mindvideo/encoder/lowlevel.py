"""The low-level decoder: an fMRI window → a low-resolution video of what was on the screen.

The paper's condition steers semantics, not layout or colour (its appendix F: "lack of
pixel-level controllability"). Its successors add a low-level path: NeuroClips' perception
reconstructor decodes a blurry video, Mind-Animator a structure latent, NEURONS a blurry-video
sub-task. This is that path, in the form the field starts from:

- a **linear map** (ridge regression, the penalty chosen per target over whole training
  segments, :class:`mindvideo.data.ridge.RidgeDecoder`) from the window's fMRI — TRs
  ``t .. t + w − 1`` of the prepared subject, flattened — to the ``F`` frames of TR ``t``,
  area-averaged to ``frame_size × frame_size``;
- optionally a small **convolutional refiner** that takes the linear map's video (its ``F``
  frames stacked as channels) to ``out_size × out_size``: a bilinear upsampling plus a learned
  residual, trained on the linear map's *held-out* predictions of the training split (each
  segment predicted by a map fitted without it) against the training frames, so it learns the
  errors the map makes on unseen fMRI;
- optionally a **semantic map** (ridge again) from the same window to the CLIP image embedding
  of the TR's middle frame, which the refiner reads beside the video through a learned map to a
  few channels of templates: a second, independently regularised readout of the fMRI that the
  refiner can use nonlinearly (what kind of scene, not only which pixels).

Its video starts the sampler (``MindVideoPipeline(video=…, strength=s)``, SDEdit;
``mindvideo reconstruct lowlevel=DIR``). The model is a diffusers ``ModelMixin``: saved with
``save_pretrained`` (``config.json`` + safetensors) and loaded with ``from_pretrained``; the
``mindvideo lowlevel`` stage writes one (:mod:`mindvideo.training.lowlevel`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mindvideo.encoder.losses import clip_loss
from mindvideo.utils import UserError

__all__ = ["LowLevelDecoder", "LowLevelRefiner", "identification_loss", "ssim_loss"]


def _box_mean(z: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """The mean of every ``window`` consecutive values along ``dim`` (valid positions only)."""
    sums = torch.cumsum(z, dim=dim)
    zero = torch.zeros_like(sums.narrow(dim, 0, 1))
    sums = torch.cat([zero, sums], dim=dim)
    n = sums.shape[dim]
    return (sums.narrow(dim, window, n - window) - sums.narrow(dim, 0, n - window)) / window


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """``1 − SSIM`` of images ``[B, C, H, W]`` in ``[0, 1]``, per channel with a
    ``window × window`` uniform window and the sample covariance — scikit-image's defaults,
    which the evaluation's SSIM uses — averaged over every window position."""
    c1, c2 = 0.01**2, 0.03**2
    n = window * window
    cov = n / (n - 1)
    # The five local means at once, as a separable box filter of running sums (along the rows,
    # then the columns): several times faster on a CPU than 2-D average pooling.
    z = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    z = _box_mean(_box_mean(z, window, -1), window, -2)
    mu_p, mu_t, pp, tt, pt = z.chunk(5, dim=1)
    var_p = cov * (pp - mu_p * mu_p)
    var_t = cov * (tt - mu_t * mu_t)
    covar = cov * (pt - mu_p * mu_t)
    ssim = ((2 * mu_p * mu_t + c1) * (2 * covar + c2)) / (
        (mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2)
    )
    return 1 - ssim.mean()


def identification_loss(
    pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1, size: int = 16
) -> torch.Tensor:
    """Contrastive loss of videos ``[B, F, 3, S, S]`` against their targets ``[B, F, 3, S, S]``:
    the Pearson correlations of every video's mean frame (area-pooled to ``size × size`` when
    larger) with every target's — what pixel identification compares — over ``temperature``
    as logits, cross-entropy toward each video's own target (InfoNCE, the batch's other
    windows the distractors). Squared error and SSIM reward shrinking a video toward the
    frames every window resembles; this rewards what tells the window apart."""

    def centred(v: torch.Tensor) -> torch.Tensor:  # [B, size² · 3]
        m = v.mean(dim=1)
        if m.shape[-1] > size:
            m = F.adaptive_avg_pool2d(m, size)
        m = m.flatten(1)
        return m - m.mean(dim=1, keepdim=True)

    # cosine of centred patterns = Pearson r; clip_loss normalises and takes the cross-entropy
    return clip_loss(centred(pred), centred(target), 1.0 / temperature, symmetric=False)


class LowLevelRefiner(nn.Module):
    """``[N, F·3, s, s]`` → ``[N, F·3, S, S]``: bilinear upsampling plus a learned residual
    (a convolution stem, residual blocks at ``s``, then upsampling convolutions). The residual's
    last convolution starts at zero, so an untrained refiner is the bilinear upsampling.

    With ``condition_dim`` > 0 it also reads a vector per video (the decoded semantic
    embedding): a linear map turns it into ``condition_channels`` maps at ``s × s`` — a learned
    template per direction of the embedding — that the stem reads beside the video."""

    def __init__(
        self,
        channels: int,
        width: int,
        factor: int,
        blocks: int = 4,
        size: int = 0,
        condition_dim: int = 0,
        condition_channels: int = 0,
    ) -> None:
        super().__init__()
        self.factor = factor
        groups = 8 if width % 8 == 0 else 1
        conditioned = condition_dim > 0 and condition_channels > 0
        if conditioned and size <= 0:
            raise ValueError("A conditioned refiner needs the input's side (size).")
        self.template = (
            nn.Linear(condition_dim, condition_channels * size * size) if conditioned else None
        )
        self.condition_shape = (condition_channels, size, size)
        self.stem = nn.Conv2d(
            channels + (condition_channels if conditioned else 0), width, 3, padding=1
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(groups, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1)
            )
            for _ in range(blocks)
        )
        self.head = nn.Sequential(
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width // 2, channels, 3, padding=1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        if self.template is not None:
            if condition is None:
                raise ValueError("This refiner reads a condition vector beside the video.")
            maps = self.template(condition.to(x)).view(-1, *self.condition_shape)
            h = self.stem(torch.cat([x, maps], dim=1))
        else:
            h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        h = F.interpolate(h, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return up + self.head(h)


class LowLevelDecoder(ModelMixin, ConfigMixin):
    """fMRI windows → low-resolution videos ``[N, F, 3, out_size, out_size]`` in ``[0, 1]``.

    Args:
        num_voxels: voxels per TR of the prepared subject it was fitted on.
        window: TRs per window (``t .. t + window − 1``); the input is ``[N, window, V]`` or its
            flattening ``[N, window · V]``, time-major.
        frames: frames per TR (the clip of TR ``t``).
        frame_size: side of the frames the linear map decodes.
        out_size: side of the video it gives (``frame_size``: the linear map alone; a multiple
            of it: upsampled by the refiner).
        refiner_channels: width of the convolutional refiner; ``0``: no refiner (bilinear
            upsampling to ``out_size``).
        semantic_dim: width of the semantic embedding the semantic map decodes (CLIP's
            projection width); ``0``: none.
        semantic_channels: template channels the refiner makes of the decoded embedding.
    """

    @register_to_config
    def __init__(
        self,
        num_voxels: int,
        window: int = 4,
        frames: int = 6,
        frame_size: int = 16,
        out_size: int | None = None,
        refiner_channels: int = 0,
        semantic_dim: int = 0,
        semantic_channels: int = 0,
    ) -> None:
        super().__init__()
        out_size = out_size or frame_size
        if out_size % frame_size:
            raise UserError(
                f"out_size {out_size} must be a multiple of frame_size {frame_size} (the refiner "
                "upsamples by a whole factor)."
            )
        self.linear = nn.Linear(window * num_voxels, frames * frame_size * frame_size * 3)
        self.refiner = (
            LowLevelRefiner(
                frames * 3,
                refiner_channels,
                out_size // frame_size,
                size=frame_size,
                condition_dim=semantic_dim,
                condition_channels=semantic_channels,
            )
            if refiner_channels and out_size > frame_size
            else None
        )
        has_semantic = semantic_dim > 0 and semantic_channels > 0
        if has_semantic and self.refiner is None:
            raise UserError(
                "A semantic map is read by the refiner: set refiner_channels and an out_size "
                "larger than frame_size, or semantic_channels=0."
            )
        self.semantic = nn.Linear(window * num_voxels, semantic_dim) if has_semantic else None

    def set_linear_map(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set the linear map from a fitted ridge decoder's ``(W [D, K], b [K])``
        (:meth:`~mindvideo.data.ridge.RidgeDecoder.linear_map`), targets ordered
        ``[F, size, size, 3]`` (the order :func:`mindvideo.data.video.area_frames` flattens to)."""
        _set_affine(self.linear, "linear map", weight, bias)

    def set_semantic_map(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set the semantic map from a fitted ridge decoder's ``(W [D, E], b [E])``."""
        if self.semantic is None:
            raise UserError("This decoder has no semantic map (semantic_dim=0).")
        _set_affine(self.semantic, "semantic map", weight, bias)

    def semantic_embedding(self, fmri: torch.Tensor) -> torch.Tensor | None:
        """The semantic map's decoded embedding ``[N, semantic_dim]``, or ``None`` without one."""
        if self.semantic is None:
            return None
        x = self._windows(fmri)
        return self.semantic(x.to(self.semantic.weight))

    def _windows(self, fmri: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = torch.as_tensor(fmri)
        if x.ndim == 3:
            x = x.flatten(1)
        if x.ndim != 2 or x.shape[1] != self.linear.in_features:
            raise UserError(
                f"The low-level decoder takes fMRI windows [N, {cfg.window}, {cfg.num_voxels}] "
                f"(or [N, {cfg.window * cfg.num_voxels}]); got {list(x.shape)}. It decodes the "
                "prepared subject it was fitted on, with its window."
            )
        return x

    def linear_video(self, fmri: torch.Tensor) -> torch.Tensor:
        """The linear map's video ``[N, F, 3, frame_size, frame_size]`` (not clamped)."""
        cfg = self.config
        x = self._windows(fmri)
        y = self.linear(x.to(self.linear.weight))
        s = cfg.frame_size
        return y.unflatten(1, (cfg.frames, s, s, 3)).permute(0, 1, 4, 2, 3)

    def refine(self, video: torch.Tensor, semantic: torch.Tensor | None = None) -> torch.Tensor:
        """A linear video ``[N, F, 3, s, s]`` (and, with a semantic map, the decoded embedding
        ``[N, semantic_dim]``) → ``[N, F, 3, out_size, out_size]`` in ``[0, 1]``."""
        f = video.shape[1]
        size = self.config.out_size or self.config.frame_size
        x = video.flatten(1, 2)  # [N, F·3, s, s]
        if self.refiner is not None:
            x = self.refiner(x, semantic)
        elif size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.unflatten(1, (f, 3)).clamp(0, 1)

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """fMRI windows → videos ``[N, F, 3, out_size, out_size]`` in ``[0, 1]``."""
        return self.refine(self.linear_video(fmri), self.semantic_embedding(fmri))


def _set_affine(layer: nn.Linear, name: str, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a fitted ``x W + b`` (``W [in, out]``, ``b [out]``) into ``layer``."""
    expected = (layer.in_features, layer.out_features)
    if tuple(weight.shape) != expected or tuple(bias.shape) != expected[1:]:
        raise UserError(
            f"The {name} must be [{expected[0]}, {expected[1]}] with a bias of {expected[1]}; "
            f"got {list(weight.shape)} and {list(bias.shape)}."
        )
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).T)
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
