"""Scene-dynamic sparse causal attention (eq. 4) and the temporal attention, at layer level."""

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from mindvideo.generator import (
    SparseCausalAttnProcessor,
    VideoTransformerBlock,
    sparse_causal_frame_indices,
)

DIM, HEADS, HEAD_DIM = 16, 2, 8
FRAMES, LENGTH = 6, 5


def sc_attention() -> Attention:
    torch.manual_seed(0)
    return Attention(
        query_dim=DIM, heads=HEADS, dim_head=HEAD_DIM, processor=SparseCausalAttnProcessor()
    ).eval()


def video_block() -> VideoTransformerBlock:
    torch.manual_seed(0)
    return VideoTransformerBlock(DIM, HEADS, HEAD_DIM, cross_attention_dim=12).eval()


def test_frame_indices_are_the_previous_two_clamped_at_zero():
    assert sparse_causal_frame_indices(6).tolist() == [
        [0, 0],  # frame 0: only itself
        [0, 0],  # frame 1: only frame 0
        [0, 1],
        [1, 2],
        [2, 3],
        [3, 4],
    ]
    assert sparse_causal_frame_indices(1).tolist() == [[0, 0]]


def test_sparse_causal_attention_equals_eq4_reference():
    attn = sc_attention()
    x = torch.randn(2 * FRAMES, LENGTH, DIM)  # [B·F, L, D]
    with torch.no_grad():
        out = attn(x, num_frames=FRAMES)
        # Reference: written out per video b and frame i from eq. (4).
        video = x.unflatten(0, (2, FRAMES))
        expected = torch.empty(2, FRAMES, LENGTH, DIM)
        for b in range(2):
            for i in range(FRAMES):
                src = torch.cat([video[b, max(i - 2, 0)], video[b, max(i - 1, 0)]])  # [2L, D]
                q = attn.to_q(video[b, i]).view(LENGTH, HEADS, HEAD_DIM).transpose(0, 1)
                k = attn.to_k(src).view(2 * LENGTH, HEADS, HEAD_DIM).transpose(0, 1)
                v = attn.to_v(src).view(2 * LENGTH, HEADS, HEAD_DIM).transpose(0, 1)
                w = torch.softmax(q @ k.transpose(1, 2) / HEAD_DIM**0.5, dim=-1)
                heads = (w @ v).transpose(0, 1).reshape(LENGTH, HEADS * HEAD_DIM)
                expected[b, i] = attn.to_out[0](heads)
    torch.testing.assert_close(out, expected.flatten(0, 1), rtol=1e-5, atol=1e-6)


def test_frame_output_depends_exactly_on_the_frames_eq4_names():
    attn = sc_attention()
    x = torch.randn(FRAMES, LENGTH, DIM)
    sources = sparse_causal_frame_indices(FRAMES).tolist()
    with torch.no_grad():
        base = attn(x, num_frames=FRAMES)
        for j in range(FRAMES):
            changed = x.clone()
            changed[j] += torch.randn(LENGTH, DIM)
            out = attn(changed, num_frames=FRAMES)
            for i in range(FRAMES):
                reads_j = i == j or j in sources[i]  # its own query, or one of its keys
                assert torch.equal(out[i], base[i]) != reads_j, (i, j)
    # In words: later frames never reach earlier ones, frame i−3 never reaches frame i,
    # and frame i−1 always does.


def test_identical_frames_give_ordinary_self_attention():
    attn = sc_attention()
    frame = torch.randn(1, LENGTH, DIM)
    with torch.no_grad():
        sc = attn(frame.repeat(FRAMES, 1, 1), num_frames=FRAMES)
        attn.set_processor(AttnProcessor2_0())
        plain = attn(frame)
    torch.testing.assert_close(sc, plain.expand(FRAMES, -1, -1), rtol=1e-5, atol=1e-6)


def test_sparse_causal_attention_needs_num_frames():
    attn = sc_attention()
    with pytest.raises(ValueError, match="num_frames"):
        attn(torch.randn(FRAMES, LENGTH, DIM))
    with pytest.raises(ValueError, match="not a whole number"):
        attn(torch.randn(FRAMES, LENGTH, DIM), num_frames=4)


def test_fresh_temporal_attention_is_exactly_the_identity():
    block = video_block()
    h = torch.randn(2 * FRAMES, LENGTH, DIM)
    with torch.no_grad():
        x = h.unflatten(0, (2, FRAMES)).transpose(1, 2).flatten(0, 1)  # [B·L, F, D]
        assert torch.count_nonzero(block.attn_temp(block.norm_temp(x))) == 0
        assert torch.equal(block.temporal_attention(h, FRAMES), h)


def test_fresh_video_block_equals_2d_block_on_a_still_video():
    block = video_block()
    torch.manual_seed(1)
    block_2d = BasicTransformerBlock(DIM, HEADS, HEAD_DIM, cross_attention_dim=12).eval()
    block_2d.load_state_dict(block.state_dict(), strict=False)
    frame, cond = torch.randn(1, LENGTH, DIM), torch.randn(1, 7, 12)
    with torch.no_grad():
        video = block(
            frame.repeat(FRAMES, 1, 1),
            encoder_hidden_states=cond.repeat(FRAMES, 1, 1),
            cross_attention_kwargs={"num_frames": FRAMES},
        )
        image = block_2d(frame, encoder_hidden_states=cond)
    torch.testing.assert_close(video, image.expand(FRAMES, -1, -1), rtol=1e-5, atol=1e-6)


def test_temporal_attention_mixes_frames_at_one_position_only():
    block = video_block()
    torch.nn.init.normal_(block.attn_temp.to_out[0].weight)
    h = torch.randn(FRAMES, LENGTH, DIM)  # one video
    changed = h.clone()
    changed[4, 2] += 1.0  # frame 4, latent position 2
    with torch.no_grad():
        diff = (
            block.temporal_attention(changed, FRAMES) - block.temporal_attention(h, FRAMES)
        ).abs()
    moved = diff.amax(dim=-1) > 0  # [F, L]
    assert moved[:, 2].all()  # every frame at that position, earlier ones too (bidirectional)
    assert not moved[:, [0, 1, 3, 4]].any()  # no other position


def test_video_block_needs_num_frames():
    block = video_block()
    with pytest.raises(ValueError, match="num_frames"):
        block(torch.randn(FRAMES, LENGTH, DIM), encoder_hidden_states=torch.randn(FRAMES, 7, 12))
