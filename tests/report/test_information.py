"""The "where the information goes" table: its rows, chance levels, targets and files."""

from __future__ import annotations

import json
from pathlib import Path

from mindvideo.report.information import (
    ABOVE,
    ORACLE_DIR,
    InformationRow,
    format_information,
    information_rows,
    write_information,
)


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _metric(mean: float, chance: float | None, shuffled: float | None = None) -> dict:
    out = {"mean": mean, "se": 0.01, "chance": chance, "n": 150}
    if shuffled is not None:
        out["chance_shuffled"], out["chance_shuffled_sd"] = shuffled, 0.005
    return out


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    scores = [
        {"name": name, "value": value, "sem": 0.01, "chance": chance, "shuffled": chance}
        for name, value, chance in (
            ("scene class 50-way", 0.97, 0.02),
            ("scene class 2-way", 0.99, 0.5),
        )
    ]
    baseline = {"window": 4, "n_voxels": 816, "n_test_windows": 150, "scores": scores}
    _write(run / "baseline" / "baseline.json", baseline)
    clip = {"retrieval_class_top1": 0.33, "retrieval_class_n": 72, "retrieval_class_chance": 1 / 72}
    _write(run / "standins" / "clip" / "standin.json", {"metrics": clip})
    _write(
        run / "contrast" / "retrieval.json",
        {
            "candidates": {"caption": 190, "image": 191},
            "chance": {"caption_top1": 1 / 190, "image_top1": 1 / 191},
            "after": {"caption_top1": 0.04, "image_top1": 0.01},
        },
    )
    _write(
        run / "evaluate" / "metrics.json",
        {
            "frame_judge_accuracy": _metric(0.95, 1 / 73, 0.014),
            "video_judge_accuracy": _metric(0.40, 1 / 657, 0.002),
            "frame_50way_top1_true": _metric(0.10, 0.02, 0.03),
            "video_2way_top1_compat": _metric(0.73, 0.75, 0.64),
            "frame_2way_top1_compat": _metric(0.80, 0.75, 0.81),
            "pixel_50way": _metric(0.61, 0.02, 0.02),
            "ssim": {"mean": 0.35, "se": 0.01, "n": 150},
            "meta": {},
        },
    )
    _write(
        run / ORACLE_DIR / "evaluate" / "metrics.json",
        {"frame_2way_top1_true": _metric(0.91, 0.5, 0.5)},
    )
    return run


def test_rows_follow_the_chain_with_their_chances_and_targets(tmp_path):
    rows = information_rows(_run(tmp_path))
    links = [r.link for r in rows]
    # fMRI → stand-in → judges → encoder → generator → reconstructions
    assert links == [
        "fMRI (linear ridge)",
        "CLIP stand-in",
        "frame judge",
        "video judge",
        "encoder (contrast)",
        "encoder (contrast)",
        "generator (oracle caption)",
        *["reconstructions"] * 5,
    ]
    by = {(r.link, r.measure): r for r in rows}
    ridge = by["fMRI (linear ridge)", "scene class, 50-way"]
    assert (ridge.value, ridge.chance, ridge.shuffled, ridge.met) == (0.97, 0.02, 0.02, None)
    assert ridge.target_text == "the ceiling"
    judge = by["frame judge", "top-1 on the ground truth vs the true class"]
    assert judge.target == 0.90 and judge.met is True and judge.shuffled == 0.014
    assert by["video judge", "top-1 on the ground truth vs the true class × motion"].met is False
    oracle = by["generator (oracle caption)", "frame 2-way vs the true class"]
    assert oracle.met is True and oracle.chance == 0.5
    clip = by["CLIP stand-in", "frame → class caption, top-1 of 72"]
    assert clip.met is False and abs(clip.chance - 1 / 72) < 1e-12
    caption = by["encoder (contrast)", "fMRI → caption, top-1 of 190"]
    assert caption.value == 0.04 and caption.target_text == "—"


def test_above_chance_needs_both_the_analytic_and_the_shuffled_chance():
    assert InformationRow("r", "m", 0.80, chance=0.75, shuffled=0.70, target=ABOVE).met is True
    # below the analytic chance (the authors' compat rule with weak judges)
    assert InformationRow("r", "m", 0.73, chance=0.75, shuffled=0.64, target=ABOVE).met is False
    # above the analytic chance but not above the shuffled one
    assert InformationRow("r", "m", 0.80, chance=0.75, shuffled=0.81, target=ABOVE).met is False
    row = InformationRow("r", "m", 0.80, chance=0.75, shuffled=0.81)
    assert row.above_shuffled is False and row.met is None


def test_markdown_marks_every_missed_target(tmp_path):
    text = format_information(information_rows(_run(tmp_path)))
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].split("|")[1:-1] == [
        " link ",
        " measure ",
        " score ± SE ",
        " chance ",
        " shuffled chance ",
        " target ",
        " met ",
    ]
    missed = [line for line in lines if line.endswith("| **no** |")]
    # CLIP stand-in, video judge, frame 50-way, SSIM (pixel identification is met), both compat
    assert len(missed) == 6
    assert "| reconstructions | SSIM | 0.350 ± 0.010 | — | — | ≥ 0.40 | **no** |" in text
    assert "| video 2-way, the authors' compat rule | 0.730 ± 0.010 | 0.750 | 0.640 |" in text


def test_files_and_a_partial_run(tmp_path):
    run = _run(tmp_path)
    paths = write_information(run)
    rows = json.loads(paths["json"].read_text())
    assert len(rows) == 12 and {"met", "above_shuffled", "target"} <= set(rows[0])
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().startswith("## Where the information goes")
    # A run with nothing evaluated yet: no rows, no failure, no figure.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "evaluate").mkdir()
    (empty / "evaluate" / "metrics.json").write_text("{not json")
    assert information_rows(empty) == []
    assert "figure" not in write_information(empty)


def test_the_report_shows_the_table_and_its_figure(tmp_path):
    from mindvideo.report import build_report

    run = _run(tmp_path)
    write_information(run)
    html = build_report(run, tmp_path / "report.html").read_text()
    section = html[html.index('id="information"') :]
    assert "<td>frame judge</td>" in section and "<strong>no</strong>" in section
    assert "<td>0.950 ± 0.010</td>" in section  # the frame judge's score
    assert 'src="data:image/png;base64,' in section
