"""Loading the authors' released UNet (Tune-A-Video-style UNet3D keys, .bin, UNet3D config)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mindvideo.generator import (
    VideoUNet,
    convert_authors_unet_state_dict,
    inflated_unet_from_authors,
    load_state_dict_safely,
    unet2d_config_from_authors,
)
from mindvideo.utils import UserError

TINY = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[16, 32],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def authors_config() -> dict:
    """A config.json as the authors' UNet3DConditionModel writes it (their argument names)."""
    return {
        "_class_name": "UNet3DConditionModel",
        "_diffusers_version": "0.11.1",
        "act_fn": "silu",
        "attention_head_dim": 4,
        "block_out_channels": [16, 32],
        "center_input_sample": False,
        "class_embed_type": None,
        "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock3DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "resnet_time_scale_shift": "default",
        "sample_size": 8,
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
        "upcast_attention": False,
        "use_linear_projection": False,
    }


def trained_unet(**overrides) -> VideoUNet:
    """A tiny inflated UNet with every weight (temporal ones too) non-trivial."""
    torch.manual_seed(0)
    unet = VideoUNet(**{**TINY, **overrides}).eval()
    generator = torch.Generator().manual_seed(1)
    for name, param in unet.named_parameters():
        if ".attn_temp.to_out." in name or "norm_temp" in name:
            param.data = 0.2 * torch.randn(param.shape, generator=generator)
    return unet


def authors_state_dict(unet: VideoUNet) -> dict[str, torch.Tensor]:
    """Our weights under the authors' key names.

    Their UNet3DConditionModel keeps diffusers' 2D names (InflatedConv3d is a Conv2d, so
    ``conv_in.weight`` keeps its 2D shape) and names the added layers ``attn_temp``/``norm_temp``
    as we do: the mapping is the identity, the 1×1-conv ``proj_in``/``proj_out`` included.
    """
    return {k: v.clone() for k, v in unet.state_dict().items()}


def write_authors_folder(root, state_dict, config=None):
    unet_dir = root / "unet"
    unet_dir.mkdir(parents=True)
    (unet_dir / "config.json").write_text(json.dumps(config or authors_config()))
    torch.save(state_dict, unet_dir / "diffusion_pytorch_model.bin")  # a plain tensor dict
    return root


def inputs(frames: int = 4):
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, frames, 8, 8, generator=generator)
    cond = torch.randn(2, 77, 32, generator=generator)
    return latents, torch.tensor([3, 900]), cond


def run(unet: VideoUNet) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs()).sample


def test_authors_pipeline_folder_loads_to_the_same_model(tmp_path):
    original = trained_unet()
    sd = authors_state_dict(original)
    assert sd["conv_in.weight"].ndim == 4
    assert sd["down_blocks.0.attentions.0.proj_in.weight"].shape == (16, 16, 1, 1)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight" in sd
    assert "mid_block.attentions.0.transformer_blocks.0.norm_temp.weight" in sd
    folder = write_authors_folder(tmp_path / "authors", sd)

    unet = inflated_unet_from_authors(folder).eval()
    assert isinstance(unet, VideoUNet)
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    # The authors' ResnetBlock3D normalises whole clips: a converted UNet does too.
    assert unet.cross_frame_norm
    assert not torch.equal(run(unet), run(original))
    original.set_cross_frame_norm(True)
    assert torch.equal(run(unet), run(original))
    # the unet/ folder itself works too
    assert torch.equal(run(inflated_unet_from_authors(folder / "unet").eval()), run(original))


def test_conv_projection_checkpoint_into_linear_projection_model():
    original = trained_unet()  # use_linear_projection=False: proj_in/out are 1×1 convs
    target = VideoUNet(**TINY, use_linear_projection=True).eval()
    sd, report = convert_authors_unet_state_dict(authors_state_dict(original), target)
    assert sorted(report.reshaped) == sorted(
        k for k in sd if k.endswith(("proj_in.weight", "proj_out.weight"))
    )
    assert len(report.reshaped) == 2 * 4  # 4 transformers: down 1, mid 1, up 2
    assert report.missing == [] and report.unexpected == []
    target.load_state_dict(sd)
    torch.testing.assert_close(run(target), run(original), rtol=1e-4, atol=1e-5)


def test_legacy_attention_names_and_ddp_prefix():
    original = trained_unet()
    legacy = {}
    for key, value in authors_state_dict(original).items():
        key = key.replace(".to_out.0.", ".to_out.").replace("attn2.to_q.", "attn2.query.")
        legacy[f"module.{key}"] = value
    unet = VideoUNet(**TINY).eval()
    sd, report = convert_authors_unet_state_dict(legacy, unet)
    assert len(report.renamed) == len(legacy)
    assert report.renamed[
        "module.mid_block.attentions.0.transformer_blocks.0.attn_temp.to_out.weight"
    ] == ("mid_block.attentions.0.transformer_blocks.0.attn_temp.to_out.0.weight")
    unet.load_state_dict(sd)
    assert torch.equal(run(unet), run(original))


def test_wrong_shape_is_a_user_error(tmp_path):
    sd = authors_state_dict(trained_unet())
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn_temp.to_k.weight"
    sd[key] = torch.zeros(8, 16)
    folder = write_authors_folder(tmp_path / "authors", sd)
    with pytest.raises(UserError, match=r"attn_temp\.to_k\.weight.*\(8, 16\).*\(16, 16\)"):
        inflated_unet_from_authors(folder)


def test_missing_and_unexpected_keys(tmp_path):
    sd = authors_state_dict(trained_unet())
    no_temporal = {k: v for k, v in sd.items() if "_temp." not in k}
    unet = VideoUNet(**TINY)
    _, report = convert_authors_unet_state_dict(
        {**no_temporal, "extra.weight": torch.ones(1)}, unet
    )
    assert report.unexpected == ["extra.weight"]
    assert report.missing and report.missing_2d == []  # only temporal layers missing

    # strict: an unexpected key is an error; lenient: temporal layers stay the identity
    folder = write_authors_folder(tmp_path / "a", {**no_temporal, "extra.weight": torch.ones(1)})
    with pytest.raises(UserError, match=r"extra\.weight"):
        inflated_unet_from_authors(folder)
    lenient = inflated_unet_from_authors(folder, strict=False)
    block = lenient.mid_block.attentions[0].transformer_blocks[0]
    assert torch.count_nonzero(block.attn_temp.to_out[0].weight) == 0

    del no_temporal["conv_in.weight"]
    folder = write_authors_folder(tmp_path / "b", no_temporal)
    with pytest.raises(UserError, match=r"conv_in\.weight"):
        inflated_unet_from_authors(folder)


class NotATensor:
    pass


def test_weights_are_read_without_running_pickle_code(tmp_path):
    tensors = {"a": torch.arange(3.0)}
    torch.save(tensors, tmp_path / "plain.bin")
    assert torch.equal(load_state_dict_safely(tmp_path / "plain.bin")["a"], tensors["a"])
    torch.save({"state_dict": tensors}, tmp_path / "wrapped.pth")
    assert set(load_state_dict_safely(tmp_path / "wrapped.pth")) == {"a"}
    save_file(tensors, tmp_path / "w.safetensors")
    assert torch.equal(load_state_dict_safely(tmp_path / "w.safetensors")["a"], tensors["a"])

    torch.save({"a": torch.ones(1), "b": NotATensor()}, tmp_path / "code.bin")
    with pytest.raises(UserError, match=r"code\.bin.*weights_only=True"):
        load_state_dict_safely(tmp_path / "code.bin")
    torch.save({"a": 1}, tmp_path / "numbers.bin")
    with pytest.raises(UserError, match="dict of named tensors"):
        load_state_dict_safely(tmp_path / "numbers.bin")
    with pytest.raises(UserError, match="does not exist"):
        load_state_dict_safely(tmp_path / "absent.bin")


def test_authors_config_maps_onto_the_2d_unet():
    config = unet2d_config_from_authors(authors_config())
    assert config["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D"]
    assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert not any(k.startswith("_") for k in config)
    assert config["attention_head_dim"] == 4 and config["use_linear_projection"] is False
    assert "not_a_unet_argument" not in unet2d_config_from_authors(
        {**authors_config(), "not_a_unet_argument": 1}
    )
    with pytest.raises(UserError, match="CrossAttnDownBlockMotion"):
        unet2d_config_from_authors(
            {**authors_config(), "down_block_types": ["CrossAttnDownBlockMotion", "DownBlock3D"]}
        )
