"""``mindvideo compare``: runs side by side with tests against a reference (paper Table 1).

Table 1 lists ablations of MinD-Video next to the full model and colours each score by the
significance of a two-sample t-test against it. :func:`compare_runs` does the same for evaluate
outputs: every metric of every run with its standard error and 95% bootstrap interval, and for
each run other than the reference a t-test of its per-window values against the reference's:

- **paired** (``scipy.stats.ttest_rel``) when both runs scored the same windows — identical
  window lists and identical ground-truth pixels (``ground_truth_sha256``), e.g. ablations of
  one subject — which removes the between-window variance;
- **Welch's** two-sample test otherwise (different subjects or test sets).

Beside each t-test, two distribution-free tests of the same per-window values: Wilcoxon's
(signed-rank when paired, as Mind-Animator compares methods; rank-sum otherwise) and a
permutation test of the mean difference (sign flips when paired; resampled splits otherwise).
Each test carries Table 1's significance band (``p<0.0001``, ``p<0.01``, ``p<0.05``,
``p>0.05``). Output: ``comparison.json`` and ``comparison.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mindvideo.evaluation.metrics import metric_rng
from mindvideo.evaluation.published import published_beside
from mindvideo.evaluation.runner import EvaluationResult, load_evaluation
from mindvideo.evaluation.stats import (
    bootstrap_wilcoxon,
    paired_ttest,
    permutation_test,
    welch_ttest,
    wilcoxon_test,
)
from mindvideo.utils import UserError, atomic_write_text

__all__ = ["COMPARISON_FILE", "Comparison", "compare_runs", "write_comparison"]

logger = logging.getLogger(__name__)

COMPARISON_FILE = "comparison.json"
COMPARISON_MD = "comparison.md"


@dataclass
class Comparison:
    """Runs side by side. ``runs``: ``[{"name", "path", "n_windows", "standin_classifiers",
    "paired_with_reference"}]``; ``metrics``: ``{key: {"chance", "scores": {run: score dict},
    "tests": {run: t-test dict or None}, "wilcoxon": {run: ...}, "permutation": {run: ...},
    "bootstrap_wilcoxon": {run: ...}}}`` (the reference has no tests)."""

    reference: str
    runs: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    published: dict[str, dict[str, list[dict[str, Any]]]] | None = None
    """With ``published=True``: per run, ``{metric: [published figure]}`` for the metrics the
    run computed under the figure's definition (:mod:`mindvideo.evaluation.published`)."""

    def to_dict(self) -> dict[str, Any]:
        doc = {"reference": self.reference, "runs": self.runs, "metrics": self.metrics}
        if self.published is not None:
            doc["published"] = self.published
        return doc

    def published_markdown(self) -> str:
        """The runs beside the published cc2017 figures computed the same way."""
        if self.published is None:
            return ""
        lines = ["", "## Beside published results (cc2017), same definitions only", ""]
        rows = []
        for run in self.runs:
            name = run["name"]
            for key, figures in (self.published.get(name) or {}).items():
                score = (self.metrics.get(key) or {}).get("scores", {}).get(name) or {}
                for fig in figures:
                    rows.append(
                        f"| {name} | {key} | {_fmt(score.get('mean'), 3)} | {fig['method']} "
                        f"(subject {fig['subject']}) | {_fmt(fig['value'], 3)} | "
                        f"{fig['definition']} | {fig['source']} |"
                    )
        if not rows:
            lines.append(
                "No metric of these runs was computed under a published definition (stand-in "
                "judges, another CLIP or flow resolution, ...); see docs/results.md."
            )
            return "\n".join(lines) + "\n"
        lines += [
            "| run | metric | run's score | published | value | definition | source |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "The same definition, not the same data: a run on other data (the simulator) is "
            "beside these figures for scale only.",
        ]
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        """Scores (mean ± SE [95% CI]) per run and metric, each non-reference score followed by
        its difference from the reference and the significance band; chance in its own column."""
        names = [r["name"] for r in self.runs]
        header = [
            "metric",
            "chance",
            *[f"{n} (reference)" if n == self.reference else n for n in names],
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, entry in self.metrics.items():
            digits = 2 if key == "psnr" else 3
            cells = [key, _fmt(entry.get("chance"), 3)]
            for name in names:
                score = entry["scores"].get(name)
                if score is None:
                    cells.append("—")
                    continue
                cell = _score_cell(score, digits)
                if score.get("chance_shuffled") is not None:
                    cell += f" (shuffled {_fmt(score['chance_shuffled'], 3)})"
                test = entry["tests"].get(name)
                if test is not None:
                    diff = test.get("mean_difference")
                    sign = "+" if diff is not None and diff >= 0 else ""
                    bands = [f"t {test['significance']}"]
                    for label, kind in (("W", "wilcoxon"), ("perm", "permutation")):
                        other = entry.get(kind, {}).get(name)
                        if other is not None:
                            bands.append(f"{label} {other['significance']}")
                    cell += f" (Δ {sign}{_fmt(diff, digits)}; {', '.join(bands)})"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        notes = []
        for run in self.runs:
            if run["name"] == self.reference:
                continue
            kind = (
                "paired tests (t, Wilcoxon signed-rank, sign-flip permutation)"
                if run["paired_with_reference"]
                else "two-sample tests (Welch t, Wilcoxon rank-sum, permutation)"
            )
            notes.append(f"{run['name']} vs {self.reference}: {kind}")
        text = "\n".join(lines) + "\n"
        if notes:
            text += (
                "\n"
                + "; ".join(notes)
                + ". Mean ± SE over windows [95% bootstrap CI]; shuffled: the empirical chance "
                "of an identification score (each reconstruction paired with another window's "
                "ground truth; for Hue-pcc, EPE and VIFI-CLIP the same reference). Δ: difference "
                "from the reference, with the significance band "
                "of each test.\n"
            )
        if any(r.get("standin_classifiers") for r in self.runs):
            text += (
                "\nSome runs were scored with the simulator's stand-in classifiers: their "
                "identification scores are not ImageNet / Kinetics scores.\n"
            )
        return text + self.published_markdown()


def _fmt(v: float | None, digits: int) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if round(v, digits) == 0:
        v = 0.0
    return f"{v:.{digits}f}"


def _score_cell(score: dict[str, Any], digits: int) -> str:
    cell = f"{_fmt(score.get('mean'), digits)} ± {_fmt(score.get('se'), digits)}"
    lo, hi = score.get("ci_low"), score.get("ci_high")
    if lo is not None and hi is not None:
        cell += f" [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    return cell


def _unique_names(runs: list[EvaluationResult], paths: list[Path]) -> list[str]:
    """Run names: the run directory's name (the folder above ``evaluate/``) or the evaluate
    folder's; duplicates get their parent folder prepended, then a number."""

    def base(run: EvaluationResult, path: Path) -> Path:
        return path if run.folder != path or run.folder.name != "evaluate" else path.parent

    names = [base(r, p).resolve().name or str(p) for r, p in zip(runs, paths, strict=True)]
    if len(set(names)) < len(names):
        names = [
            f"{base(r, p).resolve().parent.name}/{base(r, p).resolve().name}"
            for r, p in zip(runs, paths, strict=True)
        ]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def _same_windows(a: EvaluationResult, b: EvaluationResult) -> bool:
    """Both runs scored the same windows in the same order (so a paired test applies)."""
    return (
        bool(a.windows)
        and a.windows == b.windows
        and a.ground_truth_sha256 is not None
        and a.ground_truth_sha256 == b.ground_truth_sha256
    )


def compare_runs(
    run_dirs: list[str | os.PathLike],
    reference: str | os.PathLike | None = None,
    names: list[str] | None = None,
    *,
    permutations: int = 10_000,
    seed: int = 0,
    published: bool = False,
) -> Comparison:
    """Compare evaluate outputs (or run directories holding ``evaluate/``) with t-tests, Wilcoxon
    and permutation tests.

    Args:
        run_dirs: two or more evaluate output folders or run directories.
        reference: the run every other run is tested against (one of ``run_dirs``, by path or
            by name); default: the first.
        names: display names (default: the folders' names).
        permutations: resamples of each permutation test.
        seed: seeds each permutation test's own generator (by run name and metric key).
        published: also put each run beside the published cc2017 figures computed under the
            same definitions (``docs/results.md``).

    Returns:
        a :class:`Comparison` (``to_dict()`` / ``to_markdown()``); metrics in the reference's
        order, then any others.
    """
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two runs (evaluate outputs or run directories).")
    paths = [Path(p) for p in run_dirs]
    runs = [load_evaluation(p) for p in paths]
    if names is not None and len(names) != len(runs):
        raise UserError(f"Got {len(names)} names for {len(runs)} runs; give one name per run.")
    run_names = list(names) if names is not None else _unique_names(runs, paths)
    if len(set(run_names)) < len(run_names):
        raise UserError(f"Run names must differ, got {run_names}.")

    ref_i = 0
    if reference is not None:
        ref_path = Path(reference).resolve()
        matches = [
            i
            for i, (p, r, n) in enumerate(zip(paths, runs, run_names, strict=True))
            if str(reference) == n or p.resolve() == ref_path or r.folder.resolve() == ref_path
        ]
        if not matches:
            raise UserError(
                f"The reference {reference} is not one of the compared runs; pass one of "
                f"{', '.join(str(p) for p in paths)} (or its name) with --reference."
            )
        ref_i = matches[0]
    ref, ref_name = runs[ref_i], run_names[ref_i]

    keys = list(ref.metrics)
    for run in runs:
        keys += [k for k in run.metrics if k not in keys]
    run_info = []
    for run, name, path in zip(runs, run_names, paths, strict=True):
        run_info.append(
            {
                "name": name,
                "path": str(path),
                "n_windows": run.meta.get("n_windows"),
                "standin_classifiers": run.uses_standins,
                "paired_with_reference": run is not ref and _same_windows(run, ref),
            }
        )
    comparison = Comparison(reference=ref_name, runs=run_info)
    if published:
        comparison.published = {
            name: published_beside(run.meta) for run, name in zip(runs, run_names, strict=True)
        }
    for key in keys:
        chance = next(
            (r.metrics[key].get("chance") for r in [ref, *runs] if key in r.metrics), None
        )
        entry: dict[str, Any] = {
            "chance": chance,
            "scores": {},
            "tests": {},
            "wilcoxon": {},
            "permutation": {},
            "bootstrap_wilcoxon": {},
        }
        for run, name, info in zip(runs, run_names, run_info, strict=True):
            if key not in run.metrics:
                continue
            entry["scores"][name] = run.metrics[key]
            if run is ref:
                continue
            a, b = run.samples.get(key), ref.samples.get(key)
            test = rank = perm = boot = None
            if a is not None and b is not None and len(a) >= 2 and len(b) >= 2:
                paired = info["paired_with_reference"] and len(a) == len(b)
                try:
                    test = (paired_ttest(a, b) if paired else welch_ttest(a, b)).to_dict()
                    rank = wilcoxon_test(a, b, paired=paired).to_dict()
                    rng = metric_rng(seed, f"compare/{name}/{key}")
                    perm = permutation_test(
                        a, b, paired=paired, rng=rng, n_resamples=permutations
                    ).to_dict()
                    boot = bootstrap_wilcoxon(
                        a, b, rng=metric_rng(seed, f"compare/{name}/{key}", stream=1)
                    ).to_dict()
                except UserError as exc:
                    logger.warning("No test for %s of %s: %s", key, name, exc)
            entry["tests"][name] = test
            entry["wilcoxon"][name] = rank
            entry["permutation"][name] = perm
            entry["bootstrap_wilcoxon"][name] = boot
        comparison.metrics[key] = entry
    logger.info("Compared %d runs on %d metrics against %s.", len(runs), len(keys), ref_name)
    return comparison


def write_comparison(comparison: Comparison, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``OUT/comparison.json`` and ``OUT/comparison.md`` (atomically); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / COMPARISON_MD
    atomic_write_text(md, comparison.to_markdown())
    js = out / COMPARISON_FILE
    atomic_write_text(js, json.dumps(comparison.to_dict(), indent=2) + "\n")
    return {"json": js, "markdown": md}
