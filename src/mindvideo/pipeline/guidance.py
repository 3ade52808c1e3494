"""Adversarial guidance and its negative condition (paper 3.4, eqs. 5 and 6; B "Inference").

Classifier-free guidance (eq. 5) pushes the noise estimate away from the unconditional one;
MinD-Video's *adversarial* guidance (eq. 6) pushes it away from a *negative* condition c̄::

    ε̂(z_t, c, c̄) = ε(z_t, c̄) + s · (ε(z_t, c) − ε(z_t, c̄))

The negative condition is the encoder output of the **mean fMRI of the test set** (paper: "we
average all fMRI in the testing set and use the averaged one as the negative condition"), with
``s = 12.5``: the generated video is pushed towards what distinguishes *this* fMRI window from the
average brain response. This uses the test fMRI — without any labels or frames — at inference,
exactly as the paper and the authors' evaluation code do; ``mean-train`` is offered for a protocol
that touches no test data at all.

When c̄ is the null condition, eq. 6 is eq. 5. An fMRI encoder has no learned "empty" input (it is
never trained with condition dropout), so the null condition here is the all-zero token sequence
``[77, d]``: every cross-attention key and value is then the projection of zero, and the UNet's
cross-attention layers add only their output bias — no information about any input.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from mindvideo.data.datasets import FMRINormalizer, NormalizeMode
from mindvideo.data.pairing import PadMode, pad_voxels
from mindvideo.data.prepared import PreparedData
from mindvideo.utils import UserError

__all__ = [
    "NEGATIVE_SOURCES",
    "adversarial_guidance",
    "mean_fmri",
    "mean_fmri_window",
    "negative_fmri_from_prepared",
    "negative_window",
    "null_condition",
]

logger = logging.getLogger(__name__)

NegativeSource = Literal["mean-test", "mean-train", "null"]
#: Accepted values of ``ReconstructConfig.negative``.
NEGATIVE_SOURCES: tuple[str, ...] = ("mean-test", "mean-train", "null")


def adversarial_guidance(
    noise_pos: torch.Tensor, noise_neg: torch.Tensor, scale: float
) -> torch.Tensor:
    """Adversarial guidance (paper eq. 6): ``ε(z, c̄) + s · (ε(z, c) − ε(z, c̄))``.

    noise_pos: ``ε(z_t, c)`` and noise_neg: ``ε(z_t, c̄)``, any equal shapes (e.g.
    ``[N, 4, F, h, w]``). With the null condition as c̄ this is classifier-free guidance (eq. 5);
    ``scale = 1`` returns ``noise_pos``.
    """
    return noise_neg + scale * (noise_pos - noise_neg)


def null_condition(
    batch: int,
    tokens: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The null condition of eq. 5 for an fMRI encoder: zeros ``[batch, tokens, dim]``."""
    return torch.zeros(batch, tokens, dim, dtype=dtype, device=device)


def mean_fmri(fmri: np.ndarray | torch.Tensor) -> np.ndarray:
    """The average fMRI frame over every leading axis: ``[..., V]`` → float64 ``[V]``.

    Accepts a split ``[S, T, V]``, repetitions ``[S, R, T, V]`` or windows ``[N, w, V]``. Memory
    maps are read one entry of the first axis at a time, so a whole test set never has to fit in
    memory twice.
    """
    if torch.is_tensor(fmri):
        fmri = fmri.detach().cpu().numpy()
    if fmri.ndim < 1 or fmri.shape[-1] < 1 or fmri.size == 0:
        raise UserError(f"Cannot average an fMRI array of shape {list(fmri.shape)}.")
    if fmri.ndim == 1:
        return np.asarray(fmri, dtype=np.float64)
    total = np.zeros(fmri.shape[-1])
    count = 0
    for block in fmri:  # one segment (or window) at a time
        x = np.asarray(block, dtype=np.float64).reshape(-1, fmri.shape[-1])
        total += x.sum(axis=0)
        count += x.shape[0]
    mean = total / count
    if not np.all(np.isfinite(mean)):
        raise UserError(
            "The fMRI to average contains NaN or infinite values; re-run `mindvideo prepare` with "
            "nan_policy=zero or fix the input arrays."
        )
    return mean


def mean_fmri_window(fmri: np.ndarray | torch.Tensor, window: int) -> np.ndarray:
    """The negative fMRI window: :func:`mean_fmri` repeated ``window`` times → float32 ``[w, V]``.

    The authors' evaluation does the same (the mean over all test TRs, repeated to the window).
    """
    if window < 1:
        raise UserError(f"The fMRI window size must be at least 1, got {window}.")
    return np.repeat(mean_fmri(fmri)[None].astype(np.float32), window, axis=0)


def negative_fmri_from_prepared(
    prepared: PreparedData,
    source: NegativeSource = "mean-test",
    window: int = 2,
    patch_size: int = 16,
    pad_mode: PadMode = "zero",
    normalize: NormalizeMode = "train",
) -> np.ndarray | None:
    """The negative fMRI window of a prepared subject, preprocessed like the model's inputs.

    ``source``: ``"mean-test"`` (the paper: the mean of the whole test split's fMRI),
    ``"mean-train"`` (the mean of the training fMRI) or ``"null"`` (returns ``None``: use the null
    condition). The mean TR is normalised with the training statistics (as
    :class:`~mindvideo.data.datasets.FMRIWindowDataset` does; the normalisation is affine, so this
    is the mean of the normalised fMRI), padded to the patch size and repeated to ``window`` TRs.

    Returns float32 ``[window, V_padded]`` or ``None``.
    """
    if source == "null":
        return None
    if source not in ("mean-test", "mean-train"):
        raise UserError(
            f"Unknown negative condition {source!r}; choose one of {', '.join(NEGATIVE_SOURCES)}."
        )
    split = source.removeprefix("mean-")
    normalizer = FMRINormalizer(normalize).fit(prepared.fmri_train)
    negative = negative_window(
        mean_fmri(prepared.fmri(split)), normalizer, split, window, patch_size, pad_mode
    )
    logger.info("negative condition: the mean %s fMRI (%d voxels)", split, negative.shape[-1])
    return negative


def negative_window(
    mean: np.ndarray,
    normalizer: FMRINormalizer,
    split: str,
    window: int,
    patch_size: int,
    pad_mode: PadMode,
) -> np.ndarray:
    """A mean TR ``[V]`` of ``split`` as the negative window: normalised as that split's fMRI
    is (the normalisation is affine, so this is the mean of the normalised fMRI), padded to the
    patch size and repeated to ``window`` TRs → float32 ``[window, V_padded]``."""
    mean = pad_voxels(normalizer.transform(mean, split), patch_size, pad_mode)
    return np.repeat(mean[None], window, axis=0).astype(np.float32)
