"""A shared model's subjects: the pooled training data, the saved adapters, finding a subject."""

import numpy as np
import pytest
from helpers.pipeline import write_mixed_subject, write_window_prepared

from mindvideo.data.datasets import FMRINormalizer, FMRIWindowDataset
from mindvideo.data.prepared import PreparedData, data_fingerprint
from mindvideo.encoder.subjects import SubjectAdapter
from mindvideo.pipeline.shared import (
    SegmentStack,
    SharedSubject,
    load_subjects,
    match_subject,
    pooled_data,
    save_subjects,
)
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    reference = write_window_prepared(root / "one", 60, seed=0)
    other, adapter = write_mixed_subject(reference, root / "two", 70)
    return reference, other, adapter


def test_segment_stack_reads_like_the_concatenated_array():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(3, 3, 4))
    whole = np.concatenate([a, b])
    stack = SegmentStack([a, b])
    assert stack.shape == whole.shape and len(stack) == 5 and stack.ndim == 3
    for key in (0, 3, -1, (4, 2), (1, slice(0, 2)), (3, np.array([0, 2, 2]), 1)):
        np.testing.assert_array_equal(stack[key], whole[key])
    np.testing.assert_array_equal(stack[1:4], whole[1:4])
    np.testing.assert_array_equal(stack[[4, 0]], whole[[4, 0]])
    np.testing.assert_array_equal(np.asarray(stack), whole)
    np.testing.assert_array_equal(np.stack(list(stack)), whole)
    with pytest.raises(IndexError):
        stack[5]
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentStack([a, rng.normal(size=(1, 3, 5))])


def test_pooled_data_holds_every_subject_in_the_reference_space_each_normalised_alone(subjects):
    reference_dir, other_dir, adapter = subjects
    reference, other = PreparedData.open(reference_dir), PreparedData.open(other_dir)
    pooled = pooled_data(reference, [(other, adapter)])
    n = reference.fmri_train.shape[0]
    assert pooled.fmri_train.shape == (2 * n, *reference.fmri_train.shape[1:])
    assert pooled.manifest["shared"] == {"subjects": ["one", "two"], "segments_per_subject": n}
    own = FMRINormalizer("train").fit(reference.fmri_train)
    np.testing.assert_allclose(pooled.fmri_train[:n], own.transform(reference.fmri_train))
    # the adapter undoes the mix exactly, and the other subject's 3x scale is normalised away
    np.testing.assert_allclose(pooled.fmri_train[n:], pooled.fmri_train[:n], atol=1e-3)
    np.testing.assert_allclose(pooled.fmri_test, own.transform(reference.fmri_test, "test"))
    np.testing.assert_array_equal(pooled.frames_train[n + 1], reference.frames_train[1])
    np.testing.assert_array_equal(
        np.asarray(pooled.scene_ids_train), np.concatenate([reference.scene_ids_train] * 2)
    )
    # a window dataset reads it as one subject with twice the training segments
    windows = FMRIWindowDataset(pooled, "train", window=2, with_captions=False)
    assert len(windows) == 2 * len(FMRIWindowDataset(reference, "train", with_captions=False))
    assert windows.scene_keys[: len(windows) // 2] == windows.scene_keys[len(windows) // 2 :]


def test_pooled_data_refuses_what_cannot_be_shared(subjects):
    reference_dir, other_dir, adapter = subjects
    reference, other = PreparedData.open(reference_dir), PreparedData.open(other_dir)
    with pytest.raises(UserError, match="'compat'"):
        pooled_data(reference, [(other, adapter)], normalize="compat")
    wrong = SubjectAdapter(70, 50, subject="two")
    with pytest.raises(UserError, match="maps onto 50 voxels"):
        pooled_data(reference, [(other, wrong)])
    few = SubjectAdapter(70, 60, subject="two", segments=[0])
    with pytest.raises(UserError, match="brings 1 training segments"):
        pooled_data(reference, [(other, few)])


def test_subjects_save_load_and_are_found_by_their_data_or_name(subjects, tmp_path):
    reference_dir, other_dir, adapter = subjects
    reference, other = PreparedData.open(reference_dir), PreparedData.open(other_dir)
    saved = [
        SharedSubject("one", data_fingerprint(reference), 60),
        SharedSubject("two", data_fingerprint(other), 70, adapter),
    ]
    save_subjects(saved, tmp_path)
    loaded = load_subjects(tmp_path)
    assert [(s.name, s.fingerprint, s.voxels) for s in loaded] == [
        (s.name, s.fingerprint, s.voxels) for s in saved
    ]
    assert loaded[0].adapter is None
    np.testing.assert_array_equal(
        loaded[1].adapter.linear.weight.numpy(), adapter.linear.weight.numpy()
    )
    assert load_subjects(tmp_path / "nothing") is None
    assert match_subject(loaded, other, None, tmp_path).name == "two"
    assert match_subject(loaded, reference, "one", tmp_path).name == "one"
    with pytest.raises(UserError, match="holds no subject 'three'; its subjects: one, two"):
        match_subject(loaded, other, "three", tmp_path)
    with pytest.raises(UserError, match=r"one of .* has 60 voxels"):
        match_subject(loaded, other, "one", tmp_path)
    third = write_window_prepared(tmp_path / "three", 50, seed=5)
    with pytest.raises(UserError, match=r"is none of the subjects .* --subject NAME"):
        match_subject(loaded, PreparedData.open(third), None, tmp_path)
    (tmp_path / "subjects" / "subjects.json").write_text("{")
    with pytest.raises(UserError, match="is damaged"):
        load_subjects(tmp_path)
