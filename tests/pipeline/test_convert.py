"""`mindvideo convert`: the authors' released pipeline folder → ours, identical outputs."""

import argparse
import json

import numpy as np
import pytest
import torch
from helpers.pipeline import (
    IMAGE_SIZE,
    random_fmri,
    tiny_encoder,
    tiny_scheduler,
    tiny_unet,
    tiny_vae,
)

from mindvideo.cli import convert as cli_convert
from mindvideo.encoder.layers import get_1d_sincos_pos_embed
from mindvideo.pipeline import MindVideoPipeline, convert_authors_pipeline, encoder_from_authors
from mindvideo.utils import UserError

BLOCKS_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock3DCrossAttn",
}


#: The released folder's model_index.json.
AUTHORS_MODEL_INDEX = {
    "_class_name": "MindVideoPipeline",
    "fmri_encoder": ["MindVideo", "fMRIEncoder"],
    "unet": ["MindVideo", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


class NotATensor:
    """Unpickling this needs code: torch.load(weights_only=True) must refuse it."""


def original_pipeline() -> MindVideoPipeline:
    """A tiny pipeline shaped like the authors' model: no CLS token, no temporal position
    embedding, trained (non-zero) temporal attention in encoder and UNet."""
    encoder = tiny_encoder(use_cls_token=False)
    encoder.temporal_pos_embed.data.zero_()  # the authors' encoder has none
    pipe = MindVideoPipeline(
        vae=tiny_vae(), unet=tiny_unet(), fmri_encoder=encoder, scheduler=tiny_scheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def authors_encoder_state(encoder, prefix: str = "") -> dict:
    """Our encoder's weights under the authors' fMRIEncoder names, with their extra tensors."""
    c = encoder.config
    state = {k: v.clone() for k, v in encoder.state_dict().items() if k != "temporal_pos_embed"}
    state["pos_embed"] = get_1d_sincos_pos_embed(c.embed_dim, encoder.num_patches, True)[None]
    state["cls_token"] = torch.zeros(1, 1, c.embed_dim)
    state["mask_token"] = torch.zeros(1, 1, c.embed_dim)
    state["logit_scale"] = torch.ones([])
    return {f"{prefix}{k}": v for k, v in state.items()}


def authors_encoder_config(encoder) -> dict:
    c = encoder.config
    return {
        "_class_name": "fMRIEncoder",
        "num_voxels": 4656,  # stale: their loader overwrites it with the data's count
        "patch_size": c.patch_size,
        "embed_dim": c.embed_dim,
        "in_chans": 1,
        "depth": c.depth,
        "num_heads": c.num_heads,
        "mlp_ratio": c.mlp_ratio,
        "out_channel": c.out_tokens,
        "out_dim": c.cond_dim,
        "use_norm": False,
        "dropout": 0.0,
        "window_size": c.window,
        "use_temp_attn": True,
        "logit_scale_init_value": 1.0,
    }


def authors_unet_config(unet) -> dict:
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    for key in ("down_block_types", "up_block_types"):
        config[key] = [BLOCKS_3D[b] for b in config[key]]
    config["mid_block_type"] = BLOCKS_3D[config["mid_block_type"]]
    return {"_class_name": "UNet3DConditionModel", "_diffusers_version": "0.11.1", **config}


def write_authors_folder(root, pipe: MindVideoPipeline, encoder_state=None, encoder_config=None):
    """The released layout: model_index.json, unet/ (.bin, UNet3D config), vae/, scheduler/,
    fmri_encoder/ (config.json + model.pth holding {"model": tensors})."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(AUTHORS_MODEL_INDEX))
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(json.dumps(authors_unet_config(pipe.unet)))
    torch.save(dict(pipe.unet.state_dict()), root / "unet" / "diffusion_pytorch_model.bin")
    pipe.vae.save_pretrained(root / "vae", safe_serialization=False)
    pipe.scheduler.save_pretrained(root / "scheduler")
    enc = root / "fmri_encoder"
    enc.mkdir()
    if encoder_config is not False:
        config = encoder_config or authors_encoder_config(pipe.fmri_encoder)
        (enc / "config.json").write_text(json.dumps(config))
    state = encoder_state or authors_encoder_state(pipe.fmri_encoder)
    torch.save({"model": state, "epoch": 3}, enc / "model.pth")
    return root


def sample(pipe) -> np.ndarray:
    fmri = random_fmri(2)
    generator = torch.Generator().manual_seed(0)
    negative = random_fmri(1, seed=9)[0]
    return pipe(fmri, negative_fmri=negative, num_inference_steps=2, generator=generator).frames


def test_converted_pipeline_reproduces_the_original(tmp_path):
    original = original_pipeline()
    authors = write_authors_folder(tmp_path / "authors", original)
    report = convert_authors_pipeline(authors, tmp_path / "ours", resolution=IMAGE_SIZE)

    converted = MindVideoPipeline.from_pretrained(tmp_path / "ours")
    converted.set_progress_bar_config(disable=True)
    # The authors' UNet normalises whole clips (cross-frame GroupNorm), and so does the
    # converted one, saved and loaded back.
    assert converted.unet.cross_frame_norm
    original.unet.set_cross_frame_norm(True)
    np.testing.assert_array_equal(sample(converted), sample(original))
    assert converted.config.fmri_pad_mode == "wrap_compat"
    assert converted.default_size == IMAGE_SIZE

    saved = json.loads((tmp_path / "ours" / "conversion.json").read_text())
    assert saved == json.loads(report.to_json())
    enc = saved["fmri_encoder"]
    assert set(enc["dropped"]) == {"pos_embed", "cls_token", "mask_token", "logit_scale"}
    assert enc["missing"] == ["temporal_pos_embed"] and enc["unexpected"] == []
    assert enc["config"]["num_voxels"] == 64 and enc["config"]["window"] == 2
    assert any("num_voxels = 4656" in note for note in enc["notes"])
    assert saved["unet"]["unexpected"] == [] and saved["unet"]["missing"] == []
    assert "fmri_encoder: 0 renamed, 4 dropped" in report.summary()
    # A converted folder is standalone already: export copies it as it is.
    from mindvideo.pipeline.export import export_folder

    result = export_folder(tmp_path / "ours", tmp_path / "copy")
    assert result.kind == "pipeline" and result.light_bytes == result.standalone_bytes
    copied = MindVideoPipeline.from_pretrained(tmp_path / "copy")
    copied.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(copied), sample(converted))


def test_the_authors_folder_itself_points_to_convert(tmp_path):
    authors = write_authors_folder(tmp_path / "authors", original_pipeline())
    with pytest.raises(UserError, match="mindvideo convert"):
        MindVideoPipeline.from_pretrained(authors)


def test_encoder_settings_come_from_the_weights(tmp_path):
    pipe = original_pipeline()
    state = authors_encoder_state(pipe.fmri_encoder, prefix="module.")  # saved from DDP
    authors = write_authors_folder(tmp_path / "a", pipe, encoder_state=state, encoder_config=False)
    encoder, report = encoder_from_authors(authors)
    assert report.assumed == {"num_heads": 16, "dropout": 0.0}  # no config.json: their defaults
    assert report.renamed["module.blocks.0.attn.qkv.weight"] == "blocks.0.attn.qkv.weight"
    c = encoder.config
    assert (c.num_voxels, c.patch_size, c.embed_dim, c.depth, c.window) == (64, 16, 32, 2, 2)
    assert (c.out_tokens, c.cond_dim, c.use_cls_token, c.mlp_ratio) == (77, 32, False, 1.0)

    config = {**authors_encoder_config(pipe.fmri_encoder), "window_size": 3}
    bad = write_authors_folder(tmp_path / "b", pipe, encoder_config=config)
    with pytest.raises(UserError, match="window_size = 3"):
        encoder_from_authors(bad)


def test_unexpected_encoder_keys_are_refused_unless_allowed(tmp_path):
    pipe = original_pipeline()
    state = {**authors_encoder_state(pipe.fmri_encoder), "blocks.0.extra.weight": torch.ones(2)}
    authors = write_authors_folder(tmp_path / "a", pipe, encoder_state=state)
    with pytest.raises(UserError, match=r"blocks\.0\.extra\.weight"):
        encoder_from_authors(authors)
    _, report = encoder_from_authors(authors, strict=False)
    assert report.unexpected == ["blocks.0.extra.weight"]


RAN: list[str] = []


def _record_run(what: str) -> str:
    RAN.append(what)
    return what


class PickledConfig:
    """A config object as mind-vis pickles beside the weights; unpickling it runs code."""

    def __reduce__(self):
        return (_record_run, ("unpickled",))


def test_weights_needing_pickle_code_are_refused(tmp_path):
    pipe = original_pipeline()
    authors = write_authors_folder(tmp_path / "a", pipe)
    torch.save({"model": {"x": NotATensor()}}, authors / "fmri_encoder" / "model.pth")
    with pytest.raises(UserError, match="weights_only=True"):
        encoder_from_authors(authors)
    # A mind-vis style checkpoint: the weights and a pickled config object. Refused with how
    # to re-save the weights alone, and the object's code never runs.
    state = authors_encoder_state(pipe.fmri_encoder)
    torch.save({"model": state, "config": PickledConfig()}, authors / "fmri_encoder" / "model.pth")
    with pytest.raises(UserError, match=r"re-save the weights alone: ckpt = torch\.load"):
        encoder_from_authors(authors)
    assert RAN == []
    # Re-saved as the message says, it converts.
    ckpt = torch.load(authors / "fmri_encoder" / "model.pth", weights_only=False)
    assert RAN == ["unpickled"]  # (here, knowingly)
    torch.save(ckpt.get("model", ckpt), authors / "fmri_encoder" / "model.pth")
    encoder, _ = encoder_from_authors(authors)
    assert encoder.config.num_voxels == 64


def _cli(argv):
    parser = argparse.ArgumentParser(prog="mindvideo")
    cli_convert.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_convert(tmp_path, capsys):
    authors = write_authors_folder(tmp_path / "authors", original_pipeline())
    args = _cli(["convert", "--authors", str(authors), "--out", str(tmp_path / "ours")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "converted" in out and "conversion.json" in out
    pipe = MindVideoPipeline.from_pretrained(tmp_path / "ours")
    assert pipe.default_size == 256  # the paper's tuning resolution by default
    assert args.func(args) == 0  # a previous conversion may be replaced

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    args = _cli(["convert", "--authors", str(authors), "--out", str(tmp_path / "taken")])
    with pytest.raises(UserError, match="not a previous conversion"):
        args.func(args)
    args = _cli(["convert", "--authors", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="does not exist"):
        args.func(args)


def test_convert_keeps_the_authors_scheduler_with_their_timestep_offset(tmp_path):
    """Their pipeline forces steps_offset = 1 and clip_sample = False on the saved scheduler,
    whatever its class; the converted folder keeps the class with both settings, and marks the
    test fMRI to be left as it is (their evaluation's loader)."""
    from diffusers import PNDMScheduler

    from mindvideo.pipeline.schedulers import sampler_for

    original = original_pipeline()
    saved = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=0
    )
    original.scheduler = saved
    authors = write_authors_folder(tmp_path / "authors", original)
    report = convert_authors_pipeline(authors, tmp_path / "ours", resolution=IMAGE_SIZE)
    converted = MindVideoPipeline.from_pretrained(tmp_path / "ours")
    assert type(converted.scheduler).__name__ == "PNDMScheduler"
    assert converted.scheduler.config.steps_offset == 1
    assert converted.config.fmri_normalize == "compat"
    assert any("steps_offset set to 1 (was 0)" in n for n in report.scheduler["notes"])
    # reconstruct's default (scheduler unset) samples with exactly this scheduler: its
    # timesteps are one later than the saved config's.
    sampler = sampler_for(converted.scheduler, None)
    assert sampler is converted.scheduler
    sampler.set_timesteps(10)
    saved.set_timesteps(10)
    assert (sampler.timesteps - saved.timesteps).tolist() == [1] * len(saved.timesteps)
    assert type(sampler_for(converted.scheduler, "ddim")).__name__ == "DDIMScheduler"


def test_reconstruct_says_when_it_follows_the_authors_evaluation(tmp_path):
    from mindvideo.config import ReconstructConfig
    from mindvideo.pipeline.convert import authors_settings_note

    original = original_pipeline()
    authors = write_authors_folder(tmp_path / "authors", original)
    convert_authors_pipeline(authors, tmp_path / "ours", resolution=IMAGE_SIZE)
    converted = MindVideoPipeline.from_pretrained(tmp_path / "ours")
    note = authors_settings_note(ReconstructConfig(), converted, tmp_path / "ours")
    assert note is not None and "converted authors' checkpoint" in note and "except" not in note
    changed = ReconstructConfig(scheduler="dpm-solver++", num_inference_steps=25)
    note = authors_settings_note(changed, converted, tmp_path / "ours")
    assert "except: scheduler='dpm-solver++' (theirs: None); num_inference_steps=25" in note
    # Our own pipelines get no such note.
    original.save_pretrained(tmp_path / "own")
    assert authors_settings_note(ReconstructConfig(), original, tmp_path / "own") is None
