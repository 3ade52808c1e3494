"""`mindvideo demo --preset tiny`: every stage end to end, then a re-run that reuses them all."""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from mindvideo.cli.main import main
from mindvideo.demo.run import DONE, Recipe, Stage, needs, plan, run_demo, run_stages, stages_of

STAGES = [s.folder for s in plan("tiny", Path("run"))]


@pytest.mark.slow(minutes=2)
def test_tiny_demo_runs_every_stage_and_reuses_them(tiny_demo, tmp_path, capsys):
    out = tiny_demo
    assert out.returncode == 0, out.err
    run = tiny_demo.run
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
    assert [r["name"] for r in comparison["runs"]] == [
        *("full", "window-1", "no-contrast", "cfg"),
        *("no-lowlevel", "strength-1"),  # tiny: 2 steps, so 0.15 and 0.3 run none
        "keyframe",
    ]
    assert all(r["paired_with_reference"] for r in comparison["runs"][1:])
    assert comparison["metrics"]["video_50way_top1_strict"]["tests"]["cfg"] is not None
    variant = run / "ablations"
    assert yaml_value(variant / "window-1" / "contrast" / "config.yaml", "window") == 1
    assert yaml_value(variant / "window-1" / "reconstruct" / "config.yaml", "window") == 1
    assert yaml_value(variant / "cfg" / "reconstruct" / "config.yaml", "negative") == "null"
    assert not (variant / "cfg" / "cotrain").exists()  # guidance only: reuses the full model
    # without the low-level path: the paper's sampling, from noise at guidance 12.5
    paper = variant / "no-lowlevel" / "reconstruct" / "config.yaml"
    assert yaml_value(paper, "lowlevel") is None and yaml_value(paper, "guidance_scale") == 12.5
    assert yaml_value(variant / "strength-1" / "reconstruct" / "config.yaml", "strength") == 1.0
    assert yaml_value(variant / "keyframe" / "reconstruct" / "config.yaml", "keyframe") is True
    assert yaml_value(run / "reconstruct" / "config.yaml", "keyframe") is False
    assert yaml_value(run / "reconstruct" / "config.yaml", "lowlevel") == str(
        (run / "lowlevel").resolve()
    )
    assert yaml_value(variant / "no-contrast" / "cotrain" / "config.yaml", "encoder") == str(
        (run / "pretrain").resolve()
    )
    assert "window-1" in out.out and "no-contrast" in out.out  # the comparison table
    assert "window-1" in (run / "report.html").read_text()


def yaml_value(path: Path, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))[key]


def test_demo_plan_runs_in_order_and_each_stage_after_what_it_reads(tmp_path):
    run = tmp_path / "run"
    stages = stages_of(Recipe("tiny", str(run), 0, ablations=True))
    folders = [s.folder for s in stages]
    assert folders[: len(STAGES)] == STAGES
    assert folders[len(STAGES) : len(STAGES) + 2] == ["oracle/reconstruct", "oracle/evaluate"]
    inputs = {s.folder: set(needs(s, stages, run)) for s in stages}
    # one after another, the listed order is a valid order
    for i, folder in enumerate(folders):
        assert inputs[folder] <= set(folders[:i]), folder
    assert inputs["simulate"] == inputs["simulate-rest"] == set()
    assert inputs["prepare"] == {"simulate"} and inputs["prepare-hcp"] == {"simulate-rest"}
    assert inputs["standins/clip"] == {"simulate", "prepare"}  # scenes.json and the frames
    assert inputs["standins/stable_diffusion"] == {"simulate", "prepare", "standins/clip"}
    assert inputs["pretrain"] == {"prepare-hcp", "prepare"}
    assert inputs["contrast"] == {"prepare", "pretrain", "standins/clip"}
    assert inputs["tune-video"] == {"prepare", "standins/stable_diffusion"}
    assert inputs["cotrain"] == {"prepare", "contrast", "tune-video"}
    # the training split, and the CLIP stand-in whose image embeddings its semantic map decodes
    assert inputs["lowlevel"] == {"prepare", "standins/clip"}
    assert inputs["reconstruct"] == {"prepare", "cotrain", "lowlevel"}
    classifiers = {"standins/image_classifier", "standins/video_classifier"}
    assert inputs["evaluate"] == {"reconstruct", "standins/clip", *classifiers}
    assert inputs["oracle/reconstruct"] == {
        *("prepare", "cotrain", "lowlevel", "standins/stable_diffusion")
    }
    assert inputs["oracle/evaluate"] == {"oracle/reconstruct", "standins/clip", *classifiers}
    assert inputs["explain"] == {"prepare", "pretrain", "contrast", "cotrain"}
    ablation = "ablations/window-1"
    assert inputs[f"{ablation}/cotrain"] == {"prepare", f"{ablation}/contrast", "tune-video"}
    assert inputs["ablations/cfg/reconstruct"] == {"prepare", "cotrain", "lowlevel"}
    assert inputs["ablations/no-lowlevel/reconstruct"] == {"prepare", "cotrain"}
    assert inputs["ablations/keyframe/reconstruct"] == {"prepare", "cotrain", "lowlevel"}
    assert inputs["ablations/no-contrast/cotrain"] == {"prepare", "pretrain", "tune-video"}


def _fake_stage(name: str, config: dict, log: list[str]) -> Stage:
    def go(out: Path) -> None:
        log.append(name)
        out.mkdir(parents=True)
        (out / "made").write_text(json.dumps(config))

    return Stage(name, config, go)


def test_a_stage_runs_again_when_what_it_reads_ran_again_and_only_then(tmp_path):
    from rich.console import Console

    run = tmp_path / "run"
    log: list[str] = []

    def stages(b_setting: int) -> list[Stage]:
        return [
            _fake_stage("a", {"n": 1}, log),
            _fake_stage("b", {"n": b_setting}, log),
            _fake_stage("c", {"reads": str(run / "b" / "made")}, log),
            _fake_stage("d", {"reads": str(run / "a")}, log),
        ]

    recipe = Recipe("tiny", str(run), 0, ablations=False)
    console = Console(stderr=True, quiet=True)
    assert run_stages(recipe, console, stages=stages(1)) == dict.fromkeys("abcd", True)
    assert log == ["a", "b", "c", "d"]
    for name in "abcd":
        assert (run / name / DONE).is_file() and (run / name / "config.yaml").is_file()
    # b's configuration changed: b and c (which reads b) run again; a and d are reused
    assert run_stages(recipe, console, stages=stages(2)) == {
        "a": False,
        "b": True,
        "c": True,
        "d": False,
    }
    assert log[4:] == ["b", "c"]
    # an unfinished stage (no marker) starts afresh, and what reads it runs again
    (run / "a" / DONE).unlink()
    (run / "a" / "partial").write_text("left by a killed run")
    assert run_stages(recipe, console, stages=stages(2))["d"] is True
    assert log[6:] == ["a", "d"] and not (run / "a" / "partial").exists()


def test_an_input_that_ran_again_in_an_earlier_invocation_makes_its_readers_run_again(tmp_path):
    # The demo without --subjects after a change, then with it: the stages only the second
    # plan has must not be reused from before the change.
    from rich.console import Console

    run = tmp_path / "run"
    log: list[str] = []

    def stages(b_setting: int, subjects: bool) -> list[Stage]:
        base = [_fake_stage("a", {"n": 1}, log), _fake_stage("b", {"n": b_setting}, log)]
        extra = [
            _fake_stage("c", {"reads": str(run / "b" / "made")}, log),
            _fake_stage("d", {"reads": str(run / "a")}, log),
        ]
        return base + extra if subjects else base

    recipe = Recipe("tiny", str(run), 0, ablations=False)
    console = Console(stderr=True, quiet=True)
    run_stages(recipe, console, stages=stages(1, subjects=True))
    assert run_stages(recipe, console, stages=stages(2, subjects=False)) == {"a": False, "b": True}
    # c read the b that is gone: it runs again; d read the a that is still there
    assert run_stages(recipe, console, stages=stages(2, subjects=True)) == {
        "a": False,
        "b": False,
        "c": True,
        "d": False,
    }
    assert log == ["a", "b", "c", "d", "b", "c"]
    # the marker records which run of each input the stage read
    marker = json.loads((run / "c" / DONE).read_text())
    assert marker["inputs"] == {"b": hashlib.sha256((run / "b" / DONE).read_bytes()).hexdigest()}
    # a marker that does not record its inputs (an earlier version's) is not trusted
    del marker["inputs"]
    (run / "c" / DONE).write_text(json.dumps(marker))
    assert run_stages(recipe, console, stages=stages(2, subjects=True))["c"] is True
    assert log[-1] == "c"


def test_every_file_of_a_stage_follows_the_umask(tmp_path):
    # save_pretrained writes weights 0600; a stage's folder is as readable as the user's umask
    # makes a plain file
    from rich.console import Console

    run = tmp_path / "run"

    def go(out: Path) -> None:
        (out / "decoder").mkdir(parents=True)
        weights = out / "decoder" / "weights.safetensors"
        weights.write_bytes(b"w")
        weights.chmod(0o600)

    recipe = Recipe("tiny", str(run), 0, ablations=False)
    old = os.umask(0o022)
    try:
        run_stages(recipe, Console(stderr=True, quiet=True), stages=[Stage("w", {}, go)])
    finally:
        os.umask(old)
    assert (run / "w" / "decoder" / "weights.safetensors").stat().st_mode & 0o777 == 0o644


def test_side_by_side_a_failing_stage_stops_the_run_and_leaves_the_others_unfinished(tmp_path):
    # prepare-hcp cannot write where a file stands in its way; simulate, running beside it in
    # the other worker, is stopped and keeps no marker, so a re-run does it again.
    run = tmp_path / "run"
    run.mkdir()
    (run / "prepare-hcp").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        run_demo("tiny", run, jobs=2)
    assert (run / "simulate-rest" / DONE).is_file()
    assert not (run / "simulate" / DONE).exists()
    assert not (run / "prepare-hcp" / DONE).exists()


def test_jobs_must_be_at_least_one(tmp_path):
    from mindvideo.utils.errors import UserError

    with pytest.raises(UserError, match="--jobs must be at least 1"):
        run_demo("tiny", tmp_path / "run", jobs=0)
    assert not (tmp_path / "run").exists()


def test_subjects_plan_trains_each_subjects_own_model_and_one_shared_model(tmp_path):
    """``--subjects 3``: the run's simulation with 3 subjects, each further subject prepared and
    trained alone, one shared contrast and cotrain on all, and every subject reconstructed by
    both with its own low-level decoder; the graph runs each after what it reads."""
    run = tmp_path / "run"
    base = stages_of(Recipe("tiny", str(run), 0, ablations=False))
    stages = stages_of(Recipe("tiny", str(run), 0, ablations=False, subjects=3))
    by = {s.folder: s for s in stages}
    assert [s.folder for s in stages[: len(base)]] == [s.folder for s in base]
    r = run.resolve()
    assert by["subjects/simulate"].config.subjects == 3
    assert by["subjects/prepare-3"].config.subject == 3
    own = by["subjects/subject3/contrast"].config
    assert own.data == str(r / "subjects/prepare-3") and own.subjects == []
    shared = by["subjects/shared/contrast"].config
    assert shared.data == str(r / "prepare")
    assert shared.subjects == [str(r / "subjects/prepare-2"), str(r / "subjects/prepare-3")]
    assert by["subjects/shared/cotrain"].config.subjects == shared.subjects
    for k, data in ((1, r / "prepare"), (3, r / "subjects/prepare-3")):
        recon = by[f"subjects/shared/reconstruct-subject{k}"].config
        assert recon.data == str(data)
        assert recon.checkpoint == str(r / "subjects/shared/cotrain/pipeline")
        low = r / ("lowlevel" if k == 1 else f"subjects/subject{k}/lowlevel")
        assert recon.lowlevel == str(low)  # each subject's own decoder
    order = [s.folder for s in stages]
    for stage in stages:
        for need in needs(stage, stages, run):
            assert order.index(need) < order.index(stage.folder), (need, stage.folder)
    assert "subjects/shared/contrast" in needs(by["subjects/shared/cotrain"], stages, run)


@pytest.mark.parametrize("subjects", [2, 3])
def test_held_out_plan_adapts_the_last_subject_from_a_few_segments(tmp_path, subjects):
    """``--subjects K``: subject K cut to the adapt preset's first segments, the demo's chain on
    those alone, and its adapter onto a model of the others (subjects 1 … K−1 shared; with K = 2
    the run's own pipeline), reconstructed through the adapter; each after what it reads."""
    from mindvideo.config import adapt_preset

    run = tmp_path / "run"
    stages = stages_of(Recipe("tiny", str(run), 0, ablations=False, subjects=subjects))
    by = {s.folder: s for s in stages}
    r, base = run.resolve(), "subjects/held-out"
    cut = str(r / base / "prepare")
    prepare = by[f"{base}/prepare"].config  # from its first segments, the others' ROI
    own = by[f"subjects/prepare-{subjects}"].config
    assert (
        (prepare.root, prepare.subject)
        == (own.root, own.subject)
        == (str(r / "subjects/simulate"), subjects)
    )
    assert prepare.train_segments == adapt_preset("tiny").segments and own.train_segments is None
    others = [str(r / "prepare"), *(str(r / f"subjects/prepare-{k}") for k in range(2, subjects))]
    assert prepare.roi.reference == others and own.roi.reference == []
    assert dataclasses.replace(prepare, train_segments=None, roi=own.roi) == own
    assert by[f"{base}/alone/pretrain"].config.finetune_data == cut
    assert by[f"{base}/alone/lowlevel"].config.data == cut
    alone = by[f"{base}/alone/contrast"].config
    assert alone.data == cut and alone.subjects == []
    assert alone.encoder == str(r / base / "alone/pretrain")
    assert by[f"{base}/alone/reconstruct"].config.lowlevel == str(r / base / "alone/lowlevel")
    if subjects == 3:
        host = by[f"{base}/host/contrast"].config
        assert host.data == str(r / "prepare") and host.subjects == [str(r / "subjects/prepare-2")]
        pipeline = str(r / base / "host/cotrain/pipeline")
    else:
        assert not any(folder.startswith(f"{base}/host") for folder in by)
        pipeline = str(r / "cotrain/pipeline")
    adapt = by[f"{base}/adapt"].config
    assert (adapt.data, adapt.reference, adapt.pipeline) == (cut, str(r / "prepare"), pipeline)
    assert adapt.lowlevel == str(r / "lowlevel")
    recon = by[f"{base}/reconstruct"].config
    assert (recon.data, recon.checkpoint) == (cut, pipeline)
    assert recon.adapter == str(r / base / "adapt") and recon.lowlevel == str(r / "lowlevel")
    evaluate = by[f"{base}/evaluate"].config
    assert evaluate.reconstructions == str(r / base / "reconstruct")
    own = by[f"subjects/subject{subjects}/evaluate"].config
    assert evaluate.scenes_json == own.scenes_json  # labelled as the subject's own model is
    order = [s.folder for s in stages]
    for stage in stages:
        for need in needs(stage, stages, run):
            assert order.index(need) < order.index(stage.folder), (need, stage.folder)
    assert f"{base}/prepare" in needs(by[f"{base}/adapt"], stages, run)
    assert set(needs(by[f"{base}/prepare"], stages, run)) >= {
        "prepare",
        "subjects/simulate",
        *(f"subjects/prepare-{k}" for k in range(2, subjects)),
    }


@pytest.mark.slow
def test_subjects_comparison_pairs_each_subjects_own_model_with_the_shared_one(tiny_demo, tmp_path):
    """``RUN/subjects/subjects.md`` and ``compare-subjectK/``: per subject, its own model's
    evaluation against the shared model's, paired over the same windows (here the tiny demo's
    evaluation stands in for all four, so every difference is 0)."""
    import shutil

    from mindvideo.demo.run import subject_runs, write_subjects_comparison

    assert tiny_demo.returncode == 0, tiny_demo.err
    run = tmp_path / "run"
    for own, shared in subject_runs(run, 2).values():
        for folder in (own, shared):
            if not folder.exists():
                shutil.copytree(tiny_demo.run / "evaluate", folder)
    table = write_subjects_comparison(run, 2).read_text()
    assert "| subject | metric | own model | shared model | difference | p |" in table
    rows = [line for line in table.splitlines() if line.startswith("| subject2 |")]
    assert rows and all("| +0.000 |" in row for row in rows)
    for k in (1, 2):
        comparison = json.loads(
            (run / "subjects" / f"compare-subject{k}" / "comparison.json").read_text()
        )
        assert [r["name"] for r in comparison["runs"]] == [f"subject{k} own", "shared"]
        assert comparison["runs"][1]["paired_with_reference"]


def test_held_out_comparison_gives_both_ratios_against_their_targets(tiny_demo, tmp_path):
    """``RUN/subjects/held-out.md``: the adapted model beside the subject's full-data model and
    the model of its few segments alone, the two ratios of frame 50-way against their targets
    (0.90 and 1.5), and the paired comparison in ``held-out/compare/``."""
    import shutil

    from mindvideo.data.prepared import write_first_segments
    from mindvideo.demo.run import held_out_runs, write_held_out_comparison

    assert tiny_demo.returncode == 0, tiny_demo.err
    run = tmp_path / "run"
    write_first_segments(tiny_demo.run / "prepare", run / "subjects/held-out/prepare", 2)
    for folder in held_out_runs(run, 2).values():
        shutil.copytree(tiny_demo.run / "evaluate", folder)
    table = write_held_out_comparison(run, 2).read_text()
    assert "## Subject 2 as a new subject, from 2 training segments" in table
    assert "its ROI the voxels subject 1's ROI kept (roi.reference)" in table
    assert "onto subject 1's model" in table
    row = next(line for line in table.splitlines() if line.startswith("| frame_50way_top1_true |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == cells[2] == cells[3]
    if float(cells[1]) > 0:  # equal runs: ratio 1, the first target met and the second not
        assert cells[4] == "1.00 (≥ 0.90: met)" and cells[5] == "1.00 (≥ 1.5: not met)"
        # alone scores what the full data score: 1.5 × alone is beyond the full-data model
        full = float(cells[1])
        assert (
            f"The model of 2 segments alone already scores 1.00 of the full-data model on "
            f"frame 50-way, so 1.5 × alone ({1.5 * full:.3f}) asks the adapted model for more "
            f"than the subject's own full-data model scores ({full:.3f})."
        ) in table
    comparison = json.loads((run / "subjects/held-out/compare/comparison.json").read_text())
    assert [r["name"] for r in comparison["runs"]] == ["adapted", "full data", "alone"]
