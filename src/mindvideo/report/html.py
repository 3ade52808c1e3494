"""``mindvideo report``: one self-contained HTML page for a run directory (issue: the report).

:func:`build_report` reads a run directory (:mod:`mindvideo.report.run_dir`) and writes a single
HTML file with everything inline — clips as base64 GIF (or mp4) data URIs, figures as PNG data
URIs, styles in one ``<style>`` element, no script, no font, no external resource — so it opens
offline, can be mailed, and its Content-Security-Policy forbids loading anything else. Sections:

1. provenance: the run's ``run.json`` (version, date, command) and how this page was made;
2. reconstructions: ground truth and reconstruction side by side as animated clips, for
   ``samples`` evenly spaced test windows (``reconstruct/``);
3. metrics with chance levels, and the note on stand-in classifiers when they were used
   (``evaluate/``), then the linear ceiling of the same fMRI windows (``baseline/``);
4. ablations: runs side by side with t-test significance bands (``compare/``);
5. interpretation: attention per Yeo-17 network and flat maps (``explain/``);
6. the configuration of every stage (``*/config.yaml``), collapsed.

A missing part skips its section with a short note on the command that makes it. Every string
from the run is HTML-escaped.
"""

from __future__ import annotations

import datetime
import html
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.evaluation.metrics import above_shuffled, parse_metric_key
from mindvideo.evaluation.runner import (
    STANDIN_NOTE,
    EvaluationResult,
    load_evaluation,
    model_caveat,
)
from mindvideo.report.figures import clip_data_uri, file_data_uri, sample_rows
from mindvideo.report.run_dir import STAGE_DIRS, read_run_info, read_stage_json, stage_dir
from mindvideo.utils import UserError, atomic_write_text

__all__ = ["REPORT_FILE", "build_report"]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
EXPLAIN_FIGURES = ("networks_stages.png", "flat_maps.png")
# Nothing but inline styles and data: URIs may load (the page must work offline, and must not
# be able to call home).
CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"
SIGNIFICANCE_CLASS = {
    "p<0.0001": "sig4",
    "p<0.01": "sig3",
    "p<0.05": "sig2",
    "p>0.05": "sig0",
}

STYLE = """
:root { --fg: #1d2330; --muted: #5b6472; --line: #d9dde3; --accent: #2b5fab; --bg: #ffffff;
        --panel: #f5f7fa; --warn: #fff4d6; --warnline: #e0b53c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 8px; }
p.lede { color: var(--muted); margin: 0 0 16px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
tr.group th { background: #e8edf4; text-align: left; text-transform: uppercase;
              font-size: 12px; letter-spacing: 0.04em; color: var(--muted); }
td.num { text-align: right; white-space: nowrap; }
table.prov td:first-child { color: var(--muted); white-space: nowrap; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 13px; }
pre { background: var(--panel); padding: 10px 12px; overflow-x: auto; margin: 6px 0 12px; }
.wide { overflow-x: auto; }
.note { color: var(--muted); font-style: italic; }
.warn { background: var(--warn); border-left: 4px solid var(--warnline); padding: 8px 12px;
        margin: 10px 0; }
.stages span { display: inline-block; padding: 2px 8px; margin: 2px 4px 2px 0; border-radius: 10px;
               font-size: 13px; border: 1px solid var(--line); }
.stages span.on { background: #e3f1e6; border-color: #8cc79a; }
.stages span.off { color: var(--muted); background: var(--panel); }
.clips { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 14px; }
figure.pair { margin: 0; padding: 10px; background: var(--panel); border: 1px solid var(--line);
              border-radius: 6px; }
.pair .row { display: flex; gap: 10px; }
.pair .cell { flex: 1; text-align: center; }
.pair .cell span { display: block; font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.pair img, .pair video { width: 192px; height: 192px; object-fit: contain; background: #000; }
.pixelated { image-rendering: pixelated; }
figure.pair figcaption { font-size: 13px; margin-top: 6px; color: var(--muted); }
img.figure { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
.sig4 { background: #3d7f52; color: #fff; }
.sig3 { background: #79b38a; }
.sig2 { background: #c6e2cd; }
.sig0 { background: transparent; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px;
               border: 1px solid var(--line); }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


def e(value: Any) -> str:
    """HTML-escape any value's string form (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    if round(v, digits) == 0:
        v = 0.0
    return f"{v:.{digits}f}"


def _missing(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _header(run: Path, info: dict[str, Any] | None, command: str | None) -> str:
    from mindvideo import __version__

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = [("run directory", run.resolve().name)]
    if info:
        rows += [
            ("run created", info.get("created", "—")),
            ("run command", info.get("command", "—")),
            ("mindvideo (run)", info.get("mindvideo_version", "—")),
        ]
        rows += [
            (k, v) for k, v in info.items() if k not in ("created", "command", "mindvideo_version")
        ]
    else:
        rows.append(("run command", "not recorded (no run.json in the run directory)"))
    rows += [
        ("report generated", now),
        ("mindvideo (report)", __version__),
        ("report command", command or "build_report()"),
    ]
    body = "".join(
        f"<tr><td>{e(k)}</td><td><code>{e(v)}</code></td></tr>"
        if k.endswith("command")
        else f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>"
        for k, v in rows
    )
    stages = "".join(
        f'<span class="{"on" if stage_dir(run, s) else "off"}">{e(s)}</span>' for s in STAGE_DIRS
    )
    return (
        f"<h1>MinD-Video report: {e(run.resolve().name)}</h1>"
        '<p class="lede">Videos reconstructed from fMRI with MinD-Video (Chen, Qing &amp; Zhou, '
        "NeurIPS 2023), as implemented by mindvideo.</p>"
        '<nav><a href="#reconstructions">Reconstructions</a><a href="#metrics">Metrics</a>'
        '<a href="#ablations">Ablations</a><a href="#interpretation">Interpretation</a>'
        '<a href="#configs">Configurations</a></nav>'
        '<h2 id="provenance">Provenance</h2>'
        f'<table class="prov">{body}</table>'
        f'<div class="stages">Stages in this run: {stages}</div>'
    )


def _clip_tag(uri: str, media: str, label: str, width: int) -> str:
    cls = ' class="pixelated"' if width < 128 else ""
    if media == "mp4":
        return (
            f'<video{cls} src="{e(uri)}" autoplay loop muted playsinline '
            f'aria-label="{e(label)}"></video>'
        )
    return f'<img{cls} src="{e(uri)}" alt="{e(label)}">'


def _reconstructions(
    run: Path, samples: int, media: str, evaluation: EvaluationResult | None
) -> str:
    head = '<h2 id="reconstructions">Reconstructions</h2>'
    folder = stage_dir(run, "reconstruct")
    if folder is None:
        return head + _missing(
            "No reconstruct/ folder: run `mindvideo reconstruct --out RUN/reconstruct` to add "
            "the reconstructed clips."
        )
    index = read_stage_json(folder / "index.json")
    paths = [folder / "reconstructions.npy", folder / "ground_truth.npy"]
    if not index or not all(p.is_file() for p in paths):
        return head + _missing(
            "reconstruct/ is unfinished (no index.json or stacked arrays yet): re-run the same "
            "`mindvideo reconstruct` command to finish it."
        )
    pred = np.load(paths[0], mmap_mode="r", allow_pickle=False)
    gt = np.load(paths[1], mmap_mode="r", allow_pickle=False)
    windows = index.get("windows", [])
    n = min(len(windows), pred.shape[0], gt.shape[0])
    fps = float(index.get("fps") or 3)
    ssim = None
    keys = [(int(w.get("segment", -1)), int(w.get("tr", -1))) for w in windows[:n]]
    if evaluation is not None and evaluation.windows == keys:  # it scored these very clips
        ssim = evaluation.samples.get("ssim")
    rows = sample_rows(n, samples)
    cards = []
    for i in rows:
        w = windows[i]
        where = f"segment {w.get('segment')}, TR {w.get('tr')}"
        gt_uri, gt_media = clip_data_uri(np.asarray(gt[i]), fps, media)
        pr_uri, pr_media = clip_data_uri(np.asarray(pred[i]), fps, media)
        caption = f"window {i}: {where}"
        if ssim is not None and len(ssim) == n:
            caption += f" · SSIM {_fmt(float(ssim[i]))}"
        cards.append(
            '<figure class="pair"><div class="row">'
            f'<div class="cell"><span>ground truth</span>'
            f"{_clip_tag(gt_uri, gt_media, 'ground truth, ' + where, gt.shape[3])}</div>"
            f'<div class="cell"><span>reconstruction</span>'
            f"{_clip_tag(pr_uri, pr_media, 'reconstruction, ' + where, pred.shape[3])}</div>"
            f"</div><figcaption>{e(caption)}</figcaption></figure>"
        )
    f, h, wd = pred.shape[1:4]
    h0, w0 = gt.shape[2:4]
    intro = (
        f"{len(rows)} of {n} test windows, evenly spaced over the test set; {f} frames at "
        f"{_fmt(fps, 0)} FPS. Reconstructions are {h}×{wd} pixels, the ground truth {h0}×{w0}; "
        "both are shown at the same size."
    )
    return head + f"<p>{e(intro)}</p>" + f'<div class="clips">{"".join(cards)}</div>'


def _metric_label(key: str) -> str:
    parsed = parse_metric_key(key)
    if parsed is not None:
        level, n_way, top_k, mode = parsed
        return f"{level} · {n_way}-way top-{top_k} · {mode}"
    if key.startswith("pixel_") and key.endswith("way"):
        return f"pixel identification · {key[len('pixel_') : -len('way')]}-way"
    names = {
        "ssim": "SSIM",
        "psnr": "PSNR (dB)",
        "hue_pcc": "Hue-pcc (Mind-Animator)",
        "epe": "EPE, optical flow (px, lower is better)",
        "flow_angular_error": "flow angular error (°, lower is better)",
        "vifi_clip": "VIFI-CLIP score",
        "fvd": "FVD (I3D, set level, lower is better)",
        "clip_pcc_mind_animator": "CLIP-pcc · Mind-Animator (adjacent frames, VIFI gate)",
        "clip_pcc_neurons": "CLIP-pcc · NEURONS (all frame pairs)",
        "clip_similarity": "CLIP image similarity",
        "frame_judge_accuracy": "frame judge · top-1 on the ground truth · true",
        "video_judge_accuracy": "video judge · top-1 on the ground truth · true",
    }
    return names.get(key, key)


# NeuroClips' grouping of the table: video level (semantic, spatiotemporal), frame level
# (semantic, pixel).
METRIC_GROUPS = (
    "video level · semantic",
    "video level · spatiotemporal",
    "frame level · semantic",
    "frame level · pixel",
)


def _metric_group(key: str) -> str:
    if key.startswith("video_") or key in ("vifi_clip", "fvd"):
        return METRIC_GROUPS[0]
    if key.startswith("clip_pcc_") or key in ("epe", "flow_angular_error"):
        return METRIC_GROUPS[1]
    if key.startswith("frame_") or key == "clip_similarity":
        return METRIC_GROUPS[2]
    return METRIC_GROUPS[3]


def _published_table(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    from mindvideo.evaluation.published import published_beside

    beside = published_beside(meta)
    rows, sources = [], []
    for key, figures in beside.items():
        score = metrics.get(key) or {}
        digits = 2 if key == "psnr" else 3
        by_method: dict[str, list[dict[str, Any]]] = {}
        for fig in figures:
            by_method.setdefault(fig["method"], []).append(fig)
            if fig["source"] not in sources:
                sources.append(fig["source"])
        cells = "; ".join(
            f"{method} "
            + ", ".join(f"s{fig['subject']} {_fmt(fig['value'], digits)}" for fig in figs)
            + f" [{sources.index(figs[0]['source']) + 1}]"
            for method, figs in by_method.items()
        )
        rows.append(
            f"<tr><td>{e(_metric_label(key))}</td>"
            f'<td class="num">{e(_fmt(score.get("mean"), digits))}</td><td>{e(cells)}</td></tr>'
        )
    if not rows:
        return ""
    notes = "".join(f"<li>{e(src)}</li>" for src in sources)
    return (
        "<h3>Beside published results (cc2017)</h3><p>Only the scores computed under the "
        "published figure's definition (docs/results.md); s1–s3: the paper's subjects. The same "
        "definition is not the same data: a run on the simulator stands beside them for scale "
        "only.</p><table><tr><th>metric</th><th>this run</th><th>published</th></tr>"
        f'{"".join(rows)}</table><ol class="sources">{notes}</ol>'
    )


def _metrics(evaluation: EvaluationResult | None) -> str:
    head = '<h2 id="metrics">Metrics</h2>'
    if evaluation is None:
        return head + _missing(
            "No evaluate/ folder: run `mindvideo evaluate --reconstructions RUN/reconstruct "
            "--out RUN/evaluate` to add the metrics."
        )
    meta = evaluation.meta
    parts = [head]
    if evaluation.uses_standins:
        parts.append(
            f'<div class="warn"><strong>Stand-in classifiers.</strong> {e(STANDIN_NOTE)}</div>'
        )
    grouped: dict[str, list[str]] = {group: [] for group in METRIC_GROUPS}
    for key, m in evaluation.metrics.items():
        if not isinstance(m, dict):
            continue
        digits = 2 if key in ("psnr", "flow_angular_error") else 3
        ci = (
            "—"
            if m.get("ci_low") is None or m.get("ci_high") is None
            else f"[{_fmt(m['ci_low'], digits)}, {_fmt(m['ci_high'], digits)}]"
        )
        shuffled = m.get("chance_shuffled")
        if shuffled is None and m.get("ground_truth") is not None:
            shuffled_text = f"ground truth {_fmt(m['ground_truth'])}"
        else:
            shuffled_text = "—" if shuffled is None else _fmt(shuffled, digits)
        side = "below" if m.get("lower_is_better") else "above"
        flag = "" if above_shuffled(m) else f" <strong>not {side} shuffled</strong>"
        caveat = model_caveat(key, meta)
        label = e(_metric_label(key)) + (f"<br><em>{e(caveat)}</em>" if caveat else "")
        rows = grouped[_metric_group(key)]
        rows.append(
            f"<tr><td>{label}<br><code>{e(key)}</code></td>"
            f'<td class="num">{e(_fmt(m.get("mean"), digits))} ± '
            f"{e(_fmt(m.get('se'), digits))}{flag}</td>"
            f'<td class="num">{e(ci)}</td><td class="num">{e(_fmt(m.get("chance")))}</td>'
            f'<td class="num">{e(shuffled_text)}</td>'
            f'<td class="num">{e(m.get("n", "—"))}</td></tr>'
        )
    body = "".join(
        f'<tr class="group"><th colspan="6">{e(group)}</th></tr>' + "".join(rows)
        for group, rows in grouped.items()
        if rows
    )
    parts.append(
        "<table><tr><th>metric</th><th>mean ± SE</th><th>95% CI</th><th>chance</th>"
        f"<th>shuffled chance</th><th>n</th></tr>{body}</table>"
    )
    size = meta.get("compared_at")
    notes = [
        "Mean over test windows ± standard error, 95% percentile bootstrap interval, and the "
        "chance level of the same test. compat: the authors' rule (any of the ground truth's "
        "top-3 classes counts, which raises chance: 2-way 0.75, 50-way 3/52); strict: top-1 "
        "ground truth (chance K/N). The shuffled chance is the same test with every "
        "reconstruction paired with another window's ground truth (mean of 5 pairings): it "
        "keeps the judges' favourite classes, which the analytic chance does not. pixel: "
        "classifier-free identification of 16×16 mean frames by correlation."
    ]
    if any(k in evaluation.metrics for k in ("hue_pcc", "epe", "vifi_clip")):
        notes.append(
            "Hue-pcc, EPE, the flow's angle and VIFI-CLIP are computed as Mind-Animator's code "
            "computes them, CLIP-pcc under both of its published definitions "
            "(docs/evaluation.md); their shuffled column pairs each reconstruction with other "
            "windows' ground truth, and a CLIP-pcc (which reads the reconstruction alone) "
            "shows the ground truth's own value instead."
        )
    if "clip_similarity" in evaluation.metrics:
        notes.append(
            "The chance of the CLIP image similarity is the mean similarity of each "
            "reconstruction with the other windows' ground truth."
        )
    if size:
        notes.append(
            f"Scored at {size[0]}×{size[1]} pixels"
            + (f" ({meta['resized']} resized)." if meta.get("resized") else ".")
        )
    parts.append(f"<p>{e(' '.join(notes))}</p>")
    parts.append(_published_table(meta, evaluation.metrics))
    classifiers = meta.get("classifiers") or {}
    items = []
    for role, ident in classifiers.items():
        if not ident:
            continue
        desc = ident.get("architecture") or "model"
        if ident.get("num_labels"):
            desc += f", {ident['num_labels']} classes"
        if ident.get("standin"):
            desc += ", simulator stand-in"
        sha = ident.get("config_sha256")
        items.append(
            f"<li>{e(role)}: {e(desc)} — <code>{e(ident.get('path') or 'in memory')}</code>"
            + (f" (config sha256 <code>{e(sha[:12])}</code>)" if sha else "")
            + "</li>"
        )
    if items:
        parts.append(f"<h3>Models</h3><ul>{''.join(items)}</ul>")
    elif not any(parse_metric_key(k) for k in evaluation.metrics):
        parts.append(
            _missing(
                "No classifiers were configured (pretrained.image_classifier, "
                "pretrained.video_classifier): pixel metrics only."
            )
        )
    return "".join(parts)


def _baseline(run: Path) -> str:
    head = '<h2 id="baseline">The linear ceiling</h2>'
    folder = stage_dir(run, "baseline")
    result = read_stage_json(folder / "baseline.json") if folder else None
    if not result:
        return head + _missing(
            "No baseline/ folder: run `mindvideo baseline --data RUN/prepare --out "
            "RUN/baseline` for what a ridge decoder reads from the same fMRI windows."
        )
    rows = []
    for s in result.get("scores", []):
        above = s.get("above_shuffled")
        shuffled = s.get("shuffled")
        rows.append(
            f"<tr><td>{e(s['name'])}</td>"
            f'<td class="num">{e(_fmt(s["value"]))} ± {e(_fmt(s["sem"]))}</td>'
            f'<td class="num">{e(_fmt(s["chance"]))}</td>'
            f'<td class="num">{e("—" if shuffled is None else _fmt(shuffled))}</td>'
            f"<td>{'yes' if above else '<strong>no</strong>' if above is False else '—'}</td>"
            "</tr>"
        )
    return (
        head + f"<p>Ridge regression from the fMRI window of {e(result['window'])} TRs "
        f"({e(result['n_voxels'])} voxels) of every scored test TR "
        f"({e(result['n_test_windows'])} windows), fitted on the training segments only, "
        "alpha per target by cross-validation over whole segments. A decoding claim counts "
        "against this ceiling: the reconstructions' scores above read beside it.</p>"
        "<table><tr><th>decoded</th><th>score ± SE</th><th>chance</th>"
        f"<th>shuffled chance</th><th>above shuffled</th></tr>{''.join(rows)}</table>"
    )


def _information(run: Path) -> str:
    """The "where the information goes" table (:mod:`mindvideo.report.information`)."""
    from mindvideo.report.information import information_rows

    rows = information_rows(run)
    if not rows:
        return ""
    cells = []
    for r in rows:
        text = [f"<td>{e(c)}</td>" for c in r.cells()]
        met = {True: "yes", False: "<strong>no</strong>", None: ""}[r.met]
        cells.append(f"<tr>{''.join(text)}<td>{met}</td></tr>")
    figure = run / "information.png"
    img = (
        f'<img src="{file_data_uri(figure)}" alt="each link\'s score against its chance">'
        if figure.is_file()
        else ""
    )
    return (
        '<h2 id="information">Where the information goes</h2>'
        "<p>Every link of the chain fMRI → encoder → generator → clip → judge on the same test "
        "windows, beside its chance and its shuffled chance: what a linear decoder reads from "
        "the fMRI (the ceiling), the judges' own accuracy on the ground truth, the generator "
        "given the true captions (the oracle), and the reconstructions. A link far below the "
        "one before it is where the information is lost.</p>"
        "<table><tr><th>link</th><th>measure</th><th>score ± SE</th><th>chance</th>"
        f"<th>shuffled chance</th><th>target</th><th>met</th></tr>{''.join(cells)}</table>"
        f"{img}"
    )


def _ablations(run: Path) -> str:
    head = '<h2 id="ablations">Ablations</h2>'
    folder = stage_dir(run, "compare")
    doc = read_stage_json(folder / "comparison.json") if folder else None
    if not doc:
        return head + _missing(
            "No compare/ folder: run `mindvideo compare RUN_A RUN_B ... --out RUN/compare` to "
            "put ablations side by side."
        )
    names = [r["name"] for r in doc.get("runs", [])]
    ref = doc.get("reference")
    header = "".join(f"<th>{e(n)}{' (reference)' if n == ref else ''}</th>" for n in names)
    rows = []
    for key, entry in (doc.get("metrics") or {}).items():
        digits = 2 if key == "psnr" else 3
        cells = []
        for name in names:
            score = entry.get("scores", {}).get(name)
            if score is None:
                cells.append('<td class="num">—</td>')
                continue
            # Two lines per cell (score; interval and test) so that several runs fit the page.
            text = f"{_fmt(score.get('mean'), digits)} ± {_fmt(score.get('se'), digits)}"
            detail = ""
            if score.get("ci_low") is not None and score.get("ci_high") is not None:
                detail = f"[{_fmt(score['ci_low'], digits)}, {_fmt(score['ci_high'], digits)}]"
            test = entry.get("tests", {}).get(name)
            cls = "num"
            if test:
                label = test.get("significance", "p>0.05")
                diff = test.get("mean_difference")
                arrow = "" if diff is None else ("▲" if diff > 0 else "▼" if diff < 0 else "")
                others = [
                    f"{short} {other['significance']}"
                    for short, kind in (("W", "wilcoxon"), ("perm", "permutation"))
                    if (other := entry.get(kind, {}).get(name))
                ]
                detail += f" {arrow} {label}" + "".join(f", {o}" for o in others)
                cls += " " + SIGNIFICANCE_CLASS.get(label, "sig0")
            cell = e(text) + (f"<br><small>{e(detail.strip())}</small>" if detail else "")
            cells.append(f'<td class="{cls}">{cell}</td>')
        rows.append(
            f"<tr><td>{e(_metric_label(key))}</td>"
            f'<td class="num">{e(_fmt(entry.get("chance")))}</td>{"".join(cells)}</tr>'
        )
    kinds = [
        f"{r['name']}: "
        + (
            "paired t-test, Wilcoxon signed-rank, sign-flip permutation"
            if r.get("paired_with_reference")
            else "Welch t-test, Wilcoxon rank-sum, permutation"
        )
        for r in doc.get("runs", [])
        if r["name"] != ref
    ]
    legend = "".join(
        f'<span class="{c}">{e(label)}</span>' for label, c in SIGNIFICANCE_CLASS.items()
    )
    return (
        head + f"<p>Every run against the reference {e(ref)} ({e('; '.join(kinds))}); ▲/▼: above / "
        "below the reference; cells shaded by the t-test's significance, as in the paper's Table 1 "
        "(W: Wilcoxon, perm: permutation test).</p>"
        + f'<p class="legend">{legend}</p>'
        + '<div class="wide">'
        + f"<table><tr><th>metric</th><th>chance</th>{header}</tr>{''.join(rows)}</table>"
        + "</div>"
    )


def _interpretation(run: Path) -> str:
    head = '<h2 id="interpretation">Interpretation</h2>'
    folder = stage_dir(run, "explain")
    if folder is None:
        return head + _missing(
            "No explain/ folder: run `mindvideo explain --data PREPARED --mbm ... --contrast ... "
            "--cotrain ... --out RUN/explain` to add the attention maps."
        )
    parts = [head]
    networks = read_stage_json(folder / "networks.json")
    if not networks:
        info = read_stage_json(folder / "explain.json")
        note = (info or {}).get("note") or (
            "explain/ holds no networks.json: the attention summaries could not be placed on "
            "the brain."
        )
        return head + _missing(note)
    parts.append(
        "<p>The fMRI encoder's attention (paper 3.5, 5.1), averaged over the test windows and "
        "attention heads, mapped to voxels and summed within the Yeo-17 networks (each map "
        f"normalised by {e(networks.get('normalisation', 'sum'))}, so a layer's sums add up "
        "to 1).</p>"
    )
    rows = []
    for stage, entry in (networks.get("stages") or {}).items():
        for layer, sums in (entry.get("networks") or {}).items():
            ranked = sorted(((k, v) for k, v in sums.items() if k != "none"), key=lambda kv: -kv[1])
            visual = sum(v for k, v in sums.items() if k.startswith("Vis"))
            top = ", ".join(f"{k} {_fmt(v)}" for k, v in ranked[:3])
            rows.append(
                f'<tr><td>{e(stage)}</td><td>{e(layer)}</td><td class="num">'
                f"{e(_fmt(visual))}</td><td>{e(top)}</td>"
                f'<td class="num">{e(entry.get("n_samples", "—"))}</td></tr>'
            )
    if rows:
        parts.append(
            "<table><tr><th>stage</th><th>layer</th><th>visual networks</th>"
            f"<th>top networks</th><th>windows</th></tr>{''.join(rows)}</table>"
        )
    # networks.json lists the stages in the paper's order (mbm, contrast, cotrain).
    stage_figures = [folder / f"networks_{stage}.png" for stage in networks.get("stages") or {}]
    figures = [folder / EXPLAIN_FIGURES[0], *stage_figures, folder / EXPLAIN_FIGURES[1]]
    for path in figures:
        if path.is_file():
            title = {
                "networks_stages.png": "First layer across learning stages (Fig. 7 B)",
                "flat_maps.png": "Attention on the flat cortex: stages × layers (Fig. 7)",
            }.get(path.name, f"Attention per network, {path.stem.removeprefix('networks_')}")
            parts.append(
                f"<h3>{e(title)}</h3>"
                f'<img class="figure" src="{e(file_data_uri(path))}" alt="{e(title)}">'
            )
    return "".join(parts)


def _configs(run: Path) -> str:
    head = '<h2 id="configs">Configurations</h2>'
    items = []
    for stage in STAGE_DIRS:
        folder = stage_dir(run, stage)
        path = folder / "config.yaml" if folder else None
        if path is None or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        items.append(
            f"<details><summary>{e(stage)}/config.yaml</summary><pre>{e(text)}</pre></details>"
        )
    if not items:
        return head + _missing("No stage folder holds a config.yaml.")
    return (
        head + "<p>The resolved configuration of every stage (click to open).</p>" + "".join(items)
    )


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def build_report(
    run_dir: str | os.PathLike,
    out_html: str | os.PathLike | None = None,
    samples: int = 8,
    media: str = "gif",
    command: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a run directory; returns its path.

    Args:
        run_dir: the run directory (``RUN/{prepare,...,reconstruct,evaluate,explain}/``,
            docs/report.md); missing stages are skipped with a note.
        out_html: where to write (default ``RUN/report.html``).
        samples: test windows to show as clips, evenly spaced over the test set.
        media: ``"gif"`` (animated ``<img>``, default) or ``"mp4"`` (``<video>``, smaller).
        command: the command line that asked for the report, shown in the header.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(
            f"Run directory {run} does not exist; pass the folder holding the stage folders "
            "(reconstruct/, evaluate/, ...)."
        )
    if not any(stage_dir(run, s) for s in STAGE_DIRS):
        raise UserError(
            f"{run} holds none of the stage folders {', '.join(STAGE_DIRS)}; pass a run "
            "directory as laid out in docs/report.md."
        )
    if samples < 1:
        raise UserError(f"samples={samples} must be at least 1 (the clips to show).")
    out = Path(out_html) if out_html is not None else run / REPORT_FILE

    evaluation = None
    if stage_dir(run, "evaluate") and (run / "evaluate" / "metrics.json").is_file():
        try:
            evaluation = load_evaluation(run / "evaluate")
        except UserError as exc:
            logger.warning("Skipping the metrics in the report: %s", exc)
    body = "".join(
        [
            _header(run, read_run_info(run), command),
            _reconstructions(run, samples, media, evaluation),
            _information(run),
            _metrics(evaluation),
            _baseline(run),
            _ablations(run),
            _interpretation(run),
            _configs(run),
        ]
    )
    from mindvideo import __version__

    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>MinD-Video report: {e(run.resolve().name)}</title>"
        f"<style>{STYLE}</style></head>\n<body><main>{body}"
        f"<footer>Generated by mindvideo {e(__version__)}. Self-contained: every clip and "
        "figure is embedded in this file.</footer></main></body></html>\n"
    )
    atomic_write_text(out, page)
    logger.info("Wrote the report of %s to %s (%.1f MB).", run, out, len(page) / 1e6)
    return out
