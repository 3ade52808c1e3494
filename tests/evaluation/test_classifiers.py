"""Classifiers load from a saved folder (the user's path), batch, and return probabilities."""

import numpy as np
import pytest
import torch
from transformers import (
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessorPil,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from mindvideo.evaluation import ImageClassifier, ProbabilityModel, VideoClassifier
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def videomae_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=6,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=12,
    )
    path = tmp_path_factory.mktemp("videomae")
    VideoMAEForVideoClassification(config).save_pretrained(path)
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


def _frames(n: int, h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_vit_loads_from_folder_and_gives_probabilities(vit_dir):
    clf = ImageClassifier.from_pretrained(vit_dir, device="cpu", batch_size=2)
    assert isinstance(clf, ProbabilityModel)
    assert clf.num_classes == 10 and len(clf.labels) == 10
    x = _frames(5)
    probs = clf.predict_proba(x)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    # Same numbers as the saved model run directly on its processor's output.
    model = ViTForImageClassification.from_pretrained(vit_dir).eval()
    pixels = ViTImageProcessorPil.from_pretrained(vit_dir)(images=list(x), return_tensors="pt")
    with torch.inference_mode():
        ref = model(**pixels).logits.double().softmax(-1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # Batch size does not change results.
    big = ImageClassifier.from_pretrained(vit_dir, device="cpu", batch_size=16).predict_proba(x)
    np.testing.assert_allclose(probs, big, atol=1e-6)


def test_videomae_loads_from_folder_and_gives_probabilities(videomae_dir):
    clf = VideoClassifier.from_pretrained(videomae_dir, device="cpu", batch_size=1)
    assert clf.num_classes == 12 and clf.num_frames == 6
    clips = _frames(3 * 6).reshape(3, 6, 40, 48, 3)
    probs = clf.predict_proba(clips)
    assert probs.shape == (3, 12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    batched = VideoClassifier.from_pretrained(videomae_dir, device="cpu", batch_size=3)
    np.testing.assert_allclose(probs, batched.predict_proba(clips), atol=1e-6)
    # Different clips, different probabilities (the weights were loaded, not all-equal outputs).
    assert np.abs(probs[0] - probs[1]).max() > 1e-4


def test_videomae_num_frames_override_and_check(videomae_dir):
    clf = VideoClassifier.from_pretrained(videomae_dir, device="cpu")
    with pytest.raises(UserError, match="num_frames=4"):
        clf.predict_proba(_frames(8).reshape(2, 4, 40, 48, 3))
    # As the authors loaded the 16-frame Kinetics model for 6-frame clips.
    four = VideoClassifier.from_pretrained(videomae_dir, device="cpu", num_frames=4)
    assert four.predict_proba(_frames(8).reshape(2, 4, 40, 48, 3)).shape == (2, 12)


def test_plain_torch_module_with_preprocess():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 5))

    def preprocess(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)

    clf = ImageClassifier.from_pretrained(model, preprocess=preprocess, device="cpu", batch_size=3)
    x = _frames(7, 8, 8)
    probs = clf.predict_proba(x)
    with torch.inference_mode():
        ref = model(preprocess(x)).double().softmax(-1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert clf.num_classes is None
    with pytest.raises(UserError, match="preprocess="):
        ImageClassifier.from_pretrained(model)
    with pytest.raises(UserError, match="preprocess="):
        VideoClassifier.from_pretrained(model)


def test_input_and_folder_errors(vit_dir, tmp_path):
    clf = ImageClassifier.from_pretrained(vit_dir, device="cpu")
    with pytest.raises(UserError, match=r"\[N, H, W, 3\]"):
        clf.predict_proba(_frames(2)[0])
    with pytest.raises(UserError, match="uint8"):
        clf.predict_proba(_frames(2).astype(np.float32))
    with pytest.raises(UserError, match=r"config\.json"):
        ImageClassifier.from_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"config\.json"):
        ImageClassifier.from_pretrained(str(tmp_path / "missing"))
