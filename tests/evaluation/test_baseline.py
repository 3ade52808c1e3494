"""The ridge baseline: windows, the decoder, N-way identification and shuffled chance."""

import numpy as np
import pytest

from mindvideo.evaluation.baseline import (
    RidgeDecoder,
    format_baseline,
    label_identification,
    mean_frames,
    pattern_identification,
    shuffled_chance,
    window_features,
)
from mindvideo.utils import UserError


def test_window_features_concatenate_and_clamp():
    fmri = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    x = window_features(fmri, 3)
    assert x.shape == (2, 5, 9)
    np.testing.assert_array_equal(x[1, 0], fmri[1, 0:3].ravel())
    # The last TR's window repeats the segment's last TR (as the pipeline's windows do).
    np.testing.assert_array_equal(x[0, 4], np.concatenate([fmri[0, 4]] * 3))


def test_mean_frames_area_average():
    frames = np.zeros((2, 6, 8, 8, 3), dtype=np.uint8)
    frames[:, :3, :4, :4, 0] = 255  # top-left quarter red in half of the frames
    small = mean_frames(frames, 2).reshape(2, 2, 2, 3)
    np.testing.assert_allclose(small[:, 0, 0, 0], 0.5)
    np.testing.assert_allclose(small[:, 1, 1], 0.0)
    with pytest.raises(UserError, match="do not divide"):
        mean_frames(frames, 3)


@pytest.fixture(scope="module")
def planted():
    """Windows from a linear model with noise: 8 segments of 40 TRs, the last 2 held out."""
    rng = np.random.default_rng(0)
    fmri = rng.normal(size=(8, 40, 30)).astype(np.float32)
    x = window_features(fmri, 2).reshape(320, -1)
    weights = rng.normal(size=(60, 12))
    y = x @ weights + 0.5 * rng.normal(size=(320, 12))
    groups = np.repeat(np.arange(8), 40)
    return x, y, groups, groups < 6


def test_ridge_recovers_a_planted_linear_signal(planted):
    x, y, groups, train = planted
    decoder = RidgeDecoder(folds=3).fit(x[train], y[train], groups[train])
    pred = decoder.predict(x[~train])
    r = np.corrcoef(pred.ravel(), y[~train].ravel())[0, 1]
    assert r > 0.95
    assert decoder.alphas_.shape == (12,)
    rate, chance = pattern_identification(pred, y[~train], 10, trials=50)
    assert chance == 0.1 and rate.mean() > 0.95


def test_ridge_sees_only_training_statistics(planted):
    x, y, groups, train = planted
    decoder = RidgeDecoder(folds=3).fit(x[train], y[train], groups[train])
    np.testing.assert_allclose(decoder.x_mean_, x[train].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoder.y_mean_, y[train].mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train_segments", [6, 1])  # 240 windows × 60 values; 40 windows (dual)
def test_ridge_linear_map_gives_its_predictions(planted, train_segments):
    x, y, groups, _ = planted
    train = groups < train_segments + 1  # at least two segments
    decoder = RidgeDecoder(folds=2).fit(x[train], y[train], groups[train])
    weight, bias = decoder.linear_map()
    assert weight.shape == (60, 12) and bias.shape == (12,)
    np.testing.assert_allclose(x[~train] @ weight + bias, decoder.predict(x[~train]), atol=1e-3)


def test_pairwise_identification_counts_the_other_truths_each_prediction_beats():
    import torch

    from mindvideo.data.ridge import pairwise_identification

    rng = np.random.default_rng(3)
    truth = rng.normal(size=(12, 20))
    pred = truth + rng.normal(scale=2.0, size=truth.shape)
    got = pairwise_identification(torch.from_numpy(pred[None]), torch.from_numpy(truth))[0]
    for i in range(12):  # a direct count, Pearson r across the pattern
        r = [np.corrcoef(pred[i], truth[j])[0, 1] for j in range(12)]
        beaten = sum(r[j] < r[i] for j in range(12) if j != i)
        assert got[i].item() == pytest.approx(beaten / 11)
    # A perfect decoder beats every other truth; a constant one beats none (ties count against).
    perfect = pairwise_identification(torch.from_numpy(truth), torch.from_numpy(truth))
    assert torch.all(perfect == 1)
    flat = pairwise_identification(torch.ones(12, 20, dtype=torch.float64), torch.from_numpy(truth))
    assert torch.all(flat == 0)


def test_identification_selection_shares_the_penalty_that_identifies_best():
    """The penalty chosen is the one whose held-out predictions identify their own samples best
    (recomputed from each penalty's held-out predictions), the same for every target."""
    import torch

    from mindvideo.data.ridge import pairwise_identification

    rng = np.random.default_rng(0)  # 8 segments of 40 TRs; 200 features, weak and noisy
    x = window_features(rng.normal(size=(8, 40, 100)).astype(np.float32), 2).reshape(320, -1)
    y = x @ (rng.normal(size=(200, 12)) * np.linspace(0.05, 1.0, 12))
    y += 12.0 * rng.normal(size=y.shape) + 40.0 * np.sin(np.arange(12))  # + a shared pattern
    groups = np.repeat(np.arange(8), 40)
    alphas = [1.0, 10.0, 100.0, 1000.0, 1e4, 1e5]
    fold = groups % 3  # how 3 folds deal these segments
    totals = []
    for alpha in alphas:
        held = RidgeDecoder(alphas=[alpha], folds=3).fit(x, y, groups, held_out=True).held_out_
        totals.append(
            sum(
                pairwise_identification(
                    torch.from_numpy(held[fold == k][None]), torch.from_numpy(y[fold == k])
                ).sum()
                for k in range(3)
            )
        )
    best = int(np.argmax(totals))
    assert 0 < best < len(alphas) - 1  # an optimum inside the grid (100)
    decoder = RidgeDecoder(alphas=alphas, folds=3, selection="identification").fit(x, y, groups)
    assert np.all(decoder.alphas_ == alphas[best])
    # Squared error chooses per target, and shrinks more (median 1000 here).
    by_mse = RidgeDecoder(alphas=alphas, folds=3).fit(x, y, groups)
    assert len(set(by_mse.alphas_.tolist())) > 1
    assert np.median(by_mse.alphas_) > alphas[best]
    with pytest.raises(UserError, match="Unknown penalty selection"):
        RidgeDecoder(selection="r2").fit(x, y, groups)

    # Several target sets in one fit: each identified range its own penalty, as if fitted
    # alone; the other columns theirs by squared error.
    labels = np.eye(4, dtype=np.float32)[groups % 4]
    both = RidgeDecoder(alphas=alphas, folds=3).fit(
        x, np.hstack([y, labels]), groups, identify=[(0, 12)]
    )
    np.testing.assert_array_equal(both.alphas_[:12], decoder.alphas_)
    alone = RidgeDecoder(alphas=alphas, folds=3).fit(x, labels, groups)
    np.testing.assert_array_equal(both.alphas_[12:], alone.alphas_)
    with pytest.raises(UserError, match="not within"):
        RidgeDecoder(alphas=alphas, folds=3).fit(x, y, groups, identify=[(0, 13)])


def test_ridge_needs_two_segments():
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(UserError, match="at least 2 training segments"):
        RidgeDecoder().fit(x, x, np.zeros(10))


@pytest.mark.parametrize("n_way", [2, 10, 50])
def test_shuffled_chance_matches_analytic_chance_on_random_inputs(n_way):
    rng = np.random.default_rng(n_way)
    pred, truth = rng.normal(size=(2, 200, 64))
    rate, chance = pattern_identification(pred, truth, n_way, trials=50, seed=1)
    # Random predictions score at chance; so does the shuffled pairing of the same outputs.
    assert abs(rate.mean() - chance) < 4 * rate.std() / np.sqrt(len(rate)) + 0.01
    mean, sd = shuffled_chance(
        lambda p: pattern_identification(pred, truth[p], n_way, 50, 1)[0].mean(), 200, 10, 0
    )
    assert abs(mean - chance) < 0.02 + 3 * sd


def test_label_identification_is_strict():
    scores = np.eye(5)[[0, 1, 2, 3, 4]]  # perfect one-hot decoding
    rate, chance = label_identification(scores, np.arange(5), 5, trials=10)
    assert chance == 0.2 and rate.tolist() == [1.0] * 5
    # Ties with the distractors are failures: a constant decoder never identifies.
    rate, _ = label_identification(np.ones((5, 5)), np.arange(5), 2, trials=10)
    assert rate.max() == 0.0
    with pytest.raises(UserError, match="Lower n_way"):
        label_identification(scores, np.arange(5), 6)


def test_format_marks_scores_not_above_shuffled():
    result = {
        "window": 4,
        "n_voxels": 10,
        "n_train_windows": 100,
        "n_test_windows": 20,
        "scores": [
            {
                "name": "a 2-way",
                "value": 0.9,
                "sem": 0.01,
                "chance": 0.5,
                "shuffled": 0.5,
                "shuffled_sd": 0.02,
                "above_shuffled": True,
            },
            {
                "name": "b 2-way",
                "value": 0.51,
                "sem": 0.05,
                "chance": 0.5,
                "shuffled": 0.5,
                "shuffled_sd": 0.02,
                "above_shuffled": False,
            },
        ],
    }
    table = format_baseline(result)
    assert "| a 2-way | 0.900 |" in table and "| yes |" in table
    assert "| b 2-way | 0.510 |" in table and "**no**" in table


@pytest.mark.parametrize("features", [40, 400])  # primal (p < n) and dual (p > n) forms
def test_ridge_matches_scikit_learn_at_a_fixed_alpha(features):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(features)
    x = rng.normal(size=(200, features)).astype(np.float32)
    y = rng.normal(size=(200, 3)).astype(np.float32)
    groups = np.repeat(np.arange(4), 50)
    ours = RidgeDecoder(alphas=[30.0], folds=2).fit(x, y, groups)
    z = (x - x.mean(0)) / x.std(0)
    reference = Ridge(alpha=30.0).fit(z, y)
    x_new = rng.normal(size=(20, features)).astype(np.float32)
    expected = reference.predict((x_new - x.mean(0)) / x.std(0))
    np.testing.assert_allclose(ours.predict(x_new), expected, rtol=2e-3, atol=2e-3)


def test_baseline_command_on_the_tiny_simulated_subject(prepared_dataset, tmp_path, capsys):
    import json

    from mindvideo.cli.main import main

    out = tmp_path / "baseline"
    argv = ["baseline", "--data", str(prepared_dataset), "--out", str(out), "n_ways=[2,20]"]
    assert main([*argv, "shuffles=5", "trials=20", "tr_stride=4"]) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "baseline.json").read_text())
    scores = {s["name"]: s for s in result["scores"]}
    # The simulator's labels are found through the prepared manifest.
    assert result["labels"] == "the simulator's scenes.json"
    assert {"frames 16x16 20-way", "scene class 20-way", "motion top-1"} <= set(scores)
    for s in scores.values():
        assert 0.0 <= s["value"] <= 1.0 and s["shuffled"] is not None
    # The tiny subject's windows hold the scene and its pixels, far above shuffled chance.
    assert scores["scene class 2-way"]["above_shuffled"]
    assert scores["frames 16x16 20-way"]["value"] > 0.3
    assert (out / "baseline.md").read_text() in table
    assert (out / "config.yaml").is_file()


def test_baseline_without_data_is_one_clear_line(tmp_path, capsys):
    from mindvideo.cli.main import main

    assert main(["baseline", "--out", str(tmp_path / "b")]) == 2
    assert "needs a prepared subject: --data PREPARED" in capsys.readouterr().err
