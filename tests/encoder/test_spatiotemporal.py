"""Spatiotemporal encoder (paper 3.3, eqs. 1–2): inflation parity, mixing, head, save/load."""

import pytest
import torch

from mindvideo.encoder import SpatiotemporalEncoder, clip_loss, mbm_tiny, retrieval_top1
from mindvideo.encoder.spatiotemporal import SpatiotemporalBlock
from mindvideo.utils import UserError

V = 128  # L = 8 patches
COND = 24  # a small stand-in for the text encoder's 768


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.fixture
def mbm():
    torch.manual_seed(0)
    m = mbm_tiny(V)
    # move the weights away from their init so the parity check covers every copied tensor
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _perturb_temporal(encoder: SpatiotemporalEncoder) -> None:
    with torch.no_grad():
        for blk in encoder.blocks:
            blk.attn_temp.proj.weight.normal_(std=0.3)
            blk.attn_temp.proj.bias.normal_(std=0.1)
        encoder.temporal_pos_embed.normal_(std=0.5)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_fresh_inflation_equals_the_mbm_encoder_per_tr(mbm, window):
    torch.manual_seed(1)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=window, cond_dim=COND).eval()
    fmri = torch.randn(3, window, V)
    tokens, _ = encoder.forward_encoder(fmri)
    assert tokens.shape == (3, window, V // 16, 32)
    with torch.no_grad():
        for t in range(window):
            torch.testing.assert_close(tokens[:, t], mbm.encode(fmri[:, t]), rtol=0, atol=1e-6)


def test_inflation_copies_the_encoder_and_adds_fresh_temporal_parts(mbm):
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND, dropout=0.6)
    mbm_state, enc_state = mbm.state_dict(), encoder.state_dict()
    for key in ("patch_embed.proj.weight", "cls_token", "blocks.1.attn.qkv.weight", "norm.bias"):
        assert torch.equal(enc_state[key], mbm_state[key]), key
    assert not any(k.startswith("decoder") or k == "mask_token" for k in enc_state)
    assert torch.count_nonzero(encoder.blocks[0].attn_temp.proj.weight) == 0
    assert torch.count_nonzero(encoder.temporal_pos_embed) == 0
    assert torch.count_nonzero(encoder.blocks[0].attn_temp.qkv.weight) > 0
    assert encoder.config.dropout == 0.6 and encoder.config.window == 2


def test_without_temporal_weights_trs_are_independent_and_with_them_they_mix(mbm):
    torch.manual_seed(2)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND).eval()
    fmri = torch.randn(2, 2, V)
    other = fmri.clone()
    other[:, 1] = torch.randn(2, V)  # change TR 2 only
    with torch.no_grad():
        a, _ = encoder.forward_encoder(fmri)
        b, _ = encoder.forward_encoder(other)
        torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=0)  # TR 1 untouched
        _perturb_temporal(encoder)
        a, _ = encoder.forward_encoder(fmri)
        b, _ = encoder.forward_encoder(other)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3  # TR 1 now sees TR 2


def _lone_branch_block(branch: str) -> SpatiotemporalBlock:
    """A block in which only the spatial (or only the temporal) attention does anything."""
    torch.manual_seed(3)
    blk = SpatiotemporalBlock(dim=16, num_heads=2).eval()
    with torch.no_grad():
        blk.mlp.fc2.weight.zero_()
        blk.mlp.fc2.bias.zero_()
        silent = blk.attn if branch == "temporal" else blk.attn_temp
        silent.proj.weight.zero_()
        silent.proj.bias.zero_()
        loud = blk.attn_temp if branch == "temporal" else blk.attn
        loud.proj.weight.normal_(std=0.5)
    return blk


@pytest.mark.parametrize("branch", ["temporal", "spatial"])
def test_attention_mixes_only_along_its_own_axis(branch):
    """Temporal attention (eq. 2) mixes one patch position across TRs of one sample; spatial
    attention (eq. 1) mixes the patches of one TR of one sample. Nothing crosses samples."""
    blk = _lone_branch_block(branch)
    N, w, T, D = 3, 3, 5, 16
    x = torch.randn(N * w, T, D)
    y = x.clone().reshape(N, w, T, D)
    y[1, 2, 4] += torch.randn(D)  # sample 1, TR 3, patch 5 (not a constant: LayerNorm)
    with torch.no_grad():
        changed = (blk(y.reshape(N * w, T, D), w) - blk(x, w)).abs().reshape(N, w, T, D)
    changed = changed.amax(dim=-1) > 1e-4  # [N, w, T]
    expected = torch.zeros(N, w, T, dtype=torch.bool)
    if branch == "temporal":
        expected[1, :, 4] = True  # every TR, same patch position, same sample
    else:
        expected[1, 2, :] = True  # every patch, same TR, same sample
    assert torch.equal(changed, expected)


def test_output_shapes_and_pooling(mbm):
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND).eval()
    out = encoder(torch.randn(4, 2, V))
    assert out.embeddings.shape == (4, 77, COND)
    assert out.pooled.shape == (4, COND)
    torch.testing.assert_close(out.pooled, out.embeddings.mean(dim=1))
    with_proj = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND, pooled_dim=12)
    assert with_proj.encode_pooled(torch.randn(4, 2, V)).shape == (4, 12)
    embeddings, pooled = encoder(torch.randn(4, 2, V), return_dict=False)
    assert embeddings.shape == (4, 77, COND) and pooled.shape == (4, COND)


def test_wrong_window_or_voxels_are_user_errors(mbm):
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, max_window=4, cond_dim=COND)
    with pytest.raises(UserError, match="windows of 2 TRs but got 3"):
        encoder(torch.randn(1, 3, V))
    with pytest.raises(UserError, match=r"\[N, w, 128\]"):
        encoder(torch.randn(1, 2, 112))
    with pytest.raises(UserError, match="max_window = 4"):
        encoder.forward_sliding(torch.randn(1, 5, V))


def test_longer_windows_give_one_condition_per_sub_window(mbm):
    torch.manual_seed(4)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, max_window=6, cond_dim=COND).eval()
    fmri = torch.randn(2, 5, V)
    with torch.no_grad():
        sliding = encoder.forward_sliding(fmri)
        assert sliding.shape == (2, 4, 77, COND)
        # fresh temporal weights: each sub-window equals encoding that window alone
        for s in range(4):
            alone = encoder(fmri[:, s : s + 2]).embeddings
            torch.testing.assert_close(sliding[:, s], alone, rtol=0, atol=1e-5)


def test_save_pretrained_round_trip(mbm, tmp_path):
    torch.manual_seed(5)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND, pooled_dim=12)
    _perturb_temporal(encoder)
    encoder.save_pretrained(tmp_path / "fmri_encoder")
    loaded = SpatiotemporalEncoder.from_pretrained(tmp_path / "fmri_encoder").eval()
    encoder.eval()
    assert _public(loaded.config) == _public(encoder.config)
    fmri = torch.randn(3, 2, V)
    with torch.no_grad():
        a, b = encoder(fmri), loaded(fmri)
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients(mbm):
    torch.manual_seed(6)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND).train()
    _perturb_temporal(encoder)
    fmri = torch.randn(3, 2, V)

    def grads():
        encoder.zero_grad()
        encoder(fmri).embeddings.square().mean().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters()}

    plain = grads()
    encoder.enable_gradient_checkpointing()
    assert encoder.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, msg=name)


def test_recorded_attention_matches_sdpa_and_rows_sum_to_one(mbm):
    torch.manual_seed(7)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND).eval()
    _perturb_temporal(encoder)
    fmri = torch.randn(3, 2, V)
    with torch.no_grad():
        plain = encoder(fmri)
        rec = encoder(fmri, output_attentions=True)
        first_last = encoder(
            fmri, output_attentions=True, attention_layers=(0, -1), average_heads=True
        )
    torch.testing.assert_close(rec.embeddings, plain.embeddings, rtol=1e-5, atol=1e-6)
    T = 1 + V // 16  # CLS + patches
    assert rec.attention_layers == (0, 1)
    assert len(rec.spatial_attentions) == len(rec.temporal_attentions) == 2
    for a_s, a_t in zip(rec.spatial_attentions, rec.temporal_attentions, strict=True):
        assert a_s.shape == (3 * 2, 2, T, T)
        assert a_t.shape == (3 * T, 2, 2, 2)
        torch.testing.assert_close(a_s.sum(-1), torch.ones(a_s.shape[:-1]))
        torch.testing.assert_close(a_t.sum(-1), torch.ones(a_t.shape[:-1]))
    assert first_last.attention_layers == (0, 1)
    torch.testing.assert_close(first_last.spatial_attentions[1], rec.spatial_attentions[1].mean(1))
    assert first_last.temporal_attentions[0].shape == (3 * T, 2, 2)


def test_recorded_spatial_attention_is_the_mbm_attention_after_inflation(mbm):
    """softmax(QKᵀ/√d) of eq. 1 on a fresh inflation equals the MBM block's own attention."""
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=1, cond_dim=COND).eval()
    fmri = torch.randn(2, 1, V)
    with torch.no_grad():
        rec = encoder(fmri, output_attentions=True, attention_layers=(0,))
        x = mbm.patch_embed(fmri[:, 0]) + mbm.pos_embed[1:]
        x = mbm._prepend_cls(x)
        _, attn = mbm.blocks[0](x, return_attention=True)
    torch.testing.assert_close(rec.spatial_attentions[0], attn, rtol=0, atol=1e-6)


def test_pooled_embedding_learns_a_contrastive_target(mbm):
    """End to end: gradients reach the encoder through the pooled embedding (eq. 3)."""
    torch.manual_seed(8)
    encoder = SpatiotemporalEncoder.from_mbm(mbm, window=2, cond_dim=COND).train()
    fmri = torch.randn(16, 2, V)
    targets = torch.randn(16, COND)  # stand-ins for CLIP embeddings
    before = retrieval_top1(encoder.eval().encode_pooled(fmri), targets)
    encoder.train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    for _ in range(60):
        loss = clip_loss(encoder.encode_pooled(fmri), targets, logit_scale=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = retrieval_top1(encoder.eval().encode_pooled(fmri), targets)
    assert before < 0.5 and after == 1.0, (before, after)


def test_dropout_is_active_in_training_only(mbm):
    encoder = SpatiotemporalEncoder.from_mbm(
        mbm, window=2, cond_dim=COND, dropout=0.6, drop_path=0.6
    )
    fmri = torch.randn(2, 2, V)
    encoder.train()
    assert not torch.equal(encoder(fmri).embeddings, encoder(fmri).embeddings)
    encoder.eval()
    torch.testing.assert_close(encoder(fmri).embeddings, encoder(fmri).embeddings, rtol=0, atol=0)


def test_linear_readout_adds_a_linear_map_of_the_window_to_every_entry_point(mbm, tmp_path):
    """readout_rank > 0: a fresh path adds zero; once set, forward, forward_sliding and a saved
    copy all add readout_out(readout_in(flattened window)) to the head's tokens."""
    torch.manual_seed(6)
    encoder = SpatiotemporalEncoder.from_mbm(
        mbm, window=2, max_window=4, cond_dim=COND, readout_rank=3
    ).eval()
    assert encoder.readout_in.weight.shape == (3, 2 * V)
    assert encoder.readout_out.weight.shape == (77 * COND, 3)
    fmri = torch.randn(2, 4, V)

    def head(window: torch.Tensor) -> torch.Tensor:
        return encoder.forward_head(encoder.forward_encoder(window)[0])

    with torch.no_grad():
        assert torch.equal(encoder(fmri[:, :2]).embeddings, head(fmri[:, :2]))
        for p in (*encoder.readout_in.parameters(), *encoder.readout_out.parameters()):
            p.normal_(std=0.2)
        w_in, b_in = encoder.readout_in.weight, encoder.readout_in.bias
        w_out, b_out = encoder.readout_out.weight, encoder.readout_out.bias
        sliding = encoder.forward_sliding(fmri)
        for s in range(3):
            flat = fmri[:, s : s + 2].reshape(2, -1)  # [N, w·V]
            linear = (flat @ w_in.T + b_in) @ w_out.T + b_out
            expected = head(fmri[:, s : s + 2]) + linear.reshape(2, 77, COND)
            torch.testing.assert_close(encoder(fmri[:, s : s + 2]).embeddings, expected)
            torch.testing.assert_close(sliding[:, s], expected, rtol=0, atol=1e-5)
    encoder.save_pretrained(tmp_path / "fmri_encoder")
    loaded = SpatiotemporalEncoder.from_pretrained(tmp_path / "fmri_encoder").eval()
    assert loaded.config.readout_rank == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_sliding(fmri), sliding, rtol=0, atol=0)
