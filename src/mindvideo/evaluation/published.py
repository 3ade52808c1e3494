"""Published cc2017 results, and which of a run's scores were computed the same way.

``docs/results.md`` holds the field's table with every source; this module holds the figures
whose *definition* is known from the paper's text or its released evaluation code, each tagged
with that definition. A run's score is put beside a published figure only when the run computed
it under the same definition (:func:`run_definitions`): the same test, the same model behind it
(never a stand-in), the same resolution where the number depends on it. Everything else stays
in the docs, with its source, and out of the comparison.

Definitions (``docs/evaluation.md``, "The field's table"):

- ``nway-top3:vit-imagenet`` / ``nway-top3:videomae-k400``: the N-way top-1 test with the
  ground truth's top-3 classes (MinD-Video's released code; our ``compat`` mode) judged by
  google/vit-base-patch16-224 (1000 ImageNet classes) / MCG-NJU/videomae-base-finetuned-
  kinetics (400 Kinetics classes).
- ``ssim:skimage-rgb-uniform7``: scikit-image's SSIM on RGB uint8 frames, 7 × 7 uniform window,
  channels averaged (MinD-Video, Mind-Animator; ours).
- ``psnr:rgb-255``: ``20 log10(255 / √MSE)`` over all pixels and channels (Mind-Animator; ours).
- ``hue-pcc:mind-animator``, ``epe:mind-animator-512``, ``vifi-clip:mind-animator``,
  ``clip-pcc:mind-animator``: Mind-Animator's code (:mod:`mindvideo.evaluation.video_metrics`).
- ``clip-pcc:neurons``: NEURONS' released ``eval_metrics.py`` (ViT-L/14, all pairs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PUBLISHED", "Published", "published_beside", "run_definitions"]

NWAY_FRAME = "nway-top3:vit-imagenet"
NWAY_VIDEO = "nway-top3:videomae-k400"
SSIM = "ssim:skimage-rgb-uniform7"
PSNR = "psnr:rgb-255"
HUE = "hue-pcc:mind-animator"
EPE = "epe:mind-animator-512"
VIFI = "vifi-clip:mind-animator"
CLIP_PCC_MA = "clip-pcc:mind-animator"
CLIP_PCC_NEURONS = "clip-pcc:neurons"

_MV = "MinD-Video (Chen et al., NeurIPS 2023), Table 1"
_MA = (
    "Mind-Animator (Lu et al., ICLR 2025), results table of its release "
    "(Mind-Animator/Mind-Animator, imgs/results2.png)"
)


@dataclass(frozen=True)
class Published:
    """One published figure: ``metric`` is our metric key, ``definition`` how it was computed."""

    method: str
    metric: str
    value: float
    subject: str
    definition: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _per_subject(
    method: str, source: str, columns: dict[str, str], rows: dict[str, tuple[float, ...]]
) -> list[Published]:
    """A paper's table: ``columns`` ``{metric: definition}``, ``rows`` ``{subject: values in
    the columns' order}``."""
    return [
        Published(method, metric, value, subject, definition, source)
        for subject, values in rows.items()
        for (metric, definition), value in zip(columns.items(), values, strict=True)
    ]


PUBLISHED: tuple[Published, ...] = (
    # MinD-Video: Table 1 (Full Model = subject 1, window 2; subjects 2 and 3), its released
    # evaluation code (top-3 ground truth, ViT / VideoMAE, scikit-image SSIM on RGB).
    *_per_subject(
        "MinD-Video",
        _MV,
        {
            "video_2way_top1_compat": NWAY_VIDEO,
            "video_50way_top1_compat": NWAY_VIDEO,
            "frame_2way_top1_compat": NWAY_FRAME,
            "frame_50way_top1_compat": NWAY_FRAME,
            "ssim": SSIM,
        },
        {
            "1": (0.853, 0.202, 0.792, 0.172, 0.171),
            "2": (0.841, 0.173, 0.784, 0.158, 0.171),
            "3": (0.846, 0.216, 0.812, 0.193, 0.187),
        },
    ),
    # Mind-Animator: per-subject rows of its release's table, metrics from its released code.
    # Its 2-way-V uses a VideoMAE whose checkpoint the code leaves to a local path, so it is
    # listed in docs/results.md only.
    *_per_subject(
        "Mind-Animator",
        _MA,
        {
            "frame_2way_top1_compat": NWAY_FRAME,
            "vifi_clip": VIFI,
            "ssim": SSIM,
            "psnr": PSNR,
            "hue_pcc": HUE,
            "clip_pcc_mind_animator": CLIP_PCC_MA,
        },
        {
            "1": (0.809, 0.602, 0.301, 9.134, 0.768, 0.425),
            "2": (0.804, 0.604, 0.287, 9.049, 0.795, 0.426),
            "3": (0.792, 0.600, 0.349, 9.306, 0.791, 0.415),
        },
    ),
)


def _standin(identity: dict[str, Any] | None) -> bool:
    return bool(identity and identity.get("standin"))


def run_definitions(meta: dict[str, Any]) -> dict[str, str]:
    """``{metric key: definition}`` for the scores of an evaluation (its ``metrics.json``
    ``meta``) computed as a published definition requires; other scores are left out."""
    out: dict[str, str] = {}
    classifiers = meta.get("classifiers") or {}
    frame, video = classifiers.get("frame"), classifiers.get("video")
    if frame and not _standin(frame) and frame.get("num_labels") == 1000:
        if frame.get("architecture") == "ViTForImageClassification":
            for n in meta.get("n_ways") or []:
                out[f"frame_{n}way_top1_compat"] = NWAY_FRAME
    if video and not _standin(video) and video.get("num_labels") == 400:
        if video.get("architecture") == "VideoMAEForVideoClassification":
            for n in meta.get("n_ways") or []:
                out[f"video_{n}way_top1_compat"] = NWAY_VIDEO
    out["ssim"], out["psnr"] = SSIM, PSNR
    field = meta.get("video_metrics") or {}
    if field.get("swap_rb"):
        out["hue_pcc"] = HUE
        if field.get("flow_size") == 512 and field.get("flow_resized"):
            out["epe"] = EPE
        vifi = field.get("vifi_clip") or {}
        if vifi.get("vifi_clip") and vifi.get("as_reference"):
            out["vifi_clip"] = VIFI
            pcc = field.get("clip_pcc_mind_animator") or {}
            if pcc.get("as_reference") and pcc.get("gate_from_vifi_clip"):
                out["clip_pcc_mind_animator"] = CLIP_PCC_MA
    neurons = field.get("clip_pcc_neurons") or {}
    if neurons.get("as_reference"):
        out["clip_pcc_neurons"] = CLIP_PCC_NEURONS
    return out


def published_beside(meta: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The published figures a run can stand beside: ``{metric key: [Published.to_dict()]}``,
    only where the run's definition of the metric is the figure's."""
    mine = run_definitions(meta)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in PUBLISHED:
        if mine.get(row.metric) == row.definition:
            out.setdefault(row.metric, []).append(row.to_dict())
    return out
