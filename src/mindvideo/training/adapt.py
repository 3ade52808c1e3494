"""``mindvideo adapt``: a new subject from a few training segments (functional alignment).

A pipeline trained on one subject reads that subject's voxels. A new subject watched the same
training stimuli (Wen 2018's three subjects watched the same segments), so every one of its
training TRs has a counterpart: the reference subject's response to the same frames. The
subject adapter (:class:`~mindvideo.encoder.subjects.SubjectAdapter`) is the linear map from
the new subject's voxels to the reference subject's, fitted on the first ``segments`` training
segments both have:

- ridge regression from the new subject's TR to the reference subject's TR, the penalty chosen
  per reference voxel by cross-validation over whole segments, first from the ``neighbours``
  new-subject voxels nearest to each reference voxel's vertex, then from all of them for the
  rest (:func:`~mindvideo.data.alignment.fit_alignment`); in closed form, seconds on a CPU;
- the stimuli are checked to be the same: the prepared frames of those segments must match;
- with ``finetune_steps`` (and ``pipeline``), the map is then trained end to end so that the
  pipeline's frozen encoder (and, with ``lowlevel``, the low-level decoder) gives the new
  subject's training windows what it gives the reference's (:func:`finetune_adapter`).

Then ``mindvideo reconstruct adapter=OUT --data NEW`` reads the new subject through it with the
reference subject's pipeline (and low-level decoder), and ``mindvideo evaluate`` scores it.

Scores (``OUT/adapt.json``), every one beside its chance and ceiling:

- ``held_out_voxel_r``: median over reference voxels of the correlation between the aligned
  fMRI and the reference's, each training segment predicted by the map fitted without it;
- ``test_voxel_r``: the same on the test split (averaged repetitions), never fitted;
- ``test_pattern``: each aligned test TR identifies the reference subject's response to the
  same TR among 49 other test TRs (Pearson r of voxel patterns; chance 0.02), beside a
  shuffled pairing (empirical chance) and, as the ceiling, the reference subject's own first
  half of test repetitions identifying its second half (when it has two or more);
- ``decoding``: the linear decoding of the new subject's test windows through the reference's
  ridge decoder and by its own few segments alone (:func:`_decoding_scores`).

Only training segments are fitted; the test split is only scored.
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

from mindvideo.config.stages import AdaptConfig
from mindvideo.data.alignment import fit_alignment, surface_neighbours
from mindvideo.data.pairing import pad_voxels, padded_size, window_indices
from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import mean_repetitions
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.aligned import ADAPTER_DIR, segment_rows
from mindvideo.training.common import save_model_atomically
from mindvideo.utils import UserError
from mindvideo.utils.dry_run import (
    Batching,
    MemoryEstimate,
    ModelPart,
    PhasePlan,
    RunPlan,
    empty_model,
    empty_weights,
    meta_like,
    out_status,
    trace_activations,
    training_memory,
)

__all__ = ["ADAPTER_DIR", "ADAPT_JSON", "adapt", "check_adapt_config", "pattern_identification"]

logger = logging.getLogger(__name__)

ADAPT_JSON = "adapt.json"


def _name(prepared: PreparedData, given: str | None) -> str:
    if given:
        return given
    if prepared.subject is not None:
        return f"subject{prepared.subject}"
    return Path(prepared.root).name if prepared.root is not None else "subject"


def _pipeline_settings(path: str) -> tuple[Any, str, str]:
    """The fMRI encoder (built on the meta device, no weights read), the voxel padding and the
    normalisation of a pipeline folder, read as ``reconstruct`` reads them."""
    from mindvideo.pipeline.pipeline_mindvideo import MindVideoPipeline

    pipe = MindVideoPipeline.from_pretrained(path, empty_weights=True)
    return pipe.fmri_encoder, pipe.config.fmri_pad_mode, pipe.config.fmri_normalize


def check_adapt_config(cfg: AdaptConfig) -> tuple[PreparedData, PreparedData, list[int]]:
    """Check the configuration; open the new subject and the reference, and check that they
    saw the same training stimuli. Returns ``(data, reference, segments)``."""
    if cfg.data is None or cfg.reference is None:
        raise UserError(
            "adapt needs the new subject's prepared folder (--data) and the prepared folder of "
            "the subject the pipeline was trained on (--reference)."
        )
    if cfg.segments < 2:
        raise UserError(
            f"segments must be at least 2 (the penalty is cross-validated over whole "
            f"segments), not {cfg.segments}."
        )
    if cfg.folds == 1 or cfg.folds < 0:
        raise UserError(f"folds must be 0 (one per segment) or at least 2, not {cfg.folds}.")
    if cfg.neighbours < 0:
        raise UserError(f"neighbours must be 0 (a global map) or more, not {cfg.neighbours}.")
    if cfg.finetune_steps < 0 or cfg.finetune_batch_size < 1:
        raise UserError("finetune_steps must be 0 or more and finetune_batch_size at least 1.")
    if cfg.finetune_steps and cfg.pipeline is None:
        raise UserError(
            f"finetune_steps={cfg.finetune_steps} trains the adapter through the pipeline's fMRI "
            "encoder: pass --pipeline (or set finetune_steps=0 for the ridge fit alone)."
        )
    if cfg.lowlevel is not None and not cfg.finetune_steps:
        raise UserError("lowlevel is matched only while fine-tuning: set finetune_steps > 0.")
    if cfg.trials < 1 or cfg.window < 1:
        raise UserError(f"trials and window must be at least 1, not {cfg.trials}, {cfg.window}.")
    if not cfg.alphas or min(cfg.alphas) <= 0:
        raise UserError("Config key alphas must list positive ridge penalties.")
    data = PreparedData.open(cfg.data)
    reference = PreparedData.open(cfg.reference)
    for who, p in (("the new subject", data), ("the reference", reference)):
        if p.fmri_train.shape[0] < cfg.segments:
            raise UserError(
                f"{p.root} ({who}) has {p.fmri_train.shape[0]} training segments, fewer than "
                f"segments={cfg.segments}."
            )
    if (
        data.n_trs != reference.n_trs
        or data.frames_train.shape[2:] != (reference.frames_train.shape[2:])
    ):
        raise UserError(
            f"{cfg.data} and {cfg.reference} differ in TRs per segment or frame shape; prepare "
            "both with the same settings."
        )
    segments = list(range(cfg.segments))
    rows = segment_rows(segments)
    for s in segments:
        if not np.array_equal(data.frames_train[rows][s], reference.frames_train[rows][s]):
            raise UserError(
                f"Training segment {s + 1} of {cfg.data} shows other frames than that of "
                f"{cfg.reference}: the adapter needs the two subjects' responses to the same "
                "stimuli (prepare both from the same dataset with the same settings)."
            )
    if cfg.pipeline is not None:
        encoder, pad, _ = _pipeline_settings(cfg.pipeline)
        num_voxels = encoder.config.num_voxels
        padded = padded_size(reference.n_voxels, encoder.config.patch_size, pad)  # type: ignore[arg-type]
        if padded != num_voxels:
            raise UserError(
                f"The reference {cfg.reference} has {reference.n_voxels} voxels, but the fMRI "
                f"encoder of {cfg.pipeline} reads {num_voxels}; pass as --reference the prepared "
                "folder the pipeline was trained on."
            )
    return data, reference, segments


def _voxel_r(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column Pearson r of ``[N, K]`` arrays (0 where a column is constant)."""
    p = pred - pred.mean(axis=0)
    t = target - target.mean(axis=0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    return np.where(denom > 0, (p * t).sum(0) / np.where(denom > 0, denom, 1), 0.0)


def pattern_identification(
    pred: np.ndarray, target: np.ndarray, n_way: int, trials: int, seed: int
) -> float:
    """N-way identification of patterns: row ``i`` of ``pred`` ``[N, K]`` succeeds in a trial
    when its Pearson r with ``target[i]`` beats its r with each of ``n_way − 1`` other rows of
    ``target`` drawn without replacement; the success rate over rows and ``trials``."""
    n = len(pred)
    if n < n_way:
        raise UserError(f"{n_way}-way identification needs at least {n_way} patterns, not {n}.")

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    r = unit(pred.astype(np.float64)) @ unit(target.astype(np.float64)).T  # [N, N]
    rng = np.random.default_rng(seed)
    own = np.diag(r)
    wins = 0
    for _ in range(trials):
        for i in range(n):
            others = rng.choice(n - 1, n_way - 1, replace=False)
            others += others >= i  # skip row i
            wins += bool((own[i] > r[i, others]).all())
    return wins / (n * trials)


def _test_scores(
    adapter: SubjectAdapter, data: PreparedData, reference: PreparedData, cfg: AdaptConfig
) -> dict[str, Any]:
    """The test split, never fitted: voxel r and 50-way pattern identification with its
    shuffled chance and the reference's own repeat as the ceiling."""
    aligned = adapter.transform(mean_repetitions(data.fmri_test))  # [S, T, Vr]
    target = mean_repetitions(reference.fmri_test)
    a, t = aligned.reshape(-1, aligned.shape[-1]), target.reshape(-1, target.shape[-1])
    scores: dict[str, Any] = {"test_voxel_r": float(np.median(_voxel_r(a, t)))}
    n_way = min(50, len(a))
    shuffled = np.random.default_rng(cfg.seed + 1).permutation(len(a))
    scores["test_pattern"] = {
        "n_way": n_way,
        "aligned": pattern_identification(a, t, n_way, cfg.trials, cfg.seed),
        "chance": 1.0 / n_way,
        "shuffled": pattern_identification(a[shuffled], t, n_way, cfg.trials, cfg.seed),
    }
    repeats = np.asarray(reference.fmri_test)
    if repeats.ndim == 4 and repeats.shape[1] >= 2:
        half = repeats.shape[1] // 2
        first = repeats[:, :half].mean(axis=1).reshape(len(a), -1)
        second = repeats[:, half:].mean(axis=1).reshape(len(a), -1)
        scores["test_pattern"]["reference_repeat"] = pattern_identification(
            first, second, n_way, cfg.trials, cfg.seed
        )
    return scores


def _identify(pred: np.ndarray, truth: np.ndarray, cfg: AdaptConfig) -> dict[str, float]:
    """50-way pattern identification of ``pred`` against ``truth`` rows, with a shuffled
    pairing beside it."""
    n_way = min(50, len(pred))
    shuffled = np.random.default_rng(cfg.seed + 2).permutation(len(pred))
    return {
        "score": pattern_identification(pred, truth, n_way, cfg.trials, cfg.seed),
        "shuffled": pattern_identification(pred[shuffled], truth, n_way, cfg.trials, cfg.seed),
        "chance": 1.0 / n_way,
    }


def _class_identification(
    scores: np.ndarray, labels: np.ndarray, cfg: AdaptConfig, shuffle: bool = False
) -> float:
    """Strict 50-way identification of the true class from decoded class scores ``[N, C]``:
    the true class's score beats those of 49 other classes drawn from the test labels."""
    rng = np.random.default_rng(cfg.seed)
    present = np.unique(labels)
    n_way = min(50, len(present))
    if shuffle:
        scores = scores[np.random.default_rng(cfg.seed + 3).permutation(len(scores))]
    wins = 0
    for i, label in enumerate(labels):
        others = present[present != label]
        for _ in range(cfg.trials):
            drawn = rng.choice(others, n_way - 1, replace=False)
            wins += bool(scores[i, label] > scores[i, drawn].max())
    return wins / (len(labels) * cfg.trials)


def _decoding_scores(
    adapter: SubjectAdapter,
    data: PreparedData,
    reference: PreparedData,
    segments: list[int],
    cfg: AdaptConfig,
) -> dict[str, Any]:
    """The linear decoding of the new subject's test windows (TRs t .. t + window − 1): its
    16×16 mean frame by pixel identification and, where the data have scene labels, its scene
    class (strict 50-way against the true class), each

    - ``adapted``: by the reference's ridge decoder, fitted on all of the reference's training
      segments, reading the new subject's test fMRI through the adapter;
    - ``alone``: by a ridge decoder fitted on the new subject's own ``segments`` only;

    beside chance and a shuffled pairing. The ceilings of ``reconstruct adapter=``."""
    from mindvideo.data.labels import load_scene_labels
    from mindvideo.data.ridge import RidgeDecoder, window_features
    from mindvideo.data.video import area_frames

    side = data.frames_train.shape[-2]
    side = 16 if side % 16 == 0 else side  # 16×16 where the frames allow it

    def frames(p: PreparedData, split: str, n: int) -> np.ndarray:
        f = p.frames(split)
        per_tr = np.stack([area_frames(f[s], side).mean(axis=1) for s in range(n)])
        return per_tr.reshape(n * f.shape[1], -1)  # the split's own TRs per segment

    def windows(fmri: np.ndarray) -> np.ndarray:
        x = window_features(mean_repetitions(fmri), cfg.window)
        return x.reshape(-1, x.shape[-1])

    def groups(n: int, n_tr: int) -> np.ndarray:
        return np.repeat(np.arange(n), n_tr)

    n_ref, n_test = reference.fmri_train.shape[0], data.fmri_test.shape[0]
    k, n_tr = len(segments), data.n_trs
    rows = segment_rows(segments)
    targets = {"pixel": (frames(reference, "train", n_ref), frames(data, "test", n_test))}
    try:
        labels = (load_scene_labels(reference), load_scene_labels(data))
    except UserError:  # real data: no scene labels
        labels = None
    if labels is not None:

        def middle(ids: np.ndarray) -> np.ndarray:  # the class of each TR's middle frame
            ids = np.asarray(ids)
            return ids[..., ids.shape[-1] // 2].reshape(-1)

        one_hot = np.eye(len(labels[0].classes), dtype=np.float32)
        train_class = middle(labels[0].class_id["train"])
        targets["class"] = (one_hot[train_class], middle(labels[1].class_id["test"]))
    ref_y = np.concatenate([t[0] for t in targets.values()], axis=1)
    new_y = ref_y.reshape(n_ref, n_tr, -1)[rows].reshape(k * n_tr, -1)
    folds = min(3, n_ref)
    aligned = adapter.transform(mean_repetitions(data.fmri_test))
    pred = {
        "adapted": RidgeDecoder(alphas=cfg.alphas, folds=folds)
        .fit(windows(reference.fmri_train), ref_y, groups(n_ref, n_tr))
        .predict(windows(aligned)),
        "alone": RidgeDecoder(alphas=cfg.alphas, folds=k)
        .fit(windows(data.fmri_train[rows]), new_y, groups(k, n_tr))
        .predict(windows(data.fmri_test)),
    }
    n_pixel = targets["pixel"][0].shape[1]
    out: dict[str, Any] = {"window": cfg.window}
    for name, p in pred.items():
        out[name] = {"pixel_50way": _identify(p[:, :n_pixel], targets["pixel"][1], cfg)}
        if "class" in targets:
            scores, truth = p[:, n_pixel:], targets["class"][1]
            out[name]["class_50way"] = {
                "score": _class_identification(scores, truth, cfg),
                "shuffled": _class_identification(scores, truth, cfg, shuffle=True),
                "chance": 1.0 / min(50, len(np.unique(truth))),
            }
    return out


def _neighbours(data: PreparedData, reference: PreparedData, k: int) -> np.ndarray | None:
    """The local stage's new-subject voxels per reference voxel, or ``None`` (global only:
    ``k`` = 0, or no grayordinates recorded, as with the authors' arrays)."""
    if k == 0:
        return None
    if data.voxel_grayordinates is None or reference.voxel_grayordinates is None:
        logger.info(
            "no voxel grayordinates in the prepared data: the adapter is the global map alone"
        )
        return None
    return surface_neighbours(data.voxel_grayordinates, reference.voxel_grayordinates, k)


def _fit_statistics(fmri: torch.Tensor, mode: str) -> tuple[Any, Any]:
    """``(mean, std)`` of ``fmri`` ``[..., V]`` as :meth:`FMRINormalizer.fit
    <mindvideo.data.datasets.FMRINormalizer.fit>` computes them for ``mode``, in torch (the
    aligned training split changes at every fine-tuning step)."""
    if mode == "none":
        return 0.0, 1.0
    flat = fmri.reshape(-1, fmri.shape[-1]).double()
    if mode == "train_voxel":
        mean, std = flat.mean(0), flat.std(0, unbiased=False)
    else:  # "train" and "compat": one mean and std over the whole training array
        mean, std = flat.mean(), flat.std(unbiased=False)
    return mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()


def finetune_adapter(
    adapter: SubjectAdapter,
    data: PreparedData,
    reference: PreparedData,
    segments: list[int],
    cfg: AdaptConfig,
) -> dict[str, Any]:
    """Train the adapter end to end on the shared training TRs (the ridge fit its start).

    For a batch of TRs, the frozen fMRI encoder of ``cfg.pipeline`` encodes the new subject's
    windows through the adapter and the reference subject's windows of the same TRs, each
    normalised and padded as the pipeline reads them; the loss is the squared error between the
    two conditions relative to the reference's mean square, plus (with ``cfg.lowlevel``)
    ``lowlevel_weight`` × the same for the low-level decoder's videos, plus ``finetune_anchor``
    × ``‖W − W_ridge‖²``. The pipeline's conditions are what the generator sees, so the map is
    fitted where it matters rather than voxel by voxel. Returns the loss at the start and end.
    """
    from mindvideo.data.datasets import FMRINormalizer
    from mindvideo.encoder.spatiotemporal import SpatiotemporalEncoder
    from mindvideo.pipeline.lowlevel_video import load_lowlevel

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta, pad_mode, mode = _pipeline_settings(cfg.pipeline)  # type: ignore[arg-type]  # checked
    encoder = SpatiotemporalEncoder.from_pretrained(cfg.pipeline, subfolder="fmri_encoder")
    encoder = encoder.to(device).eval().requires_grad_(False)
    patch = int(meta.config.patch_size)
    low = load_lowlevel(cfg.lowlevel).to(device) if cfg.lowlevel is not None else None

    rows = segment_rows(segments)
    x_new = torch.tensor(mean_repetitions(data.fmri_train[rows]), device=device)  # [K, T, Vs]
    x_ref = torch.tensor(mean_repetitions(reference.fmri_train[rows]), device=device)
    ref_norm = FMRINormalizer(mode).fit(reference.fmri_train)  # as reconstruct fits it
    ref_stats = tuple(
        torch.as_tensor(v, device=device).float() for v in (ref_norm.mean_, ref_norm.std_)
    )
    k, n_tr = x_new.shape[:2]

    def trs(w: int) -> torch.Tensor:  # [T, w]: the TRs of each TR's window
        return torch.from_numpy(np.stack([window_indices(t, w, n_tr) for t in range(n_tr)]))

    window = trs(int(encoder.config.window))
    low_window = trs(int(low.config.window)) if low is not None else window
    seg = torch.arange(k).repeat_interleave(n_tr)
    tr = torch.arange(n_tr).repeat(k)

    def gather(fmri: torch.Tensor, trs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return fmri[seg[rows, None], trs[tr[rows]]]  # [B, w, V]: the rows' windows

    def encoder_input(windows: torch.Tensor, stats: tuple[Any, Any]) -> torch.Tensor:
        return pad_voxels((windows - stats[0]) / stats[1], patch, pad_mode)  # type: ignore[arg-type]

    with torch.no_grad():  # the reference's conditions (and videos) of every shared TR
        chunks = torch.arange(k * n_tr).split(64)
        target = torch.cat(
            [encoder(encoder_input(gather(x_ref, window, c), ref_stats)).embeddings for c in chunks]
        )
        target_scale = target.pow(2).mean()
        if low is not None:
            target_low = torch.cat([low(gather(x_ref, low_window, c).flatten(1)) for c in chunks])
            low_scale = target_low.var()

    adapter.to(device).train().requires_grad_(True)
    start = [p.detach().clone() for p in adapter.parameters()]
    optimizer = torch.optim.Adam(adapter.parameters(), lr=cfg.finetune_lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    log_every = max(1, cfg.finetune_steps // 10)
    for step in range(cfg.finetune_steps):
        batch = torch.randint(0, k * n_tr, (cfg.finetune_batch_size,), generator=generator)
        with torch.no_grad():  # the normaliser reconstruct will fit on the aligned split
            stats = _fit_statistics(adapter(x_new), mode)
        # The map is the same for every TR, so only the batch's windows go through it.
        cond = encoder(encoder_input(adapter(gather(x_new, window, batch)), stats)).embeddings
        loss = (cond - target[batch]).pow(2).mean() / target_scale
        if low is not None:
            video = low(adapter(gather(x_new, low_window, batch)).flatten(1))
            loss = (
                loss + cfg.lowlevel_weight * (video - target_low[batch]).pow(2).mean() / low_scale
            )
        anchor = sum(
            (p - p0).pow(2).sum() for p, p0 in zip(adapter.parameters(), start, strict=True)
        )
        total = loss + cfg.finetune_anchor * anchor
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise UserError(
                f"The adapter's fine-tuning loss is {losses[-1]} at step {step}; lower "
                f"finetune_lr ({cfg.finetune_lr})."
            )
        if (step + 1) % log_every == 0:
            logger.info("adapter step %d/%d: loss %.4f", step + 1, cfg.finetune_steps, losses[-1])
    adapter.eval().requires_grad_(False).to("cpu")
    span = max(1, min(50, len(losses) // 10))
    return {
        "steps": cfg.finetune_steps,
        "loss_first": float(np.mean(losses[:span])),
        "loss_last": float(np.mean(losses[-span:])),
        "lowlevel": cfg.lowlevel is not None,
    }


def fit_subject_adapter(
    data: PreparedData,
    reference: PreparedData,
    segments: list[int],
    alphas: list[float],
    folds: int,
    neighbours: int,
    name: str,
) -> tuple[SubjectAdapter, Any, np.ndarray, np.ndarray | None]:
    """The ridge adapter from ``data``'s voxels to ``reference``'s, fitted on training
    ``segments`` (repetitions averaged): the local stage on ``neighbours`` surface neighbours
    (0 or no grayordinates: the global stage alone), penalties cross-validated over ``folds``
    folds of whole segments (0: one per segment). Returns the adapter, the
    :class:`~mindvideo.data.alignment.Alignment`, the reference's training TRs ``[N, V_ref]``
    it was fitted to and the local stage's neighbours (``None``: global only)."""
    rows = segment_rows(segments)
    x = mean_repetitions(data.fmri_train[rows])  # [K, T, Vs]
    y = mean_repetitions(reference.fmri_train[rows])  # [K, T, Vr]
    k, n_tr = x.shape[:2]
    groups = np.repeat(np.arange(k), n_tr)
    logger.info(
        "subject adapter of %s: %d training TRs (%d segments × %d TRs), %d voxels → %d",
        name,
        k * n_tr,
        k,
        n_tr,
        x.shape[-1],
        y.shape[-1],
    )
    x2, y2 = x.reshape(k * n_tr, -1), y.reshape(k * n_tr, -1)
    nb = _neighbours(data, reference, neighbours)
    fit = fit_alignment(x2, y2, groups, alphas, folds or k, nb)
    adapter = SubjectAdapter(
        in_voxels=data.n_voxels,
        out_voxels=reference.n_voxels,
        subject=name,
        reference=_name(reference, None),
        segments=segments,
    )
    adapter.set_linear_map(fit.weight, fit.bias)
    return adapter, fit, y2, nb


def adapt(cfg: AdaptConfig, out: str | os.PathLike) -> Path:
    """Fit the new subject's adapter on its first ``cfg.segments`` training segments; write
    ``OUT/adapter/``, ``OUT/adapt.json`` and ``OUT/config.yaml``. Returns the adapter's folder."""
    from mindvideo.config import save_config

    data, reference, segments = check_adapt_config(cfg)
    out = Path(out)
    start = time.perf_counter()
    adapter, fit, y2, neighbours = fit_subject_adapter(
        data, reference, segments, cfg.alphas, cfg.folds, cfg.neighbours, _name(data, cfg.subject)
    )
    k, n_tr = len(segments), data.n_trs
    finetuned = None
    if cfg.finetune_steps:
        finetuned = finetune_adapter(adapter, data, reference, segments, cfg)
    report: dict[str, Any] = {
        "subject": adapter.config.subject,
        "reference": adapter.config.reference,
        "segments": segments,
        "training_trs": int(k * n_tr),
        "voxels": [data.n_voxels, reference.n_voxels],
        "method": fit.method,
        "neighbours": 0 if neighbours is None else int(neighbours.shape[1]),
        "local_alpha_median": fit.local_alpha_median,
        "global_alpha_median": fit.global_alpha_median,
        "held_out_voxel_r": float(np.median(_voxel_r(fit.held_out, y2))),
    }
    if finetuned is not None:
        report["finetune"] = finetuned
    report |= _test_scores(adapter, data, reference, cfg)
    report["decoding"] = decoding = _decoding_scores(adapter, data, reference, segments, cfg)
    for score in ("pixel_50way", "class_50way"):
        if score in decoding["adapted"]:
            adapted, alone = decoding["adapted"][score], decoding["alone"][score]
            logger.info(
                "linear decoding, %s: %.3f through the adapter, %.3f from its %d segments "
                "alone (chance %.3f, shuffled %.3f)",
                score.replace("_50way", " 50-way"),
                adapted["score"],
                alone["score"],
                len(segments),
                adapted["chance"],
                adapted["shuffled"],
            )
    save_model_atomically(adapter, out / ADAPTER_DIR)
    (out / ADAPT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    save_config(cfg, out / "config.yaml")
    pattern = report["test_pattern"]
    logger.info(
        "adapter fitted in %.1f s: test voxel r %.3f; test pattern %d-way %.3f (chance %.3f, "
        "shuffled %.3f%s)",
        time.perf_counter() - start,
        report["test_voxel_r"],
        pattern["n_way"],
        pattern["aligned"],
        pattern["chance"],
        pattern["shuffled"],
        f", the reference's own repeat {pattern['reference_repeat']:.3f}"
        if "reference_repeat" in pattern
        else "",
    )
    return out / ADAPTER_DIR


def plan_adapt(cfg: AdaptConfig, out: str | os.PathLike | None = None) -> RunPlan:
    """A dry run of :func:`adapt`: the checks, the shapes, the adapter's parameters and the
    ridge fit's host memory."""
    data, reference, segments = check_adapt_config(cfg)
    n = len(segments) * data.n_trs
    vs, vr = data.n_voxels, reference.n_voxels
    r = min(n, vs)
    folds = cfg.folds or len(segments)
    phase = PhasePlan(
        "subject adapter (ridge, closed form, host memory)",
        data={
            "training TRs": f"{n:,} = {len(segments)} segments × {data.n_trs} TRs",
            "voxels": f"{vs:,} (new subject) → {vr:,} (reference)",
        },
        models=[ModelPart("subject adapter", vs * vr + vr, 0)],
        memory=MemoryEstimate(
            weights=4 * (vs * vr + vr),
            activations=4 * (n * vs + 2 * n * vr + folds * (r * r + r * vr)),
            activations_how="design, targets and the folds' eigendecompositions",
        ),
        settings={"penalties": f"{len(cfg.alphas)} per voxel, {folds} folds of whole segments"},
    )
    phases = [phase]
    if cfg.finetune_steps:
        phases.append(_plan_finetune(cfg, n, vs, vr))
    checked = {
        "data": f"{cfg.data}: the new subject, training segments {segments[0] + 1}..."
        f"{segments[-1] + 1}",
        "reference": f"{cfg.reference}: the same stimuli, {vr:,} voxels",
        "out": out_status(out),
    }
    if cfg.pipeline is not None:
        checked["pipeline"] = f"{cfg.pipeline}: its fMRI encoder reads the reference's voxels"
    return RunPlan("adapt", checked, phases)


def _plan_finetune(cfg: AdaptConfig, n: int, vs: int, vr: int) -> PhasePlan:
    """The fine-tuning phase: the adapter trained through the frozen encoder (and low-level
    decoder); activations traced on the meta device for one batch."""
    from mindvideo.encoder.lowlevel import LowLevelDecoder
    from mindvideo.pipeline.lowlevel_video import decoder_folder

    encoder, _, _ = _pipeline_settings(cfg.pipeline)  # type: ignore[arg-type]  # checked
    encoder.requires_grad_(False)
    with empty_weights():
        adapter = SubjectAdapter(vs, vr)
    parts = [ModelPart.of("subject adapter", adapter), ModelPart.of("fmri_encoder", encoder)]
    c = encoder.config
    batch = cfg.finetune_batch_size

    decoder = None
    if cfg.lowlevel is not None:
        decoder = empty_model(LowLevelDecoder, decoder_folder(cfg.lowlevel)).requires_grad_(False)
        parts.append(ModelPart.of("lowlevel", decoder))

    def step() -> Any:  # the batch's windows through the adapter (the statistics: no grad)
        aligned = adapter(meta_like((batch, c.window, vs)))
        out = [encoder(torch.nn.functional.pad(aligned, (0, c.num_voxels - vr))).embeddings]
        if decoder is not None:
            windows = adapter(meta_like((batch, decoder.config.window, vs)))
            out.append(decoder(windows.flatten(1)))
        return out

    return PhasePlan(
        "fine-tune the adapter through the frozen encoder",
        data={"training TRs": f"{n:,}, each with the reference's condition of the same TR"},
        models=parts,
        memory=training_memory(parts, trace_activations(step), "traced step of one batch"),
        steps=cfg.finetune_steps,
        batching=Batching(batch),
        samples=n,
        settings={
            "loss": "relative squared error of the conditions"
            + (f" + {cfg.lowlevel_weight:g} × that of the low-level videos" if cfg.lowlevel else "")
            + f" + {cfg.finetune_anchor:g} × ‖W − W_ridge‖²",
            "learning rate": f"{cfg.finetune_lr:g} (Adam)",
        },
    )
