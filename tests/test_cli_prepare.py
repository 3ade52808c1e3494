"""`mindvideo prepare`: Wen 2018 and HCP from the command line, config.yaml, clean errors."""

from __future__ import annotations

import pytest
import yaml

from mindvideo.cli import main as cli_main
from mindvideo.data.prepared import PreparedData

TINY = ["roi.correction=none", "frame_size=32"]  # the tiny recipe (4 training segments)


def test_prepare_wen2018_writes_the_subject_config_and_a_summary(
    simulated_dataset, tmp_path, capsys
):
    out = tmp_path / "subject1"
    argv = ["-q", "prepare", "--dataset", "wen2018", "--root", str(simulated_dataset)]
    argv += ["--out", str(out)]
    assert cli_main.main([*argv, "--subject", "1", *TINY]) == 0
    data = PreparedData.open(out)
    summary = capsys.readouterr().out.strip()
    assert "\n" not in summary
    assert f"{data.n_voxels} voxels kept by the reproducibility ROI" in summary
    assert "[4, 240, 6, 32, 32, 3]" in summary and str(out) in summary
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["root"] == str(simulated_dataset) and cfg["subject"] == 1
    assert cfg["dataset"] == "wen2018" and cfg["roi"]["correction"] == "none"

    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli_main.main([*argv, *TINY]) == 0  # same inputs and config: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_prepare_hcp_from_a_config_file(simulated_rest, tmp_path, capsys):
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text(f"dataset: hcp\nroot: {simulated_rest}\nhcp:\n  shard_frames: 500\n")
    out = tmp_path / "corpus"
    assert cli_main.main(["-q", "prepare", "--config", str(recipe), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "600 frames" in summary and "in 2 shards of up to 500 frames" in summary
    assert sorted(p.name for p in out.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    assert yaml.safe_load((out / "config.yaml").read_text())["hcp"]["shard_frames"] == 500


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "wen2018"], "pass --root"),
        (["--dataset", "wen2018", "--root", "{tmp}/nowhere"], "does not exist"),
        (["--dataset", "hcp", "--root", "{tmp}"], "No HCP runs found"),
        (["--root", "{tmp}", "--dataset", "wen2018-preprocessed"], "video_train_256_3hz.npy"),
        (["--root", "{tmp}", "test_repetitions=each"], "'average' or 'keep'"),
        (["--root", "{tmp}", "roi.alpah=0.1"], "did you mean 'roi.alpha'"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    argv = ["prepare", *(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "o")]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("mindvideo prepare: error:") and message in err
    assert not (tmp_path / "o" / "manifest.json").exists()
