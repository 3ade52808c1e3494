"""`mindvideo reconstruct lowlevel=DIR strength=S`: the low-level video starts the sampler."""

import json

import numpy as np
import pytest
import torch
from helpers.pipeline import tiny_pipeline, write_window_prepared

from mindvideo.config import LowLevelConfig, ReconstructConfig
from mindvideo.data.prepared import PreparedData
from mindvideo.data.ridge import window_features
from mindvideo.pipeline import MindVideoPipeline, reconstruct
from mindvideo.pipeline.dry_run import plan_reconstruct
from mindvideo.pipeline.lowlevel_video import load_lowlevel
from mindvideo.training.lowlevel import lowlevel
from mindvideo.utils import UserError

N_TRS = 3


def write_prepared(root, n_voxels=60, seed=0):
    """1 test segment of N_TRS TRs, n_voxels voxels (60: the tiny encoder pads to 64)."""
    return write_window_prepared(root, n_voxels, seed, train_segments=3, test_trs=N_TRS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowlevel-path")
    tiny_pipeline().save_pretrained(root / "checkpoint")
    data = write_prepared(root / "prepared")
    lowlevel(
        LowLevelConfig(data=str(data), window=2, frame_size=4, folds=3, alphas=[1.0, 100.0]),
        root / "lowlevel",
    )
    return root


def config(root, **changes) -> ReconstructConfig:
    base = dict(
        checkpoint=str(root / "checkpoint"),
        data=str(root / "prepared"),
        num_inference_steps=4,
        batch_size=2,
        seed=3,
        gif=False,
        lowlevel=str(root / "lowlevel"),
        strength=0.5,
    )
    return ReconstructConfig(**{**base, **changes})


def test_each_clip_starts_from_its_windows_low_level_video(setup, tmp_path, monkeypatch):
    """The pipeline gets each window's decoded video (decoded from the prepared fMRI window of
    every TR the clip shows) and the strength; half the steps run."""
    seen = []
    call = MindVideoPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["video"].clone(), kwargs["strength"]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(MindVideoPipeline, "__call__", spy)
    calls = []
    original = MindVideoPipeline.predict_noise
    monkeypatch.setattr(
        MindVideoPipeline,
        "predict_noise",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    reconstruct(config(setup, window=3), tmp_path / "out")  # 2 TRs' frames per clip
    decoder = load_lowlevel(setup / "lowlevel")
    fmri = np.asarray(PreparedData.open(setup / "prepared").fmri_test)
    x = torch.from_numpy(window_features(fmri, 2)[0])  # [T, 2·V]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    videos = torch.cat([video for video, _ in seen])
    assert videos.shape == (N_TRS, 12, 3, 4, 4) and {s for _, s in seen} == {0.5}
    for row, w in enumerate(index["windows"]):
        expected = torch.cat([decoder(x[t : t + 1])[0] for t in w["frame_trs"]])
        torch.testing.assert_close(videos[row], expected)
    assert len(calls) == 2 * 2  # 2 batches × 2 of the 4 steps
    assert index["settings"]["strength"] == 0.5
    assert index["settings"]["lowlevel"] == str((setup / "lowlevel").resolve())


def test_without_the_path_sampling_is_unchanged_and_strength_is_not_a_setting(setup, tmp_path):
    plain = config(setup, lowlevel=None)
    reconstruct(plain, tmp_path / "a")
    reconstruct(plain.__class__(**{**plain.__dict__, "strength": 0.9}), tmp_path / "b")  # resumes
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["settings"]["lowlevel"] is None and index["settings"]["strength"] is None
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "reconstructions.npy"),
        np.load(tmp_path / "b" / "reconstructions.npy"),
    )
    reconstruct(config(setup), tmp_path / "c")
    assert not np.array_equal(
        np.load(tmp_path / "a" / "reconstructions.npy"),
        np.load(tmp_path / "c" / "reconstructions.npy"),
    )


def test_keyframe_keeps_the_low_level_videos_first_frame(setup, tmp_path, monkeypatch):
    """keyframe=true: the pipeline also gets the low-level video's first frame as the keyframe,
    so every clip's first frame is that frame's VAE round trip; the setting is recorded."""
    seen = []
    call = MindVideoPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["video"].clone(), kwargs["keyframe"].clone()))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(MindVideoPipeline, "__call__", spy)
    reconstruct(config(setup, keyframe=True), tmp_path / "key")
    for video, keyframe in seen:
        torch.testing.assert_close(keyframe, video[:, 0])
    index = json.loads((tmp_path / "key" / "index.json").read_text())
    assert index["settings"]["keyframe"] is True
    monkeypatch.undo()
    reconstruct(config(setup), tmp_path / "plain")
    assert (
        json.loads((tmp_path / "plain" / "index.json").read_text())["settings"]["keyframe"] is False
    )
    key, plain = (
        np.load(tmp_path / d / "reconstructions.npy").astype(int) for d in ("key", "plain")
    )
    pipe = MindVideoPipeline.from_pretrained(setup / "checkpoint")
    keyframes = torch.cat([k for _, k in seen])
    with torch.no_grad():
        size = pipe.default_size
        latents = pipe.encode_video(keyframes[:, None], len(keyframes), 1, size, size)
        expected = pipe.to_uint8(pipe.decode_latents(latents))[:, 0].astype(int)
    assert np.abs(key[:, 0] - expected).max() <= 1  # uint8 rounding
    assert np.abs(plain[:, 0] - expected).mean() > 1  # without it the first frame is the model's
    assert (
        "its first frame kept as the keyframe"
        in plan_reconstruct(config(setup, keyframe=True)).format()
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(keyframe=True, lowlevel=None), "set lowlevel too"),
        (dict(strength=0.0), "strength must be in"),
        (dict(strength=1.5), "strength must be in"),
        (dict(strength=0.2), "leaves no denoising step"),
        (dict(lowlevel="missing"), "holds no low-level decoder"),
    ],
)
def test_bad_low_level_settings_are_refused(setup, tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        reconstruct(config(setup, **changes), tmp_path / "out")


def test_raw_runs_and_another_subjects_decoder_are_refused(setup, tmp_path):
    with pytest.raises(UserError, match="cannot run on raw runs"):
        reconstruct(config(setup, data=None, fmri=["run.dtseries.nii"]), tmp_path / "out")
    other = write_prepared(tmp_path / "other", n_voxels=50)
    with pytest.raises(UserError, match="fitted on 60 voxels per TR"):
        reconstruct(config(setup, data=str(other)), tmp_path / "out2")
    with pytest.raises(UserError, match="fitted on 60 voxels per TR"):
        plan_reconstruct(config(setup, data=str(other)))


def test_dry_run_shows_the_path_and_the_steps_it_saves(setup):
    text = plan_reconstruct(config(setup)).format()
    assert "strength 0.5: 2 of 4 steps run" in text
    assert "2 of 2 windows → 4 UNet calls" in text or "→ 4 UNet calls" in text
    assert "low-level decoder (window 2, 6 frames of 4²)" in text
    plain = plan_reconstruct(config(setup, lowlevel=None)).format()
    assert "off (sampling starts from noise, the paper's method)" in plain


def test_a_pipeline_folder_may_carry_its_decoder(setup, tmp_path):
    """A copy of the decoder in PIPELINE/lowlevel: the pipeline still loads, and
    lowlevel=PIPELINE finds it (the same clips as from the stage's folder)."""
    import shutil

    pipeline = tmp_path / "pipeline"
    shutil.copytree(setup / "checkpoint", pipeline)
    shutil.copytree(setup / "lowlevel" / "decoder", pipeline / "lowlevel")
    reconstruct(config(setup, checkpoint=str(pipeline), lowlevel=str(pipeline)), tmp_path / "a")
    reconstruct(config(setup), tmp_path / "b")
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "reconstructions.npy"),
        np.load(tmp_path / "b" / "reconstructions.npy"),
    )
