"""The generator's ceiling: ``prompt_embeds`` in the pipeline, ``reconstruct condition=caption``;
and the linear encoder, ``reconstruct condition=linear``.

The oracle must be the fMRI reconstruction with only the condition swapped: the same UNet,
sampler, windows, seeds and files, the condition being the caption's SD-1.5 text embedding.
"""

import importlib
import json

import numpy as np
import pytest
import torch
from helpers.pipeline import COND_DIM, IMAGE_SIZE, random_fmri, tiny_pipeline
from helpers.sd import build_sd_folder, write_clip_tokenizer, write_tiny_prepared

from mindvideo.config import ReconstructConfig
from mindvideo.data.prepared import PreparedData, PreparedWriter
from mindvideo.pipeline import MindVideoPipeline, reconstruct
from mindvideo.pipeline.dry_run import plan_reconstruct
from mindvideo.pipeline.linear_condition import LinearCondition
from mindvideo.pipeline.oracle import CaptionEncoder, tr_caption
from mindvideo.utils import UserError

STEPS = 2
N_TRS = 4  # write_tiny_prepared: 1 test segment of 4 TRs, 60 voxels
CAPTIONS = ["a green square", "a green square", "a blue bar", "a blue bar"]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pipeline folder, a tiny SD-1.5 folder (its text encoder is 32 wide, as the UNet's
    cross-attention) and a prepared subject with captions."""
    root = tmp_path_factory.mktemp("oracle")
    tiny_pipeline().save_pretrained(root / "checkpoint")
    sd = build_sd_folder(root / "sd")
    data = write_tiny_prepared(root / "prepared")
    return root / "checkpoint", sd, data


def config(setup, **changes) -> ReconstructConfig:
    checkpoint, sd, data = setup
    base = dict(
        checkpoint=str(checkpoint),
        data=str(data),
        num_inference_steps=STEPS,
        batch_size=2,  # windows (0, 1) and (2, 3) are the fixed batches
        seed=3,
        gif=False,
        condition="caption",
        text_encoder=str(sd),
    )
    return ReconstructConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def caption_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("caption") / "out"
    reconstruct(config(setup), out)
    return out


@pytest.fixture(scope="module")
def fmri_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("fmri") / "out"
    reconstruct(config(setup, condition="fmri", text_encoder=None), out)
    return out


def text_encoder(setup) -> CaptionEncoder:
    return CaptionEncoder(setup[1], "cpu", tokens=77, dim=COND_DIM)


def load_pipeline(checkpoint) -> MindVideoPipeline:
    pipe = MindVideoPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt_embeds, negative, windows) -> np.ndarray:
    """The pipeline by hand, as reconstruct runs a batch: the windows' own seeds."""
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_embeddings=negative,
        generator=[seeded(w["seed"]) for w in windows],
        num_inference_steps=STEPS,
        guidance_scale=12.5,
    ).frames


# ------------------------------------------------------------------ the pipeline


@pytest.mark.parametrize("window", [2, 3])
def test_prompt_embeds_equal_to_the_fmri_condition_give_the_fmri_video(window):
    pipe = tiny_pipeline()
    fmri, negative = random_fmri(2, window=window), random_fmri(1, seed=99)
    common = dict(num_inference_steps=STEPS, guidance_scale=12.5)
    from_fmri = pipe(fmri, negative_fmri=negative, generator=[seeded(0), seeded(1)], **common)
    condition = pipe.encode_fmri(fmri)  # [2, S, 77, d]
    tokens = condition[:, 0] if window == 2 else condition  # [N, 77, d] or [N, S, 77, d]
    given = pipe(
        prompt_embeds=tokens,
        negative_embeddings=pipe.encode_negative(1, negative)[:, 0],
        generator=[seeded(0), seeded(1)],
        **common,
    )
    assert given.frames.shape == (2, 6 * (window - 1), IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(given.frames, from_fmri.frames)


def test_bad_prompt_embeds_are_user_errors():
    pipe = tiny_pipeline()
    tokens = torch.zeros(2, 77, COND_DIM)
    for kwargs, match in [
        (dict(fmri=random_fmri(2), prompt_embeds=tokens), "exactly one"),
        ({}, "exactly one"),
        (dict(prompt_embeds=torch.zeros(2, 77, 16)), "cross_attention_dim 32"),
        (dict(prompt_embeds=torch.zeros(2, 76, COND_DIM)), r"\[N, 77, 32\]"),
        (dict(prompt_embeds=torch.full((77, COND_DIM), float("nan"))), "NaN"),
        (dict(prompt_embeds=tokens, negative_fmri=random_fmri(1)), "negative_embeddings"),
        (dict(prompt_embeds=tokens, generator=[seeded(0)]), "got 1 for 2"),
        (dict(prompt_embeds=tokens[:, None].expand(2, 2, 77, COND_DIM), num_frames=5), "S"),
    ]:
        with pytest.raises(UserError, match=match):
            pipe(num_inference_steps=1, **kwargs)


def test_the_same_caption_and_seed_give_the_same_clip_other_captions_other_clips(setup):
    pipe, text = tiny_pipeline(), text_encoder(setup)
    tokens = torch.stack([text.encode(c) for c in ("a red bar", "a red bar", "the dark sea")])
    frames = pipe(
        prompt_embeds=tokens,
        negative_embeddings=text.negative(),
        generator=[seeded(7) for _ in range(3)],
        num_inference_steps=STEPS,
    ).frames.astype(int)
    np.testing.assert_array_equal(frames[0], frames[1])
    assert np.abs(frames[0] - frames[2]).mean() > 3  # only the caption differs


def test_captions_are_encoded_the_way_video_tuning_encodes_them(setup, tmp_path):
    """SD-1.5's way, as tune-video's text cache (which the tuned UNet learned from)."""
    from mindvideo.training.diffusion import build_text_cache

    text = text_encoder(setup)
    cache = build_text_cache(text.text_encoder, text.tokenizer, ["", *CAPTIONS], tmp_path)
    for caption in ("", "a green square", "a blue bar"):
        expected = torch.tensor(np.array(cache.embeddings[cache.index[caption]]))
        torch.testing.assert_close(text.encode(caption), expected, rtol=1e-5, atol=1e-5)
    assert text.negative().shape == (1, 77, COND_DIM)


# ------------------------------------------------------------------ reconstruct condition=caption


def test_caption_reconstruction_writes_the_fmri_reconstructions_files(caption_run, fmri_run):
    index = json.loads((caption_run / "index.json").read_text())
    fmri_index = json.loads((fmri_run / "index.json").read_text())
    assert index["complete"]
    assert [w["caption"] for w in index["windows"]] == CAPTIONS
    assert all(w["captions"] == [w["caption"]] for w in index["windows"])
    strip = ("caption", "captions")
    assert [{k: v for k, v in w.items() if k not in strip} for w in index["windows"]] == fmri_index[
        "windows"
    ]  # the same windows, seeds and files
    for key in ("num_frames", "height", "width", "fps", "arrays"):
        assert index[key] == fmri_index[key]
    settings, fmri_settings = index["settings"], fmri_index["settings"]
    assert settings["condition"] == "caption" and fmri_settings["condition"] == "fmri"
    assert settings["negative"] == "empty-caption" and fmri_settings["negative"] == "mean-test"
    assert settings["text_encoder"].endswith("sd") and fmri_settings["text_encoder"] is None

    recon, fmri_recon = (np.load(out / "reconstructions.npy") for out in (caption_run, fmri_run))
    assert recon.shape == fmri_recon.shape == (N_TRS, 6, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.abs(recon.astype(int) - fmri_recon).mean() > 1  # same noise, other condition
    np.testing.assert_array_equal(
        np.load(caption_run / "ground_truth.npy"), np.load(fmri_run / "ground_truth.npy")
    )


def test_a_caption_clip_is_the_pipeline_on_its_captions_text_embedding(setup, caption_run):
    """Batch (2, 3) regenerated by hand: the pipeline, prompt_embeds = the caption through the
    text encoder, the empty caption as the negative, the windows' own seeds."""
    index = json.loads((caption_run / "index.json").read_text())
    windows = index["windows"][2:4]
    pipe, text = load_pipeline(setup[0]), text_encoder(setup)
    embeds = torch.stack([text.encode(w["caption"]) for w in windows])
    frames = generate(pipe, embeds, text.negative(), windows)
    np.testing.assert_array_equal(np.load(caption_run / "reconstructions.npy")[2:4], frames)


def test_a_caption_run_resumes_and_refuses_fmri_settings(setup, caption_run, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("nothing to generate: the text encoder need not be loaded")

    module = importlib.import_module("mindvideo.pipeline.reconstruct")  # not the function
    monkeypatch.setattr(module, "CaptionEncoder", no_loading)
    again = reconstruct(config(setup), caption_run)
    assert (again.generated, again.skipped) == (0, N_TRS)
    with pytest.raises(UserError, match="condition"):
        reconstruct(config(setup, condition="fmri", text_encoder=None), caption_run)


def test_an_index_from_before_the_condition_setting_resumes_as_fmri(setup, tmp_path):
    out = tmp_path / "out"
    cfg = config(setup, condition="fmri", text_encoder=None, limit=1)
    reconstruct(cfg, out)
    index = json.loads((out / "index.json").read_text())
    for key in ("condition", "text_encoder"):
        del index["settings"][key]
    (out / "index.json").write_text(json.dumps(index))
    assert reconstruct(cfg, out).skipped == 1


def test_the_oracle_reads_no_fmri_so_any_voxel_count_will_do(setup, tmp_path):
    data = write_tiny_prepared(tmp_path / "other", voxels=100)
    cfg = config(setup, data=str(data), limit=1, num_inference_steps=1)
    assert reconstruct(cfg, tmp_path / "out").generated == 1
    with pytest.raises(UserError, match="100 voxels"):
        reconstruct(config(setup, data=str(data), condition="fmri"), tmp_path / "fmri")


def test_the_dry_run_names_the_condition_and_its_negative(setup):
    plan = plan_reconstruct(config(setup))
    settings = plan.phases[0].settings
    assert "caption" in settings["condition"] and "empty-caption" in settings["guidance"]
    assert "text_encoder" in plan.checked and "2 unique window captions" in plan.checked["data"]
    assert "caption windows" in plan.phases[0].data and "fMRI windows" not in plan.phases[0].data


def write_uncaptioned(root):
    rng = np.random.default_rng(0)
    w = PreparedWriter(root)
    for split, n in (("train", 2), ("test", 1)):
        w.write_array(f"fmri_{split}", rng.normal(size=(n, 3, 60)).astype(np.float32))
        w.write_array(f"frames_{split}", np.zeros((n, 3, 6, 16, 16, 3), np.uint8))
        w.write_array(f"scene_ids_{split}", np.zeros((n, 3, 6), np.int32))
    w.finish()
    return root


def test_bad_oracle_settings_are_user_errors(setup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="Unknown condition 'text'"):
        reconstruct(config(setup, condition="text"), out)
    with pytest.raises(UserError, match="needs a text encoder: set text_encoder"):
        reconstruct(config(setup, text_encoder=None), out)
    with pytest.raises(UserError, match="nope does not exist"):
        reconstruct(config(setup, text_encoder=str(tmp_path / "nope")), out)
    (tmp_path / "half" / "text_encoder").mkdir(parents=True)
    with pytest.raises(UserError, match="no tokenizer/"):
        reconstruct(config(setup, text_encoder=str(tmp_path / "half")), out)
    with pytest.raises(UserError, match="negative=null"):
        reconstruct(config(setup, negative="null"), out)
    data = write_uncaptioned(tmp_path / "uncaptioned")
    with pytest.raises(UserError, match=r"no captions_test\.json.*mindvideo prepare"):
        reconstruct(config(setup, data=str(data)), out)
    assert not out.exists()  # all refused before writing anything


def test_a_text_encoder_of_another_width_is_a_user_error(setup, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path / "narrow"
    vocab = write_clip_tokenizer(folder / "tokenizer")
    config_16 = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=20,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
    )
    CLIPTextModel(config_16).save_pretrained(folder / "text_encoder")
    with pytest.raises(UserError, match=r"16-wide tokens.*32"):
        reconstruct(config(setup, text_encoder=str(folder), limit=1), tmp_path / "out")


# ------------------------------------------------------------------ reconstruct condition=linear


def test_the_linear_condition_decodes_the_colour_the_fmri_carries(setup, tmp_path):
    """write_tiny_prepared's fMRI is a read-out of the scene's colour: ridge to the captions'
    text conditions, fitted on the training split, must bring each held-out TR's decoded
    condition closer to its own caption's condition than to the other test scene's (another
    colour and shape, and a caption the training split never has)."""
    data = write_tiny_prepared(tmp_path / "prepared", segments=8)
    prepared = PreparedData.open(data)
    text = text_encoder(setup)
    linear = LinearCondition().fit(prepared, text, window=1)
    decoded = linear.predict(prepared, "test")  # [1, 4, 77, 32]
    assert decoded.shape == (1, N_TRS, 77, COND_DIM) and decoded.dtype == np.float32
    captions = [tr_caption(c, "test", 0, t) for t, c in enumerate(prepared.captions("test")[0])]
    own = np.stack([text.encode(c).numpy() for c in captions])  # [4, 77, 32]
    assert set(prepared.captions("train")[0][0]) - set(captions)  # other captions in training

    def corr(a, b):
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    other = {0: 2, 1: 3, 2: 0, 3: 1}  # TRs 0-1 show scene 0, TRs 2-3 scene 1
    wins = [corr(decoded[0, t], own[t]) > corr(decoded[0, t], own[other[t]]) for t in range(4)]
    assert all(wins), wins
    windows = [{"segment": 0, "frame_trs": [t]} for t in range(4)]
    np.testing.assert_array_equal(linear.conditions(windows)[:, 0].numpy(), decoded[0])


@pytest.fixture(scope="module")
def linear_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("linear") / "out"
    reconstruct(config(setup, condition="linear"), out)
    return out


def test_a_linear_clip_is_the_pipeline_on_the_decoded_condition(setup, linear_run, fmri_run):
    """Settings name the condition and the empty-caption negative; the windows, seeds and files
    are the fMRI run's; batch (2, 3) regenerated by hand from LinearCondition's decoding."""
    index = json.loads((linear_run / "index.json").read_text())
    fmri_index = json.loads((fmri_run / "index.json").read_text())
    assert index["complete"] and index["windows"] == fmri_index["windows"]
    assert index["settings"]["condition"] == "linear"
    assert index["settings"]["negative"] == "empty-caption"
    checkpoint, _, data = setup
    prepared = PreparedData.open(data)
    text = text_encoder(setup)
    pipe = load_pipeline(checkpoint)
    linear = LinearCondition().fit(prepared, text, window=pipe.fmri_encoder.config.window)
    linear.predict(prepared, "test")
    windows = index["windows"][2:4]
    frames = generate(pipe, linear.conditions(windows)[:, 0], text.negative(), windows)
    np.testing.assert_array_equal(np.load(linear_run / "reconstructions.npy")[2:4], frames)
    fmri_recon = np.load(fmri_run / "reconstructions.npy")
    assert np.abs(np.load(linear_run / "reconstructions.npy").astype(int) - fmri_recon).mean() > 1


def test_linear_needs_training_captions_and_a_text_encoder(setup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="condition=linear needs a text encoder"):
        reconstruct(config(setup, condition="linear", text_encoder=None), out)
    data = write_uncaptioned(tmp_path / "uncaptioned")
    with pytest.raises(UserError, match=r"learns from the training captions.*captions_train"):
        reconstruct(config(setup, condition="linear", data=str(data)), out)
    plan = plan_reconstruct(config(setup, condition="linear"))
    assert "ridge map" in plan.phases[0].settings["condition"]
    assert "empty-caption" in plan.phases[0].settings["guidance"]
