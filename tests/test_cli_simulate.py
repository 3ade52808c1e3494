"""`mindvideo simulate`: the dataset, the rest corpus, config.yaml, clean errors."""

import nibabel as nib
import pytest
import yaml

from mindvideo.cli.main import main

SMALL = ["train_segments=1", "test_segments=1", "test_repetitions=1"]  # keep the runs few


def test_simulate_writes_the_wen_layout_and_config(tmp_path):
    out = tmp_path / "X"
    assert main(["simulate", "--preset", "tiny", "--out", str(out), "--subjects", "2", *SMALL]) == 0
    for subject in ("subject1", "subject2"):
        img = nib.load(out / subject / "fmri/test1/cifti/test1_1_Atlas.dtseries.nii")
        assert img.shape[0] == 245 and img.header.get_axis(0).step == 2.0
    assert (out / "subject1/fmri/seg1/cifti/seg1_2_Atlas.dtseries.nii").is_file()
    assert (out / "stimuli/test1.mp4").is_file() and (out / "ground_truth.npz").is_file()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["subjects"] == 2 and cfg["train_segments"] == 1 and cfg["frame_size"] == 32


def test_simulate_rest(tmp_path):
    out = tmp_path / "rest"
    assert main(["simulate", "--preset", "tiny", "--rest", "--out", str(out), "seed=3"]) == 0
    runs = sorted(out.glob("*/MNINonLinear/Results/rfMRI_*/rfMRI_*_Atlas.dtseries.nii"))
    assert [p.name for p in runs] == [
        "rfMRI_REST1_LR_Atlas.dtseries.nii",
        "rfMRI_REST1_RL_Atlas.dtseries.nii",
    ]
    assert nib.load(runs[0]).shape[0] == 300
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3


def test_non_empty_out_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "not empty" in err and "choose another --out or delete it" in err


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [("rest.volume=10", "'rest.volumes'"), ("snrr=2", "'snr'"), ("frame_sise=64", "'frame_size'")],
)
def test_unknown_key_names_the_closest(tmp_path, capsys, override, suggestion):
    assert main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "y"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Unknown config key" in err and suggestion in err
    assert not (tmp_path / "y").exists()


def test_invalid_value_is_a_user_error(tmp_path, capsys):
    assert (
        main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "z"), "frame_size=33"]) == 2
    )
    assert "frame_size must be even" in capsys.readouterr().err
