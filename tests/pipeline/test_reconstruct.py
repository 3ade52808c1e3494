"""`mindvideo reconstruct`: one clip per window, index, stacked arrays, resumable, clean errors."""

import argparse
import json

import numpy as np
import pytest
import torch
from helpers.pipeline import IMAGE_SIZE, tiny_pipeline, write_window_prepared

from mindvideo.cli import reconstruct as cli_reconstruct
from mindvideo.cli.main import main
from mindvideo.config import ReconstructConfig
from mindvideo.data.video import video_info
from mindvideo.pipeline import MindVideoPipeline, reconstruct, window_seed
from mindvideo.utils import UserError

N_TRS = 3


def write_prepared(root, n_voxels=60, seed=0):
    """1 test segment of N_TRS TRs, n_voxels voxels (60: the tiny encoder pads to 64)."""
    return write_window_prepared(root, n_voxels, seed, test_trs=N_TRS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct")
    tiny_pipeline().save_pretrained(root / "checkpoint")
    return root / "checkpoint", write_prepared(root / "prepared")


def config(setup, **changes) -> ReconstructConfig:
    checkpoint, data = setup
    base = dict(
        checkpoint=str(checkpoint),
        data=str(data),
        num_inference_steps=2,
        batch_size=2,  # windows (0, 1) and (2,) are the fixed batches
        seed=3,
    )
    return ReconstructConfig(**{**base, **changes})


def loaded(setup) -> tuple[MindVideoPipeline, list[int]]:
    """The checkpoint's pipeline with a counter of UNet calls."""
    pipe = MindVideoPipeline.from_pretrained(setup[0])
    calls: list[int] = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    return pipe, calls


def test_writes_one_clip_per_window_an_index_and_stacked_arrays(setup, tmp_path):
    out = tmp_path / "out"
    result = reconstruct(config(setup), out)
    assert (result.n_windows, result.generated, result.skipped) == (3, 3, 0)
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["num_frames"] == 6 and index["height"] == IMAGE_SIZE
    assert [(w["segment"], w["tr"]) for w in index["windows"]] == [(0, 0), (0, 1), (0, 2)]
    assert index["windows"][2]["fmri_trs"] == [2, 2]  # clamped at the segment end
    assert index["windows"][1]["seed"] == window_seed(3, 0, 1)
    recon = np.load(out / "reconstructions.npy")
    truth = np.load(out / "ground_truth.npy")
    assert recon.shape == (3, 6, IMAGE_SIZE, IMAGE_SIZE, 3) and recon.dtype == np.uint8
    prepared_frames = np.load(setup[1] / "frames_test.npy")
    np.testing.assert_array_equal(truth, prepared_frames[0])  # the 6 frames of each TR
    for i, w in enumerate(index["windows"]):
        assert w["mp4"] == f"clips/seg00_tr{i:03d}.mp4"
        np.testing.assert_array_equal(np.load(out / w["frames"]), recon[i])
        assert video_info(out / w["mp4"]).n_frames == 6
        assert (out / w["gif"]).stat().st_size > 0
    assert (out / "config.yaml").is_file()
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temporary files left


def test_a_rerun_skips_finished_clips_and_a_resumed_clip_is_bitwise_the_same(setup, tmp_path):
    out = tmp_path / "out"
    reconstruct(config(setup), out)
    before = np.load(out / "reconstructions.npy")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}

    pipe, calls = loaded(setup)
    again = reconstruct(config(setup), out, pipeline=pipe)
    assert (again.generated, again.skipped) == (0, 3) and calls == []
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == mtimes

    (out / "clips" / "seg00_tr001.mp4").unlink()  # as if interrupted before this clip
    (out / "clips" / "seg00_tr001.npy").unlink()
    resumed = reconstruct(config(setup), out, pipeline=pipe)
    assert (resumed.generated, resumed.skipped) == (1, 2)
    assert len(calls) == 2 * 1  # 2 steps of the one batch holding that window
    np.testing.assert_array_equal(np.load(out / "clips" / "seg00_tr001.npy"), before[1])
    np.testing.assert_array_equal(np.load(out / "reconstructions.npy"), before)
    assert (out / "clips" / "seg00_tr000.mp4").stat().st_mtime_ns == mtimes[
        out / "clips" / "seg00_tr000.mp4"
    ]


def test_other_settings_in_the_same_out_are_refused(setup, tmp_path):
    reconstruct(config(setup, limit=1, gif=False), tmp_path / "out")
    with pytest.raises(UserError, match="guidance_scale"):
        reconstruct(config(setup, limit=1, guidance_scale=3.0), tmp_path / "out")


def test_longer_windows_and_the_null_negative(setup, tmp_path):
    out = tmp_path / "out"
    reconstruct(config(setup, window=3, negative="null", limit=2, gif=False), out)
    index = json.loads((out / "index.json").read_text())
    assert index["num_frames"] == 12
    assert index["windows"][1]["frame_trs"] == [1, 2]
    assert np.load(out / "reconstructions.npy").shape == (2, 12, IMAGE_SIZE, IMAGE_SIZE, 3)
    truth = np.load(out / "ground_truth.npy")
    frames = np.load(setup[1] / "frames_test.npy")[0]
    np.testing.assert_array_equal(truth[1], np.concatenate([frames[1], frames[2]]))


def test_a_data_directory_of_another_voxel_count_is_a_user_error(setup, tmp_path):
    data = write_prepared(tmp_path / "other", n_voxels=80)
    with pytest.raises(UserError) as err:
        reconstruct(config(setup, data=str(data)), tmp_path / "out")
    assert "80 voxels" in str(err.value) and "expects 64" in str(err.value)


def test_bad_settings_are_user_errors(setup, tmp_path):
    with pytest.raises(UserError, match="window = 1 is shorter"):
        reconstruct(config(setup, window=1), tmp_path / "out")
    with pytest.raises(UserError, match="Unknown negative"):
        reconstruct(config(setup, negative="mean-all"), tmp_path / "out")
    with pytest.raises(UserError, match="float16 needs a GPU"):
        reconstruct(config(setup, dtype="float16", device="cpu"), tmp_path / "out")
    with pytest.raises(UserError, match="Unknown scheduler"):
        reconstruct(config(setup, scheduler="fastest"), tmp_path / "out")


def argv(checkpoint, data, out, *overrides) -> list[str]:
    return [
        "reconstruct",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(out),
        *overrides,
    ]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="mindvideo")
    cli_reconstruct.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_missing_checkpoint_is_a_one_line_user_error(setup, tmp_path):
    args = _cli(argv(tmp_path / "nope", setup[1], tmp_path / "out"))
    with pytest.raises(UserError) as err:
        args.func(args)
    assert "nope does not exist" in str(err.value) and "\n" not in str(err.value)


def test_cli_runs_with_flags_and_overrides(setup, tmp_path):
    overrides = ("num_inference_steps=1", "limit=1", "gif=false")
    args = _cli(argv(setup[0], setup[1], tmp_path / "out", *overrides))
    assert args.func(args) == 0
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "num_inference_steps: 1" in saved and str(setup[0]) in saved
    assert np.load(tmp_path / "out" / "reconstructions.npy").shape[0] == 1


def test_main_exits_2_with_one_line_for_a_missing_checkpoint(setup, tmp_path, capsys):
    code = main(argv(tmp_path / "nope", setup[1], tmp_path / "out"))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope does not exist" in err


def test_window_seeds_differ_and_are_stable():
    seeds = {window_seed(0, s, t) for s in range(5) for t in range(240)}
    assert len(seeds) == 1200
    assert window_seed(0, 1, 2) == window_seed(0, 1, 2) != window_seed(1, 1, 2)
    torch.Generator().manual_seed(max(seeds))  # within torch's seed range


def test_the_saved_scheduler_is_used_unless_another_is_named(setup, tmp_path, caplog):
    """scheduler unset: the pipeline's own (here DDIM, as cotrain saves); naming the same
    sampler gives the same clips, another sampler other clips."""
    import logging

    with caplog.at_level(logging.INFO, logger="mindvideo.pipeline.reconstruct"):
        reconstruct(config(setup, limit=2), tmp_path / "saved")
    assert "sampler: DDIMScheduler (the pipeline's saved scheduler" in caplog.text
    reconstruct(config(setup, limit=2, scheduler="ddim"), tmp_path / "ddim")
    reconstruct(config(setup, limit=2, scheduler="dpm-solver++"), tmp_path / "other")
    saved = np.load(tmp_path / "saved" / "reconstructions.npy")
    np.testing.assert_array_equal(saved, np.load(tmp_path / "ddim" / "reconstructions.npy"))
    assert not np.array_equal(saved, np.load(tmp_path / "other" / "reconstructions.npy"))
    index = json.loads((tmp_path / "saved" / "index.json").read_text())
    assert index["settings"]["scheduler"] is None
