"""Cross-frame GroupNorm: the authors' ResnetBlock3D normalises [B, C, F, H, W] tensors, so its
statistics pool over every frame of a clip; ours is that when switched on, per frame otherwise."""

import torch
from torch.nn import functional as F

from mindvideo.generator import VideoUNet
from mindvideo.generator.unet import CROSS_FRAME_NORM_KEY, FrameGroupNorm

from .test_unet import TINY, inputs, unet_2d


def video_unet(on: bool) -> VideoUNet:
    unet = VideoUNet.from_unet2d(unet_2d())
    unet.set_cross_frame_norm(on)
    return unet


def test_the_authors_resnet_block_normalises_whole_clips():
    """A ResNet block of the inflated UNet against the authors' block written from its
    semantics: GroupNorm on [B, C, F, H, W] (statistics over channels of a group, all frames
    and pixels), SiLU, the block's own convolutions and time projection."""
    unet = video_unet(True)
    block = unet.down_blocks[0].resnets[0]
    assert isinstance(block.norm1, FrameGroupNorm) and isinstance(block.norm2, FrameGroupNorm)
    b, f, c = 2, 3, block.norm1.num_channels
    x = torch.randn(b * f, c, 8, 8, generator=torch.Generator().manual_seed(0))
    temb = torch.randn(b * f, block.time_emb_proj.in_features)
    for norm in (block.norm1, block.norm2):
        norm.frames = f

    def clip_norm(h, norm):  # the authors' nn.GroupNorm on the 5-D clip tensor
        h5 = h.reshape(b, f, *h.shape[1:]).permute(0, 2, 1, 3, 4)
        out = F.group_norm(h5, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return out.permute(0, 2, 1, 3, 4).reshape(h.shape)

    with torch.no_grad():
        h = block.conv1(F.silu(clip_norm(x, block.norm1)))
        h = h + block.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = block.conv2(F.silu(clip_norm(h, block.norm2)))
        shortcut = x if block.conv_shortcut is None else block.conv_shortcut(x)
        reference = (shortcut + h) / block.output_scale_factor
        torch.testing.assert_close(block(x, temb), reference, atol=1e-5, rtol=1e-5)
        # per frame it differs: the frames of a clip share the statistics
        for norm in (block.norm1, block.norm2):
            norm.cross_frame = False
        assert (block(x, temb) - reference).abs().max() > 1e-3


def test_off_is_the_2d_groupnorm_and_on_couples_the_frames():
    latents, t, cond = inputs(batch=2, frames=4)
    off, on = video_unet(False), video_unet(True)
    with torch.no_grad():
        # Identical frames have the same statistics per frame and per clip.
        still = latents[:, :, :1].repeat(1, 1, 4, 1, 1)
        torch.testing.assert_close(on(still, t, cond).sample, off(still, t, cond).sample)
        # Sparse causal attention lets frame 0 see frame 0 only and the fresh temporal layers
        # add nothing, so per frame, frame 0 ignores frame 3; a clip's GroupNorm does not.
        changed = latents.clone()
        changed[:, :, 3] += 2.0
        first = {
            name: (m(latents, t, cond).sample[:, :, 0], m(changed, t, cond).sample[:, :, 0])
            for name, m in (("off", off), ("on", on))
        }
    torch.testing.assert_close(*first["off"])
    assert (first["on"][0] - first["on"][1]).abs().max() > 1e-3


def test_the_switch_is_saved_and_the_weights_are_the_same(tmp_path):
    on = video_unet(True)
    assert on.cross_frame_norm and not video_unet(False).cross_frame_norm
    # Same parameter names as the 2D UNet: checkpoints load either way.
    names_2d = set(unet_2d().state_dict())
    assert names_2d <= set(on.state_dict())
    on.save_pretrained(tmp_path / "unet")
    back = VideoUNet.from_pretrained(tmp_path / "unet")
    assert back.cross_frame_norm and back.config[CROSS_FRAME_NORM_KEY] is True
    assert all(n.cross_frame for n in back.modules() if isinstance(n, FrameGroupNorm))
    latents, t, cond = inputs(batch=1, frames=3)
    with torch.no_grad():
        torch.testing.assert_close(back(latents, t, cond).sample, on(latents, t, cond).sample)
    plain = VideoUNet(**TINY)
    assert not plain.cross_frame_norm
    assert not any(n.cross_frame for n in plain.modules() if isinstance(n, FrameGroupNorm))
