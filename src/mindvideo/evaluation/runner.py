"""Stage 7, ``mindvideo evaluate``: a reconstruction folder → metrics.json, metrics.md, samples.

Reads the output of ``mindvideo reconstruct`` (``index.json``, ``reconstructions.npy``
``[n, F, H, W, 3]``, ``ground_truth.npy`` ``[n, F, H0, W0, 3]``), loads the classifiers once,
computes every metric of Table 1 (paper 4.3, 5) with :func:`compute_metric_samples`, and writes::

    OUT/
      config.yaml      the resolved EvaluateConfig
      metrics.json     {key: {"mean", "se", "chance", "n", "ci_low", "ci_high"}, ..., "meta": {...}}
      metrics.md       the same as a markdown table, chance next to every score
      samples.json     per-window values of every metric (for the t-tests of ``compare``)

Resolution: the authors scored at the reconstruction's resolution, so when the ground truth was
stored at another size it is resized to the reconstruction's (``resize_to`` resizes both).

True labels: when the prepared data the reconstructions came from is simulated (its
``scenes.json`` is found through the manifest, or given as ``scenes_json``), every level whose
classifier names the simulator's labels also gets ``{level}_{N}way_top{K}_true`` (identification
against the true class) and ``{level}_judge_accuracy`` (the judge's accuracy on the ground
truth); ``meta["true_labels"]`` records the source (:mod:`mindvideo.evaluation.true_labels`).

Stand-in classifiers: a model folder holding ``standin.json`` (the marker the stand-in trainer,
``mindvideo.demo.standins``, writes) or ``mindvideo_standin.json``, or whose ``config.json``
has a ``mindvideo_standin`` key, is one of the small models trained on the simulator's labels.
``meta`` records it and ``metrics.md`` (and the report) say so, so nobody
mistakes such numbers for ImageNet / Kinetics scores.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import EvaluateConfig, save_config
from mindvideo.evaluation.classifiers import ImageClassifier, ProbabilityModel, VideoClassifier
from mindvideo.evaluation.clip_similarity import (
    CLIP_KEY,
    CLIPImageEmbedder,
    ViFiCLIPProcessor,
    clip_architecture,
    embed_clips,
    similarity_from_embeddings,
)
from mindvideo.evaluation.metrics import (
    JUDGE_ACCURACY,
    TRUE_MODE,
    MetricSamples,
    compute_metric_samples,
    format_markdown_table,
    metric_rng,
    summarise_metrics,
)
from mindvideo.evaluation.pixel import resize_frames
from mindvideo.evaluation.true_labels import window_labels
from mindvideo.evaluation.video_metrics import (
    CLIP_PCC_MIND_ANIMATOR_KEY,
    CLIP_PCC_NEURONS_KEY,
    EPE_KEY,
    FVD_KEY,
    HUE_PCC_KEY,
    VIFI_CLIP_KEY,
    VIFI_GATE,
    I3DFeatures,
    clip_pcc_mind_animator,
    clip_pcc_neurons,
    flow_samples,
    frechet_distance,
    hue_pcc_samples,
    vifi_clip_samples,
)
from mindvideo.utils import UserError, atomic_write_text
from mindvideo.utils.freshness import sha256_file
from mindvideo.utils.io import read_json

__all__ = [
    "METRICS_FILE",
    "SAMPLES_FILE",
    "STANDIN_FILE",
    "STANDIN_FILES",
    "STANDIN_KEY",
    "EvaluationResult",
    "ReconstructionSet",
    "classifier_identity",
    "evaluate_reconstructions",
    "find_evaluation",
    "load_evaluation",
    "load_reconstructions",
    "model_caveat",
]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
METRICS_MD = "metrics.md"
SAMPLES_FILE = "samples.json"
SAMPLES_VERSION = 1
#: config.json key that marks a model folder as a simulator stand-in.
STANDIN_KEY = "mindvideo_standin"
#: Marker files of a stand-in folder: the stand-in trainer's, and a generic one.
STANDIN_FILES = ("standin.json", f"{STANDIN_KEY}.json")
STANDIN_FILE = STANDIN_FILES[1]

STANDIN_NOTE = (
    "The classifiers are small stand-ins trained on the simulated dataset's own labels (frame: "
    "scene class; video: class × motion), not ImageNet ViT / Kinetics VideoMAE: these "
    "identification scores are not comparable with the paper's."
)


# --------------------------------------------------------------------------------------------
# Reading a reconstruction folder
# --------------------------------------------------------------------------------------------


@dataclass
class ReconstructionSet:
    """A finished ``mindvideo reconstruct`` folder, arrays memory-mapped.

    ``pred: uint8 [n, F, H, W, 3]``, ``gt: uint8 [n, F, H0, W0, 3]``; ``windows``: the
    ``index.json`` entries in row order (``segment``, ``tr``, ...).
    """

    folder: Path
    index: dict[str, Any]
    pred: np.ndarray
    gt: np.ndarray

    @property
    def windows(self) -> list[dict[str, Any]]:
        return list(self.index.get("windows", []))


def load_reconstructions(folder: str | os.PathLike) -> ReconstructionSet:
    """Open the output of ``mindvideo reconstruct`` (or a run directory holding ``reconstruct/``).

    Raises :class:`UserError` when the folder, ``index.json`` or a stacked array is missing, the
    reconstruction is unfinished, or the arrays do not pair up.
    """
    root = Path(folder)
    if not (root / "index.json").is_file() and (root / "reconstruct" / "index.json").is_file():
        root = root / "reconstruct"
    if not root.is_dir():
        raise UserError(
            f"Reconstruction folder {root} does not exist; pass the --out folder of "
            "`mindvideo reconstruct` with --reconstructions."
        )
    index_path = root / "index.json"
    if not index_path.is_file():
        raise UserError(
            f"{root} has no index.json; pass the --out folder of `mindvideo reconstruct` with "
            "--reconstructions."
        )
    index = read_json(index_path, "re-run `mindvideo reconstruct` into it")
    if not index.get("complete"):
        raise UserError(
            f"The reconstruction in {root} is unfinished (index.json says complete: false); "
            "re-run the same `mindvideo reconstruct` command to finish it."
        )
    if index.get("source") == "fmri_runs":
        raise UserError(
            f"{root} was decoded from raw fMRI runs (--fmri), so it has no ground-truth video to "
            "score against; reconstruct a prepared subject's split (--data) to evaluate."
        )
    arrays = {}
    for name in ("reconstructions", "ground_truth"):
        path = root / f"{name}.npy"
        if not path.is_file():
            raise UserError(
                f"{path} is missing; re-run the same `mindvideo reconstruct` command to write it."
            )
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.dtype != np.uint8 or arr.ndim != 5 or arr.shape[-1] != 3:
            raise UserError(
                f"{path} must hold uint8 clips [n, F, H, W, 3], not {arr.dtype} {list(arr.shape)}."
            )
        arrays[name] = arr
    pred, gt = arrays["reconstructions"], arrays["ground_truth"]
    n_windows = len(index.get("windows", []))
    if pred.shape[:2] != gt.shape[:2] or pred.shape[0] != n_windows:
        raise UserError(
            f"{root}: reconstructions.npy {list(pred.shape)}, ground_truth.npy "
            f"{list(gt.shape)} and the {n_windows} windows of index.json do not pair up; "
            "re-run `mindvideo reconstruct` into a fresh folder."
        )
    return ReconstructionSet(folder=root, index=index, pred=pred, gt=gt)


# --------------------------------------------------------------------------------------------
# Classifier identities and stand-ins
# --------------------------------------------------------------------------------------------


def classifier_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What a classifier folder is: path, ``config.json`` hash, architecture, stand-in marker.

    Returns ``{"path", "config_sha256", "architecture", "num_labels", "standin",
    "standin_info"}``. ``standin`` is True when ``config.json`` has a ``mindvideo_standin`` key
    (any value but false / null) or the folder holds ``standin.json`` / ``mindvideo_standin.json``;
    ``standin_info`` is that value or file's content (what it was trained on).
    """
    folder = Path(path).expanduser()
    config_path = folder / "config.json"
    info: dict[str, Any] = {
        "path": str(folder.resolve()) if folder.exists() else str(path),
        "config_sha256": None,
        "architecture": None,
        "num_labels": None,
        "standin": False,
        "standin_info": None,
    }
    config: dict[str, Any] = {}
    if config_path.is_file():
        info["config_sha256"] = sha256_file(config_path)
        config = read_json(config_path, "the classifier folder is damaged")
        archs = config.get("architectures") or []
        info["architecture"] = archs[0] if archs else config.get("model_type")
        labels = config.get("id2label")
        info["num_labels"] = len(labels) if isinstance(labels, dict) else config.get("num_labels")
    markers = [folder / name for name in STANDIN_FILES if (folder / name).is_file()]
    if config.get(STANDIN_KEY):
        info["standin"], info["standin_info"] = True, config[STANDIN_KEY]
    elif markers:
        info["standin"] = True
        info["standin_info"] = read_json(markers[0], "the stand-in marker is damaged")
    return info


def _model_identity(model: Any) -> dict[str, Any]:
    """Identity of a classifier given as an object (not a folder)."""
    inner = getattr(model, "model", model)
    config = getattr(inner, "config", None)
    marker = getattr(config, STANDIN_KEY, None) if config is not None else None
    return {
        "path": None,
        "config_sha256": None,
        "architecture": type(inner).__name__,
        "num_labels": getattr(config, "num_labels", None),
        "standin": bool(marker),
        "standin_info": marker if marker else None,
    }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """An evaluate output: ``metrics`` ``{key: score dict}`` (no ``meta``), ``meta``, and the
    per-window values ``samples`` ``{key: [S]}`` with their ``windows`` (``[(segment, tr)]``)."""

    folder: Path
    metrics: dict[str, dict[str, Any]]
    meta: dict[str, Any]
    samples: dict[str, np.ndarray]
    windows: list[tuple[int, int]]
    ground_truth_sha256: str | None

    @property
    def uses_standins(self) -> bool:
        return bool(self.meta.get("standin_classifiers"))


def _ground_truth_hash(gt: np.ndarray) -> str:
    """sha256 of the compared ground-truth pixels (two runs scored the same windows iff equal)."""
    h = hashlib.sha256(str(list(gt.shape)).encode())
    for row in gt:  # one window at a time: the array may be memory-mapped and large
        h.update(np.ascontiguousarray(row).tobytes())
    return h.hexdigest()


def _load_models(
    cfg: EvaluateConfig,
    num_frames: int,
    frame_model: ProbabilityModel | None,
    video_model: ProbabilityModel | None,
    clip_model: CLIPImageEmbedder | None,
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The three models (each loaded once) and their identities for ``meta``."""
    paths = cfg.pretrained
    frame_model, frame_id = _model_with_identity(
        frame_model,
        paths.image_classifier,
        lambda path: ImageClassifier.from_pretrained(
            path, device=cfg.device, batch_size=cfg.batch_size
        ),
    )
    # As the authors: the Kinetics VideoMAE loaded for the clips' frame count (6).
    video_model, video_id = _model_with_identity(
        video_model,
        paths.video_classifier,
        lambda path: VideoClassifier.from_pretrained(
            path,
            num_frames=num_frames,
            device=cfg.device,
            batch_size=max(1, cfg.batch_size // num_frames),
        ),
    )
    clip_model, clip_id = _model_with_identity(
        clip_model,
        paths.clip,
        lambda path: CLIPImageEmbedder.from_pretrained(
            path, device=cfg.device, batch_size=cfg.batch_size
        ),
    )
    identities = {"frame": frame_id, "video": video_id, "clip": clip_id}
    return frame_model, video_model, clip_model, identities


def _load_video_models(
    cfg: EvaluateConfig, vifi_model: Any, clip_b32_model: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """ViFi-CLIP (with its own input pipeline) and CLIP ViT-B/32 for the field's scores."""
    paths = cfg.pretrained
    vifi_model, vifi_id = _model_with_identity(
        vifi_model,
        paths.vifi_clip,
        lambda path: CLIPImageEmbedder.from_pretrained(
            path,
            device=cfg.device,
            batch_size=cfg.batch_size,
            processor=ViFiCLIPProcessor(swap_rb=cfg.swap_rb),
        ),
    )
    b32_model, b32_id = _model_with_identity(
        clip_b32_model,
        paths.clip_b32,
        lambda path: CLIPImageEmbedder.from_pretrained(
            path, device=cfg.device, batch_size=cfg.batch_size
        ),
    )
    return vifi_model, b32_model, {"vifi_clip": vifi_id, "clip_b32": b32_id}


def _architecture(embedder: Any) -> str | None:
    try:
        return clip_architecture(embedder.model)
    except AttributeError:
        return None


def _video_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    cfg: EvaluateConfig,
    models: dict[str, Any],
    identities: dict[str, Any],
    progress: bool,
) -> tuple[dict[str, MetricSamples], dict[str, Any]]:
    """Hue-pcc, EPE and angle, CLIP similarity, the VIFI-CLIP score and both CLIP-pcc, with a
    record of how each was computed (``meta["video_metrics"]``)."""
    out: dict[str, MetricSamples] = {}
    seed = cfg.seed
    out[HUE_PCC_KEY] = hue_pcc_samples(
        pred, gt, swap_rb=cfg.swap_rb, rng=metric_rng(seed, HUE_PCC_KEY)
    )
    logger.info("Optical flow of %d windows at %s", len(pred), cfg.flow_size or "the clip size")
    out.update(
        flow_samples(
            pred,
            gt,
            size=cfg.flow_size,
            swap_rb=cfg.swap_rb,
            rng=metric_rng(seed, EPE_KEY),
            progress=progress,
        )
    )
    flow_size = cfg.flow_size or int(pred.shape[2])
    info: dict[str, Any] = {
        "swap_rb": cfg.swap_rb,
        "flow_size": flow_size,
        "flow_resized": cfg.flow_size is not None,
    }
    clip, vifi, b32 = models["clip"], models["vifi_clip"], models["clip_b32"]
    e_pred = e_gt = None
    if clip is not None:
        e_pred, e_gt = embed_clips(pred, clip), embed_clips(gt, clip)
        out[CLIP_KEY] = similarity_from_embeddings(e_pred, e_gt)
        gt_value = float(np.mean(clip_pcc_neurons(e_gt)))
        out[CLIP_PCC_NEURONS_KEY] = MetricSamples(
            per_sample=clip_pcc_neurons(e_pred), chance=None, ground_truth=gt_value
        )
        info[CLIP_PCC_NEURONS_KEY] = _model_note(identities["clip"], clip, "ViT-L/14")
    vifi_values = None
    if vifi is not None:
        out[VIFI_CLIP_KEY] = vifi_clip_samples(embed_clips(pred, vifi), embed_clips(gt, vifi))
        info[VIFI_CLIP_KEY] = {**_model_note(identities["vifi_clip"], vifi, "ViT-B/16")}
        info[VIFI_CLIP_KEY]["vifi_clip"] = True
    elif e_pred is not None:
        out[VIFI_CLIP_KEY] = vifi_clip_samples(e_pred, e_gt)
        info[VIFI_CLIP_KEY] = {
            **_model_note(identities["clip"], clip, "ViT-B/16"),
            "vifi_clip": False,
            "standin": True,
            "as_reference": False,
            "note": "the CLIP image tower of pretrained.clip with temporal mean pooling, "
            "not ViFi-CLIP: a stand-in",
        }
    if VIFI_CLIP_KEY in out:
        vifi_values = out[VIFI_CLIP_KEY].per_sample
    pcc_model, pcc_id = (
        (b32, identities["clip_b32"]) if b32 is not None else (clip, identities["clip"])
    )
    if pcc_model is not None and vifi_values is not None:
        emb_p = e_pred if pcc_model is clip else embed_clips(pred, pcc_model)
        emb_g = e_gt if pcc_model is clip else embed_clips(gt, pcc_model)
        out[CLIP_PCC_MIND_ANIMATOR_KEY] = MetricSamples(
            per_sample=clip_pcc_mind_animator(emb_p, vifi_values),
            chance=None,
            ground_truth=float(np.mean(clip_pcc_mind_animator(emb_g, None))),
        )
        info[CLIP_PCC_MIND_ANIMATOR_KEY] = {
            **_model_note(pcc_id, pcc_model, "ViT-B/32"),
            "gate": VIFI_GATE,
            "gated_windows": int(np.count_nonzero(vifi_values <= VIFI_GATE)),
            "gate_from_vifi_clip": bool(info[VIFI_CLIP_KEY].get("vifi_clip")),
        }
    return out, info


def _fvd(
    pred: np.ndarray, gt: np.ndarray, cfg: EvaluateConfig, model: I3DFeatures | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """FVD of the reconstructions against the ground truth (a set-level score: one value, no
    per-window samples, so no standard error, interval or t-test)."""
    path = cfg.pretrained.i3d
    if model is None:
        model = I3DFeatures.from_pretrained(path, device=cfg.device)  # type: ignore[arg-type]
    logger.info("FVD: I3D features of %d reconstructed and ground-truth clips", len(pred))
    value = frechet_distance(model.features(pred), model.features(gt))
    score = {
        "mean": value,
        "se": None,
        "chance": None,
        "n": len(pred),
        "ci_low": None,
        "ci_high": None,
        "set_level": True,
        "lower_is_better": True,
    }
    info = {"path": str(path) if path else None, "frames": int(pred.shape[1])}
    return score, info


def model_caveat(key: str, meta: dict[str, Any]) -> str:
    """Why a CLIP-based score of an evaluation (its ``metrics.json`` ``meta``) is not its
    reference's, or "" when it is (or the key is not such a score)."""
    info = (meta.get("video_metrics") or {}).get(key)
    if not isinstance(info, dict):
        return ""
    if key == VIFI_CLIP_KEY and not info.get("vifi_clip"):
        return "stand-in: a CLIP image tower with temporal pooling, not ViFi-CLIP"
    if "reference_architecture" not in info:  # not a model-dependent score (flow, FVD)
        return ""
    if info.get("standin"):
        return f"computed with a stand-in, not {info['reference_architecture']}"
    if not info.get("as_reference"):
        return (
            f"computed with {info.get('architecture')}, not the reference's "
            f"{info['reference_architecture']}"
        )
    return ""


def _model_note(identity: dict[str, Any] | None, model: Any, reference: str) -> dict[str, Any]:
    """Which model computed a score, and whether it is the one its reference used."""
    arch = _architecture(model)
    return {
        "path": (identity or {}).get("path"),
        "architecture": arch,
        "reference_architecture": reference,
        "standin": bool((identity or {}).get("standin")),
        "as_reference": arch == reference and not (identity or {}).get("standin"),
    }


def _model_with_identity(
    model: Any, path: str | None, load: Callable[[str], Any]
) -> tuple[Any, dict[str, Any] | None]:
    """A given model and its identity; else the model at ``path`` (when set) and its folder's."""
    if model is not None:
        return model, _model_identity(model)
    if not path:
        return None, None
    identity = classifier_identity(path)
    return load(path), identity


def _check_config(cfg: EvaluateConfig) -> None:
    if cfg.reconstructions is None:
        raise UserError(
            "evaluate needs reconstructions: pass --reconstructions DIR (the --out folder of "
            "`mindvideo reconstruct`) or set reconstructions in the config."
        )
    if cfg.resize_to is not None and cfg.resize_to < 7:
        raise UserError(
            f"resize_to={cfg.resize_to} is too small: SSIM needs frames of at least 7 pixels."
        )
    if cfg.bootstrap < 1:
        raise UserError(f"Config key bootstrap must be at least 1, not {cfg.bootstrap}.")
    if cfg.batch_size < 1:
        raise UserError(f"Config key batch_size must be at least 1, not {cfg.batch_size}.")
    if cfg.flow_size is not None and cfg.flow_size < 16:
        raise UserError(
            f"flow_size={cfg.flow_size} is too small for the optical flow (5 × 5 neighbourhoods "
            "over 3 pyramid levels): use 512 (Mind-Animator) or null (the compared size)."
        )


def _markdown(metrics: dict[str, dict], meta: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {meta['n_windows']} reconstructed windows", ""]
    h, w = meta["compared_at"]
    size = f"Compared at {h}×{w} pixels, {meta['frames_per_window']} frames per window"
    if meta.get("resized"):
        h0, w0 = meta["ground_truth_size"]
        size += f" ({meta['resized']} resized; the ground truth was stored at {h0}×{w0})"
    lines += [size + ".", ""]
    if meta.get("standin_classifiers"):
        lines += [f"> **Note.** {STANDIN_NOTE}", ""]
    for key in meta.get("video_metrics") or {}:
        caveat = model_caveat(key, meta)
        if caveat:
            lines += [f"> **{key}**: {caveat}.", ""]
    lines.append(format_markdown_table(metrics))
    lines.append(
        "Mean ± standard error over windows, 95% bootstrap interval, chance level of the same "
        "test (compat: the authors' top-3 ground-truth rule; strict: top-1), and its shuffled "
        "chance: the test with every reconstruction paired with another window's ground truth "
        "(mean ± sd of 5 pairings; a score not above it by two sds is marked). pixel_Nway: "
        "classifier-free identification of 16×16 mean frames by correlation. "
        + (
            "clip_similarity's chance is the mean similarity with the other windows' ground truth."
            if CLIP_KEY in metrics
            else ""
        )
        + (_TRUE_NOTE if any(_is_true_label_key(k) for k in metrics) else "")
    )
    return "\n".join(lines).rstrip() + "\n"


_TRUE_NOTE = (
    " true: identification against the simulator's true class of the ground truth (the strict "
    "rule, chance K/N); judge_accuracy: the classifier's top-1 accuracy on the ground truth "
    "itself (chance 1/classes; shuffled: against other windows' labels)."
)


def _is_true_label_key(key: str) -> bool:
    return key.endswith((f"_{TRUE_MODE}", f"_{JUDGE_ACCURACY}"))


def evaluate_reconstructions(
    cfg: EvaluateConfig,
    out: str | os.PathLike,
    *,
    frame_model: ProbabilityModel | None = None,
    video_model: ProbabilityModel | None = None,
    clip_model: CLIPImageEmbedder | None = None,
    vifi_model: CLIPImageEmbedder | None = None,
    clip_b32_model: CLIPImageEmbedder | None = None,
    i3d_model: I3DFeatures | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate the reconstruction folder ``cfg.reconstructions`` into ``out`` (see module doc).

    Classifiers come from ``cfg.pretrained.image_classifier`` / ``video_classifier`` /
    ``clip`` (loaded once), or are passed in already loaded; without any, only SSIM and PSNR
    are computed. Returns the written :class:`EvaluationResult`.
    """
    from mindvideo import __version__

    _check_config(cfg)
    recon = load_reconstructions(cfg.reconstructions)  # type: ignore[arg-type]
    pred, gt = recon.pred, recon.gt
    n, f, h, w = pred.shape[:4]
    h0, w0 = gt.shape[2:4]
    if cfg.resize_to is not None:
        size, resized = (cfg.resize_to, cfg.resize_to), "both"
    elif (h0, w0) != (h, w):
        size, resized = (h, w), "ground truth"
        logger.info(
            "Resizing the ground truth from %d×%d to the reconstructions' %d×%d.", h0, w0, h, w
        )
    else:
        size, resized = (h, w), None
    pred_c, gt_c = resize_frames(pred, size), resize_frames(gt, size)

    frame_model, video_model, clip_model, identities = _load_models(
        cfg, f, frame_model, video_model, clip_model
    )
    vifi_model, clip_b32_model, more_ids = _load_video_models(cfg, vifi_model, clip_b32_model)
    identities.update(more_ids)
    if frame_model is None and video_model is None:
        logger.warning(
            "No classifiers configured (pretrained.image_classifier, "
            "pretrained.video_classifier): computing SSIM and PSNR only."
        )
    labels = window_labels(recon.index, f, cfg.scenes_json, frame_model, video_model)
    samples: dict[str, MetricSamples] = compute_metric_samples(
        pred_c,
        gt_c,
        frame_model,
        video_model,
        n_ways=cfg.n_ways,
        top_k=cfg.top_k,
        trials=cfg.trials,
        modes=cfg.modes,
        seed=cfg.seed,
        progress=progress,
        frame_labels=labels.frame,
        video_labels=labels.video,
    )
    models = {"clip": clip_model, "vifi_clip": vifi_model, "clip_b32": clip_b32_model}
    more, video_info = _video_scores(pred_c, gt_c, cfg, models, identities, progress)
    samples.update(more)
    metrics = summarise_metrics(samples, seed=cfg.seed, n_resamples=cfg.bootstrap)
    if i3d_model is not None or cfg.pretrained.i3d:
        metrics[FVD_KEY], video_info[FVD_KEY] = _fvd(pred_c, gt_c, cfg, i3d_model)

    # The note is about the identification scores: the frame and video classifiers.
    standin = any(bool(identities[r] and identities[r]["standin"]) for r in ("frame", "video"))
    gt_hash = _ground_truth_hash(gt_c)
    windows = [(int(wi["segment"]), int(wi["tr"])) for wi in recon.windows]
    meta = {
        "mindvideo_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reconstructions": str(recon.folder.resolve()),
        "split": recon.index.get("split"),
        "data": (recon.index.get("settings") or {}).get("data"),
        "n_windows": int(n),
        "frames_per_window": int(f),
        "compared_at": [int(size[0]), int(size[1])],
        "ground_truth_size": [int(h0), int(w0)],
        "resized": resized,
        "seed": cfg.seed,
        "trials": cfg.trials,
        "n_ways": list(cfg.n_ways),
        "top_k": cfg.top_k,
        "modes": list(cfg.modes),
        "bootstrap": cfg.bootstrap,
        "classifiers": identities,
        "standin_classifiers": standin,
        "true_labels": labels.meta,
        "video_metrics": video_info,
        "ground_truth_sha256": gt_hash,
    }

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    sample_doc = {
        "format_version": SAMPLES_VERSION,
        "windows": [{"segment": s, "tr": t} for s, t in windows],
        "ground_truth_sha256": gt_hash,
        "metrics": {
            key: {"chance": ms.chance, "values": [float(v) for v in ms.per_sample]}
            for key, ms in samples.items()
        },
    }
    atomic_write_text(out / SAMPLES_FILE, json.dumps(sample_doc) + "\n")
    atomic_write_text(out / METRICS_MD, _markdown(metrics, meta))
    # metrics.json last: its presence marks a finished evaluation.
    atomic_write_text(out / METRICS_FILE, json.dumps({**metrics, "meta": meta}, indent=2) + "\n")
    logger.info("Wrote %d metrics for %d windows to %s", len(metrics), n, out)
    return EvaluationResult(
        folder=out,
        metrics=metrics,
        meta=meta,
        samples={k: np.asarray(ms.per_sample, dtype=np.float64) for k, ms in samples.items()},
        windows=windows,
        ground_truth_sha256=gt_hash,
    )


# --------------------------------------------------------------------------------------------
# Reading an evaluate output back
# --------------------------------------------------------------------------------------------


def find_evaluation(path: str | os.PathLike) -> Path:
    """The evaluate output folder of ``path``: itself, or ``path/evaluate`` for a run directory."""
    root = Path(path)
    for folder in (root, root / "evaluate"):
        if (folder / METRICS_FILE).is_file():
            return folder
    raise UserError(
        f"{root} holds no {METRICS_FILE} (nor evaluate/{METRICS_FILE}); pass the --out folder "
        "of `mindvideo evaluate` or a run directory containing evaluate/."
    )


def load_evaluation(path: str | os.PathLike) -> EvaluationResult:
    """Read an evaluate output (``metrics.json`` and, when present, ``samples.json``).

    ``path`` is the evaluate output folder or a run directory holding ``evaluate/``. Without
    ``samples.json`` the per-window values are empty (no t-tests possible).
    """
    folder = find_evaluation(path)
    doc = read_json(folder / METRICS_FILE, "re-run `mindvideo evaluate`")
    if not isinstance(doc, dict):
        raise UserError(f"{folder / METRICS_FILE} must hold a JSON object; re-run evaluate.")
    meta = doc.pop("meta", {}) or {}
    samples: dict[str, np.ndarray] = {}
    windows: list[tuple[int, int]] = []
    gt_hash = meta.get("ground_truth_sha256")
    samples_path = folder / SAMPLES_FILE
    if samples_path.is_file():
        sdoc = read_json(samples_path, "re-run `mindvideo evaluate`")
        windows = [(int(w["segment"]), int(w["tr"])) for w in sdoc.get("windows", [])]
        gt_hash = sdoc.get("ground_truth_sha256", gt_hash)
        for key, entry in (sdoc.get("metrics") or {}).items():
            samples[key] = np.asarray(entry["values"], dtype=np.float64)
    return EvaluationResult(
        folder=folder,
        metrics=doc,
        meta=meta,
        samples=samples,
        windows=windows,
        ground_truth_sha256=gt_hash,
    )
