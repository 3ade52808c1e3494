"""`mindvideo evaluate`, `compare`, `explain` and `report` on a tiny run directory."""

import json

import numpy as np
import pytest
from helpers.run import (
    evaluate_overrides,
    reconstruct_overrides,
    save_classifiers,
    save_encoders,
    write_prepared,
)

from mindvideo.cli import main as cli_main


@pytest.fixture(scope="module")
def mindvideo():
    """``mindvideo`` in-process."""
    return lambda *args: cli_main.main(["-q", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def run(tmp_path_factory, mindvideo):
    """RUN/ built stage by stage through the command line (docs/report.md)."""
    root = tmp_path_factory.mktemp("cli")
    run = root / "RUN"
    write_prepared(run / "prepare")
    save_encoders(run)
    classifiers = save_classifiers(root / "models")
    assert mindvideo("reconstruct", "--out", run / "reconstruct", *reconstruct_overrides(run)) == 0
    overrides = evaluate_overrides(classifiers)
    assert (
        mindvideo(
            "evaluate",
            "--reconstructions",
            run / "reconstruct",
            "--out",
            run / "evaluate",
            *overrides,
        )
        == 0
    )
    # The same reconstructions scored with other distractor draws: a run to compare with.
    assert (
        mindvideo(
            "evaluate",
            "--reconstructions",
            run / "reconstruct",
            "--out",
            root / "other" / "evaluate",
            *overrides,
            "seed=1",
        )
        == 0
    )
    assert mindvideo("compare", run, root / "other", "--out", run / "compare") == 0
    assert (
        mindvideo(
            "explain",
            "--data",
            run / "prepare",
            "--mbm",
            run / "pretrain",
            "--contrast",
            run / "contrast",
            "--cotrain",
            run / "cotrain",
            "--out",
            run / "explain",
            "batch_size=4",
        )
        == 0
    )
    return run


def test_evaluate_writes_documented_keys_with_chance(run):
    doc = json.loads((run / "evaluate" / "metrics.json").read_text())
    chance = {2: (0.75, 0.5), 5: (3 / 7, 0.2)}  # compat (top-3 rule), strict (1/N)
    for level in ("video", "frame"):
        for n_way, (compat, strict) in chance.items():
            assert doc[f"{level}_{n_way}way_top1_compat"]["chance"] == pytest.approx(compat)
            assert doc[f"{level}_{n_way}way_top1_strict"]["chance"] == pytest.approx(strict)
    for key in ("ssim", "psnr", "video_2way_top1_strict"):
        assert {"mean", "se", "chance", "n"} <= set(doc[key]) and doc[key]["n"] == 4
    assert doc["meta"]["standin_classifiers"] is True
    assert doc["meta"]["resized"] == "ground truth"  # 32×32 frames, 16×16 reconstructions
    assert (run / "evaluate" / "samples.json").is_file()
    assert "chance" in (run / "evaluate" / "metrics.md").read_text()


def test_evaluate_prints_the_table(mindvideo, run, tmp_path, capsys):
    assert (
        mindvideo(
            "evaluate", "--reconstructions", run / "reconstruct", "--out", tmp_path, "bootstrap=100"
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| metric | mean ± SE | 95% CI | chance | shuffled chance | n |\n" in out
    assert "| ssim |" in out and "| psnr (dB) |" in out


def test_evaluate_scenes_json_that_does_not_exist_is_a_user_error(mindvideo, run, tmp_path, capsys):
    # The run's data is not simulated: without --scenes-json it simply has no true-label scores.
    doc = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert doc["meta"]["true_labels"]["source"] is None
    assert not any(k.endswith(("_true", "_judge_accuracy")) for k in doc)
    classifiers = {
        "image": run.parent / "models" / "vit",
        "video": run.parent / "models" / "videomae",
    }
    argv = ["evaluate", "--reconstructions", run / "reconstruct", "--out", tmp_path / "e"]
    argv += ["--scenes-json", tmp_path / "none.json", *evaluate_overrides(classifiers)]
    assert mindvideo(*argv) == 2
    err = capsys.readouterr().err
    line = err.splitlines()[-1]  # after the classifiers' loading bars
    assert line.startswith("mindvideo evaluate: error: ") and "none.json does not exist" in line


def test_compare_gives_paired_t_tests(run):
    doc = json.loads((run / "compare" / "comparison.json").read_text())
    assert doc["reference"] == "RUN" and [r["name"] for r in doc["runs"]] == ["RUN", "other"]
    assert doc["runs"][1]["paired_with_reference"] is True
    test = doc["metrics"]["frame_2way_top1_strict"]["tests"]["other"]
    assert test["test"] == "paired" and test["significance"].startswith("p")
    assert (
        "| metric | chance | RUN (reference) | other |"
        in (run / "compare" / "comparison.md").read_text()
    )


def test_explain_writes_network_sums_and_figures(run):
    doc = json.loads((run / "explain" / "networks.json").read_text())
    assert list(doc["stages"]) == ["mbm", "contrast", "cotrain"]
    for stage in doc["stages"].values():
        assert list(stage["networks"]) == ["first", "middle", "last"]
        assert stage["n_samples"] == 6  # every test window (2 segments × 3 TRs)
        for sums in stage["networks"].values():
            assert sum(sums.values()) == pytest.approx(1.0)  # normalised attention
            assert sums["VisCent"] + sums["VisPeri"] == pytest.approx(1.0)  # V1–V4 voxels
    assert doc["stages"]["mbm"]["temporal"] is None
    assert np.asarray(doc["stages"]["cotrain"]["temporal"]["first"]).shape == (2, 2)
    for name in (
        "networks_mbm",
        "networks_contrast",
        "networks_cotrain",
        "networks_stages",
        "flat_maps",
    ):
        assert (run / "explain" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((run / "explain" / "explain.json").read_text())
    assert info["grayordinates"] is True and info["note"] is None
    assert info["stages"]["mbm"]["window"] == 1 and info["stages"]["cotrain"]["pad_mode"] == "zero"


def test_report_prints_its_path(mindvideo, run, capsys):
    assert mindvideo("report", run, "--samples", "2") == 0
    path = run / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    page = path.read_text()
    assert page.count('<figure class="pair">') == 2
    assert "mindvideo report " in page and "Stand-in classifiers." in page
    assert "Attention per network, cotrain" in page and "RUN (reference)" in page


def test_explain_without_grayordinates_saves_summaries_only(mindvideo, run, tmp_path):
    prepared = write_prepared(tmp_path / "authors", grayordinates=False)
    out = tmp_path / "explain"
    assert (
        mindvideo("explain", "--data", prepared, "--contrast", run / "contrast", "--out", out) == 0
    )
    assert (out / "attention_contrast.npz").is_file() and not (out / "networks.json").exists()
    info = json.loads((out / "explain.json").read_text())
    assert info["grayordinates"] is False and "voxel_grayordinates" in info["note"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--out", "{tmp}/e"], "--reconstructions"),
        (["evaluate", "--reconstructions", "{tmp}/none", "--out", "{tmp}/e"], "does not exist"),
        (["compare", "{run}", "--out", "{tmp}/c"], "at least two runs"),
        (["compare", "{run}", "{tmp}", "--out", "{tmp}/c"], "metrics.json"),
        (["explain", "--data", "{run}/prepare", "--out", "{tmp}/x"], "at least one encoder"),
        (
            ["explain", "--data", "{run}/prepare", "--mbm", "{tmp}", "--out", "{tmp}/x"],
            "holds no encoder",
        ),
        (
            ["explain", "--data", "{tmp}/small", "--mbm", "{run}/pretrain", "--out", "{tmp}/x"],
            "takes 64 voxels",
        ),
        (["report", "{tmp}/nope"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(mindvideo, run, tmp_path, capsys, args, message):
    from mindvideo.data.prepared import PreparedWriter

    if "{tmp}/small" in args:  # a subject with 20 voxels: not what the encoders were trained on
        w = PreparedWriter(tmp_path / "small")
        rng = np.random.default_rng(0)
        w.write_array("fmri_train", rng.normal(size=(1, 3, 20)).astype(np.float32))
        w.write_array("fmri_test", rng.normal(size=(1, 3, 20)).astype(np.float32))
        for split in ("train", "test"):
            w.write_array(f"frames_{split}", np.zeros((1, 3, 6, 16, 16, 3), np.uint8))
        w.finish()
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    assert mindvideo(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mindvideo {argv[0]}: error: ") and message in err
    assert "Traceback" not in err
