"""MBM masked autoencoder (paper 3.3): patching, masking, masked loss, training, save/load."""

import pytest
import torch

from mindvideo.encoder import MBMAutoencoder, masked_mse, mbm_demo, mbm_paper, mbm_tiny
from mindvideo.encoder.mbm import num_masked
from mindvideo.utils import UserError

V = 128  # 8 patches of 16 voxels


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mbm_tiny(V)


def test_patchify_unpatchify_round_trip(model):
    x = torch.randn(3, V)
    patches = model.patchify(x)
    assert patches.shape == (3, V // 16, 16)
    # patch j holds voxels j·p … (j+1)·p - 1, in order
    torch.testing.assert_close(patches[1, 2], x[1, 32:48], rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(patches), x, rtol=0, atol=0)


def test_voxels_not_a_multiple_of_the_patch_size_is_a_user_error():
    with pytest.raises(UserError, match=r"100 voxels.*patch size 16"):
        mbm_tiny(100)


def test_input_with_the_wrong_voxel_count_is_a_user_error(model):
    with pytest.raises(UserError, match=r"\[N, 128\].*\[2, 144\]"):
        model(torch.randn(2, 144))


@pytest.mark.parametrize("num_voxels", [96, 128, 160, 320])
def test_mask_ratio_masks_exactly_round_l_times_ratio_patches(num_voxels):
    torch.manual_seed(0)
    m = mbm_tiny(num_voxels)
    L = num_voxels // 16
    _, pred, mask = m(torch.randn(5, num_voxels), mask_ratio=0.75)
    assert pred.shape == (5, L, 16)
    expected = int(L * 0.75 + 0.5)  # L = 6, 8, 10, 20 → 5, 6, 8, 15 (halves round up)
    assert mask.sum(dim=1).tolist() == [expected] * 5
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # masks differ between samples (per-sample shuffling)
    assert len({tuple(row.tolist()) for row in mask}) > 1


def test_num_masked_rounds_half_up_and_keeps_one_patch():
    assert num_masked(6, 0.75) == 5
    assert num_masked(10, 0.75) == 8
    assert num_masked(8, 0.0) == 0
    assert num_masked(4, 0.99) == 3  # at least one visible patch
    with pytest.raises(UserError, match="mask_ratio"):
        num_masked(8, 1.0)


def test_masking_is_reproducible_with_a_generator(model):
    x = torch.randn(4, V)
    _, _, m1 = model(x, generator=torch.Generator().manual_seed(7))
    _, _, m2 = model(x, generator=torch.Generator().manual_seed(7))
    _, _, m3 = model(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)


def test_loss_counts_masked_patches_only(model):
    x = torch.randn(4, V)
    loss, pred, mask = model(x, generator=torch.Generator().manual_seed(0))
    pred = pred.detach()
    visible = (mask == 0)[..., None]
    changed_visible = torch.where(visible, pred + 5.0, pred)
    changed_masked = torch.where(~visible, pred + 5.0, pred)
    torch.testing.assert_close(model.forward_loss(x, changed_visible, mask), loss.detach())
    assert model.forward_loss(x, changed_masked, mask) > loss.detach() + 1.0
    # and it is the mean per-patch MSE over masked patches, computed by hand
    per_patch = ((pred - model.patchify(x)) ** 2).mean(-1)
    by_hand = per_patch[mask.bool()].mean()
    torch.testing.assert_close(loss.detach(), by_hand)


def test_norm_target_normalises_each_patch():
    torch.manual_seed(0)
    m = mbm_tiny(V, norm_target=True)
    x = torch.randn(2, V) * 3 + 2
    patches = m.patchify(x)
    target = (patches - patches.mean(-1, keepdim=True)) / (
        patches.var(-1, keepdim=True) + 1e-6
    ) ** 0.5
    mask = torch.ones(2, V // 16)
    torch.testing.assert_close(m.forward_loss(x, target, mask), torch.tensor(0.0))


def test_masked_loss_falls_on_structured_fmri():
    """Low-rank fMRI (4 latent factors + noise): the visible 25% determine the rest."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rank = 4
    loadings = torch.randn(rank, V, generator=g) / rank**0.5  # [k, V]

    def sample(n):
        return torch.randn(n, rank, generator=g) @ loadings + 0.1 * torch.randn(n, V, generator=g)

    train, test = sample(512), sample(128)
    m = mbm_tiny(V)

    def held_out_loss():
        m.eval()
        with torch.no_grad():
            loss, pred, mask = m(test, generator=torch.Generator().manual_seed(1))
            zeros = masked_mse(torch.zeros_like(pred), m.patchify(test), mask)
        m.train()
        return loss.item(), zeros.item()

    initial, zero_loss = held_out_loss()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05)
    mask_gen = torch.Generator().manual_seed(2)
    for _ in range(600):
        batch = train[torch.randint(0, len(train), (64,), generator=g)]
        loss, _, _ = m(batch, generator=mask_gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, _ = held_out_loss()
    assert final < 0.25 * initial, (initial, final)
    assert final < 0.5 * zero_loss, (zero_loss, final)


def test_reconstruct_keeps_visible_voxels(model):
    x = torch.randn(2, V)
    recon, voxel_mask = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == voxel_mask.shape == (2, V)
    visible = voxel_mask == 0
    torch.testing.assert_close(recon[visible], x[visible], rtol=0, atol=0)
    assert voxel_mask.sum() == 2 * 6 * 16


def test_cls_token_is_optional():
    torch.manual_seed(0)
    m = mbm_tiny(V, use_cls_token=False)
    assert m.cls_token is None and m.pos_embed.shape == (V // 16, 32)
    loss, pred, _ = m(torch.randn(2, V))
    assert pred.shape == (2, 8, 16) and torch.isfinite(loss)
    assert m.encode(torch.randn(2, V)).shape == (2, 8, 32)


def test_pos_embed_is_fixed_sincos_and_not_trained(model):
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert model.pos_embed.shape == (1 + V // 16, 32)
    torch.testing.assert_close(model.pos_embed[0], torch.zeros(32))  # the CLS row
    torch.testing.assert_close(model.pos_embed[1, :16], torch.zeros(16))  # sin(0)
    torch.testing.assert_close(model.pos_embed[1, 16:], torch.ones(16))  # cos(0)


def test_save_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MBMAutoencoder.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(model.config)
    x = torch.randn(3, V)
    a = model(x, generator=torch.Generator().manual_seed(3))
    b = loaded(x, generator=torch.Generator().manual_seed(3))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients(model):
    x = torch.randn(3, V)

    def grads():
        model.zero_grad()
        loss, _, _ = model(x, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, msg=name)


def _count_block(d: int, mlp_ratio: float) -> int:
    h = int(d * mlp_ratio)
    attn = d * 3 * d + 3 * d + d * d + d
    mlp = d * h + h + h * d + d
    return attn + mlp + 4 * d  # two LayerNorms


def test_presets_have_the_paper_sizes():
    with torch.device("meta"):  # no memory, no init cost
        paper = mbm_paper(6016)
    c = paper.config
    assert (c.patch_size, c.depth, c.embed_dim, c.num_heads, c.mlp_ratio) == (16, 24, 1024, 16, 1.0)
    assert (c.decoder_depth, c.decoder_embed_dim, c.decoder_num_heads) == (8, 512, 16)
    d, dd, p = 1024, 512, 16
    encoder = d * p + d + d + 24 * _count_block(d, 1.0) + 2 * d  # patch, cls, blocks, norm
    decoder = d * dd + dd + dd + 8 * _count_block(dd, 1.0) + 2 * dd + dd * p + p
    assert sum(t.numel() for t in paper.parameters()) == encoder + decoder
    assert 150e6 < encoder < 152e6  # ViT-L with MLP ratio 1.0 (ratio 4 would be ~302 M)
    demo, tiny = mbm_demo(6016), mbm_tiny(6016)
    assert (demo.config.depth, demo.config.embed_dim) == (4, 128)
    assert (tiny.config.depth, tiny.config.embed_dim, tiny.config.num_heads) == (2, 32, 2)
