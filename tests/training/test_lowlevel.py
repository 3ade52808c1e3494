"""`mindvideo lowlevel`: the low-level decoder fitted on the training split, saved, planned."""

import json

import numpy as np
import pytest
import torch
from helpers.cli import assert_one_line_error, run_quiet

from mindvideo.config import LowLevelConfig, PretrainedPaths
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.data.ridge import RidgeDecoder, window_features
from mindvideo.data.video import area_frames
from mindvideo.encoder.lowlevel import LowLevelDecoder
from mindvideo.training.lowlevel import LOWLEVEL_JSON, lowlevel, plan_lowlevel

TRS, VOXELS, SIZE = 24, 30, 16


def scene_data(segments: int, rng: np.random.Generator, mixing: np.ndarray):
    """fMRI ``[S, T, V]`` that sees each TR's colours one TR later (a haemodynamic lag), and
    frames ``[S, T, 6, 16, 16, 3]``: the left half one colour, the right half another."""
    colours = rng.random((segments, TRS, 6))  # left RGB, right RGB per TR
    frames = np.zeros((segments, TRS, 6, SIZE, SIZE, 3), np.uint8)
    frames[..., : SIZE // 2, :] = (colours[:, :, None, None, None, :3] * 255).round()
    frames[..., SIZE // 2 :, :] = (colours[:, :, None, None, None, 3:] * 255).round()
    lagged = np.roll(colours, 1, axis=1)
    fmri = lagged @ mixing + 0.1 * rng.normal(size=(segments, TRS, VOXELS))
    return fmri.astype(np.float32), frames


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, VOXELS))
    fmri_train, frames_train = scene_data(6, rng, mixing)
    fmri_test, frames_test = scene_data(2, rng, mixing)
    root = tmp_path_factory.mktemp("lowlevel") / "prepared"
    w = PreparedWriter(root)
    w.write_array("fmri_train", fmri_train)
    w.write_array("fmri_test", fmri_test)
    w.write_array("frames_train", frames_train)
    w.write_array("frames_test", frames_test)
    w.finish()
    return root


def cfg(prepared, **changes) -> LowLevelConfig:
    base = dict(data=str(prepared), window=2, frame_size=4, folds=3, alphas=[0.1, 1.0, 10.0])
    return LowLevelConfig(**{**base, **changes})


def test_the_decoder_reads_the_layout_and_colours_of_unseen_windows(prepared, tmp_path):
    folder = lowlevel(cfg(prepared), tmp_path / "out")
    decoder = LowLevelDecoder.from_pretrained(folder)
    data = PreparedData.open(prepared)
    x = window_features(np.asarray(data.fmri_test), 2)  # [S, T, 2·V]
    video = decoder(torch.from_numpy(x.reshape(-1, x.shape[-1]))).detach().numpy()
    truth = area_frames(np.asarray(data.frames_test), 4).reshape(-1, 6, 4, 4, 3)
    assert video.shape == (2 * TRS, 6, 3, 4, 4)
    decoded = video.transpose(0, 1, 3, 4, 2)
    # Every test TR's decoded video is nearest its own ground truth (the last TR of each
    # segment has no lagged response in its window: it is left out).
    keep = [s * TRS + t for s in range(2) for t in range(TRS - 1)]
    d, g = decoded[keep].reshape(len(keep), -1), truth[keep].reshape(len(keep), -1)
    distance = ((d[:, None] - g[None]) ** 2).sum(-1)
    assert (distance.argmin(axis=1) == np.arange(len(keep))).mean() > 0.9
    report = json.loads((tmp_path / "out" / LOWLEVEL_JSON).read_text())
    assert report["training_windows"] == 6 * TRS and report["targets"] == 6 * 4 * 4 * 3
    # One penalty for every target, chosen by held-out identification (the default).
    assert report["selection"] == "identification"
    assert report["alpha_range"][0] == report["alpha_range"][1]


def test_nothing_fitted_reads_the_test_split(prepared, tmp_path):
    """The test fMRI and frames replaced by NaN and noise: the same decoder, bit for bit."""
    data = PreparedData.open(prepared)
    other = tmp_path / "prepared"
    w = PreparedWriter(other)
    w.write_array("fmri_train", np.asarray(data.fmri_train))
    w.write_array("frames_train", np.asarray(data.frames_train))
    w.write_array("fmri_test", np.full_like(np.asarray(data.fmri_test), np.nan))
    w.write_array("frames_test", np.zeros_like(np.asarray(data.frames_test)))
    w.finish()
    a = LowLevelDecoder.from_pretrained(lowlevel(cfg(prepared), tmp_path / "a"))
    b = LowLevelDecoder.from_pretrained(lowlevel(cfg(other), tmp_path / "b"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_held_out_predictions_come_from_maps_that_never_saw_their_segment():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 2)) + 0.5 * rng.normal(size=(40, 2))).astype(np.float32)
    groups = np.repeat(np.arange(4), 10)
    fitted = RidgeDecoder(alphas=[1.0], folds=2).fit(x, y, groups, held_out=True)
    # segments 0 and 2 are fold 0, 1 and 3 fold 1: fold 0 is predicted by the fold-1 map
    fold0 = np.isin(groups, [0, 2])
    alone = RidgeDecoder(alphas=[1.0], folds=2).fit(x[~fold0], y[~fold0], groups[~fold0])
    # the same penalty, centred the same way; the z-scoring differs (all data vs the fold), so
    # compare against the closed form on the fold-centred design directly
    xc, yc = x[~fold0] - x[~fold0].mean(0), y[~fold0] - y[~fold0].mean(0)
    scale = x.std(0)
    xs = xc / scale
    w = np.linalg.solve(xs.T @ xs + np.eye(6), xs.T @ yc)
    expected = ((x[fold0] - x[~fold0].mean(0)) / scale) @ w + y[~fold0].mean(0)
    np.testing.assert_allclose(fitted.held_out_[fold0], expected, rtol=1e-4, atol=1e-4)
    assert alone.held_out_ is None  # only kept when asked for


@pytest.mark.parametrize("identification_weight", [0.0, 0.5])
def test_the_refiner_learns_and_is_saved_in_the_decoder(prepared, tmp_path, identification_weight):
    settings = dict(out_size=8, refiner_steps=60, refiner_channels=8, refiner_batch_size=16)
    config = cfg(prepared, identification_weight=identification_weight, **settings)
    folder = lowlevel(config, tmp_path / "out")
    report = json.loads((tmp_path / "out" / LOWLEVEL_JSON).read_text())
    assert report["refiner"]["loss_last"] < report["refiner"]["loss_first"]
    assert 0 < report["held_out_linear"]["r2"] <= 1
    decoder = LowLevelDecoder.from_pretrained(folder)
    assert decoder.refiner is not None
    assert decoder(torch.zeros(1, 2 * VOXELS)).shape == (1, 6, 3, 8, 8)


@pytest.fixture(scope="module")
def clip(prepared, tmp_path_factory):
    """A tiny CLIP trained a few steps on the training frames (32 × 32) and their colours."""
    from helpers.clip import IMAGE_SIZE, build_tiny_clip

    frames = np.asarray(PreparedData.open(prepared).frames_train)[:, :, 3].reshape(
        -1, SIZE, SIZE, 3
    )
    images = [
        np.kron(f, np.ones((IMAGE_SIZE // SIZE, IMAGE_SIZE // SIZE, 1), np.uint8)) for f in frames
    ]

    def word(half: np.ndarray) -> str:
        return "bright" if half.mean() > 127 else "dark"

    captions = [f"{word(f[:, : SIZE // 2])} left {word(f[:, SIZE // 2 :])} right" for f in frames]
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", captions, (images, captions))


def test_the_semantic_map_decodes_clip_embeddings_for_the_refiner(prepared, clip, tmp_path):
    """``semantic_channels``: ridge to the CLIP image embedding of each TR's middle frame; its
    held-out predictions train the refiner, and the decoder carries the map."""
    settings = dict(out_size=8, refiner_steps=60, refiner_channels=8, refiner_batch_size=16)
    config = cfg(
        prepared, semantic_channels=4, pretrained=PretrainedPaths(clip=str(clip)), **settings
    )
    folder = lowlevel(config, tmp_path / "out")
    report = json.loads((tmp_path / "out" / LOWLEVEL_JSON).read_text())
    assert report["semantic"]["dim"] == 16
    assert report["semantic"]["held_out"]["pattern_r"] > 0.5  # the colours are in the fMRI
    assert report["refiner"]["loss_last"] < report["refiner"]["loss_first"]
    decoder = LowLevelDecoder.from_pretrained(folder)
    assert decoder.semantic is not None and decoder.config.semantic_channels == 4
    # the decoded embedding of test windows is nearest the CLIP embedding of their own frame
    from mindvideo.training.clip_towers import load_clip

    data = PreparedData.open(prepared)
    x = window_features(np.asarray(data.fmri_test), 2)[:, :-1].reshape(-1, 2 * VOXELS)
    middle = np.asarray(data.frames_test)[:, :-1, 3].reshape(-1, SIZE, SIZE, 3)
    truth = load_clip(clip).encode_images(list(middle)).numpy()
    decoded = decoder.semantic_embedding(torch.from_numpy(x)).detach().numpy()
    truth = truth / np.linalg.norm(truth, axis=1, keepdims=True)  # as the map's targets
    centre = truth.mean(axis=0)  # what every frame's embedding shares
    r = np.corrcoef(decoded - centre, truth - centre)[: len(x), len(x) :]
    two_way = (r < np.diag(r)[:, None]).sum(axis=1) / (len(x) - 1)  # own against each other
    assert two_way.mean() > 0.7  # chance 0.5; 0.78 measured
    # the map is ridge on the training windows, each dimension's penalty by held-out error
    train = window_features(np.asarray(data.fmri_train), 2).reshape(-1, 2 * VOXELS)
    middle = np.asarray(data.frames_train)[:, :, 3].reshape(-1, SIZE, SIZE, 3)
    z = load_clip(clip).encode_images(list(middle)).numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    ridge = RidgeDecoder(alphas=config.alphas, folds=3, selection="mse")
    ridge.fit(train, z, np.repeat(np.arange(6), TRS))
    np.testing.assert_allclose(decoded, ridge.predict(x), rtol=1e-4, atol=1e-4)
    assert decoder(torch.from_numpy(x[:2])).shape == (2, 6, 3, 8, 8)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(out_size=6), "out_size 6 must be a multiple of frame_size 4"),
        (dict(refiner_steps=5), "set out_size to a multiple of it"),
        (dict(frame_size=5), "must divide them"),
        (dict(folds=1), "folds must be at least 2"),
        (dict(alphas=[]), "positive ridge penalties"),
        (dict(selection="r2"), "selection must be one of mse, identification"),
        (dict(identification_weight=-1.0), "must be 0 or more, not 1.0 and -1.0"),
        (dict(identification_temperature=0.0), "identification_temperature must be positive"),
        (dict(semantic_channels=-1), "semantic_channels must be 0 or more"),
        (dict(semantic_channels=4), "read by the refiner, but refiner_steps is 0"),
        (
            dict(semantic_channels=4, refiner_steps=5, out_size=8),
            r"set pretrained.clip \(flag --clip\)",
        ),
        (dict(data=None), "needs a prepared subject"),
    ],
)
def test_bad_settings_are_refused_before_any_work(prepared, tmp_path, changes, message):
    from mindvideo.utils import UserError

    with pytest.raises(UserError, match=message):
        lowlevel(cfg(prepared, **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dry_run_plans_the_map_and_the_refiner_and_writes_nothing(prepared, clip, tmp_path, capsys):
    plan = plan_lowlevel(cfg(prepared, out_size=8, refiner_steps=10), tmp_path / "out")
    text = plan.format()
    assert "144 = 6 segments × 24 TRs" in text and "60 = 2 TRs × 30 voxels" in text
    assert "288 = 6 frames × 4² × 3" in text and "phase 2/2: refiner" in text
    assert plan.phases[0].models[0].parameters == 60 * 288 + 288
    assert not (tmp_path / "out").exists()
    semantic = cfg(
        prepared,
        out_size=8,
        refiner_steps=10,
        semantic_channels=4,
        pretrained=PretrainedPaths(clip=str(clip)),
    )
    text = plan_lowlevel(semantic, tmp_path / "out").format()
    assert "phase 2/3: semantic map" in text and "16 = the CLIP image embedding" in text
    assert "phase 3/3: refiner" in text and "semantic map's embedding (4 template" in text
    code, err = run_quiet(
        ["lowlevel", "--data", str(prepared), "--dry-run", "window=2", "frame_size=5"], capsys
    )
    assert_one_line_error(code, err, "lowlevel", "must divide them")
