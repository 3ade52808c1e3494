"""``mindvideo lowlevel``: fit the low-level decoder (fMRI window → low-resolution video).

1. **The linear map.** Every training TR ``t`` of the prepared subject gives one sample: the
   window of TRs ``t .. t + w − 1`` (clamped at the segment end), flattened, against the ``F``
   frames of TR ``t`` area-averaged to ``frame_size × frame_size``. Ridge regression with the
   penalty chosen per target by cross-validation over whole training segments
   (:class:`~mindvideo.data.ridge.RidgeDecoder`): neighbouring TRs are autocorrelated, so
   leave-one-out would choose the penalty too small.
2. **The refiner** (``refiner_steps`` > 0, ``out_size`` > ``frame_size``): a small
   convolutional network (:class:`~mindvideo.encoder.lowlevel.LowLevelRefiner`) trained with
   AdamW on MSE + ``ssim_weight`` × (1 − SSIM) from the linear map's *held-out* predictions of
   the training split (each fold's segments predicted by the map fitted on the other folds) to
   the training frames at ``out_size``. Trained on the map's output for the fMRI it fits, it
   would learn to expect predictions far better than unseen fMRI gives.
3. **The semantic map** (``semantic_channels`` > 0, ``pretrained.clip``): ridge from the same
   windows to the CLIP image embedding (L2-normalised) of each training TR's middle frame, the
   penalty per dimension by held-out squared error. The refiner reads its held-out predictions
   beside the video (a learned map to ``semantic_channels`` template channels), and at
   decoding the map's prediction for the window.

Only the training split is read; nothing fitted sees the test split. Writes ``OUT/decoder/``
(:class:`~mindvideo.encoder.lowlevel.LowLevelDecoder`, ``save_pretrained``), ``OUT/lowlevel.json``
(the penalties, the held-out training scores, the refiner's loss) and ``OUT/config.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mindvideo.config.stages import LowLevelConfig
from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import RidgeDecoder, check_selection, mean_repetitions, window_features
from mindvideo.data.video import area_frames
from mindvideo.encoder.lowlevel import LowLevelDecoder, identification_loss, ssim_loss
from mindvideo.pipeline.lowlevel_video import DECODER_DIR
from mindvideo.training.common import save_model_atomically
from mindvideo.utils import UserError
from mindvideo.utils.dry_run import (
    Batching,
    MemoryEstimate,
    ModelPart,
    PhasePlan,
    RunPlan,
    empty_weights,
    meta_like,
    out_status,
    trace_activations,
    training_memory,
)

__all__ = ["DECODER_DIR", "LOWLEVEL_JSON", "check_lowlevel_config", "lowlevel", "plan_lowlevel"]

logger = logging.getLogger(__name__)

LOWLEVEL_JSON = "lowlevel.json"


def check_lowlevel_config(cfg: LowLevelConfig) -> PreparedData:
    """Check the configuration and open the prepared data (a :class:`UserError` otherwise)."""
    if cfg.data is None:
        raise UserError("lowlevel needs a prepared subject: pass --data DIR (mindvideo prepare).")
    for key in ("window", "frame_size", "folds", "refiner_channels", "refiner_batch_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"Config key {key} must be at least 1, not {getattr(cfg, key)}.")
    if cfg.folds < 2:
        raise UserError(f"Config key folds must be at least 2, not {cfg.folds}.")
    if cfg.refiner_steps < 0:
        raise UserError(f"Config key refiner_steps must be 0 or more, not {cfg.refiner_steps}.")
    out_size = cfg.out_size or cfg.frame_size
    if out_size % cfg.frame_size:
        raise UserError(
            f"out_size {out_size} must be a multiple of frame_size {cfg.frame_size} (the refiner "
            "upsamples by a whole factor)."
        )
    if cfg.refiner_steps and out_size == cfg.frame_size:
        raise UserError(
            f"refiner_steps={cfg.refiner_steps} trains a refiner to upsample, but out_size is "
            f"frame_size ({cfg.frame_size}); set out_size to a multiple of it, or "
            "refiner_steps=0."
        )
    if not cfg.alphas or min(cfg.alphas) <= 0:
        raise UserError("Config key alphas must list positive ridge penalties.")
    if cfg.ssim_weight < 0 or cfg.identification_weight < 0:
        raise UserError(
            "Config keys ssim_weight and identification_weight must be 0 or more, not "
            f"{cfg.ssim_weight} and {cfg.identification_weight}."
        )
    if cfg.identification_temperature <= 0:
        raise UserError(
            "Config key identification_temperature must be positive, not "
            f"{cfg.identification_temperature}."
        )
    if cfg.semantic_channels < 0:
        raise UserError(
            f"Config key semantic_channels must be 0 or more, not {cfg.semantic_channels}."
        )
    if cfg.semantic_channels and not cfg.refiner_steps:
        raise UserError(
            f"semantic_channels={cfg.semantic_channels} is read by the refiner, but "
            "refiner_steps is 0; train a refiner or set semantic_channels=0."
        )
    if cfg.semantic_channels and not cfg.pretrained.clip:
        raise UserError(
            f"semantic_channels={cfg.semantic_channels} decodes CLIP image embeddings: set "
            "pretrained.clip (flag --clip) to a CLIP model folder, or semantic_channels=0."
        )
    check_selection(cfg.selection)
    prepared = PreparedData.open(cfg.data)
    size = prepared.frames_train.shape[-3:-1]
    for side in (cfg.frame_size, out_size):
        if size[0] % side or size[1] % side:
            raise UserError(
                f"The prepared frames are {size[0]}×{size[1]}; frame_size and out_size must "
                f"divide them (got {cfg.frame_size} and {out_size})."
            )
    n_segments = prepared.fmri_train.shape[0]
    if n_segments < 2:
        raise UserError(
            f"{cfg.data} has {n_segments} training segment; cross-validation over whole "
            "segments needs at least 2."
        )
    return prepared


def _training_arrays(prepared: PreparedData, cfg: LowLevelConfig) -> tuple[Any, ...]:
    """``X [N, w·V]``, ``Y [N, F·s·s·3]`` and ``groups [N]`` of every training TR."""
    features = window_features(mean_repetitions(prepared.fmri("train")), cfg.window)
    n_seg, n_tr = features.shape[:2]
    frames = prepared.frames("train")
    targets = np.stack([area_frames(frames[s], cfg.frame_size) for s in range(n_seg)])
    groups = np.repeat(np.arange(n_seg), n_tr)
    return (
        features.reshape(n_seg * n_tr, -1),
        targets.reshape(n_seg * n_tr, -1),
        groups,
        n_seg,
        n_tr,
    )


def _held_out_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean per-sample Pearson r and the R² of held-out predictions ``[N, K]``."""
    p = pred - pred.mean(axis=1, keepdims=True)
    t = target - target.mean(axis=1, keepdims=True)
    r = (p * t).sum(1) / np.sqrt((p * p).sum(1) * (t * t).sum(1) + 1e-12)
    resid = ((pred - target) ** 2).sum()
    total = ((target - target.mean(axis=0)) ** 2).sum()
    return {"pattern_r": float(r.mean()), "r2": float(1 - resid / total)}


def lowlevel(cfg: LowLevelConfig, out: str | os.PathLike) -> Path:
    """Fit the decoder on the training split of ``cfg.data``; write it to ``out`` (module doc).
    Returns the decoder's folder."""
    from mindvideo.config import save_config

    prepared = check_lowlevel_config(cfg)
    out = Path(out)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    x, y, groups, n_seg, n_tr = _training_arrays(prepared, cfg)
    frames = prepared.frames_per_tr
    logger.info(
        "linear map: %d training windows (%d segments × %d TRs), %d features → %d targets",
        len(x),
        n_seg,
        n_tr,
        x.shape[1],
        y.shape[1],
    )
    refine = cfg.refiner_steps > 0
    k = y.shape[1]
    targets, identify, embeddings = y, None, None
    if cfg.semantic_channels:
        # One fit for both maps: the folds' decompositions of the design serve every target.
        # The frames keep their selection; each embedding dimension gets its penalty by
        # held-out squared error.
        embeddings = _middle_frame_embeddings(prepared, cfg.pretrained.clip, device)
        targets = np.concatenate([y, embeddings], axis=1)
        identify = [(0, k)] if cfg.selection == "identification" else []
    ridge = RidgeDecoder(alphas=cfg.alphas, folds=cfg.folds, selection=cfg.selection).fit(
        x, targets, groups, held_out=refine, identify=identify
    )
    weight, bias = ridge.linear_map()
    held_out = ridge.held_out_
    if embeddings is not None:
        logger.info(
            "semantic map: %d training windows → CLIP image embeddings (%d), held-out "
            "pattern r %.3f",
            len(x),
            embeddings.shape[1],
            _held_out_scores(held_out[:, k:], embeddings)["pattern_r"],
        )
    torch.manual_seed(cfg.seed)  # the refiner's initial weights
    decoder = LowLevelDecoder(
        num_voxels=prepared.n_voxels,
        window=cfg.window,
        frames=frames,
        frame_size=cfg.frame_size,
        out_size=cfg.out_size or cfg.frame_size,
        refiner_channels=cfg.refiner_channels if refine else 0,
        semantic_dim=0 if embeddings is None else int(embeddings.shape[1]),
        semantic_channels=cfg.semantic_channels,
    )
    decoder.set_linear_map(weight[:, :k], bias[:k])
    alphas = ridge.alphas_[:k]
    report: dict[str, Any] = {
        "training_windows": len(x),
        "features": int(x.shape[1]),
        "targets": int(k),
        "selection": cfg.selection,
        "alpha_median": float(np.median(alphas)),
        "alpha_range": [float(alphas.min()), float(alphas.max())],
    }
    held_out_semantic = None
    if embeddings is not None:
        decoder.set_semantic_map(weight[:, k:], bias[k:])
        held_out_semantic = held_out[:, k:]
        report["semantic"] = {
            "targets": f"CLIP image embedding of each TR's middle frame ({cfg.pretrained.clip})",
            "dim": int(embeddings.shape[1]),
            "alpha_median": float(np.median(ridge.alphas_[k:])),
            "held_out": _held_out_scores(held_out_semantic, embeddings),
        }
    if refine:
        report["held_out_linear"] = _held_out_scores(held_out[:, :k], y)
        report["refiner"] = _train_refiner(
            decoder, held_out[:, :k], prepared, cfg, device, held_out_semantic
        )
    save_model_atomically(decoder.to("cpu"), out / DECODER_DIR)
    (out / LOWLEVEL_JSON).write_text(json.dumps(report, indent=2) + "\n")
    save_config(cfg, out / "config.yaml")
    logger.info("low-level decoder fitted in %.1f s", time.perf_counter() - start)
    return out / DECODER_DIR


def _middle_frame_embeddings(prepared: PreparedData, clip: str, device: torch.device) -> Any:
    """L2-normalised CLIP image embeddings ``[S·T, E]`` of every training TR's middle frame,
    in the order of :func:`_training_arrays`."""
    from mindvideo.training.clip_towers import load_clip

    towers = load_clip(clip).to(device)
    frames = prepared.frames("train")
    s, t, f = frames.shape[:3]
    middle = np.asarray(frames[:, :, f // 2]).reshape(s * t, *frames.shape[3:])
    z = towers.encode_images(list(middle)).cpu().numpy().astype(np.float32)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _train_refiner(
    decoder: LowLevelDecoder,
    held_out: np.ndarray,
    prepared: PreparedData,
    cfg: LowLevelConfig,
    device: torch.device,
    held_out_semantic: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train ``decoder.refiner`` from the linear map's held-out training predictions (and
    the semantic map's) to the training frames at ``out_size``; returns its loss before and
    after."""
    refiner = decoder.refiner
    assert refiner is not None
    c = decoder.config
    size = c.out_size
    frames = prepared.frames("train")
    # Targets at out_size, kept as uint8 (the frames' own precision) to bound memory.
    target = torch.from_numpy(
        np.concatenate(
            [
                (area_frames(frames[s], size) * 255).round().astype(np.uint8)
                for s in range(frames.shape[0])
            ]
        )
    )  # [N, F, S, S, 3]
    inputs = torch.from_numpy(held_out.astype(np.float32)).unflatten(
        1, (c.frames, c.frame_size, c.frame_size, 3)
    )
    inputs = inputs.permute(0, 1, 4, 2, 3).flatten(1, 2)  # [N, F·3, s, s]
    semantic = (
        None
        if held_out_semantic is None
        else torch.from_numpy(held_out_semantic.astype(np.float32))
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    refiner.to(device).train()
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=cfg.refiner_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.refiner_lr, total_steps=cfg.refiner_steps
    )
    losses = []
    log_every = max(1, cfg.refiner_steps // 10)
    for step in range(cfg.refiner_steps):
        batch = torch.randint(0, len(inputs), (cfg.refiner_batch_size,), generator=generator)
        x = inputs[batch].to(device)
        y = target[batch].to(device).float().div(255).permute(0, 1, 4, 2, 3)
        condition = None if semantic is None else semantic[batch].to(device)
        pred = refiner(x, condition).unflatten(1, (c.frames, 3))
        mse = torch.nn.functional.mse_loss(pred, y)
        ssim = ssim_loss(pred.clamp(0, 1).flatten(0, 1), y.flatten(0, 1))
        loss = mse + cfg.ssim_weight * ssim
        if cfg.identification_weight:
            loss = loss + cfg.identification_weight * identification_loss(
                pred, y, cfg.identification_temperature
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise UserError(
                f"The refiner's loss is {losses[-1]} at step {step}; lower refiner_lr "
                f"({cfg.refiner_lr})."
            )
        if (step + 1) % log_every == 0:
            logger.info(
                "refiner step %d/%d: loss %.4f (mse %.4f, 1 − ssim %.4f)",
                step + 1,
                cfg.refiner_steps,
                losses[-1],
                mse.item(),
                ssim.item(),
            )
    refiner.eval()
    window = max(1, min(50, len(losses) // 10))
    return {
        "steps": cfg.refiner_steps,
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
    }


def _refiner_loss_text(cfg: LowLevelConfig) -> str:
    text = f"MSE + {cfg.ssim_weight:g} × (1 − SSIM)"
    if cfg.identification_weight:
        text += (
            f" + {cfg.identification_weight:g} × identification "
            f"(temperature {cfg.identification_temperature:g})"
        )
    return text


def _clip_width(cfg: LowLevelConfig) -> int:
    """The projection width of ``pretrained.clip`` (its config alone; no weights are read)."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(cfg.pretrained.clip).projection_dim)
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(
            f"Could not read the CLIP model's config in {cfg.pretrained.clip} ({exc}); set "
            "pretrained.clip to a CLIP model folder."
        ) from exc


def plan_lowlevel(cfg: LowLevelConfig, out: str | os.PathLike | None = None) -> RunPlan:
    """A dry run of :func:`lowlevel`: the checks, the shapes, the decoder's parameters and a
    memory estimate of the ridge fit (host memory) and of the refiner's training."""
    prepared = check_lowlevel_config(cfg)
    n_seg, n_tr, n_vox = prepared.fmri_train.shape[0], prepared.n_trs, prepared.n_voxels
    frames = prepared.frames_per_tr
    n = n_seg * n_tr
    d = cfg.window * n_vox
    k = frames * cfg.frame_size**2 * 3
    out_size = cfg.out_size or cfg.frame_size
    refine = cfg.refiner_steps > 0
    with empty_weights():
        decoder = LowLevelDecoder(
            num_voxels=n_vox,
            window=cfg.window,
            frames=frames,
            frame_size=cfg.frame_size,
            out_size=out_size,
            refiner_channels=cfg.refiner_channels if refine else 0,
            semantic_dim=_clip_width(cfg) if cfg.semantic_channels else 0,
            semantic_channels=cfg.semantic_channels,
        )
    # Ridge: the design and targets, one eigendecomposition (r × r) per fold, and the folds'
    # decompositions kept for the held-out predictions when a refiner is trained.
    r = min(n, d)
    folds_kept = cfg.folds if refine else 1
    ridge_bytes = 4 * (n * d + 2 * n * k + folds_kept * (r * r + r * k) + d * k)
    if cfg.selection == "identification":  # one held-out fold's correlation matrix
        ridge_bytes += 8 * (n // cfg.folds + 1) ** 2
    scope = "one for all targets" if cfg.selection == "identification" else "per target"
    phases = [
        PhasePlan(
            "linear map (ridge, closed form, host memory)",
            data={
                "training windows": f"{n:,} = {n_seg} segments × {n_tr} TRs",
                "features": f"{d:,} = {cfg.window} TRs × {n_vox:,} voxels",
                "targets": f"{k:,} = {frames} frames × {cfg.frame_size}² × 3",
            },
            models=[ModelPart("linear map", decoder.linear.weight.numel() + k, 0)],
            memory=MemoryEstimate(
                weights=4 * (d * k + k),
                activations=ridge_bytes,
                activations_how="design, targets and the folds' eigendecompositions",
            ),
            settings={
                "penalties": (
                    f"{len(cfg.alphas)} tried, chosen by held-out {cfg.selection} ({scope}), "
                    f"{cfg.folds} folds of whole segments"
                )
            },
        )
    ]
    if decoder.semantic is not None:
        e = decoder.semantic.out_features
        phases.append(
            PhasePlan(
                "semantic map (ridge, in the linear map's fit, host memory)",
                data={
                    "targets": f"{e} = the CLIP image embedding of each TR's middle frame "
                    f"({n:,} frames through {cfg.pretrained.clip})",
                },
                models=[ModelPart("semantic map", d * e + e, 0)],
                memory=MemoryEstimate(
                    weights=4 * (d * e + e),
                    activations=4 * (2 * n * e + cfg.folds * r * e),
                    activations_how="its targets and projections beside the linear map's "
                    "(the folds' eigendecompositions are shared)",
                ),
                settings={"penalties": "per dimension, by held-out squared error"},
            )
        )
    if refine:
        refiner = decoder.refiner
        s = cfg.frame_size
        batch = meta_like((cfg.refiner_batch_size, frames * 3, s, s))
        condition = (
            None
            if decoder.semantic is None
            else meta_like((cfg.refiner_batch_size, decoder.semantic.out_features))
        )
        traced = trace_activations(lambda: refiner(batch, condition))
        parts = [ModelPart.of("refiner", refiner)]
        phases.append(
            PhasePlan(
                "refiner",
                data={
                    "samples": f"{n:,} held-out linear videos → training frames at "
                    f"{out_size}×{out_size}",
                },
                models=parts,
                memory=training_memory(parts, traced, "traced forward pass of one batch"),
                steps=cfg.refiner_steps,
                batching=Batching(cfg.refiner_batch_size),
                samples=n,
                settings={
                    "loss": _refiner_loss_text(cfg),
                    **(
                        {
                            "reads": "the linear video and the semantic map's embedding "
                            f"({cfg.semantic_channels} template channels)"
                        }
                        if condition is not None
                        else {}
                    ),
                },
            )
        )
    checked = {
        "data": f"{cfg.data}: prepared subject (training split only)",
        "out": out_status(out),
    }
    if cfg.semantic_channels:
        checked["clip"] = f"{cfg.pretrained.clip}: CLIP model (its config read)"
    return RunPlan("lowlevel", checked, phases)
