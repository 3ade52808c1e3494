"""Where the information goes: every link of the chain against its chance and its ceiling.

A decoding claim counts only against a ceiling. This module gathers, from a run directory, one
row per link of the chain fMRI → encoder → generator → clip → judge, each beside its analytic
chance, its empirical (shuffled) chance where one exists, and the target the demo aims at
(docs/scientific-check.md):

- ``fMRI (ridge)``: what a linear decoder reads from the same windows (``RUN/baseline``);
- ``CLIP stand-in``: frame → class caption retrieval of the stand-in (``RUN/standins/clip``);
- ``judges``: each evaluation classifier's accuracy on the ground truth against the true labels;
- ``encoder``: fMRI → caption / image retrieval after contrastive learning (``RUN/contrast``);
- ``generator (oracle)``: clips generated from the true captions through the same UNet and
  sampler (``RUN/oracle/evaluate``), scored like the reconstructions;
- ``reconstructions``: the pipeline's clips (``RUN/evaluate``); their layout and colour
  (pixel identification, SSIM) against the low-level path's targets (docs/lowlevel.md).

Rows whose source is missing are left out; :func:`information_rows` never fails on a partial
run. :func:`write_information` writes ``RUN/information.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from mindvideo.report.run_dir import read_stage_json
from mindvideo.utils import atomic_write_text

__all__ = [
    "ORACLE_DIR",
    "InformationRow",
    "format_information",
    "information_figure",
    "information_rows",
    "write_information",
]

ORACLE_DIR = "oracle"
"""``RUN/oracle/{reconstruct,evaluate}``: the generator's ceiling (``condition=caption``)."""
RIDGE = "fMRI (linear ridge)"
ABOVE = "above chance"
"""The target of a score that only has to beat its chance (the authors' compat 2-way scores)."""


@dataclasses.dataclass
class InformationRow:
    """One link's score: ``value ± sem`` against ``chance`` and ``shuffled`` chance."""

    link: str
    measure: str
    value: float
    sem: float | None = None
    chance: float | None = None
    shuffled: float | None = None
    target: float | str | None = None
    """A score to reach, :data:`ABOVE`, or None (a ceiling, not a target)."""

    @property
    def met(self) -> bool | None:
        """Whether the target holds (None without one). ``above chance`` needs the score to
        beat both its analytic and its shuffled chance."""
        if self.target is None:
            return None
        if self.target == ABOVE:
            floors = [c for c in (self.chance, self.shuffled) if c is not None]
            return all(self.value > c for c in floors)
        return self.value >= float(self.target)

    @property
    def target_text(self) -> str:
        """``≥ 0.90``, ``above chance``, ``the ceiling`` (the ridge rows) or ``—``."""
        if self.target is None:
            return "the ceiling" if self.link == RIDGE else "—"
        return self.target if isinstance(self.target, str) else f"≥ {self.target:.2f}"

    def cells(self) -> list[str]:
        """The table's text cells: link, measure, score ± SE, chance, shuffled chance, target."""
        score = _fmt(self.value) + ("" if self.sem is None else f" ± {self.sem:.3f}")
        chances = [_fmt(self.chance), _fmt(self.shuffled)]
        return [self.link, self.measure, score, *chances, self.target_text]

    @property
    def above_shuffled(self) -> bool | None:
        return None if self.shuffled is None else self.value > self.shuffled

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "met": self.met, "above_shuffled": self.above_shuffled}


def _baseline_rows(run: Path) -> list[InformationRow]:
    result = read_stage_json(run / "baseline" / "baseline.json") or {}
    wanted = {
        "scene class 50-way": "scene class, 50-way",
        "class × motion 50-way": "class × motion, 50-way",
        "motion top-1": "motion, top-1",
        "frames 16x16 50-way": "16×16 frames, pixel 50-way",
        "CLIP image 50-way": "CLIP image embedding, 50-way",
        "CLIP caption 50-way": "CLIP caption embedding, 50-way",
    }
    rows = []
    for s in result.get("scores", []):
        if s.get("name") in wanted:
            rows.append(
                InformationRow(
                    RIDGE,
                    wanted[s["name"]],
                    float(s["value"]),
                    s.get("sem"),
                    s.get("chance"),
                    s.get("shuffled"),
                )
            )
    return rows


def _clip_rows(run: Path) -> list[InformationRow]:
    metrics = (read_stage_json(run / "standins" / "clip" / "standin.json") or {}).get(
        "metrics"
    ) or {}
    if "retrieval_class_top1" not in metrics:
        return []
    return [
        InformationRow(
            "CLIP stand-in",
            f"frame → class caption, top-1 of {metrics.get('retrieval_class_n')}",
            float(metrics["retrieval_class_top1"]),
            chance=metrics.get("retrieval_class_chance"),
            target=0.90,
        )
    ]


def _encoder_rows(run: Path) -> list[InformationRow]:
    report = read_stage_json(run / "contrast" / "retrieval.json") or {}
    after, chance = report.get("after") or {}, report.get("chance") or {}
    n = report.get("candidates") or {}
    rows = []
    measures = {
        "caption": f"fMRI → caption, top-1 of {n.get('caption')}",
        "image": f"fMRI → image, top-1 of {n.get('image')}",
        "condition": f"fMRI → caption by its [77, d] tokens, top-1 of {n.get('caption')}",
    }
    for kind, measure in measures.items():
        key = f"{kind}_top1"
        if key in after:
            rows.append(
                InformationRow(
                    "encoder (contrast)",
                    measure,
                    float(after[key]),
                    chance=chance.get(key),
                )
            )
    return rows


def _metric(metrics: dict[str, Any], key: str, link: str, measure: str, target: Any = None):
    m = metrics.get(key)
    if not isinstance(m, dict) or m.get("mean") is None:
        return None
    return InformationRow(
        link,
        measure,
        float(m["mean"]),
        m.get("se"),
        m.get("chance"),
        m.get("chance_shuffled"),
        target,
    )


JUDGE, ORACLE, RECON = "judge", "generator (oracle caption)", "reconstructions"
GT_TRUE = "top-1 on the ground truth vs the true"
#: (which evaluation, metric key, link, measure, target); ``oracle``: RUN/oracle/evaluate.
EVALUATION_ROWS = (
    ("run", "frame_judge_accuracy", f"frame {JUDGE}", f"{GT_TRUE} class", 0.90),
    ("run", "video_judge_accuracy", f"video {JUDGE}", f"{GT_TRUE} class × motion", 0.60),
    ("oracle", "frame_2way_top1_true", ORACLE, "frame 2-way vs the true class", 0.90),
    ("oracle", "frame_50way_top1_true", ORACLE, "frame 50-way vs the true class", None),
    ("oracle", "pixel_50way", ORACLE, "pixel identification 50-way", None),
    ("run", "frame_50way_top1_true", RECON, "frame 50-way vs the true class", 0.40),
    ("run", "frame_2way_top1_true", RECON, "frame 2-way vs the true class", 0.85),
    ("run", "video_50way_top1_strict", RECON, "video 50-way vs the judge's top-1", 0.40),
    ("run", "pixel_50way", RECON, "pixel identification 50-way", 0.60),
    ("run", "ssim", RECON, "SSIM", 0.40),
    ("run", "video_2way_top1_compat", RECON, "video 2-way, the authors' compat rule", ABOVE),
    ("run", "frame_2way_top1_compat", RECON, "frame 2-way, the authors' compat rule", ABOVE),
)


def _evaluation_rows(run: Path) -> list[InformationRow]:
    metrics = {
        "run": read_stage_json(run / "evaluate" / "metrics.json") or {},
        "oracle": read_stage_json(run / ORACLE_DIR / "evaluate" / "metrics.json") or {},
    }
    rows = [_metric(metrics[which], *rest) for which, *rest in EVALUATION_ROWS]
    return [r for r in rows if r is not None]


def information_rows(run_dir: str | os.PathLike) -> list[InformationRow]:
    """Every link's score that the run directory holds, in chain order."""
    run = Path(run_dir)
    evaluation = _evaluation_rows(run)
    judges = [r for r in evaluation if r.link.endswith(JUDGE)]
    clips = [r for r in evaluation if not r.link.endswith(JUDGE)]
    return _baseline_rows(run) + _clip_rows(run) + judges + _encoder_rows(run) + clips


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def format_information(rows: list[InformationRow]) -> str:
    """The Markdown table: link, measure, score ± SE, chance, shuffled chance, target, met."""
    lines = [
        "## Where the information goes",
        "",
        "| link | measure | score ± SE | chance | shuffled chance | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        lines.append("| " + " | ".join([*r.cells(), met]) + " |")
    return "\n".join(lines) + "\n"


def information_figure(rows: list[InformationRow], path: str | os.PathLike) -> Path:
    """A PNG of the table: one bar per row (its score), with its chance (grey tick), shuffled
    chance (black tick) and target (red diamond) on the same 0–1 axis."""
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(8, 0.32 * n + 1.0), dpi=100)
    ax = fig.subplots()
    y = list(range(n))[::-1]
    colours = {True: "#3a7d44", False: "#b23a48", None: "#5b7db1"}
    ax.barh(y, [r.value for r in rows], color=[colours[r.met] for r in rows], height=0.6)
    for yi, r in zip(y, rows, strict=True):
        for value, style in ((r.chance, "|"), (r.shuffled, "|")):
            if value is not None:
                colour = "#888888" if value is r.chance else "black"
                ax.plot([value], [yi], marker=style, color=colour, markersize=12, mew=2)
        if isinstance(r.target, float):
            ax.plot([r.target], [yi], marker="D", color="#b23a48", markersize=5)
    ax.set_yticks(y, [f"{r.link}: {r.measure}" for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (bar), chance (grey), shuffled chance (black), target (diamond)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, metadata={"Software": None})
    return path


def write_information(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``RUN/information.{json,md,png}``; returns their paths (no PNG without rows)."""
    run = Path(run_dir)
    rows = information_rows(run)
    paths = {"json": run / "information.json", "markdown": run / "information.md"}
    atomic_write_text(paths["json"], json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    atomic_write_text(paths["markdown"], format_information(rows))
    if rows:
        paths["figure"] = information_figure(rows, run / "information.png")
    return paths
