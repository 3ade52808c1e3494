"""The linear ceiling: what ridge regression reads from the same fMRI windows (``baseline``).

A decoding claim counts only against a ceiling. Before a reconstruction is judged, this module
answers the first question a researcher asks of a dataset: how much of the stimulus does a plain
linear model recover from the fMRI windows the pipeline sees? For every test TR ``t`` the window
is TRs ``t .. t + w − 1`` (clamped at the segment end, as
:func:`mindvideo.data.pairing.window_indices` does) flattened to ``[w · V]``; ridge maps it to

- **low-resolution frames**: the mean of the TR's frames, downsampled (16 × 16 RGB by default),
  scored by classifier-free *pixel identification* (N-way: the correlation of the decoded frame
  with its own ground truth against N − 1 other windows' ground truths);
- **labels**, where the dataset has them (the simulator's scene class and motion): one-hot
  targets, scored by strict N-way identification against the true label (the true class's
  score against N − 1 distractor classes; chance 1/N) and top-1 accuracy;
- any other **embedding** given per frame (e.g. CLIP image or caption embeddings), scored by
  retrieval among the test windows.

The ridge model (:class:`~mindvideo.data.ridge.RidgeDecoder`) chooses its penalty by
cross-validation over *whole training segments*: for labels per target, by held-out squared
error; for the patterns scored by identification (frames, embeddings) one penalty per target
set, the one whose held-out predictions identify their own windows best
(``selection="identification"``; ``"mse"`` chooses per target by squared error for them too,
which shrinks the patterns toward their mean and lowers the ceiling: 16 × 16 frames 50-way 0.74
instead of 0.79 on the demo, seed 0). Nothing fitted sees the test split: means, alphas and
weights come from the training segments alone.

Every score comes with its analytic chance and an *empirical* chance: the same score with the
pairing between decoded outputs and ground truths shuffled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.data.ridge import (
    DEFAULT_ALPHAS,
    RidgeDecoder,
    check_selection,
    mean_repetitions,
    window_features,
)
from mindvideo.data.video import area_frames
from mindvideo.evaluation.identification import (
    above_shuffled,
    label_identification,
    pattern_identification,
    shuffled_chance,
)
from mindvideo.utils import UserError

__all__ = [
    "BASELINE_JSON",
    "BASELINE_MD",
    "DEFAULT_ALPHAS",
    "RidgeDecoder",
    "Score",
    "baseline",
    "format_baseline",
    "label_identification",
    "mean_frames",
    "pattern_identification",
    "run_baseline",
    "shuffled_chance",
    "window_features",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Inputs and targets
# --------------------------------------------------------------------------------------------


def mean_frames(frames: np.ndarray, size: int = 16) -> np.ndarray:
    """uint8 frames ``[..., F, H, W, 3]`` → the mean of the F frames, area-averaged to
    ``size × size``: float32 ``[..., size · size · 3]`` in 0..1 (pixel identification's target)."""
    frames = np.asarray(frames)
    *lead, _f, _h, _w, c = frames.shape
    small = area_frames(frames, size).mean(axis=-4)  # [..., size, size, 3]
    return small.reshape(*lead, size * size * c)


# --------------------------------------------------------------------------------------------
# Scores, with analytic and empirical chance
# --------------------------------------------------------------------------------------------


@dataclass
class Score:
    """A mean success rate over samples with its standard error, analytic chance and the
    empirical chance (mean and sd over shuffled pairings)."""

    name: str
    value: float
    sem: float
    chance: float
    shuffled: float | None = None
    shuffled_sd: float | None = None
    n: int = 0

    @property
    def above_shuffled(self) -> bool | None:
        """Whether the score beats the shuffled chance by more than two of its sds (and its own
        standard error); None without a shuffled chance."""
        if self.shuffled is None:
            return None
        return above_shuffled(self.value, self.sem, self.shuffled, self.shuffled_sd or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "above_shuffled": self.above_shuffled}


def summarise(name: str, rate: np.ndarray, chance: float, shuffled: tuple[float, float] | None):
    """A :class:`Score` from per-sample success rates."""
    rate = np.asarray(rate, dtype=np.float64)
    sem = float(rate.std(ddof=1) / np.sqrt(len(rate))) if len(rate) > 1 else 0.0
    return Score(
        name=name,
        value=float(rate.mean()),
        sem=sem,
        chance=float(chance),
        shuffled=None if shuffled is None else shuffled[0],
        shuffled_sd=None if shuffled is None else shuffled[1],
        n=len(rate),
    )


# --------------------------------------------------------------------------------------------
# The whole baseline on a prepared subject
# --------------------------------------------------------------------------------------------


def _middle(labels: np.ndarray) -> np.ndarray:
    """Per-frame labels ``[S, T, F]`` → the label of each TR's middle frame ``[S, T]``."""
    labels = np.asarray(labels)
    return labels[..., labels.shape[-1] // 2] if labels.ndim == 3 else labels


@dataclass
class _Target:
    """One decoding target: training rows, test rows and, for labels, the number of classes."""

    train: np.ndarray
    test: np.ndarray
    n_classes: int | None = None


def run_baseline(
    prepared: Any,
    labels: dict[str, dict[str, np.ndarray]] | None = None,
    embeddings: dict[str, dict[str, np.ndarray]] | None = None,
    window: int = 4,
    frame_size: int = 16,
    n_ways: Sequence[int] = (2, 50),
    trials: int = 100,
    shuffles: int = 20,
    tr_stride: int = 1,
    folds: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    selection: str = "identification",
) -> dict[str, Any]:
    """Ridge from the fMRI windows of a prepared subject to its frames, labels and embeddings.

    Args:
        prepared: a :class:`~mindvideo.data.prepared.PreparedData`.
        labels: ``{name: {"train": [S, T(, F)], "test": [...]}}`` integer labels per TR (or per
            frame: the middle frame's label is used), e.g. the simulator's scene class.
        embeddings: ``{name: {"train": [S, T, D], "test": [S, T, D]}}`` per-TR targets scored
            by retrieval (e.g. CLIP embeddings of each TR's middle frame).
        window: fMRI frames per window (TRs ``t .. t + window − 1``).
        frame_size: side of the low-resolution frames (must divide the frame size).
        n_ways: the N of the N-way tests (an N larger than the candidates is skipped).
        trials: draws of distractors per sample; shuffles: permutations for the empirical chance.
        tr_stride: score every ``tr_stride``-th test TR (the windows the pipeline reconstructs).
        selection: how the penalty of a pattern target set (frames, embeddings) is chosen:
            ``identification`` (one per set, by held-out identification) or ``mse`` (per
            target, by held-out squared error, as for the labels).

    Returns a JSON-able dict: ``scores`` (a list of :meth:`Score.to_dict`), ``alphas`` (median
    chosen alpha per target set), and the settings.
    """
    check_selection(selection)
    train_x = window_features(prepared.fmri("train"), window)  # [S, T, w·V]
    test_x = window_features(mean_repetitions(prepared.fmri("test")), window)
    n_seg, n_tr = train_x.shape[:2]
    groups = np.repeat(np.arange(n_seg), n_tr)
    keep = np.zeros(test_x.shape[:2], dtype=bool)
    keep[:, ::tr_stride] = True
    X_train = train_x.reshape(n_seg * n_tr, -1)
    X_test = test_x[keep]
    targets: dict[str, _Target] = {}
    frames_train = np.stack([mean_frames(seg, frame_size) for seg in prepared.frames("train")])
    frames_test = np.stack([mean_frames(seg, frame_size) for seg in prepared.frames("test")])
    targets[f"frames {frame_size}x{frame_size}"] = _Target(
        frames_train.reshape(n_seg * n_tr, -1), frames_test[keep]
    )
    for name, split in (labels or {}).items():
        tr_lab, te_lab = _middle(split["train"]), _middle(split["test"])
        n_cls = int(max(tr_lab.max(), te_lab.max())) + 1
        targets[name] = _Target(tr_lab.reshape(-1), te_lab[keep], n_cls)
    for name, split in (embeddings or {}).items():
        tr_e = np.asarray(split["train"], dtype=np.float32)
        te_e = np.asarray(split["test"], dtype=np.float32)
        targets[name] = _Target(tr_e.reshape(n_seg * n_tr, -1), te_e[keep])
    # One decoder for every target set: the folds' decompositions are shared. Labels take their
    # penalty per target by squared error; with selection="identification" each pattern set
    # (frames, embeddings) takes one penalty, by held-out identification.
    columns = [
        t.train if t.n_classes is None else np.eye(t.n_classes, dtype=np.float32)[t.train]
        for t in targets.values()
    ]
    edges = np.cumsum([0, *(c.shape[1] for c in columns)])
    logger.info(
        "ridge: %d windows → %d targets (%s) ...", len(X_train), edges[-1], ", ".join(targets)
    )
    identify = [
        (int(lo), int(hi))
        for t, lo, hi in zip(targets.values(), edges[:-1], edges[1:], strict=True)
        if t.n_classes is None and selection == "identification"
    ]
    decoder = RidgeDecoder(alphas=alphas, folds=folds).fit(
        X_train, np.hstack(columns), groups, identify=identify
    )
    decoded = decoder.predict(X_test)
    scores: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    n_test = int(keep.sum())
    for (name, target), lo, hi in zip(targets.items(), edges[:-1], edges[1:], strict=True):
        n_cls, y_test = target.n_classes, target.test
        kind = "pattern" if n_cls is None else "label"
        chosen[name] = float(np.median(decoder.alphas_[lo:hi]))
        pred = decoded[:, lo:hi]
        if kind == "label":
            top1 = (pred.argmax(axis=1) == y_test).astype(np.float64)
            shuffled = shuffled_chance(
                lambda p, pred=pred, y=y_test: float((pred.argmax(1) == y[p]).mean()),
                n_test,
                shuffles,
                seed,
            )
            scores.append(summarise(f"{name} top-1", top1, 1.0 / n_cls, shuffled).to_dict())
        for n_way in n_ways:
            pool = n_cls if kind == "label" else n_test
            if n_way > pool:
                continue

            def score(perm: np.ndarray | None, n_way=n_way, kind=kind, pred=pred, y=y_test):
                truth = y if perm is None else y[perm]
                fn = label_identification if kind == "label" else pattern_identification
                return fn(pred, truth, n_way, trials, seed)

            rate, chance = score(None)
            shuffled = shuffled_chance(
                lambda p, s=score: float(s(p)[0].mean()), n_test, shuffles, seed
            )
            scores.append(summarise(f"{name} {n_way}-way", rate, chance, shuffled).to_dict())
    return {
        "window": window,
        "frame_size": frame_size,
        "tr_stride": tr_stride,
        "n_train_windows": len(X_train),
        "n_test_windows": n_test,
        "n_voxels": int(prepared.fmri("train").shape[-1]),
        "alphas": chosen,
        "selection": selection,
        "scores": scores,
    }


def format_baseline(result: dict[str, Any]) -> str:
    """The baseline's scores as a Markdown table, chance and shuffled chance beside each score;
    a score not above its shuffled chance is marked."""
    lines = [
        f"Ridge baseline: fMRI window of {result['window']} TRs ({result['n_voxels']} voxels), "
        f"{result['n_train_windows']} training windows, {result['n_test_windows']} test windows.",
        "",
        "| decoded | score | ± s.e. | chance | shuffled chance (± sd) | above shuffled |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["scores"]:
        shuffled = "—" if s["shuffled"] is None else f"{s['shuffled']:.3f} ± {s['shuffled_sd']:.3f}"
        above = {True: "yes", False: "**no**", None: "—"}[s["above_shuffled"]]
        lines.append(
            f"| {s['name']} | {s['value']:.3f} | {s['sem']:.3f} | {s['chance']:.3f} | "
            f"{shuffled} | {above} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The command: mindvideo baseline --data PREPARED --out DIR
# --------------------------------------------------------------------------------------------

BASELINE_JSON = "baseline.json"
BASELINE_MD = "baseline.md"


def _scene_labels(prepared: Any, scenes_json: str | None) -> dict[str, dict[str, np.ndarray]]:
    """The true scene class, motion and class × motion of every prepared frame, when the data
    are simulated (or ``scenes_json`` is given); ``{}`` for real data."""
    from mindvideo.data.labels import find_scenes_json, load_scene_labels

    if scenes_json is None:
        try:
            find_scenes_json(prepared)
        except UserError:
            logger.info("No scenes.json for %s: decoding frames only (real data).", prepared.root)
            return {}
    labels = load_scene_labels(prepared, scenes_json)
    return {
        "scene class": {s: labels.class_id[s] for s in ("train", "test")},
        "motion": {s: labels.motion_id[s] for s in ("train", "test")},
        "class × motion": {s: labels.video_label(s) for s in ("train", "test")},
    }


def _clip_embeddings(prepared: Any, clip: str) -> dict[str, dict[str, np.ndarray]]:
    """CLIP image embeddings of each TR's middle frame and CLIP text embeddings of its caption,
    ``[S, T, D]`` per split (captions only where the prepared subject has them)."""
    import torch
    from transformers import AutoTokenizer

    from mindvideo.evaluation.clip_similarity import CLIPImageEmbedder

    embedder = CLIPImageEmbedder.from_pretrained(clip)
    tokenizer = AutoTokenizer.from_pretrained(clip)
    out: dict[str, dict[str, np.ndarray]] = {"CLIP image": {}, "CLIP caption": {}}
    for split in ("train", "test"):
        frames = prepared.frames(split)
        s, t, f = frames.shape[:3]
        middle = np.asarray(frames[:, :, f // 2]).reshape(s * t, *frames.shape[3:])
        out["CLIP image"][split] = embedder.embed(middle).reshape(s, t, -1)
        captions = prepared.captions(split)
        if captions is None:
            out.pop("CLIP caption", None)
            continue
        texts = [tr[f // 2] for seg in captions for tr in seg]
        unique = sorted(set(texts))
        with torch.inference_mode():
            tokens = tokenizer(unique, padding=True, truncation=True, return_tensors="pt")
            feats = embedder.model.get_text_features(**tokens.to(embedder.device))
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            feats = torch.nn.functional.normalize(feats.double(), dim=-1).cpu().numpy()
        row = {text: i for i, text in enumerate(unique)}
        if "CLIP caption" in out:
            out["CLIP caption"][split] = feats[[row[x] for x in texts]].reshape(s, t, -1)
    return out


def baseline(cfg: Any, out: str | Path) -> dict[str, Any]:
    """``mindvideo baseline``: the linear ceiling of a prepared subject, written to ``out``.

    Writes ``baseline.json`` (every score with its standard error, analytic and shuffled
    chance; the chosen alphas), ``baseline.md`` (the same as a table) and ``config.yaml``.
    Returns the result dict.
    """
    from mindvideo.config import save_config
    from mindvideo.data.prepared import PreparedData
    from mindvideo.utils import atomic_write_text

    if not cfg.data:
        raise UserError("mindvideo baseline needs a prepared subject: --data PREPARED.")
    if cfg.window < 1 or cfg.tr_stride < 1 or cfg.frame_size < 1:
        raise UserError("window, tr_stride and frame_size must be at least 1.")
    check_selection(cfg.selection)  # before the CLIP embeddings are computed
    prepared = PreparedData.open(cfg.data)
    labels = _scene_labels(prepared, cfg.scenes_json)
    clip = cfg.pretrained.clip
    embeddings = _clip_embeddings(prepared, clip) if clip else None
    result = run_baseline(
        prepared,
        labels=labels,
        embeddings=embeddings,
        window=cfg.window,
        frame_size=cfg.frame_size,
        n_ways=cfg.n_ways,
        trials=cfg.trials,
        shuffles=cfg.shuffles,
        tr_stride=cfg.tr_stride,
        folds=cfg.folds,
        alphas=cfg.alphas,
        seed=cfg.seed,
        selection=cfg.selection,
    )
    result["data"] = str(prepared.root)
    result["labels"] = "the simulator's scenes.json" if labels else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / BASELINE_JSON, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / BASELINE_MD, format_baseline(result))
    return result
