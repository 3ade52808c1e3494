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
- the stimuli are checked to be the same: the prepared frames of those segments must match.

Then ``mindvideo reconstruct adapter=OUT --data NEW`` reads the new subject through it with the
reference subject's pipeline (and low-level decoder), and ``mindvideo evaluate`` scores it.

Scores (``OUT/adapt.json``), every one beside its chance and ceiling:

- ``held_out_voxel_r``: median over reference voxels of the correlation between the aligned
  fMRI and the reference's, each training segment predicted by the map fitted without it;
- ``test_voxel_r``: the same on the test split (averaged repetitions), never fitted;
- ``test_pattern_50way``: each aligned test TR identifies the reference subject's response to
  the same TR among 49 other test TRs (Pearson r of voxel patterns; chance 0.02), beside a
  shuffled pairing (empirical chance) and, as the ceiling, the reference subject's own first
  half of test repetitions identifying its second half (when it has two or more).

Only training segments are fitted; the test split is only scored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config.stages import AdaptConfig
from mindvideo.data.alignment import fit_alignment, surface_neighbours
from mindvideo.data.pairing import padded_size
from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import mean_repetitions
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.aligned import ADAPTER_DIR, segment_rows
from mindvideo.utils import UserError
from mindvideo.utils.dry_run import MemoryEstimate, ModelPart, PhasePlan, RunPlan, out_status
from mindvideo.utils.io import read_json

__all__ = ["ADAPTER_DIR", "ADAPT_JSON", "adapt", "check_adapt_config", "pattern_identification"]

logger = logging.getLogger(__name__)

ADAPT_JSON = "adapt.json"


def _name(prepared: PreparedData, given: str | None) -> str:
    if given:
        return given
    if prepared.subject is not None:
        return f"subject{prepared.subject}"
    return Path(prepared.root).name if prepared.root is not None else "subject"


def _pipeline_input(path: str) -> tuple[int, int, str]:
    """(num_voxels, patch_size, pad mode) of a pipeline folder's fMRI encoder (or an encoder
    folder itself)."""
    root = Path(path)
    for folder in (root / "fmri_encoder", root):
        config = folder / "config.json"
        if config.is_file():
            fix = "re-run the stage that wrote it"
            enc = read_json(config, fix)
            if "num_voxels" in enc and "patch_size" in enc:
                index = root / "model_index.json"
                pad = (
                    read_json(index, fix).get("fmri_pad_mode", "zero")
                    if index.is_file()
                    else "zero"
                )
                return int(enc["num_voxels"]), int(enc["patch_size"]), str(pad)
    raise UserError(
        f"{path} holds no fMRI encoder (fmri_encoder/config.json or config.json with num_voxels); "
        "pass a pipeline folder (mindvideo cotrain) or leave pipeline unset."
    )


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
    if cfg.trials < 1:
        raise UserError(f"trials must be at least 1, not {cfg.trials}.")
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
        num_voxels, patch, pad = _pipeline_input(cfg.pipeline)
        if padded_size(reference.n_voxels, patch, pad) != num_voxels:  # type: ignore[arg-type]
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


def adapt(cfg: AdaptConfig, out: str | os.PathLike) -> Path:
    """Fit the new subject's adapter on its first ``cfg.segments`` training segments; write
    ``OUT/adapter/``, ``OUT/adapt.json`` and ``OUT/config.yaml``. Returns the adapter's folder."""
    from mindvideo.config import save_config

    data, reference, segments = check_adapt_config(cfg)
    out = Path(out)
    start = time.perf_counter()
    rows = segment_rows(segments)
    x = mean_repetitions(data.fmri_train[rows])  # [K, T, Vs]
    y = mean_repetitions(reference.fmri_train[rows])  # [K, T, Vr]
    k, n_tr = x.shape[:2]
    groups = np.repeat(np.arange(k), n_tr)
    logger.info(
        "subject adapter: %d training TRs (%d segments × %d TRs), %d voxels → %d",
        k * n_tr,
        k,
        n_tr,
        x.shape[-1],
        y.shape[-1],
    )
    x2, y2 = x.reshape(k * n_tr, -1), y.reshape(k * n_tr, -1)
    neighbours = _neighbours(data, reference, cfg.neighbours)
    fit = fit_alignment(x2, y2, groups, cfg.alphas, cfg.folds or k, neighbours)
    adapter = SubjectAdapter(
        in_voxels=data.n_voxels,
        out_voxels=reference.n_voxels,
        subject=_name(data, cfg.subject),
        reference=_name(reference, None),
        segments=segments,
    )
    adapter.set_linear_map(fit.weight, fit.bias)
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
    report |= _test_scores(adapter, data, reference, cfg)
    adapter.save_pretrained(out / ADAPTER_DIR)
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
    checked = {
        "data": f"{cfg.data}: the new subject, training segments {segments[0] + 1}..."
        f"{segments[-1] + 1}",
        "reference": f"{cfg.reference}: the same stimuli, {vr:,} voxels",
        "out": out_status(out),
    }
    if cfg.pipeline is not None:
        checked["pipeline"] = f"{cfg.pipeline}: its fMRI encoder reads the reference's voxels"
    return RunPlan("adapt", checked, [phase])
