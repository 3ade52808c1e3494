"""Encoder losses (paper 3.3, eq. 3): CLIP loss, temperature, modes, masked MSE, retrieval."""

import math

import pytest
import torch

from mindvideo.encoder import (
    LearnableTemperature,
    clip_loss,
    contrastive_loss,
    masked_mse,
    retrieval_top1,
    retrieval_topk,
)
from mindvideo.utils import UserError


def _ce(logits_row: list[float], target: int) -> float:
    return -logits_row[target] + math.log(sum(math.exp(v) for v in logits_row))


def test_clip_loss_equals_a_hand_computed_value():
    # cosine similarities: a0·b0 = 1, a0·b1 = 0, a1·b0 = 0.6, a1·b1 = 0.8 (b rows are unit)
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e0, e1
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    # logits[i][j] = scale · cos(a_i, b_j): [[2, 1.2], [0, 1.6]]
    rows = [[2.0, 1.2], [0.0, 1.6]]
    cols = [[2.0, 0.0], [1.2, 1.6]]
    a_to_b = (_ce(rows[0], 0) + _ce(rows[1], 1)) / 2
    b_to_a = (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2
    assert clip_loss(a, b, scale, symmetric=False).item() == pytest.approx(a_to_b, rel=1e-6)
    assert clip_loss(a, b, scale).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)
    assert clip_loss(b, a, scale, symmetric=False).item() == pytest.approx(b_to_a, rel=1e-6)


def test_clip_loss_is_small_for_aligned_pairs_and_large_for_shuffled():
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    aligned = clip_loss(a, a * 3.0, 100.0)
    shuffled = clip_loss(a, a.roll(1, dims=0), 100.0)
    assert aligned < 1e-3
    assert shuffled > 10.0


def test_clip_loss_gradient_reaches_the_temperature():
    torch.manual_seed(0)
    temp = LearnableTemperature()
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    clip_loss(a, b, temp()).backward()
    assert temp.log_scale.grad is not None and temp.log_scale.grad != 0
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_learnable_temperature_starts_at_clip_value_and_is_capped_at_100():
    temp = LearnableTemperature()
    assert temp().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        temp.log_scale.fill_(math.log(1000.0))
    assert temp().item() == pytest.approx(100.0, rel=1e-6)
    temp.clamp_()
    assert temp.log_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


def test_contrastive_loss_modes():
    torch.manual_seed(0)
    f, t, i = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    l_text, l_image = clip_loss(f, t, 5.0), clip_loss(f, i, 5.0)
    torch.testing.assert_close(contrastive_loss(f, t, i, 5.0), (l_text + l_image) / 2)
    torch.testing.assert_close(contrastive_loss(f, t, None, 5.0, mode="text"), l_text)
    torch.testing.assert_close(contrastive_loss(f, None, i, 5.0, mode="image"), l_image)
    with pytest.raises(UserError, match=r"'none'.*skip the contrast stage"):
        contrastive_loss(f, t, i, 5.0, mode="none")
    with pytest.raises(ValueError, match="image embeddings"):
        contrastive_loss(f, t, None, 5.0, mode="both")


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third patch is visible: ignored
    # per-patch MSE: 1, 2, (25); mean over masked = 1.5
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.5)
    assert masked_mse(pred, target, torch.zeros(1, 3)).item() == 0.0


def test_retrieval_top1():
    torch.manual_seed(0)
    a = torch.randn(10, 16)
    assert retrieval_top1(a, a.clone()) == 1.0
    assert retrieval_top1(a, 5.0 * a) == 1.0  # cosine: scale does not matter
    assert retrieval_top1(a, a.roll(1, dims=0)) == 0.0
    half = a.clone()
    half[:5] = half[:5].roll(1, dims=0)  # first five rows point at the wrong partner
    assert retrieval_top1(a, half) == 0.5
    # collapsed embeddings do not count as retrieved
    assert retrieval_top1(torch.ones(4, 3), torch.ones(4, 3)) == 0.0


def test_retrieval_topk_counts_near_misses():
    a = torch.eye(4)
    # b[i] is second-closest to a[i]; the closest is b[(i+1) % 4]
    b = torch.eye(4) * 0.5 + torch.eye(4).roll(1, dims=0)
    assert retrieval_topk(a, b, k=1) == 0.0
    assert retrieval_topk(a, b, k=2) == 1.0
