"""The field's scores beyond MinD-Video's table: Hue-pcc, EPE and the flow's angular error,
the VIFI-CLIP score and CLIP-pcc under both of its definitions.

Each function reproduces the code its docstring names, detail for detail, and says where the
reference differs from what its name suggests (``docs/evaluation.md``, "The field's table"):

- **Hue-pcc** (Mind-Animator, ``Evaluation_Metrics/hue_pcc.py``): per frame, the *uncentred
  cosine* of the two flattened hue maps (not a Pearson correlation), OpenCV's 8-bit hue
  (0–179); the reference passes RGB frames to ``COLOR_BGR2HSV``, which reflects the hue circle,
  and so do we by default (``swap_rb``).
- **EPE and angular error** (Mind-Animator, ``Evaluation_Metrics/EPE.py``): OpenCV Farnebäck flow
  ``(0.5, 3, 15, 3, 5, 1.2, 0)`` between consecutive frames of the ground truth and of the
  reconstruction, on grey frames from ``COLOR_BGR2GRAY`` applied to RGB frames, at 512 × 512;
  per pixel the length of the flow difference (pixels) and the angle between the two flow
  vectors (degrees, ``1e-8`` in the denominator, so a still pixel counts 90°). Lower is better.
- **VIFI-CLIP score** (Mind-Animator, ``ViFi_CLIP/VIFI_score.py``): the cosine of the temporal
  means of the per-frame (unnormalised) image embeddings of the reconstruction and its ground
  truth; ViFi-CLIP ViT-B/16 (Kinetics-400 base-to-novel) with its own input pipeline.
- **CLIP-pcc, Mind-Animator** (``ST_level_metric.py``): the mean cosine of the CLIP ViT-B/32
  embeddings of *adjacent* reconstructed frames, set to 0 for every clip whose VIFI-CLIP score
  is at most 0.6 (the zeros stay in the mean).
- **CLIP-pcc, NEURONS** (``eval_metrics.py``, ``clip_score_frame``): the mean cosine of the CLIP
  ViT-L/14 embeddings over *all pairs* of distinct reconstructed frames, no gate.

The sample unit is the window, as for every metric. Where a score compares a reconstruction
with its ground truth (Hue-pcc, EPE, angle, VIFI-CLIP), its ``shuffled`` reference pairs every
reconstruction with another window's ground truth (:data:`~mindvideo.evaluation.metrics.SHUFFLES`
derangements); the two CLIP-pcc scores read the reconstruction alone, and carry the ground
truth's own value instead (``reference``): a still clip scores 1.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.evaluation.clip_similarity import own_and_others, unit_rows
from mindvideo.evaluation.identification import derangements
from mindvideo.evaluation.metrics import SHUFFLES, MetricSamples, shuffled_pairings
from mindvideo.utils import UserError

__all__ = [
    "CLIP_PCC_MIND_ANIMATOR_KEY",
    "CLIP_PCC_NEURONS_KEY",
    "EPE_KEY",
    "FARNEBACK",
    "FLOW_ANGLE_KEY",
    "FLOW_SIZE",
    "FVD_KEY",
    "HUE_PCC_KEY",
    "VIFI_CLIP_KEY",
    "VIFI_GATE",
    "I3DFeatures",
    "clip_pcc_mind_animator",
    "clip_pcc_neurons",
    "flow_errors",
    "flow_samples",
    "frechet_distance",
    "hue_maps",
    "hue_pcc_samples",
    "optical_flow",
    "vifi_clip_samples",
]

logger = logging.getLogger(__name__)

HUE_PCC_KEY = "hue_pcc"
EPE_KEY = "epe"
FLOW_ANGLE_KEY = "flow_angular_error"
VIFI_CLIP_KEY = "vifi_clip"
CLIP_PCC_MIND_ANIMATOR_KEY = "clip_pcc_mind_animator"
CLIP_PCC_NEURONS_KEY = "clip_pcc_neurons"
FVD_KEY = "fvd"
I3D_FILE = "i3d_torchscript.pt"

FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
"""``cv2.calcOpticalFlowFarneback``'s arguments in Mind-Animator's EPE."""
FLOW_SIZE = 512
"""Side the frames are resized to before the flow, as in Mind-Animator (its clips are 512²)."""
VIFI_GATE = 0.6
"""Mind-Animator's CLIP-pcc counts 0 for a clip whose VIFI-CLIP score is at most this."""
AE_EPS = 1e-8
# Ground-truth flows are kept in memory up to this size, in a temporary file beyond it.
_FLOW_MEMORY_BYTES = 512 * 2**20


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str) -> None:
    if pred.ndim != 5 or pred.shape[-1] != 3 or pred.shape != gt.shape:
        raise UserError(
            f"{what} needs reconstructions and ground truth of one shape [S, F, H, W, 3]; got "
            f"{list(pred.shape)} and {list(gt.shape)} (resize them to one size first)."
        )
    if pred.dtype != np.uint8 or gt.dtype != np.uint8:
        raise UserError(f"{what} reads uint8 frames (0-255), got {pred.dtype} and {gt.dtype}.")


def _cv2():
    import cv2

    return cv2


# --------------------------------------------------------------------------------------------
# Hue-pcc
# --------------------------------------------------------------------------------------------


def hue_maps(frames: np.ndarray, *, swap_rb: bool = True) -> np.ndarray:
    """OpenCV's 8-bit hue (0–179) of every pixel: uint8 ``[..., H, W, 3]`` → uint8 ``[..., H, W]``.

    ``swap_rb=True`` converts with ``COLOR_BGR2HSV`` as Mind-Animator does on its RGB frames (the
    hue becomes ``(120 − H) mod 180``: the circle reflected); ``False`` reads the frames as RGB.
    """
    cv2 = _cv2()
    arr = np.asarray(frames)
    code = cv2.COLOR_BGR2HSV if swap_rb else cv2.COLOR_RGB2HSV
    flat = arr.reshape(-1, *arr.shape[-3:])
    out = np.empty(flat.shape[:-1], dtype=np.uint8)
    for k, frame in enumerate(flat):
        out[k] = cv2.cvtColor(np.ascontiguousarray(frame), code)[..., 0]
    return out.reshape(arr.shape[:-1])


def _hue_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the uncentred cosine of two hue maps ``[F, H, W]`` (0/0 → 1: two
    colourless frames agree; x/0 → 0)."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("fp,fp->f", a, b)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(na * nb > 0, dot / np.maximum(na * nb, 1e-300), np.where(both_zero, 1.0, 0.0))
    return float(cos.mean())


def hue_pcc_samples(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    swap_rb: bool = True,
    rng: np.random.Generator | None = None,
) -> MetricSamples:
    """Mind-Animator's Hue-pcc per window ``[S]``, with its shuffled reference.

    Per frame, the cosine ``Σ h₁h₂ / (‖h₁‖ ‖h₂‖)`` of the reconstruction's and the ground truth's
    flattened hue maps (:func:`hue_maps`; the reference's ``/ 360`` cancels), then the mean over
    the window's frames. No chance level: hue maps of unrelated frames still agree far above 0,
    which is what the shuffled reference (other windows' ground truth) shows.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt, "Hue-pcc")
    h_pred, h_gt = hue_maps(pred, swap_rb=swap_rb), hue_maps(gt, swap_rb=swap_rb)
    n = len(pred)
    values = np.array([_hue_cosine(h_pred[i], h_gt[i]) for i in range(n)])
    shuffled, sd = shuffled_pairings(
        lambda perm: np.mean([_hue_cosine(h_pred[i], h_gt[j]) for i, j in enumerate(perm)]),
        n,
        rng if rng is not None else np.random.default_rng(0),
    )
    return MetricSamples(per_sample=values, chance=None, shuffled=shuffled, shuffled_sd=sd)


# --------------------------------------------------------------------------------------------
# EPE and angular error of the optical flow
# --------------------------------------------------------------------------------------------


def optical_flow(
    clip: np.ndarray, *, size: int | None = FLOW_SIZE, swap_rb: bool = True
) -> np.ndarray:
    """Farnebäck flow between consecutive frames: uint8 ``[F, H, W, 3]`` → float32
    ``[F − 1, size, size, 2]`` (dx, dy in pixels of the resized frame).

    Frames are resized to ``size × size`` (bilinear, ``cv2.resize``; None keeps them) and turned
    grey with ``COLOR_BGR2GRAY`` (``swap_rb=True``, as the reference does to RGB frames, which
    swaps the weights of red and blue) or ``COLOR_RGB2GRAY``; the flow's arguments are
    :data:`FARNEBACK`.
    """
    cv2 = _cv2()
    arr = np.asarray(clip)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(
            f"Optical flow reads a uint8 clip [F, H, W, 3], got {arr.dtype} {list(arr.shape)}."
        )
    if arr.shape[0] < 2:
        raise UserError("Optical flow needs at least 2 frames per clip.")
    code = cv2.COLOR_BGR2GRAY if swap_rb else cv2.COLOR_RGB2GRAY
    grey = []
    for frame in arr:
        frame = np.ascontiguousarray(frame)
        if size is not None and frame.shape[:2] != (size, size):
            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
        grey.append(cv2.cvtColor(frame, code))
    flows = [
        cv2.calcOpticalFlowFarneback(grey[k], grey[k + 1], None, **FARNEBACK)
        for k in range(len(grey) - 1)
    ]
    return np.stack(flows).astype(np.float32, copy=False)


def flow_errors(flow_gt: np.ndarray, flow_pred: np.ndarray) -> tuple[float, float]:
    """Mean end-point error (pixels) and mean angular error (degrees) of two flow fields
    ``[..., 2]``: per pixel ``‖f_gt − f_pred‖`` and ``degrees(arccos(clip(⟨f_gt, f_pred⟩ /
    (‖f_gt‖ ‖f_pred‖ + 1e-8), −1, 1)))``, as Mind-Animator's ``compute_epe`` / ``compute_ae``."""
    g = np.asarray(flow_gt, dtype=np.float64)
    p = np.asarray(flow_pred, dtype=np.float64)
    epe = np.linalg.norm(g - p, axis=-1)
    cos = np.sum(g * p, axis=-1) / (
        np.linalg.norm(g, axis=-1) * np.linalg.norm(p, axis=-1) + AE_EPS
    )
    ae = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return float(epe.mean()), float(ae.mean())


def flow_samples(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    size: int | None = FLOW_SIZE,
    swap_rb: bool = True,
    rng: np.random.Generator | None = None,
    progress: bool = False,
) -> dict[str, MetricSamples]:
    """Per-window EPE and angular error ``{EPE_KEY, FLOW_ANGLE_KEY: MetricSamples}``.

    A window's values are the means over its ``F − 1`` flows and all their pixels (the
    reference's per-video mean). The shuffled reference scores every reconstruction's flow
    against another window's ground-truth flow: a reconstruction that moves as little as any
    clip scores near it, however still or busy the test set is.
    """
    from tqdm.auto import tqdm

    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt, "EPE")
    n, f = pred.shape[:2]
    if f < 2:
        raise UserError("EPE needs at least 2 frames per window.")
    side_h, side_w = (size, size) if size is not None else pred.shape[2:4]
    shape = (n, f - 1, side_h, side_w, 2)
    nbytes = math.prod(shape) * 4
    with tempfile.TemporaryDirectory(prefix="mindvideo-flow-") as tmp:
        if nbytes > _FLOW_MEMORY_BYTES:
            gt_flows = np.lib.format.open_memmap(
                Path(tmp) / "gt_flows.npy", mode="w+", dtype=np.float32, shape=shape
            )
        else:
            gt_flows = np.empty(shape, dtype=np.float32)
        bar = tqdm(
            range(n), desc="Optical flow", unit="window", leave=False, disable=not progress or None
        )
        for i in bar:
            gt_flows[i] = optical_flow(gt[i], size=size, swap_rb=swap_rb)
        # the pairings shuffled_pairings would draw, kept to score each flow once against all
        rng = rng if rng is not None else np.random.default_rng(0)
        perms = derangements(n, SHUFFLES, rng) if n >= 2 else []
        epe = np.empty(n)
        ae = np.empty(n)
        shuffled = np.empty((len(perms), n, 2))
        for i in tqdm(
            range(n), desc="Flow errors", unit="window", leave=False, disable=not progress or None
        ):
            flow = optical_flow(pred[i], size=size, swap_rb=swap_rb)
            epe[i], ae[i] = flow_errors(gt_flows[i], flow)
            for k, perm in enumerate(perms):
                shuffled[k, i] = flow_errors(gt_flows[int(perm[i])], flow)
        del gt_flows
    out = {}
    for col, (key, values) in enumerate(((EPE_KEY, epe), (FLOW_ANGLE_KEY, ae))):
        if perms:
            means = shuffled[:, :, col].mean(axis=1)
            ref, sd = float(means.mean()), float(means.std(ddof=1))
        else:
            ref = sd = None
        out[key] = MetricSamples(per_sample=values, chance=None, shuffled=ref, shuffled_sd=sd)
    return out


# --------------------------------------------------------------------------------------------
# CLIP-based: VIFI-CLIP score and the two CLIP-pcc
# --------------------------------------------------------------------------------------------


def vifi_clip_samples(raw_pred: np.ndarray, raw_gt: np.ndarray) -> MetricSamples:
    """Mind-Animator's VIFI-CLIP score per window from per-frame image embeddings
    ``[S, F, D]`` (unnormalised, as the video encoder returns them).

    ``cos(mean_f e_pred[i, f], mean_f e_gt[i, f])``: the frames are pooled before the
    normalisation, as ViFi-CLIP does. The shuffled reference is the mean over *all* other
    windows' ground truth (every off-diagonal pair: cheap, and exact rather than sampled);
    ``shuffled_sd`` is None.
    """
    a, b = np.asarray(raw_pred), np.asarray(raw_gt)
    if a.ndim != 3 or a.shape != b.shape:
        raise UserError(
            f"VIFI-CLIP needs per-frame embeddings [S, F, D] of one shape, got {list(a.shape)} "
            f"and {list(b.shape)}."
        )
    own, others = own_and_others(unit_rows(a.mean(axis=1)) @ unit_rows(b.mean(axis=1)).T)
    return MetricSamples(per_sample=own, chance=None, shuffled=others)


def clip_pcc_neurons(embeds: np.ndarray) -> np.ndarray:
    """NEURONS' CLIP-pcc per window: the mean cosine over all ordered pairs ``i ≠ j`` of the
    window's frame embeddings ``[S, F, D]`` (the off-diagonal mean of the F × F cosine matrix)."""
    e = unit_rows(embeds)
    f = e.shape[1]
    if f < 2:
        raise UserError("CLIP-pcc needs at least 2 frames per window.")
    sim = np.einsum("sid,sjd->sij", e, e)
    return (sim.sum(axis=(1, 2)) - np.trace(sim, axis1=1, axis2=2)) / (f * (f - 1))


def clip_pcc_mind_animator(
    embeds: np.ndarray, vifi: np.ndarray | None, *, gate: float = VIFI_GATE
) -> np.ndarray:
    """Mind-Animator's CLIP-pcc per window: the mean cosine of adjacent frame embeddings
    ``[S, F, D]``, and 0 where the window's VIFI-CLIP score ``vifi [S]`` is at most ``gate``
    (``vifi=None``: no gate, e.g. for the ground truth's own value)."""
    e = unit_rows(embeds)
    if e.shape[1] < 2:
        raise UserError("CLIP-pcc needs at least 2 frames per window.")
    adjacent = np.einsum("sfd,sfd->sf", e[:, :-1], e[:, 1:]).mean(axis=1)
    if vifi is None:
        return adjacent
    vifi = np.asarray(vifi, dtype=np.float64)
    if vifi.shape != adjacent.shape:
        raise UserError(
            f"VIFI-CLIP scores {list(vifi.shape)} do not match {len(adjacent)} windows."
        )
    return np.where(vifi <= gate, 0.0, adjacent)


# --------------------------------------------------------------------------------------------
# FVD (optional: with an I3D)
# --------------------------------------------------------------------------------------------


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance of two Gaussians fitted to feature sets ``[Na, D]``, ``[Nb, D]``:
    ``‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)`` (FID's and FVD's formula; sample covariances,
    the real part of the matrix square root)."""
    import scipy.linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise UserError(
            f"The Fréchet distance needs two feature sets [N, D] of one D and N >= 2, got "
            f"{list(a.shape)} and {list(b.shape)}."
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * np.real(root))
    return float(np.real(value))


class I3DFeatures:
    """The I3D of FVD as TorchScript (``i3d_torchscript.pt``, the Kinetics-400 I3D that
    StyleGAN-V and universome/fvd-comparison export from the original TensorFlow FVD; they
    match it to 3e-4): clips → the 400 logits before the softmax.

    Called as those implementations call it on videos of 0–255: ``detector(x [B, 3, T, H, W],
    rescale=True, resize=True, return_features=True)`` (scaled to [−1, 1] and resized to
    224 × 224 inside the model).
    """

    def __init__(self, module: Any, *, device: str | None = None, batch_size: int = 8) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | None = None, batch_size: int = 8
    ) -> I3DFeatures:
        """Load ``path`` (the TorchScript file, or a folder holding ``i3d_torchscript.pt``)."""
        import torch

        file = Path(path).expanduser()
        if file.is_dir():
            file = file / I3D_FILE
        if not file.is_file():
            raise UserError(
                f"No I3D at {file}: pretrained.i3d must be the TorchScript I3D of FVD "
                f"({I3D_FILE}) or a folder holding it."
            )
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in torch, but it is the format FVD's I3D ships in.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(file), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise UserError(f"{file} is not a TorchScript I3D ({err}); re-download it.") from err
        return cls(module, device=device, batch_size=batch_size)

    def features(self, clips: np.ndarray) -> np.ndarray:
        """uint8 clips ``[S, F, H, W, 3]`` → float64 features ``[S, D]``."""
        import torch

        arr = np.asarray(clips)
        out = []
        with torch.inference_mode():
            for start in range(0, len(arr), self.batch_size):
                x = torch.from_numpy(np.array(arr[start : start + self.batch_size]))
                x = x.to(self.device, torch.float32).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
                feats = self.module(x, rescale=True, resize=True, return_features=True)
                out.append(feats.double().cpu().numpy())
        return np.concatenate(out)
