"""The stand-in models: real folders that load like the real pretrained models, and that work.

The trained stand-ins are the tiny demo's (``tests/demo/conftest.py``: one run, ≈ 80 s on one
CPU thread, shared with the demo's own test; the tests that use it are marked slow); the other
tests check the pieces on constructed inputs in a few seconds.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mindvideo.data.prepared import PreparedData
from mindvideo.demo.standins.base import (
    MARKER,
    StandinData,
    StandinJob,
    StandinPaths,
    UnetPreset,
    normalise,
    standin_preset,
)
from mindvideo.demo.standins.classifiers import (
    FactorisedVideoClassifier,
    WordLinear,
    build_image_classifier,
    video_clips,
)
from mindvideo.demo.standins.clip import (
    build_clip_tokenizer,
    caption_words,
    clip_contrastive_loss,
    image_processor_for,
    learn_bpe_merges,
    train_clip_standin,
)
from mindvideo.demo.standins.sd import colour_of, draw_timesteps, latent_scaling_factor
from mindvideo.demo.standins.train import train_standins
from mindvideo.sim.vocabulary import CLASSES, COLOURS, MOTIONS
from mindvideo.utils import UserError

# One thread: the tests share a small machine with others, and oversubscribed OpenMP threads
# slow training by an order of magnitude; results are deterministic per thread count.
THREADS = 1


@pytest.fixture(scope="module")
def prepared(prepared_dataset):
    return PreparedData.open(prepared_dataset)


@pytest.fixture(scope="module")
def labels(scene_labels):
    return scene_labels


@pytest.fixture(scope="session")
def standins(tiny_demo):
    """All stand-ins, ``tiny`` preset, seed 0, as the tiny demo trained them on its simulated
    subject 1 (the ``prepared_dataset`` recipe; scenes.json found through the manifest).

    No test changes them (the retraining tests work on copies)."""
    assert tiny_demo.returncode == 0, tiny_demo.err
    return StandinPaths.under(tiny_demo.run / "standins")


@pytest.fixture(scope="session")
def standins_prepared(tiny_demo) -> Path:
    """The prepared subject the stand-ins were trained on (the stand-ins' key records it)."""
    return tiny_demo.run / "prepare"


def _files(root: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (mtime_ns, sha256)}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def test_tokenizer_makes_every_caption_word_one_token_and_pads_to_77(prepared, tmp_path):
    from transformers import CLIPTokenizer

    texts = sorted({c for seg in prepared.captions("train") for tr in seg for c in tr})
    tokenizer = build_clip_tokenizer(texts, tmp_path)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]  # CLIP's layout
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert reloaded.model_max_length == 77
    for text in texts[:: max(1, len(texts) // 40)]:
        ids = reloaded(text)["input_ids"]
        words = caption_words([text])
        assert reloaded.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in words]
        assert ids == tokenizer(text)["input_ids"]
        decoded = reloaded.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.lower().replace(" ", "")
        padded = reloaded(text, padding="max_length", max_length=77)["input_ids"]
        assert len(padded) == 77 and padded[len(ids) :] == [vocab["<|endoftext|>"]] * (
            77 - len(ids)
        )
    # An unseen word falls back to smaller pieces, never to the unknown token.
    ids = reloaded("a zebra xylophone")["input_ids"][1:-1]
    assert len(ids) > 3 and vocab["<|endoftext|>"] not in ids
    assert reloaded.decode(ids).replace(" ", "") == "azebraxylophone"


def test_bpe_merges_take_the_most_frequent_pair_ties_in_text_order_until_words_are_whole():
    # Sennrich et al.'s example. Pair counts: (e, s) and (s, t</w>) 9 (a tie: text order),
    # then (es, t</w>) 9, (l, o) 7, then (e, w), (n, e) and (w, est</w>) 6 (a tie).
    words = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    merges = learn_bpe_merges(words)
    assert merges[:4] == [("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w")]
    assert learn_bpe_merges(dict(reversed(words.items()))) == merges  # order-free
    for word in words:  # replaying the merges in order leaves every word one symbol
        symbols = [*word[:-1], word[-1] + "</w>"]
        for a, b in merges:
            i = 0
            while i + 1 < len(symbols):
                if (symbols[i], symbols[i + 1]) == (a, b):
                    symbols[i : i + 2] = [a + b]
                i += 1
        assert symbols == [word + "</w>"]
    assert len(merges) == len(set(merges))


def test_the_tokenizer_is_the_same_in_every_process(prepared, tmp_path):
    """The ``tokenizers`` BPE trainer learned different merges from the same texts in different
    processes (ties broken in hash-map order), so the same seed gave different CLIP stand-ins."""
    texts = sorted({c for seg in prepared.captions("train") for tr in seg for c in tr})
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys; from mindvideo.demo.standins.clip import build_clip_tokenizer; "
        "build_clip_tokenizer(json.load(open(sys.argv[1])), sys.argv[2])"
    )
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "texts.json"), str(tmp_path / name)],
            check=True,
            env=env,
        )
    build_clip_tokenizer(texts, tmp_path / "c")
    for file in ("vocab.json", "merges.txt"):
        here = (tmp_path / "c" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() == here
        assert (tmp_path / "b" / file).read_bytes() == here


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def test_contrastive_loss_is_clips_loss_with_one_image_per_caption():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(**tower, vocab_size=50, max_position_embeddings=8, eos_token_id=49),
        vision_config=dict(**tower, image_size=8, patch_size=4),
        projection_dim=8,
    )
    ids = torch.randint(0, 49, (6, 8))
    ids[:, -1] = 49
    out = CLIPModel(config)(input_ids=ids, pixel_values=torch.randn(6, 3, 8, 8), return_loss=True)
    ours = clip_contrastive_loss(out.logits_per_image, torch.arange(6))
    torch.testing.assert_close(ours, out.loss)
    # Two images of one caption: the caption's column is the target of both; its text → image
    # target is uniform over the two, so the loss cannot go below log(2) / 3 / 2 ≈ 0.116.
    column = torch.tensor([0, 0, 1, 2])
    right = torch.tensor([[9.0, 0, 0], [9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0]])
    assert abs(float(clip_contrastive_loss(right, column)) - np.log(2) / 6) < 0.01
    assert clip_contrastive_loss(right[[1, 2, 3, 0]], column) > 2.0


def test_training_normalisation_equals_the_saved_image_processor(prepared):
    frames = np.array(prepared.frames("test")[0, :4, 0])  # a writable copy
    processor = image_processor_for(frames.shape[1])
    expected = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    ours = normalise(torch.from_numpy(frames), processor.image_mean, processor.image_std)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("names", [None, ["red circle", "blue circle", "red square"]])
def test_factorised_video_head_folds_into_one_linear_layer_over_class_x_motion(names):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    config = VideoMAEConfig(
        image_size=16, patch_size=8, num_frames=6, tubelet_size=2, hidden_size=16,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3 * 2,
    )  # fmt: skip
    wrapped = FactorisedVideoClassifier(VideoMAEForVideoClassification(config), 3, 2, names)
    # With class names the class head is word-factorised, and folds all the same.
    assert isinstance(wrapped.class_head, WordLinear) == (names is not None)
    x = torch.randn(2, 6, 3, 16, 16)
    with torch.no_grad():
        class_logits, motion_logits = wrapped.eval()(x)
        joint = wrapped.fold()(pixel_values=x).logits
    expected = (class_logits[:, :, None] + motion_logits[:, None, :]).reshape(2, 6)
    torch.testing.assert_close(joint, expected)
    product = class_logits.softmax(-1)[:, :, None] * motion_logits.softmax(-1)[:, None, :]
    torch.testing.assert_close(joint.softmax(-1), product.reshape(2, 6))
    if names is not None:
        with pytest.raises(ValueError, match="2 class names for 3 classes"):
            FactorisedVideoClassifier(VideoMAEForVideoClassification(config), 3, 2, names[:2])


def test_word_head_shares_words_and_folds_into_the_linear_layer_it_equals():
    torch.manual_seed(0)
    labels = ["red circle", "red square", "blue circle", "man on the phone"]
    head = WordLinear(8, labels)
    assert head.words == ["blue", "circle", "man", "on", "phone", "red", "square", "the"]
    x = torch.randn(3, 8)
    with torch.no_grad():
        logits = head(x)
        words = head.word_head(x)
        folded = head.folded()(x)
    torch.testing.assert_close(folded, logits)
    # "red circle" - "red square" = "circle" - "square", and "red circle" - "blue circle" =
    # "red" - "blue", whatever the input.
    torch.testing.assert_close(logits[:, 0] - logits[:, 1], words[:, 1] - words[:, 6])
    torch.testing.assert_close(logits[:, 0] - logits[:, 2], words[:, 5] - words[:, 0])
    with pytest.raises(ValueError, match="same words"):
        WordLinear(8, ["red circle", "circle red"])


def test_image_classifier_is_a_resnet_that_fits_the_frame_size():
    spec = standin_preset("demo").image_classifier
    model = build_image_classifier(spec, 64, ["a", "b"])
    assert type(model).__name__ == "ResNetForImageClassification"
    assert model.config.id2label == {0: "a", 1: "b"} and model.config.mindvideo_standin
    assert model(pixel_values=torch.zeros(1, 3, 64, 64)).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="too small"):
        build_image_classifier(spec, 8, ["a", "b"])


def test_colour_of_names_the_saturated_colour_and_none_for_grey():
    for name, rgb in COLOURS.items():
        image = np.full((16, 16, 3), 0.5)
        image[4:10, 4:10] = rgb
        assert colour_of(image) == name
    assert colour_of(np.full((16, 16, 3), 0.5)) is None


def test_scaling_factor_makes_latents_unit_variance():
    latents = 5.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    scale = latent_scaling_factor(latents)
    assert abs(float((latents * scale).std()) - 1.0) < 1e-4


def test_logit_normal_timesteps_follow_the_normal_cdf_and_uniform_ones_do_not():
    """⌊sigmoid(z) · T⌋, z ~ N(0, 1): the middle half of the schedule (t/T in [1/4, 3/4))
    holds P(|z| < logit(3/4) = ln 3) = erf(ln 3 / √2) ≈ 0.728 of the draws; uniform 0.5."""
    import math

    expected = math.erf(math.log(3) / math.sqrt(2))
    torch.manual_seed(0)
    t = draw_timesteps("logit-normal", 200_000, 1000, torch.device("cpu"))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    middle = ((t >= 250) & (t < 750)).double().mean().item()
    assert abs(middle - expected) < 0.005
    assert abs(t.double().median().item() - 499.5) < 5
    u = draw_timesteps("uniform", 200_000, 1000, torch.device("cpu"))
    assert abs(((u >= 250) & (u < 750)).double().mean().item() - 0.5) < 0.005
    with pytest.raises(ValueError, match="timesteps must be one of"):
        UnetPreset(channels=(8, 16), heads=2, caption_dropout=0.1, train=None, timesteps="cosine")


def test_clip_standin_training_depends_only_on_the_seed(prepared, labels, tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    spec = standin_preset("tiny")
    spec = replace(spec, clip=replace(spec.clip, train=replace(spec.clip.train, steps=5)))
    data = StandinData.build(prepared, labels, spec)

    def train(run: str, seed: int) -> torch.Tensor:
        train_clip_standin(
            StandinJob(
                data=data, folder=tmp_path / run, spec=spec, key={"seed": seed}, seed=seed,
                device=torch.device("cpu"), log_dir=tmp_path / f"log{run}",
            )
        )  # fmt: skip
        weights = load_file(tmp_path / run / "model.safetensors")
        return torch.cat([weights[k].flatten() for k in sorted(weights)])

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        a, b, other = train("a", 3), train("b", 3), train("c", 4)
    finally:
        torch.set_num_threads(before)
    same, different = (a - b).abs().mean().item(), (a - other).abs().mean().item()
    # Usually bit-identical; CPU kernels may round differently with the memory alignment of their
    # inputs (Adam's first steps amplify that), which stays far below a change of seed.
    assert same < 0.01 * different


# --------------------------------------------------------------------------------------------
# The trained stand-ins
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_folder_loads_with_the_real_models_loaders(standins, prepared):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        CLIPModel,
        CLIPProcessor,
        CLIPTextModel,
        CLIPTokenizer,
    )

    from mindvideo.generator import VideoUNet

    clip = CLIPModel.from_pretrained(standins.clip)
    assert isinstance(CLIPProcessor.from_pretrained(standins.clip).tokenizer, CLIPTokenizer)
    assert (standins.clip / "preprocessor_config.json").is_file()
    image_processor = AutoImageProcessor.from_pretrained(standins.clip)
    tokenizer = AutoTokenizer.from_pretrained(standins.clip)

    sd = standins.stable_diffusion
    index = json.loads((sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder")
    sd_tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    assert (sd / "tokenizer" / "vocab.json").is_file() and (
        sd / "tokenizer" / "merges.txt"
    ).is_file()
    scheduler = PNDMScheduler.from_pretrained(sd, subfolder="scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (
        DDPMScheduler.from_pretrained(sd, subfolder="scheduler").config.num_train_timesteps == 1000
    )
    pipe = StableDiffusionPipeline.from_pretrained(sd, local_files_only=True)
    assert pipe.safety_checker is None
    assert VideoUNet.from_pretrained_2d(sd, subfolder="unet").config.cross_attention_dim == (
        text_encoder.config.hidden_size
    )

    # The stages' own loaders (contrast, tune-video, evaluate) take the folders as they are.
    from mindvideo.evaluation.runner import classifier_identity
    from mindvideo.training.contrast import load_clip
    from mindvideo.training.tune_video import load_stable_diffusion

    towers = load_clip(standins.clip)
    assert towers.text_hidden_size == text_encoder.config.hidden_size and towers.max_length == 77
    parts = load_stable_diffusion(sd)
    assert parts.vae.config.scaling_factor == vae.config.scaling_factor
    for folder in (standins.image_classifier, standins.video_classifier):
        assert classifier_identity(folder)["standin"]

    # The parts belong together: SD's text encoder is CLIP's text tower, the latents fit the UNet.
    size = prepared.frames("train").shape[3]
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    assert unet.config.in_channels == vae.config.latent_channels == 4
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == size
    assert clip.config.vision_config.image_size == size
    ids = sd_tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt")
    assert ids.input_ids.shape == (1, 77)
    assert tokenizer("a red circle")["input_ids"] == sd_tokenizer("a red circle")["input_ids"]
    with torch.no_grad():
        ours = text_encoder(ids.input_ids).last_hidden_state
        theirs = clip.text_model(ids.input_ids).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    pixels = image_processor(
        images=[np.asarray(prepared.frames("test")[0, 0, 0])], return_tensors="pt"
    )
    assert pixels["pixel_values"].shape == (1, 3, size, size)


@pytest.mark.slow
def test_clip_retrieves_the_class_of_held_out_frames_far_above_chance(standins):
    metrics = json.loads((standins.clip / MARKER).read_text())["metrics"]
    # tiny, seed 0: 0.385 over 68 classes (chance 0.015).
    assert metrics["retrieval_class_top1"] > 10 * metrics["retrieval_class_chance"]
    assert metrics["retrieval_caption_top1"] > 10 * metrics["retrieval_caption_chance"]


@pytest.mark.slow
def test_classifiers_beat_chance_on_held_out_test_frames_and_clips(standins, prepared, labels):
    from mindvideo.evaluation import ImageClassifier, VideoClassifier

    image = ImageClassifier.from_pretrained(standins.image_classifier, device="cpu")
    assert image.labels == list(CLASSES)
    assert type(image.model).__name__ == "ResNetForImageClassification"
    frames = np.asarray(prepared.frames("test")[:, ::2, 3]).reshape(
        -1, *prepared.frames("test").shape[3:]
    )
    truth = labels.class_id["test"][:, ::2, 3].reshape(-1)
    probs = image.predict_proba(frames)
    top1 = float((probs.argmax(1) == truth).mean())
    # The ResNet, tiny, seed 0 (2 threads): 0.40 top-1 over 73 classes (chance 0.014).
    assert top1 > 10 / len(CLASSES)

    video = VideoClassifier.from_pretrained(standins.video_classifier, num_frames=6, device="cpu")
    assert video.labels == labels.video_labels and video.num_frames == 6
    data = StandinData.build(prepared, labels, standin_preset("tiny"))
    clips, cls, mot = video_clips(data, "test", limit=300)
    probs = video.predict_proba(clips)
    joint = cls * len(MOTIONS) + mot
    top5 = float((np.argsort(-probs, 1)[:, :5] == joint[:, None]).any(1).mean())
    class_top1 = float((probs.reshape(len(probs), len(CLASSES), -1).sum(2).argmax(1) == cls).mean())
    # tiny, seed 0 (1 thread): 0.22 top-5 over 657 labels (chance 0.008); class alone 0.34.
    assert top5 > 10 * 5 / len(labels.video_labels)
    assert class_top1 > 10 / len(CLASSES)


@pytest.mark.slow
def test_vae_reconstructs_held_out_frames(standins, prepared):
    from diffusers import AutoencoderKL

    from mindvideo.demo.standins.sd import reconstruction_psnr

    vae = AutoencoderKL.from_pretrained(standins.stable_diffusion, subfolder="vae").eval()
    frames = np.array(prepared.frames("test")[:, ::8, 2]).reshape(
        -1, *prepared.frames("test").shape[3:]
    )
    psnr = reconstruction_psnr(vae, frames, torch.device("cpu"))
    # Each frame's own mean colour gives 17.8 dB on these frames; tiny, seed 0: 21.4 dB.
    flat = frames.astype(np.float64)
    mse = ((flat - flat.mean((1, 2), keepdims=True)) ** 2).reshape(len(frames), -1).mean(1)
    mean_colour = float((10 * np.log10(255.0**2 / mse)).mean())
    assert psnr > 20.0 and psnr > mean_colour + 2.0
    scale = vae.config.scaling_factor
    with torch.no_grad():
        x = torch.from_numpy(frames[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = vae.encode(x).latent_dist.mean * scale
    assert 0.7 < float(latents.std()) < 1.4  # scaled latents are about unit-variance


@pytest.mark.slow
def test_diffusion_loss_falls(standins):
    unet = json.loads((standins.stable_diffusion / "unet" / MARKER).read_text())["metrics"]
    # Fixed probe (held-out latents, noise, timesteps): tiny, seed 0: 1.14 → 0.14.
    assert unet["unet_probe_loss_after"] < 0.5 * unet["unet_probe_loss_before"]
    log = standins.root / "logs" / "stable_diffusion" / "unet" / "logs" / "metrics.jsonl"
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_summary_says_these_are_standins_with_their_numbers(standins):
    summary = json.loads(standins.summary.read_text())
    assert summary["preset"] == "tiny" and summary["seed"] == 0
    assert set(summary["models"]) == {
        "clip", "stable_diffusion", "image_classifier", "video_classifier"
    }  # fmt: skip
    for marker in summary["models"].values():
        assert marker["metrics"] and marker["key"]["preset"] == "tiny"
    readme = (standins.root / "README.md").read_text()
    assert "not ImageNet or Kinetics" in readme
    assert summary["pretrained"]["pretrained.clip"] == str(standins.clip)


@pytest.mark.slow
def test_a_second_call_reuses_finished_models_and_retrains_only_what_is_missing(
    standins, standins_prepared, tmp_path
):
    prepared_dataset = standins_prepared
    before = _files(standins.root)
    start = time.perf_counter()
    again = train_standins(
        prepared_dataset, standins.root, preset="tiny", seed=0, num_threads=THREADS
    )
    assert time.perf_counter() - start < 5.0
    assert again == standins
    assert _files(standins.root) == before

    # An interrupted run (no marker) is trained again; the finished ones are kept (on a copy:
    # the session's stand-ins stay as they are).
    root = tmp_path / "models"
    shutil.copytree(standins.root, root)
    video = root / standins.video_classifier.name
    (video / MARKER).unlink()
    train_standins(prepared_dataset, root, preset="tiny", seed=0, num_threads=THREADS)
    after = _files(root)
    assert (video / MARKER).is_file()
    for name, stamp in before.items():
        if name.startswith(("clip/", "stable_diffusion/", "image_classifier/")):
            assert after[name] == stamp, name


def test_a_new_budget_retrains_that_model_alone(standins, standins_prepared, monkeypatch, tmp_path):
    prepared_dataset = standins_prepared
    import dataclasses

    from mindvideo.demo.standins import base

    tiny = base.PRESETS["tiny"]
    video = tiny.video_classifier
    fewer = dataclasses.replace(video, train=dataclasses.replace(video.train, steps=20))
    monkeypatch.setitem(base.PRESETS, "tiny", dataclasses.replace(tiny, video_classifier=fewer))
    root = tmp_path / "models"
    shutil.copytree(standins.root, root)
    before = _files(root)
    train_standins(prepared_dataset, root, preset="tiny", seed=0, num_threads=THREADS)
    after = _files(root)
    marker = json.loads((root / standins.video_classifier.name / MARKER).read_text())
    assert marker["train"]["steps"] == 20
    assert (
        after["video_classifier/model.safetensors"] != before["video_classifier/model.safetensors"]
    )
    for name, stamp in before.items():
        if name.startswith(("clip/", "stable_diffusion/", "image_classifier/")):
            assert after[name] == stamp, name


def test_unknown_preset_and_missing_prepared_data_are_user_errors(tmp_path, prepared_dataset):
    with pytest.raises(UserError, match="preset"):
        train_standins(prepared_dataset, tmp_path / "out", preset="huge")
    with pytest.raises(UserError, match="does not exist"):
        train_standins(tmp_path / "nothing", tmp_path / "out", preset="tiny")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_models_one_at_a_time_and_the_summary_once_all_are_finished(
    standins, standins_prepared, tmp_path
):
    prepared_dataset = standins_prepared
    # The demo trains each stand-in as its own stage (side by side in separate processes).
    root = tmp_path / "models"
    shutil.copytree(standins.root, root)
    (root / "clip" / MARKER).unlink()  # an unfinished CLIP
    with pytest.raises(UserError, match="needs a finished CLIP stand-in"):
        train_standins(prepared_dataset, root, preset="tiny", seed=0, models=["stable_diffusion"])
    with pytest.raises(ValueError, match="no stand-in called 'vae'"):
        train_standins(prepared_dataset, root, preset="tiny", seed=0, models=["vae"])

    root = tmp_path / "again"
    shutil.copytree(standins.root, root)
    (root / "standins.json").unlink()
    shutil.rmtree(root / "image_classifier")
    before = _files(root)
    one = dict(preset="tiny", seed=0, num_threads=THREADS)
    train_standins(prepared_dataset, root, **one, models=["video_classifier"])  # finished: kept
    assert _files(root) == before  # and no summary while the image classifier is missing
    train_standins(prepared_dataset, root, **one, models=["image_classifier"])
    assert (root / "image_classifier" / MARKER).is_file()
    summary = json.loads((root / "standins.json").read_text())
    assert set(summary["models"]) == {
        "clip",
        "stable_diffusion",
        "image_classifier",
        "video_classifier",
    }
    after = _files(root)
    for name, stamp in before.items():  # the other models untouched
        if name.startswith(("clip/", "stable_diffusion/", "video_classifier/")):
            assert after[name] == stamp, name


def test_smooth_frames_blurs_in_blocks_and_mixes_toward_the_mean_image():
    from mindvideo.demo.standins.sd import smooth_frames

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    mean = torch.rand(3, 16, 16, generator=g)
    torch.testing.assert_close(smooth_frames(x, mean, 1, 0.0), x)
    torch.testing.assert_close(smooth_frames(x, mean, 4, 1.0), mean.expand_as(x))
    blurred = smooth_frames(x, mean, 4, 0.0)
    # The blur keeps each 4 × 4 block's mean colour (up to the bilinear interpolation between
    # blocks) and loses the detail inside it.
    pooled, kept = (torch.nn.functional.avg_pool2d(v, 4).flatten() for v in (x, blurred))
    assert torch.corrcoef(torch.stack([pooled, kept]))[0, 1] > 0.9
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()


def test_smoothed_crops_depend_only_on_seed_epoch_and_index_and_half_are_smoothed():
    from mindvideo.demo.standins.sd import SmoothedCrops

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    mean = frames.astype(np.float32).mean(0)

    def crops(seed, epoch):
        ds = SmoothedCrops(frames, 16, seed, mean, (2, 4), 0.7)
        ds.set_epoch(epoch)
        return torch.stack([ds[i] for i in range(len(ds))])

    a = crops(0, 0)
    assert a.shape == (64, 16, 16, 3) and a.dtype == torch.uint8
    assert torch.equal(a, crops(0, 0))
    assert not torch.equal(a, crops(0, 1)) and not torch.equal(a, crops(1, 0))
    # Random pixels: a crop's horizontal detail falls several times when it is smoothed.
    detail = a.float().diff(dim=2).abs().mean(dim=(1, 2, 3))
    smoothed = detail < 0.5 * detail.max()
    assert 16 <= int(smoothed.sum()) <= 48


def test_clips_are_flipped_and_reversed_by_seed_epoch_and_index_with_their_labels_kept():
    from mindvideo.demo.standins.classifiers import LabelledClips

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (40, 6, 8, 8, 3), dtype=np.uint8)
    classes, motions = np.arange(40) % 7, np.arange(40) % 3

    def items(seed, epoch):
        ds = LabelledClips(clips, classes, motions, seed)
        ds.set_epoch(epoch)
        return [ds[i] for i in range(len(ds))]

    a = items(0, 0)
    assert all(torch.equal(x["clips"], y["clips"]) for x, y in zip(a, items(0, 0), strict=True))
    assert any(not torch.equal(x["clips"], y["clips"]) for x, y in zip(a, items(0, 1), strict=True))
    assert any(not torch.equal(x["clips"], y["clips"]) for x, y in zip(a, items(1, 0), strict=True))
    seen = set()
    for i, item in enumerate(a):
        assert item["clips"].dtype == torch.uint8 and item["clips"].shape == (6, 8, 8, 3)
        assert (int(item["class"]), int(item["motion"])) == (classes[i], motions[i])
        match = []
        for flip in (False, True):
            for reverse in (False, True):
                clip = clips[i][:, :, ::-1] if flip else clips[i]  # [F, H, W, 3]
                clip = torch.from_numpy(np.ascontiguousarray(clip[::-1] if reverse else clip))
                if torch.equal(item["clips"], clip):
                    match.append((flip, reverse))
        assert len(match) == 1, i
        seen.add(match[0])
    assert len(seen) == 4  # as is, flipped, reversed, both


def test_training_clips_add_the_single_scene_clips_across_tr_boundaries(prepared, labels):
    data = StandinData.build(prepared, labels, standin_preset("tiny"))
    clips, cls, mot = video_clips(data, "train")
    more, more_cls, more_mot = video_clips(data, "train", boundaries=True)
    n = len(clips)
    assert np.array_equal(more[:n], clips) and np.array_equal(more_cls[:n], cls)
    assert np.array_equal(more_mot[:n], mot) and len(more) > n
    frames = np.asarray(prepared.frames("train"))  # [S, T, 6, H, W, 3]
    c, m = labels.class_id["train"], labels.motion_id["train"]
    # Every frame of the TR-aligned and straddling windows, by its own label, in time order.
    flat = frames.reshape(frames.shape[0], -1, *frames.shape[3:])
    fc, fm = c.reshape(len(c), -1), m.reshape(len(m), -1)
    starts = {}
    for s in range(len(flat)):
        for a in range(3, flat.shape[1] - 6, 6):
            starts.setdefault(flat[s, a : a + 6].tobytes(), []).append((s, a))
    for clip, k, j in zip(more[n:], more_cls[n:], more_mot[n:], strict=True):
        (s, a), *_ = starts[clip.tobytes()]  # the last 3 frames of a TR, the first 3 of the next
        assert (fc[s, a : a + 6] == k).all() and (fm[s, a : a + 6] == j).all()
    # and none of the straddling windows that show one scene is left out
    one = [
        (s, a)
        for s in range(len(flat))
        for a in range(3, flat.shape[1] - 6, 6)
        if (fc[s, a : a + 6] == fc[s, a]).all() and (fm[s, a : a + 6] == fm[s, a]).all()
    ]
    assert len(more) - n == len(one)


def test_vae_encoder_phase_trains_the_encoder_alone_and_fits_smoothed_frames(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from mindvideo.demo.standins.base import standin_preset
    from mindvideo.demo.standins.sd import (
        SmoothedCrops,
        _train_vae_encoder,
        build_vae,
        mean_image,
        to_pixels,
    )

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # Smooth colour fields: something a small VAE can learn in a few steps.
    base = rng.integers(0, 256, (128, 4, 4, 3)).astype(np.float32)
    frames = (
        torch.nn.functional.interpolate(
            torch.from_numpy(base).permute(0, 3, 1, 2), size=(16, 16), mode="bilinear"
        )
        .permute(0, 2, 3, 1)
        .round()
        .to(torch.uint8)
        .numpy()
    )
    spec = dataclasses.replace(standin_preset("tiny").vae, encoder_steps=60)
    vae = build_vae(spec, 16)
    decoder = {k: v.clone() for k, v in vae.state_dict().items() if "decoder" in k}
    encoder = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith("encoder")}
    probe = SmoothedCrops(frames, 16, 1, mean_image(frames), spec.smooth_blocks, spec.smooth_mix)
    x = to_pixels(torch.stack([probe[i] for i in range(64)]))

    def mse() -> float:
        with torch.no_grad():
            return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).pow(2).mean())

    before = mse()
    vae = _train_vae_encoder(
        vae, SimpleNamespace(train_frames=frames), spec, 0, torch.device("cpu"), tmp_path
    )
    state = vae.state_dict()
    assert all(torch.equal(state[k], v) for k, v in decoder.items())
    assert any(not torch.equal(state[k], v) for k, v in encoder.items())
    assert all(p.requires_grad for p in vae.parameters())
    assert mse() < 0.75 * before  # seed 0: 0.231 → 0.146, the decoder untrained and frozen
