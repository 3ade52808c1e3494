"""Attention recording (paper 3.5): token scores vs. the raw attention, tokens → voxels."""

import numpy as np
import pytest
import torch

from mindvideo.data.pairing import pad_voxels, padded_size
from mindvideo.encoder import SpatiotemporalEncoder, mbm_tiny
from mindvideo.interpretation import AttentionSummary, record_attention, token_to_voxel
from mindvideo.utils import UserError

V = 64  # L = 4 patches of 16
W = 2


def _perturbed(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move weights off their init so attention differs across tokens, layers and TRs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@pytest.fixture
def mbm():
    torch.manual_seed(0)
    return _perturbed(mbm_tiny(V)).eval()


@pytest.fixture
def encoder(mbm):
    torch.manual_seed(1)
    enc = SpatiotemporalEncoder.from_mbm(mbm, window=W, out_tokens=4, cond_dim=16)
    return _perturbed(enc).eval()  # temporal attention no longer zero / identical per TR


@pytest.fixture
def fmri():
    return torch.randn(5, W, V, generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------ token_to_voxel
def test_token_to_voxel_gives_each_voxel_its_patch_score_and_drops_padding():
    scores = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [2 layers, L = 3]
    out = token_to_voxel(scores, patch_size=4, n_voxels=10)  # padded 12 -> 10
    assert out.shape == (2, 10)
    np.testing.assert_array_equal(out[0], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(out[1, 8:], [6, 6])
    # no padding, torch input, one map
    out = token_to_voxel(torch.tensor([1.0, 2.0]), patch_size=3, n_voxels=6)
    np.testing.assert_array_equal(out, [1, 1, 1, 2, 2, 2])
    # the voxel count pad_voxels made it from
    n = 50
    assert token_to_voxel(np.ones(padded_size(n, 16) // 16), 16, n).shape == (n,)


def test_token_to_voxel_rejects_a_voxel_count_the_tokens_do_not_cover():
    with pytest.raises(UserError, match="does not fit an ROI of 13 voxels"):
        token_to_voxel(np.ones(3), patch_size=4, n_voxels=13)  # more than 12
    with pytest.raises(UserError, match="does not fit"):
        token_to_voxel(np.ones(3), patch_size=4, n_voxels=7)  # a whole token unused


# ------------------------------------------------------------------------------ by hand
def _by_hand(encoder, fmri, layers):
    """Token scores and temporal attention from forward(output_attentions=True)."""
    P, L = encoder.num_prefix_tokens, encoder.num_patches
    N = fmri.shape[0]
    with torch.no_grad():
        out = encoder(fmri, output_attentions=True)  # every layer, every head
    tokens, temporal = [], []
    for i in layers:
        a = out.spatial_attentions[i].double()  # [N·w, H, T, T]
        received = a.mean(dim=1).mean(dim=1)[:, P:]  # heads, then query rows; CLS dropped
        tokens.append(received.reshape(N, W, L).mean(dim=(0, 1)))  # [L]
        t = out.temporal_attentions[i].double().mean(dim=1)  # [N·T, w, w]
        temporal.append(t.reshape(N, P + L, W, W)[:, P:].mean(dim=(0, 1)))  # [w, w]
    return torch.stack(tokens).numpy(), torch.stack(temporal).numpy()


def test_record_attention_matches_the_raw_attention_maps(encoder, fmri):
    summary = record_attention(
        encoder, fmri, layers=("first", "last"), batch_size=2, stage="contrast", progress=False
    )  # batches of 2, 2, 1
    tokens, temporal = _by_hand(encoder, fmri, layers=(0, 1))
    assert summary.token_scores.shape == (2, V // 16)
    assert summary.token_scores_per_tr.shape == (2, W, V // 16)
    np.testing.assert_allclose(summary.token_scores, tokens, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(summary.temporal, temporal, rtol=1e-5, atol=1e-7)
    assert np.isfinite(summary.token_scores).all()
    # the tokens' share of attention (the rest goes to the CLS token)
    assert (summary.token_scores.sum(-1) > 0).all() and (summary.token_scores.sum(-1) < 1).all()
    np.testing.assert_allclose(summary.temporal.sum(-1), 1.0, rtol=1e-6)
    # recorded attention genuinely differs between tokens and layers
    assert np.ptp(summary.token_scores[0]) > 1e-3
    assert not np.allclose(summary.token_scores[0], summary.token_scores[1])
    assert summary.layers == (0, 1) and summary.layer_names == ("first", "last")
    assert summary.n_samples == 5 and summary.stage == "contrast"


def test_middle_layer_and_repeated_rows(encoder, fmri):
    summary = record_attention(encoder, fmri, progress=False)  # first, middle, last
    assert summary.layers == (0, 1, 1)  # depth 2: middle = depth // 2 = last
    np.testing.assert_array_equal(summary.token_scores[1], summary.token_scores[2])
    np.testing.assert_array_equal(summary.layer("middle"), summary.token_scores[1])
    with pytest.raises(UserError, match="Unknown encoder layer"):
        record_attention(encoder, fmri, layers=("top",), progress=False)
    with pytest.raises(UserError, match="does not exist"):
        record_attention(encoder, fmri, layers=(5,), progress=False)


def test_data_loader_batches_give_the_same_average(encoder, fmri):
    direct = record_attention(encoder, fmri, batch_size=5, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fmri), batch_size=3)
    tuples = record_attention(encoder, loader, progress=False)  # batches of (fmri,)
    dicts = record_attention(encoder, ({"fmri": b} for b in fmri.split(2)), progress=False)
    arrays = record_attention(encoder, fmri.numpy(), batch_size=4, progress=False)
    for other in (tuples, dicts, arrays):
        np.testing.assert_allclose(other.token_scores, direct.token_scores, rtol=1e-6)
        np.testing.assert_allclose(other.temporal, direct.temporal, rtol=1e-6)
        assert other.n_samples == 5


def test_mbm_stage_equals_the_mbm_blocks_per_tr(mbm, fmri):
    summary = record_attention(mbm, fmri, layers=(0, 1), stage="mbm", progress=False)
    assert summary.temporal is None
    # by hand with the MBM's own blocks, every TR on its own
    P = mbm.num_prefix_tokens
    x = fmri.reshape(-1, V)
    with torch.no_grad():
        h = mbm.patch_embed(x) + mbm.pos_embed[P:]
        h = torch.cat([(mbm.cls_token + mbm.pos_embed[:1]).expand(len(h), -1, -1), h], dim=1)
        expected = []
        for blk in mbm.blocks:
            h, a = blk(h, return_attention=True)  # [N·w, H, T, T]
            expected.append(a.double().mean(dim=(1, 2))[:, P:].mean(dim=0))
    np.testing.assert_allclose(summary.token_scores, torch.stack(expected), rtol=1e-5)


def test_recording_runs_in_eval_mode_and_restores_the_mode(mbm, fmri):
    torch.manual_seed(3)
    enc = SpatiotemporalEncoder.from_mbm(
        mbm, window=W, out_tokens=4, cond_dim=16, dropout=0.5, drop_path=0.5
    )
    enc.train()
    a = record_attention(enc, fmri, progress=False)
    b = record_attention(enc, fmri, progress=False)
    np.testing.assert_array_equal(a.token_scores, b.token_scores)  # no stochastic depth
    assert enc.training


def test_wrong_voxel_count_is_a_user_error(encoder):
    with pytest.raises(UserError, match=r"\[N, w, 64\]"):
        record_attention(encoder, torch.randn(2, W, V - 16), progress=False)
    with pytest.raises(UserError, match="empty"):
        record_attention(encoder, torch.randn(0, W, V), progress=False)


def _focused(encoder: SpatiotemporalEncoder, token: int) -> SpatiotemporalEncoder:
    """Make every query of layer 0, in every head, attend to one patch token.

    The token's position embedding gets a large feature 0; the first layer's keys read only
    feature 0 and every query is a constant vector along it, so the logits are largest, by far,
    for that token.
    """
    D = encoder.config.embed_dim
    H = encoder.config.num_heads
    d = D // H
    with torch.no_grad():
        encoder.pos_embed[encoder.num_prefix_tokens + token, 0] += 100.0
        attn = encoder.blocks[0].attn
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        for h in range(H):  # qkv rows: [q (D) | k (D) | v (D)], head h at h·d
            attn.qkv.bias[h * d] = 10.0
            attn.qkv.weight[D + h * d, 0] = 10.0
    return encoder


def test_a_token_that_gets_all_the_attention_gives_its_voxels_the_max(mbm, fmri):
    n_voxels = 60  # padded to 64: the last token holds 12 voxels and 4 of padding
    x = pad_voxels(fmri[..., :n_voxels], 16)
    for token in (1, 3):
        torch.manual_seed(4)
        enc = _focused(
            SpatiotemporalEncoder.from_mbm(mbm, window=W, out_tokens=4, cond_dim=16), token
        )
        summary = record_attention(enc, x, layers=("first",), progress=False)
        assert summary.token_scores[0, token] > 0.999
        voxels = summary.voxel_scores(n_voxels)[0]  # [60]
        assert voxels.shape == (n_voxels,)
        top = np.flatnonzero(voxels == voxels.max())
        np.testing.assert_array_equal(top, np.arange(16 * token, min(16 * token + 16, n_voxels)))


def test_summary_save_load_roundtrip(encoder, mbm, fmri, tmp_path):
    for summary in (
        record_attention(encoder, fmri, stage="cotrain", progress=False),
        record_attention(mbm, fmri, stage="mbm", progress=False),
    ):
        path = summary.save(tmp_path / f"{summary.stage}.npz")
        back = AttentionSummary.load(path)
        np.testing.assert_array_equal(back.token_scores, summary.token_scores)
        np.testing.assert_array_equal(back.token_scores_per_tr, summary.token_scores_per_tr)
        if summary.temporal is None:
            assert back.temporal is None
        else:
            np.testing.assert_array_equal(back.temporal, summary.temporal)
        assert (back.layers, back.layer_names, back.stage) == (
            summary.layers,
            summary.layer_names,
            summary.stage,
        )
        assert (back.patch_size, back.num_voxels, back.depth, back.n_samples) == (16, V, 2, 5)
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob(".*"))  # no temp files left
    with pytest.raises(UserError, match="does not exist"):
        AttentionSummary.load(tmp_path / "missing.npz")
