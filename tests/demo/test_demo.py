"""`mindvideo demo --preset tiny`: every stage end to end, then a re-run that reuses them all."""

import json
from pathlib import Path

import pytest

from mindvideo.cli.main import main
from mindvideo.demo.run import DONE, plan

STAGES = [s.name for s in plan("tiny", Path("run"))]


@pytest.mark.slow(minutes=2)
def test_tiny_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(run)]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("torch threads: 1 (fixed by MINDVIDEO_THREADS")  # the first line
    for name in STAGES:
        assert (run / name / DONE).is_file(), name
        assert (run / name / "config.yaml").is_file(), name
    assert f"Report: {run / 'report.html'}" in out.out
    assert "video_50way_top1_strict" in out.out and "chance" in out.out
    assert "Ridge baseline" in out.out and "shuffled chance" in out.out  # the linear ceiling

    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    for key in ("ssim", "psnr", "frame_2way_top1_strict", "video_50way_top1_strict"):
        assert {"mean", "se", "chance", "n"} <= set(metrics[key])
    assert metrics["video_50way_top1_strict"]["chance"] == pytest.approx(0.02)
    # the run directory the report documents, with the pipeline a user would reconstruct from
    assert (run / "cotrain" / "pipeline" / "model_index.json").is_file()
    assert (run / "explain" / "networks.json").is_file()
    html = (run / "report.html").read_text()
    assert "Stand-in classifiers" in html and "data:image/gif;base64" in html
    assert 'id="baseline"' in html and "frames 16x16 20-way" in html
    # The generator's ceiling: the same reconstruction from the true captions, evaluated.
    oracle = yaml_value(run / "oracle" / "reconstruct" / "config.yaml", "condition")
    assert oracle == "caption" and (run / "oracle" / "evaluate" / "metrics.json").is_file()
    # Where the information goes: every link on one table, printed, written and reported.
    links = {row["link"] for row in json.loads((run / "information.json").read_text())}
    assert {"fMRI (linear ridge)", "CLIP stand-in", "frame judge", "video judge"} <= links
    assert {"encoder (contrast)", "generator (oracle caption)", "reconstructions"} <= links
    assert "## Where the information goes" in out.out
    assert 'id="information"' in html and (run / "information.png").is_file()

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(["demo", "--preset", "tiny", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.count("reused") == len(STAGES) + 2  # and the oracle's reconstruct and evaluate
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    changed = {p.relative_to(run) for p in before if before[p] != after.get(p)}
    summaries = {Path(f"information.{ext}") for ext in ("json", "md", "png")}
    assert changed <= {Path("run.json"), Path("report.html"), *summaries}

    # The ablations reuse every stage of the full run and add their own short chains.
    assert main(["demo", "--preset", "tiny", "--out", str(run), "--ablations"]) == 0
    out = capsys.readouterr()
    assert out.err.count("reused") == len(STAGES) + 2
    comparison = json.loads((run / "compare" / "comparison.json").read_text())
    assert [r["name"] for r in comparison["runs"]] == ["full", "window-1", "no-contrast", "cfg"]
    assert all(r["paired_with_reference"] for r in comparison["runs"][1:])
    assert comparison["metrics"]["video_50way_top1_strict"]["tests"]["cfg"] is not None
    variant = run / "ablations"
    assert yaml_value(variant / "window-1" / "contrast" / "config.yaml", "window") == 1
    assert yaml_value(variant / "window-1" / "reconstruct" / "config.yaml", "window") == 1
    assert yaml_value(variant / "cfg" / "reconstruct" / "config.yaml", "negative") == "null"
    assert not (variant / "cfg" / "cotrain").exists()  # guidance only: reuses the full model
    assert yaml_value(variant / "no-contrast" / "cotrain" / "config.yaml", "encoder") == str(
        (run / "pretrain").resolve()
    )
    assert "window-1" in out.out and "no-contrast" in out.out  # the comparison table
    assert "window-1" in (run / "report.html").read_text()


def yaml_value(path: Path, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))[key]


def test_demo_plan_follows_the_pipeline_order():
    assert STAGES[:5] == ["simulate", "simulate-rest", "prepare", "prepare-hcp", "standins"]
    assert STAGES[5:] == [
        "baseline",
        "pretrain",
        "contrast",
        "tune-video",
        "cotrain",
        "reconstruct",
        "evaluate",
        "explain",
    ]
