"""CLIP image similarity: a tiny CLIPModel saved to a folder, loaded as a user's CLIP would be."""

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from mindvideo.evaluation.clip_similarity import (
    CLIPImageEmbedder,
    clip_similarity_matrix,
    clip_similarity_samples,
)
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


def _clips(s: int, f: int = 3, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (s, f, size, size, 3), dtype=np.uint8)


def test_embeddings_are_unit_vectors_of_the_saved_model(clip_dir):
    embedder = CLIPImageEmbedder.from_pretrained(clip_dir, device="cpu", batch_size=2)
    frames = _clips(5, 1).reshape(5, 24, 24, 3)
    emb = embedder.embed(frames)
    assert emb.shape == (5, 16) and emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-12)
    # The same numbers as the model run directly on its processor's output.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(
        images=list(frames), return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.get_image_features(**pixels)
        ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).double()
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    # Batch size does not change the result.
    big = CLIPImageEmbedder.from_pretrained(clip_dir, device="cpu", batch_size=16).embed(frames)
    np.testing.assert_allclose(emb, big, atol=1e-6)


def test_identical_clips_score_one_and_chance_is_the_mismatched_mean(clip_dir):
    embedder = CLIPImageEmbedder.from_pretrained(clip_dir, device="cpu")
    gt = _clips(4, seed=1)
    same = clip_similarity_samples(gt, gt, embedder)
    np.testing.assert_allclose(same.per_sample, 1.0, atol=1e-9)

    pred = _clips(4, seed=2)
    ms = clip_similarity_samples(pred, gt, embedder)
    # By hand: frame-wise cosine of every pair, averaged over frames.
    e_pred = embedder.embed(pred.reshape(-1, 24, 24, 3)).reshape(4, 3, -1)
    e_gt = embedder.embed(gt.reshape(-1, 24, 24, 3)).reshape(4, 3, -1)
    sim = np.array(
        [
            [np.mean([e_pred[i, f] @ e_gt[j, f] for f in range(3)]) for j in range(4)]
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(clip_similarity_matrix(pred, gt, embedder), sim, atol=1e-9)
    np.testing.assert_allclose(ms.per_sample, np.diag(sim), atol=1e-9)
    off = [sim[i, j] for i in range(4) for j in range(4) if i != j]
    assert ms.chance == pytest.approx(np.mean(off), abs=1e-9)
    assert np.all(ms.per_sample < 1.0 - 1e-6)  # different pictures are not identical


def test_errors_name_the_problem(clip_dir, tmp_path):
    with pytest.raises(UserError, match=r"pretrained\.clip"):
        CLIPImageEmbedder.from_pretrained(tmp_path)
    embedder = CLIPImageEmbedder.from_pretrained(clip_dir, device="cpu")
    with pytest.raises(UserError, match="paired clips"):
        clip_similarity_samples(_clips(2), _clips(3), embedder)
    with pytest.raises(UserError, match="uint8"):
        embedder.embed(np.zeros((2, 8, 8, 3), np.float32))
    assert clip_similarity_samples(_clips(1), _clips(1), embedder).chance is None
