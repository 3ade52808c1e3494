"""The scientific check (docs/scientific-check.md): the `demo` preset, trained from scratch on the
simulated dataset, identifies the test videos well above chance.

This is the default `mindvideo demo` — every stage at its demo size, 12 to 14 minutes on an idle
2-core CPU, two stages at a time — so it is the slowest test of the suite, and the one that says
the system works.
"""

import json

import pytest

from mindvideo.cli.main import main
from mindvideo.utils.threads import configure_threads


@pytest.fixture
def automatic_threads(monkeypatch):
    """The demo chooses its stages' threads as a user's run does: one each while two run side
    by side or the other test worker is busy, both cores for a stage alone on an idle machine.
    Afterwards the worker is back on one."""
    monkeypatch.delenv("MINDVIDEO_THREADS")
    yield
    configure_threads(1)


@pytest.mark.slow(minutes=12)
def test_demo_preset_identifies_test_videos_well_above_chance(tmp_path, capsys, automatic_threads):
    run = tmp_path / "demo"
    assert main(["demo", "--out", str(run)]) == 0
    assert capsys.readouterr().err.startswith("torch threads: ")  # and how they were chosen
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    n_test_windows = metrics["video_50way_top1_strict"]["n"]
    assert n_test_windows >= 100
    for key, chance in (("video_50way_top1_strict", 1 / 50), ("frame_2way_top1_strict", 1 / 2)):
        score = metrics[key]
        assert score["chance"] == pytest.approx(chance)
        # above chance with one-sided p < 0.05 over the test windows (the scores of repeated
        # demo runs vary a little: multithreaded CPU training is not bitwise reproducible)
        assert score["mean"] - 1.645 * score["se"] > chance, (key, score)
    # 50-way video identification, where chance is 2%: at least twice chance (seeds 0 and 1:
    # 0.265 and 0.289 with the one-tubelet video judge, shuffled chance 0.03)
    assert metrics["video_50way_top1_strict"]["mean"] > 2 / 50
    # The field's table (docs/evaluation.md): every score but FVD, the VIFI-CLIP score from the
    # CLIP stand-in with temporal pooling, marked so.
    field = ("hue_pcc", "epe", "flow_angular_error", "vifi_clip", "pixel_50way")
    for key in (*field, "clip_pcc_mind_animator", "clip_pcc_neurons", "clip_similarity"):
        assert metrics[key]["n"] == n_test_windows, key
    assert metrics["meta"]["video_metrics"]["vifi_clip"]["standin"] is True

    # Where the information goes: every link against its chance and ceiling.
    rows = {
        (r["link"], r["measure"]): r for r in json.loads((run / "information.json").read_text())
    }

    def above_shuffled(link: str, measure: str) -> None:
        r = rows[link, measure]
        assert r["value"] - 1.645 * r["sem"] > max(r["chance"], r["shuffled"]), r

    # The fMRI holds the scene almost perfectly (the linear ceiling), and, with the per-area ROI,
    # its motion too.
    assert rows["fMRI (linear ridge)", "scene class, 50-way"]["value"] > 0.9
    above_shuffled("fMRI (linear ridge)", "motion, top-1")
    # The judges read the ground truth; the generator draws the class from the true caption;
    # the clips keep the pixels of what was shown, judged by no classifier.
    above_shuffled("frame judge", "top-1 on the ground truth vs the true class")
    # The frame judge (a ResNet with a word-factorised head) reads the ground truth near its
    # 0.90 target: 0.93 on seed 0 with 2 threads; the bound leaves room for thread-count noise.
    judge = rows["frame judge", "top-1 on the ground truth vs the true class"]
    assert judge["value"] - 1.645 * judge["sem"] > 0.8, judge
    above_shuffled("generator (oracle caption)", "frame 2-way vs the true class")
    above_shuffled("reconstructions", "pixel identification 50-way")
    above_shuffled("reconstructions", "frame 2-way vs the true class")
    above_shuffled("reconstructions", "video 50-way vs the judge's top-1")
    # The encoder's tokens carry the caption (the linear readout; the paper's encoder: chance),
    # and the clips keep most of the generator's margin: frame 2-way 0.834 and 0.828 on seeds 0
    # and 1 (the generator from the true captions, from the same low-level start: 0.843, 0.864).
    tokens = rows["encoder (contrast)", "fMRI → caption by its [77, d] tokens, top-1 of 476"]
    assert tokens["value"] > 5 * tokens["chance"], tokens
    frame = rows["reconstructions", "frame 2-way vs the true class"]
    assert frame["value"] - 1.645 * frame["sem"] > 0.65, frame
    # The low-level path (docs/lowlevel.md): each clip starts from the video its fMRI decodes
    # to, so the clips keep the layout and colours of what was shown — pixel identification
    # 50-way 0.690 / 0.612 on seeds 0 / 1 (0.134 / 0.125 sampling from noise), SSIM 0.348 /
    # 0.360 (0.181 / 0.194).
    pixel = rows["reconstructions", "pixel identification 50-way"]
    assert pixel["value"] - 1.645 * pixel["sem"] > 0.45, pixel
    assert metrics["ssim"]["mean"] > 0.3, metrics["ssim"]
    # The authors' compat 2-way scores stand above their own chance (0.75), not only the shuffled.
    for measure in (
        "video 2-way, the authors' compat rule",
        "frame 2-way, the authors' compat rule",
    ):
        r = rows["reconstructions", measure]
        assert r["value"] - 1.645 * r["sem"] > r["chance"] == 0.75, r
