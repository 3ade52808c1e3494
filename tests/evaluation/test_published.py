"""Published cc2017 figures stand beside a run's scores only under the same definition."""

import pytest

from mindvideo.evaluation import published as P
from mindvideo.evaluation.metrics import parse_metric_key

STANDIN = {"standin": True, "architecture": "ViTForImageClassification", "num_labels": 1000}


def meta(**field):
    return {
        "n_ways": [2, 50],
        "classifiers": {"frame": None, "video": None, "clip": None},
        "video_metrics": {"swap_rb": True, "flow_size": 64, "flow_resized": False, **field},
    }


def test_the_table_holds_known_metrics_and_definitions():
    known = {v for k, v in vars(P).items() if k.isupper() and isinstance(v, str) and ":" in v}
    for row in P.PUBLISHED:
        assert row.definition in known
        assert (
            row.metric
            in {
                "ssim",
                "psnr",
                "hue_pcc",
                "epe",
                "vifi_clip",
                "clip_pcc_mind_animator",
                "clip_pcc_neurons",
            }
            or parse_metric_key(row.metric)[3] == "compat"
        )
    # MinD-Video's Table 1, subject 1 (the paper's "Full Model").
    sub1 = {r.metric: r.value for r in P.PUBLISHED if r.method == "MinD-Video" and r.subject == "1"}
    assert sub1 == pytest.approx(
        {
            "video_2way_top1_compat": 0.853,
            "video_50way_top1_compat": 0.202,
            "frame_2way_top1_compat": 0.792,
            "frame_50way_top1_compat": 0.172,
            "ssim": 0.171,
        }
    )


def test_standins_and_other_settings_are_not_beside_published_figures():
    m = meta(
        vifi_clip={"vifi_clip": False, "standin": True, "as_reference": False},
        clip_pcc_mind_animator={"as_reference": False, "gate_from_vifi_clip": False},
        clip_pcc_neurons={"as_reference": False},
    )
    m["classifiers"]["frame"] = STANDIN
    assert P.run_definitions(m) == {"ssim": P.SSIM, "psnr": P.PSNR, "hue_pcc": P.HUE}
    # Colours read as RGB are not Mind-Animator's hue; a flow at 64 pixels is not its EPE.
    assert "hue_pcc" not in P.run_definitions(meta(swap_rb=False))
    beside = P.published_beside(m)
    assert set(beside) == {"ssim", "psnr", "hue_pcc"}
    assert {r["method"] for r in beside["ssim"]} == {"MinD-Video", "Mind-Animator"}


def test_the_references_models_make_every_score_comparable():
    m = meta(
        flow_size=512,
        flow_resized=True,
        vifi_clip={"vifi_clip": True, "as_reference": True},
        clip_pcc_mind_animator={"as_reference": True, "gate_from_vifi_clip": True},
        clip_pcc_neurons={"as_reference": True},
    )
    m["classifiers"]["frame"] = {**STANDIN, "standin": False}
    m["classifiers"]["video"] = {
        "standin": False,
        "architecture": "VideoMAEForVideoClassification",
        "num_labels": 400,
    }
    defs = P.run_definitions(m)
    assert defs["frame_50way_top1_compat"] == P.NWAY_FRAME
    assert defs["video_2way_top1_compat"] == P.NWAY_VIDEO
    assert defs["epe"] == P.EPE and defs["vifi_clip"] == P.VIFI
    assert defs["clip_pcc_mind_animator"] == P.CLIP_PCC_MA
    assert defs["clip_pcc_neurons"] == P.CLIP_PCC_NEURONS
    beside = P.published_beside(m)
    assert [r["value"] for r in beside["vifi_clip"]] == [0.602, 0.604, 0.600]
    assert len(beside["video_50way_top1_compat"]) == 3  # MinD-Video's three subjects
    # A gate read from a stand-in VIFI is not Mind-Animator's CLIP-pcc.
    m["video_metrics"]["clip_pcc_mind_animator"]["gate_from_vifi_clip"] = False
    assert "clip_pcc_mind_animator" not in P.run_definitions(m)
