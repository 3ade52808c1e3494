"""The scene labels of a simulated prepared subject, read from the simulator's scenes.json."""

import json

import numpy as np
import pytest

from mindvideo.data.labels import find_scenes_json, load_scene_labels
from mindvideo.data.prepared import PreparedData
from mindvideo.sim.vocabulary import CLASSES, MOTIONS
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def prepared(prepared_dataset):
    return PreparedData.open(prepared_dataset)


def test_scenes_json_is_found_through_the_manifest(prepared, simulated_dataset):
    assert find_scenes_json(prepared) == simulated_dataset / "scenes.json"


def test_every_frame_is_labelled_with_the_scene_its_caption_describes(prepared, scene_labels):
    labels = scene_labels
    assert labels.classes == list(CLASSES) and labels.motions == list(MOTIONS)
    for split in ("train", "test"):
        captions = prepared.captions(split)
        cls = labels.class_id[split]
        assert cls.shape == prepared.frames(split).shape[:3]
        for s in range(cls.shape[0]):
            for t in range(0, cls.shape[1], 7):
                for j in range(cls.shape[2]):
                    # Procedural captions name "colour shape"; real ones contain the source's
                    # class name ("a photograph of a tabby cat").
                    assert CLASSES[cls[s, t, j]] in captions[s][t][j].lower()
    assert labels.video_labels[0] == f"{CLASSES[0]}, {MOTIONS[0]}"
    joint = labels.video_label("test")
    assert np.array_equal(joint // len(MOTIONS), labels.class_id["test"])


def test_a_scenes_json_of_another_dataset_is_a_user_error(prepared, simulated_dataset, tmp_path):
    meta = json.loads((simulated_dataset / "scenes.json").read_text())
    first = meta["segments"]["seg1"]
    first[1]["start_s"] += 1.0
    first[0]["end_s"] += 1.0
    other = tmp_path / "scenes.json"
    other.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="sha256"):
        load_scene_labels(prepared, other)
    with pytest.raises(UserError, match="does not exist"):
        load_scene_labels(prepared, tmp_path / "missing.json")
