"""`evaluate_reconstructions`: a reconstruct folder → metrics.json / metrics.md / samples.json."""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from helpers.run import random_clips, write_prepared, write_reconstruction
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessorPil,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from mindvideo.config import EvaluateConfig, PretrainedPaths
from mindvideo.data.prepared import PreparedData
from mindvideo.evaluation import (
    ImageClassifier,
    VideoClassifier,
    chance_level,
    compute_metrics,
)
from mindvideo.evaluation.clip_similarity import CLIPImageEmbedder, clip_similarity_samples
from mindvideo.evaluation.runner import (
    classifier_identity,
    evaluate_reconstructions,
    load_evaluation,
    load_reconstructions,
)
from mindvideo.evaluation.true_labels import window_labels
from mindvideo.utils import UserError

F = 6


@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory):
    """A tiny ViT (10 classes, marked a stand-in in config.json) and a tiny VideoMAE
    (12 classes, marked with a standin.json file, as the stand-in trainer writes)."""
    root = tmp_path_factory.mktemp("classifiers")
    torch.manual_seed(0)
    vit = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        mindvideo_standin={"trained_on": "simulated scene classes"},
    )
    ViTForImageClassification(vit).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    mae = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=F,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=12,
    )
    VideoMAEForVideoClassification(mae).save_pretrained(root / "videomae")
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "videomae")
    (root / "videomae" / "standin.json").write_text(json.dumps({"trained_on": "class x motion"}))
    clip = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(clip).save_pretrained(root / "clip")
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    return root


def test_identical_clips_pixel_metrics_only(tmp_path):
    gt = random_clips(5)
    recon = write_reconstruction(tmp_path / "recon", gt.copy(), gt)
    cfg = EvaluateConfig(reconstructions=str(recon), bootstrap=200, flow_size=64)
    assert EvaluateConfig().flow_size == 512  # Mind-Animator's, by default
    result = evaluate_reconstructions(cfg, tmp_path / "eval", progress=False)
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(doc) == {
        *("pixel_2way", "ssim", "psnr", "hue_pcc", "epe", "flow_angular_error", "meta"),
    }
    assert doc["ssim"]["mean"] == pytest.approx(1.0) and doc["ssim"]["chance"] is None
    # The field's scores of a perfect reconstruction: hue maps agree, flows coincide (EPE 0,
    # and below its shuffled reference: other windows move otherwise).
    assert doc["hue_pcc"]["mean"] == pytest.approx(1.0)
    assert doc["hue_pcc"]["chance_shuffled"] < 1.0
    assert doc["epe"]["mean"] == 0.0 and doc["epe"]["lower_is_better"] is True
    assert doc["epe"]["chance_shuffled"] > 0.1
    assert doc["meta"]["video_metrics"]["flow_size"] == 64  # resized, as the reference does
    assert doc["meta"]["video_metrics"]["flow_resized"] is True
    assert doc["psnr"]["mean"] == pytest.approx(100.0)  # PSNR_CAP_DB for identical frames
    assert set(doc["ssim"]) == {"mean", "se", "chance", "n", "ci_low", "ci_high"}
    assert doc["ssim"]["n"] == 5
    meta = doc["meta"]
    assert meta["n_windows"] == 5 and meta["frames_per_window"] == F
    assert meta["standin_classifiers"] is False and meta["resized"] is None
    assert meta["classifiers"] == {
        "frame": None,
        "video": None,
        "clip": None,
        "vifi_clip": None,
        "clip_b32": None,
    }
    assert (tmp_path / "eval" / "config.yaml").is_file()
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert (
        "| metric | mean ± SE | 95% CI | chance | shuffled chance | n |" in md
        and "| ssim | 1.000" in md
    )
    samples = json.loads((tmp_path / "eval" / "samples.json").read_text())
    assert samples["windows"][4] == {"segment": 1, "tr": 1}
    assert samples["metrics"]["ssim"]["values"] == pytest.approx([1.0] * 5)
    back = load_evaluation(tmp_path / "eval")
    assert back.metrics == result.metrics and back.windows == result.windows
    np.testing.assert_array_equal(back.samples["psnr"], result.samples["psnr"])


def test_identification_scores_match_compute_metrics_and_carry_chance(tmp_path, classifier_dirs):
    gt, pred = random_clips(6, seed=1), random_clips(6, seed=2)
    recon = write_reconstruction(tmp_path / "recon", pred, gt)
    cfg = EvaluateConfig(
        reconstructions=str(recon),
        pretrained=PretrainedPaths(
            image_classifier=str(classifier_dirs / "vit"),
            video_classifier=str(classifier_dirs / "videomae"),
            clip=str(classifier_dirs / "clip"),
        ),
        n_ways=[2, 5, 50],  # 50-way needs more classes than the tiny classifiers have: skipped
        trials=20,
        bootstrap=300,
        seed=7,
        device="cpu",
        flow_size=None,
    )
    result = evaluate_reconstructions(cfg, tmp_path / "eval", progress=False)
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    expected = [
        f"{level}_{n}way_top1_{mode}"
        for level in ("video", "frame")
        for mode in ("compat", "strict")
        for n in (2, 5)
    ]
    assert list(doc) == [
        *expected,
        "pixel_2way",
        "pixel_5way",
        "ssim",
        "psnr",
        "hue_pcc",
        "epe",
        "flow_angular_error",
        "clip_similarity",
        "clip_pcc_neurons",
        "vifi_clip",
        "clip_pcc_mind_animator",
        "meta",
    ]
    # Without ViFi-CLIP or CLIP ViT-B/32 the CLIP scores come from the CLIP given, marked so.
    video_meta = doc["meta"]["video_metrics"]
    assert video_meta["vifi_clip"]["standin"] is True and not video_meta["vifi_clip"]["vifi_clip"]
    assert video_meta["clip_pcc_mind_animator"]["as_reference"] is False
    assert video_meta["flow_size"] == 16 and video_meta["flow_resized"] is False
    for key in expected:
        n_way, mode = int(key.split("_")[1][:-3]), key.split("_")[3]
        assert doc[key]["chance"] == pytest.approx(chance_level(n_way, 1, mode))
        assert 0.0 <= doc[key]["mean"] <= 1.0 and doc[key]["n"] == 6
    assert doc["frame_2way_top1_compat"]["chance"] == pytest.approx(0.75)
    assert doc["video_5way_top1_strict"]["chance"] == pytest.approx(0.2)
    # The same numbers as compute_metrics with the same classifiers on the same arrays.
    frame = ImageClassifier.from_pretrained(classifier_dirs / "vit", device="cpu")
    video = VideoClassifier.from_pretrained(
        classifier_dirs / "videomae", num_frames=F, device="cpu"
    )
    ref = compute_metrics(
        pred,
        gt,
        frame,
        video,
        n_ways=(2, 5, 50),
        trials=20,
        seed=7,
        n_resamples=300,
        progress=False,
    )
    for key, value in ref.items():
        assert doc[key] == pytest.approx(value), key
    # CLIP: an empirical reference level next to the score.
    assert -1.0 <= doc["clip_similarity"]["mean"] <= 1.0
    assert doc["clip_similarity"]["chance"] is not None

    meta = doc["meta"]
    assert meta["standin_classifiers"] is True
    vit = meta["classifiers"]["frame"]
    assert vit["standin"] and vit["standin_info"] == {"trained_on": "simulated scene classes"}
    sha = hashlib.sha256((classifier_dirs / "vit" / "config.json").read_bytes()).hexdigest()
    assert vit["config_sha256"] == sha and vit["num_labels"] == 10
    assert meta["classifiers"]["video"]["standin_info"] == {"trained_on": "class x motion"}
    assert meta["classifiers"]["clip"]["standin"] is False
    assert (
        "stand-ins trained on the simulated dataset"
        in (tmp_path / "eval" / "metrics.md").read_text()
    )
    pixel = {key for key in result.samples if key.startswith("pixel_")}
    assert pixel == {"pixel_2way", "pixel_5way"}  # 50-way needs more than the 6 clips
    field = {"hue_pcc", "epe", "flow_angular_error", "vifi_clip"}
    field |= {"clip_pcc_neurons", "clip_pcc_mind_animator"}
    assert (
        set(result.samples) == set(expected) | {"ssim", "psnr", "clip_similarity"} | pixel | field
    )
    # The CLIP similarity is the one clip_similarity_samples computes on its own.
    embedder = CLIPImageEmbedder.from_pretrained(classifier_dirs / "clip", device="cpu")
    alone = clip_similarity_samples(pred, gt, embedder)
    np.testing.assert_allclose(result.samples["clip_similarity"], alone.per_sample, atol=1e-12)
    assert doc["clip_similarity"]["chance"] == pytest.approx(alone.chance)


def test_ground_truth_is_resized_to_the_reconstruction(tmp_path):
    gt = random_clips(3, size=32, seed=3)
    pred = random_clips(3, size=16, seed=4)
    recon = write_reconstruction(tmp_path / "recon", pred, gt)
    result = evaluate_reconstructions(
        EvaluateConfig(reconstructions=str(recon), bootstrap=100, flow_size=None),
        tmp_path / "a",
        progress=False,
    )
    assert result.meta["compared_at"] == [16, 16] and result.meta["ground_truth_size"] == [32, 32]
    assert result.meta["resized"] == "ground truth"
    both = evaluate_reconstructions(
        EvaluateConfig(reconstructions=str(recon), bootstrap=100, resize_to=24, flow_size=None),
        tmp_path / "b",
        progress=False,
    )
    assert both.meta["compared_at"] == [24, 24] and both.meta["resized"] == "both"
    assert "ground truth resized" in (tmp_path / "a" / "metrics.md").read_text()


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--reconstructions"):
        evaluate_reconstructions(EvaluateConfig(), tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        load_reconstructions(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no index\.json"):
        load_reconstructions(tmp_path / "empty")
    gt = random_clips(2)
    write_reconstruction(tmp_path / "half", gt, gt, complete=False)
    with pytest.raises(UserError, match="unfinished"):
        load_reconstructions(tmp_path / "half")
    write_reconstruction(tmp_path / "odd", gt, random_clips(3))
    with pytest.raises(UserError, match="do not pair up"):
        load_reconstructions(tmp_path / "odd")
    with pytest.raises(UserError, match=r"metrics\.json"):
        load_evaluation(tmp_path / "empty")
    assert classifier_identity(tmp_path / "empty")["standin"] is False


# --------------------------------------------------------------------------------------------
# True labels (simulated data)
# --------------------------------------------------------------------------------------------

WINDOWS = [(0, 0), (0, 17), (0, 60), (0, 131), (1, 5), (1, 44), (1, 98), (1, 239)]


class OracleJudge:
    """Knows the true label of every ground-truth frame (or clip) by its bytes: a perfect judge
    over ``labels`` names, or any model with names when ``lookup`` is empty (class 0)."""

    def __init__(self, items, ids, labels):
        pairs = zip(items, ids, strict=True)
        self.lookup = {np.ascontiguousarray(x).tobytes(): int(i) for x, i in pairs}
        self.labels = list(labels)

    def predict_proba(self, batch):
        ids = [self.lookup.get(np.ascontiguousarray(x).tobytes(), 0) for x in batch]
        return np.eye(len(self.labels))[ids]


def _simulated_reconstruction(folder, prepared, windows=WINDOWS):
    """A reconstruct folder over the tiny simulated subject's test windows (one TR each), the
    reconstructions equal to the ground truth; returns it and the ground truth."""
    frames = PreparedData.open(prepared).frames("test")
    gt = np.stack([np.asarray(frames[s, t]) for s, t in windows])
    write_reconstruction(folder, gt.copy(), gt)
    index = json.loads((folder / "index.json").read_text())
    index["settings"]["data"] = str(prepared)
    index["windows"] = [
        {"row": i, "segment": s, "tr": t, "frame_trs": [t]} for i, (s, t) in enumerate(windows)
    ]
    (folder / "index.json").write_text(json.dumps(index))
    return folder, gt


def _oracles(gt, scene_labels, windows=WINDOWS):
    """A perfect frame judge and a perfect video judge of these ground-truth clips."""
    cls = np.stack([scene_labels.class_id["test"][s, t] for s, t in windows])  # [n, 6]
    vid = [scene_labels.video_label("test")[s, t, F // 2] for s, t in windows]
    frame = OracleJudge(gt.reshape(-1, *gt.shape[2:]), cls.reshape(-1), scene_labels.classes)
    video = OracleJudge(gt, vid, scene_labels.video_labels)
    return frame, video


TRUE_CFG = dict(n_ways=[2, 5], trials=10, bootstrap=100, seed=0, flow_size=None)


def test_true_label_scores_on_simulated_data(
    tmp_path, prepared_dataset, simulated_dataset, scene_labels
):
    recon, gt = _simulated_reconstruction(tmp_path / "recon", prepared_dataset)
    frame, video = _oracles(gt, scene_labels)
    cfg = EvaluateConfig(reconstructions=str(recon), **TRUE_CFG)
    result = evaluate_reconstructions(
        cfg, tmp_path / "eval", frame_model=frame, video_model=video, progress=False
    )
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for level, n_classes in (("frame", 73), ("video", 657)):
        for n_way in (2, 5):
            m = doc[f"{level}_{n_way}way_top1_true"]
            assert m["mean"] == 1.0 and m["chance"] == pytest.approx(1 / n_way)
            assert m["chance_shuffled"] is not None
        judge = doc[f"{level}_judge_accuracy"]
        assert judge["mean"] == 1.0 and judge["chance"] == pytest.approx(1 / n_classes)
        assert judge["n"] == len(WINDOWS)
    assert doc["meta"]["true_labels"] == {
        "source": str((simulated_dataset / "scenes.json").resolve()),
        "frame": True,
        "video": True,
    }
    assert "frame_judge_accuracy" in result.samples
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| frame_judge_accuracy | 1.000" in md and "judge_accuracy: the classifier" in md


def test_true_labels_skip_a_level_whose_classifier_has_other_names(
    tmp_path, prepared_dataset, scene_labels, caplog
):
    recon, gt = _simulated_reconstruction(tmp_path / "recon", prepared_dataset)
    frame, _ = _oracles(gt, scene_labels)
    kinetics = OracleJudge([], [], [f"LABEL_{i}" for i in range(12)])
    cfg = EvaluateConfig(reconstructions=str(recon), **TRUE_CFG)
    with caplog.at_level(logging.WARNING, logger="mindvideo.evaluation.true_labels"):
        result = evaluate_reconstructions(
            cfg, tmp_path / "eval", frame_model=frame, video_model=kinetics, progress=False
        )
    assert "No video true-label scores" in caplog.text and "LABEL_0" in caplog.text
    assert "frame_2way_top1_true" in result.metrics and "frame_judge_accuracy" in result.metrics
    assert not any(k.startswith("video_") and k.endswith("_true") for k in result.metrics)
    assert "video_judge_accuracy" not in result.metrics
    assert "video_2way_top1_strict" in result.metrics
    assert result.meta["true_labels"]["frame"] and not result.meta["true_labels"]["video"]
    with pytest.raises(UserError, match="does not exist"):
        evaluate_reconstructions(
            EvaluateConfig(
                reconstructions=str(recon), scenes_json=str(tmp_path / "no.json"), **TRUE_CFG
            ),
            tmp_path / "bad",
            frame_model=frame,
            progress=False,
        )


def test_no_true_labels_without_a_simulated_dataset(tmp_path, caplog):
    prepared = write_prepared(tmp_path / "prepared")  # real-data layout: no scenes.json
    gt = random_clips(4, size=32)
    recon = write_reconstruction(tmp_path / "recon", gt.copy(), gt)
    index = json.loads((recon / "index.json").read_text())
    index["settings"]["data"] = str(prepared)
    (recon / "index.json").write_text(json.dumps(index))
    judge = OracleJudge([], [], [f"class {i}" for i in range(10)])
    with caplog.at_level(logging.INFO, logger="mindvideo.evaluation.true_labels"):
        result = evaluate_reconstructions(
            EvaluateConfig(reconstructions=str(recon), **TRUE_CFG),
            tmp_path / "eval",
            frame_model=judge,
            progress=False,
        )
    assert "No true labels" in caplog.text
    assert "frame_2way_top1_strict" in result.metrics
    assert not any(k.endswith(("_true", "_judge_accuracy")) for k in result.metrics)
    assert result.meta["true_labels"] == {"source": None, "frame": False, "video": False}


def test_window_labels_follow_the_frame_trs(prepared_dataset, scene_labels):
    """A window of two TRs is labelled like ground_truth.npy: its TRs' frames in order, the
    video label that of the middle frame (the second TR's first)."""
    index = {
        "split": "test",
        "settings": {"data": str(prepared_dataset)},
        "windows": [
            {"segment": 1, "tr": 238, "frame_trs": [238, 239]},
            {"segment": 0, "tr": 3, "frame_trs": [3, 4]},
        ],
    }
    frame = OracleJudge([], [], scene_labels.classes)
    video = OracleJudge([], [], scene_labels.video_labels)
    labels = window_labels(index, 2 * F, None, frame, video)
    cls, vid = scene_labels.class_id["test"], scene_labels.video_label("test")
    np.testing.assert_array_equal(labels.frame[0], np.concatenate([cls[1, 238], cls[1, 239]]))
    np.testing.assert_array_equal(labels.frame[1], np.concatenate([cls[0, 3], cls[0, 4]]))
    np.testing.assert_array_equal(labels.video, [vid[1, 239, 0], vid[0, 4, 0]])
    reversed_names = OracleJudge([], [], scene_labels.classes[::-1])  # matched by name
    flipped = window_labels(index, 2 * F, None, reversed_names, None)
    np.testing.assert_array_equal(flipped.frame, len(scene_labels.classes) - 1 - labels.frame)
    assert flipped.video is None and flipped.meta["frame"] and not flipped.meta["video"]
