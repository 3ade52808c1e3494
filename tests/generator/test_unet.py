"""The inflated video UNet: parity with the 2D UNet, causality, any length, save/load, training."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from mindvideo.generator import (
    SparseCausalAttnProcessor,
    VideoUNet,
    trainable_parameters,
)
from mindvideo.utils import UserError

TINY = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
N_TEMPORAL_LAYERS = 4  # down 1, mid 1, up 2 transformer blocks


def unet_2d() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY).eval()


def train_temporal(unet: VideoUNet, seed: int = 1) -> VideoUNet:
    """Give the temporal layers non-zero output projections, as training would."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in unet.named_parameters():
        if ".attn_temp.to_out." in name:
            param.data = 0.2 * torch.randn(param.shape, generator=generator)
    return unet


def inputs(batch: int = 2, frames: int = 6, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, 8, 8, generator=generator)  # [B, C, F, H, W]
    cond = torch.randn(batch, 77, 32, generator=generator)  # [B, 77, d]
    timesteps = torch.tensor([10, 700])[:batch]
    return latents, timesteps, cond


def temporal_outputs(unet: VideoUNet) -> tuple[list[torch.Tensor], list]:
    outputs: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
        for name, module in unet.named_modules()
        if name.endswith("attn_temp")
    ]
    return outputs, handles


def test_still_video_equals_2d_unet_per_frame():
    u2 = unet_2d()
    unet = VideoUNet.from_unet2d(u2).eval()
    frame, t, cond = inputs(frames=1)
    video = frame.repeat(1, 1, 5, 1, 1)  # 5 identical frames
    with torch.no_grad():
        out = unet(video, t, cond).sample
        ref = u2(frame[:, :, 0], t, cond).sample  # [B, C, H, W]
    assert out.shape == (2, 4, 5, 8, 8)
    torch.testing.assert_close(out, ref[:, :, None].expand_as(out), rtol=1e-4, atol=1e-5)


def test_fresh_temporal_layers_output_exactly_zero(capfd):
    unet = VideoUNet.from_unet2d(unet_2d()).eval()
    outputs, handles = temporal_outputs(unet)
    with torch.no_grad():
        unet(*inputs())
    for handle in handles:
        handle.remove()
    assert len(outputs) == N_TEMPORAL_LAYERS
    assert all(torch.count_nonzero(o) == 0 for o in outputs)
    assert "not expected" not in capfd.readouterr().err  # num_frames reaches every processor


def test_later_frames_never_change_earlier_frames():
    unet = VideoUNet.from_unet2d(unet_2d()).eval()
    latents, t, cond = inputs()
    changed = latents.clone()
    changed[:, :, 4] += torch.randn_like(changed[:, :, 4])
    with torch.no_grad():
        base = unet(latents, t, cond).sample
        out = unet(changed, t, cond).sample
        assert torch.equal(out[:, :, :4], base[:, :, :4])  # frames 0..3: bit-identical
        assert not torch.allclose(out[:, :, 4:], base[:, :, 4:])
        # Trained temporal attention is bidirectional (Tune-A-Video): then earlier frames do move.
        train_temporal(unet)
        assert not torch.allclose(
            unet(changed, t, cond).sample[:, :, 0], unet(latents, t, cond).sample[:, :, 0]
        )


@pytest.mark.parametrize("frames", [1, 12])
def test_any_number_of_frames(frames):
    u2 = unet_2d()
    unet = train_temporal(VideoUNet.from_unet2d(u2)).eval()
    latents, t, cond = inputs(frames=frames)
    with torch.no_grad():
        out = unet(latents, t, cond, return_dict=False)[0]
    assert out.shape == (2, 4, frames, 8, 8)
    assert torch.isfinite(out).all()
    if frames == 1:  # a single frame attends only to itself: the temporal layer is its value path
        with torch.no_grad():
            fresh = VideoUNet.from_unet2d(u2).eval()(latents, t, cond).sample
            ref = u2(latents[:, :, 0], t, cond).sample
        torch.testing.assert_close(fresh[:, :, 0], ref, rtol=1e-4, atol=1e-5)


def test_per_frame_condition_tokens():
    unet = VideoUNet.from_unet2d(unet_2d()).eval()
    latents, t, cond = inputs(frames=3)
    per_frame = cond[:, None].repeat(1, 3, 1, 1)  # [B, F, 77, d]
    with torch.no_grad():
        shared = unet(latents, t, cond).sample
        torch.testing.assert_close(unet(latents, t, per_frame).sample, shared)
        per_frame[:, 2] = torch.randn_like(per_frame[:, 2])
        out = unet(latents, t, per_frame).sample
    assert torch.equal(out[:, :, :2], shared[:, :, :2]) and not torch.allclose(out, shared)


def test_save_and_load_round_trip(tmp_path):
    unet = train_temporal(VideoUNet.from_unet2d(unet_2d())).eval()
    unet.save_pretrained(tmp_path / "unet")
    loaded = VideoUNet.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config["_class_name"] == "VideoUNet"
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert isinstance(
        loaded.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor,
        SparseCausalAttnProcessor,
    )
    with torch.no_grad():
        assert torch.equal(unet(*inputs()).sample, loaded(*inputs()).sample)


def test_inflate_from_a_saved_2d_unet_folder(tmp_path):
    u2 = unet_2d()
    u2.save_pretrained(tmp_path / "stable-diffusion" / "unet")  # the layout of a local SD-1.5
    unet = VideoUNet.from_pretrained_2d(tmp_path / "stable-diffusion", subfolder="unet").eval()
    frame, t, cond = inputs(frames=1)
    with torch.no_grad():
        out = unet(frame.repeat(1, 1, 3, 1, 1), t, cond).sample
        ref = u2(frame[:, :, 0], t, cond).sample
    torch.testing.assert_close(out[:, :, 2], ref, rtol=1e-4, atol=1e-5)
    # from_pretrained on the 2D folder inflates the same way (temporal layers allocated, zero)
    direct = VideoUNet.from_pretrained(tmp_path / "stable-diffusion", subfolder="unet").eval()
    assert not any(p.is_meta for p in direct.parameters())
    with torch.no_grad():
        assert torch.equal(direct(frame.repeat(1, 1, 3, 1, 1), t, cond).sample, out)


def test_inflation_is_the_same_in_any_random_state_and_leaves_that_state_alone(tmp_path):
    """The fresh temporal layers come from a fixed seed: a run repeats (and a resumed run
    matches an uninterrupted one) however much randomness was drawn before the inflation."""
    u2 = unet_2d()
    u2.save_pretrained(tmp_path / "unet")
    inflated = []
    for seed, build in [
        (1, lambda: VideoUNet.from_unet2d(u2)),
        (2, lambda: VideoUNet.from_unet2d(u2)),
        (3, lambda: VideoUNet.from_pretrained(tmp_path / "unet")),
        (4, lambda: VideoUNet.from_pretrained(tmp_path / "unet")),
    ]:
        torch.manual_seed(seed)
        inflated.append(build().state_dict())
        # the caller's random stream goes on as if no inflation had drawn from it
        assert torch.equal(torch.rand(3), torch.manual_seed(seed) and torch.rand(3))
    temporal = [k for k in inflated[0] if ".attn_temp." in k and k.endswith(".to_q.weight")]
    assert temporal and inflated[0][temporal[0]].abs().sum() > 0  # drawn, not zeros
    for other in inflated[1:]:
        assert all(torch.equal(inflated[0][k], other[k]) for k in inflated[0])


def test_trainable_parameters_are_the_papers_attention_layers():
    unet = VideoUNet.from_unet2d(unet_2d())
    params = trainable_parameters(unet)
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert len(params) == len(names) > 0
    assert {id(p) for p in params} == {id(p) for n, p in unet.named_parameters() if n in names}
    assert all(any(f".{m}." in n for m in ("attn1", "attn2", "attn_temp")) for n in names)
    expected = {
        n
        for n, _ in unet.named_parameters()
        if ".attn1." in n or ".attn2." in n or ".attn_temp." in n
    }
    assert names == expected
    assert not any("norm_temp" in n or "resnets" in n or "ff." in n for n in names)

    with_norm = trainable_parameters(unet, ("attn1", "attn2", "attn_temp", "norm_temp"))
    assert len(with_norm) == len(params) + 2 * N_TEMPORAL_LAYERS  # norm_temp weight and bias
    only_q = trainable_parameters(unet, ("attn1.to_q",))
    assert len(only_q) == N_TEMPORAL_LAYERS
    with pytest.raises(UserError, match="attn_tmp"):
        trainable_parameters(unet, ("attn1", "attn_tmp"))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    unet = train_temporal(VideoUNet.from_unet2d(unet_2d()))
    trainable_parameters(unet)
    latents, t, cond = inputs(frames=4)
    target = torch.randn_like(latents)

    def loss_and_grads():
        unet.zero_grad()
        loss = torch.nn.functional.mse_loss(unet(latents, t, cond).sample, target)
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad
        }

    loss, grads = loss_and_grads()
    unet.enable_gradient_checkpointing()
    calls = []
    handles = [
        module.register_forward_pre_hook(lambda *_: calls.append(1))
        for name, module in unet.named_modules()
        if name.endswith("attn_temp")
    ]
    ckpt_loss, ckpt_grads = loss_and_grads()
    for handle in handles:
        handle.remove()
    assert len(calls) == 2 * N_TEMPORAL_LAYERS  # rerun in backward: inside the checkpoints
    torch.testing.assert_close(ckpt_loss, loss)
    assert grads.keys() == ckpt_grads.keys()
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".attn_temp." in n)
    for name in grads:
        torch.testing.assert_close(ckpt_grads[name], grads[name], rtol=1e-4, atol=1e-6)


def test_set_default_attn_processor_keeps_sparse_causal_attention():
    unet = VideoUNet.from_unet2d(unet_2d())
    unet.set_default_attn_processor()
    attn1 = [p for n, p in unet.attn_processors.items() if ".attn1." in n]
    assert len(attn1) == N_TEMPORAL_LAYERS
    assert all(isinstance(p, SparseCausalAttnProcessor) for p in attn1)


def test_rejects_image_latents_and_per_frame_timesteps():
    unet = VideoUNet.from_unet2d(unet_2d())
    latents, t, cond = inputs()
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        unet(latents[:, :, 0], t, cond)
    with pytest.raises(ValueError, match="one per video"):
        unet(latents, torch.arange(12), cond)
