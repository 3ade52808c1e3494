"""SubjectAdapter: a per-subject linear map into the shared voxel space, saved HF-style."""

import numpy as np
import pytest
import torch

from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.utils import UserError


def test_the_map_it_holds_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    adapter = SubjectAdapter(5, 3, subject="subject2", reference="subject1", segments=[0, 1])
    adapter.set_linear_map(weight, bias)
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)  # [N, w, V]
    np.testing.assert_allclose(adapter.transform(x), x @ weight + bias, rtol=1e-5, atol=1e-5)
    adapter.save_pretrained(tmp_path / "adapter")
    loaded = SubjectAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.config.subject == "subject2" and list(loaded.config.segments) == [0, 1]
    torch.testing.assert_close(loaded(torch.from_numpy(x)), adapter(torch.from_numpy(x)))


def test_another_voxel_count_is_refused_with_the_subject_named():
    adapter = SubjectAdapter(5, 3, subject="subject2")
    with pytest.raises(UserError, match="adapter of subject2 maps 5 voxels but the fMRI has 4"):
        adapter.transform(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected weight \[5, 3\]"):
        adapter.set_linear_map(np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(UserError, match="positive voxel counts"):
        SubjectAdapter(0, 3)
