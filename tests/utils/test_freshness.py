import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindvideo.utils.freshness import (
    StagedFolder,
    files_digest,
    files_present,
    fingerprint,
    jsonable,
    module_fingerprint,
    npy_shape,
    read_marker,
    sha256_bytes,
    sha256_file,
    staging_dir,
    stale_fields,
    write_marker,
)


@dataclasses.dataclass
class Cfg:
    lr: float = 1e-3
    path: Path = Path("data")
    sizes: tuple[int, ...] = (16, 32)


def test_fingerprint_changes_with_the_config_and_only_with_it():
    assert fingerprint(Cfg()) == fingerprint(Cfg())
    assert fingerprint(Cfg()) != fingerprint(Cfg(lr=2e-3))
    # A dataclass is hashed as its fields; key order does not matter.
    assert fingerprint(Cfg()) == fingerprint(dataclasses.asdict(Cfg()))
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    text = json.dumps({"a": 1, "b": [1, 2]}, sort_keys=True).encode()
    assert fingerprint({"b": [1, 2], "a": 1}) == hashlib.sha256(text).hexdigest()


def test_jsonable_is_what_a_marker_reads_back():
    value = {"t": (1, 2), "n": np.float32(0.5), "a": np.arange(3), "p": Path("x"), "c": Cfg()}
    assert jsonable(value) == {
        "t": [1, 2],
        "n": 0.5,
        "a": [0, 1, 2],
        "p": "x",
        "c": {"lr": 1e-3, "path": "data", "sizes": [16, 32]},
    }
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        jsonable(object())


def test_sha256_of_a_file_is_read_in_chunks_and_equals_the_whole(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f") == sha256_bytes(data)


def test_files_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"one")
    (tmp_path / "b.safetensors").write_bytes(b"two")
    files = sorted(tmp_path.glob("*.safetensors"))
    first = files_digest(files)
    assert first == files_digest(files) and files_digest([]) is None
    (tmp_path / "b.safetensors").write_bytes(b"three")
    assert files_digest(files) != first
    (tmp_path / "b.safetensors").rename(tmp_path / "c.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"two")
    assert files_digest(sorted(tmp_path.glob("*.safetensors"))) != first  # renamed


def test_module_fingerprint_follows_the_weights_and_the_public_config():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert module_fingerprint(a) != module_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert module_fingerprint(a) == module_fingerprint(b)
    a.config = {"scaling_factor": 0.18, "_name_or_path": "/somewhere"}
    b.config = {"scaling_factor": 0.18, "_name_or_path": "/elsewhere"}
    assert module_fingerprint(a) == module_fingerprint(b)  # private keys left out
    b.config = {"scaling_factor": 0.2}
    assert module_fingerprint(a) != module_fingerprint(b)


def test_marker_matches_the_same_key_and_not_a_changed_one(tmp_path):
    marker = tmp_path / "done.json"
    key = {"config": fingerprint(Cfg()), "sizes": (16, 32)}
    assert read_marker(marker, key) is None  # nothing there yet
    written = write_marker(marker, {**key, "seconds": 1.5})
    assert written == {**key, "seconds": 1.5}
    assert read_marker(marker, key) == {"config": key["config"], "sizes": [16, 32], "seconds": 1.5}
    assert read_marker(marker) is not None  # no key: only complete
    assert read_marker(marker, {**key, "config": fingerprint(Cfg(lr=1))}) is None
    assert read_marker(marker, {"missing": 1}) is None
    assert stale_fields(read_marker(marker), {**key, "config": "x", "extra": 2}) == [
        "config",
        "extra",
    ]
    assert stale_fields(None, key) == ["config", "sizes"]


def test_a_damaged_marker_is_no_marker(tmp_path):
    marker = tmp_path / "done.json"
    marker.write_text("{not json")
    assert read_marker(marker) is None
    marker.write_bytes(b"\xff\xfe")
    assert read_marker(marker) is None
    marker.write_text("[1, 2]")
    assert read_marker(marker) is None


def test_write_marker_is_atomic_and_keeps_the_layout_asked_for(tmp_path):
    marker = tmp_path / "sub" / "m.json"
    write_marker(marker, {"b": 1, "caption": "café"}, indent=None, ensure_ascii=False)
    assert marker.read_text(encoding="utf-8") == '{"b": 1, "caption": "café"}\n'
    write_marker(marker, {"b": 1})
    assert marker.read_text() == '{\n  "b": 1\n}\n'
    assert [p.name for p in marker.parent.iterdir()] == ["m.json"]  # no temp file left


def test_files_present_and_npy_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.uint8))
    assert files_present(tmp_path, ["a.npy"]) and not files_present(tmp_path, ["a.npy", "b"])
    assert npy_shape(tmp_path / "a.npy") == (2, 3)
    assert npy_shape(tmp_path / "missing.npy") is None
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-2])  # truncated: the header alone is not enough
    assert npy_shape(tmp_path / "a.npy") is None


def test_staged_folder_moves_files_in_only_when_published(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache.json").write_text("kept")
    (out / "index.json").write_text("old")
    with StagedFolder(out, marker="index.json") as stage:
        assert stage.root == staging_dir(out) and stage.root.parent == out.parent
        (stage.root / "shard_0.npy").write_bytes(b"x")
        assert stage.publish() == ["shard_0.npy"]
    assert not stage.root.exists()
    # The marker is removed (the caller writes the new one last); other files stay.
    assert sorted(p.name for p in out.iterdir()) == ["cache.json", "shard_0.npy"]


def test_a_failed_staging_leaves_the_destination_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text("old")
    with pytest.raises(RuntimeError), StagedFolder(out, marker="index.json") as stage:
        (stage.root / "shard_0.npy").write_bytes(b"x")
        raise RuntimeError("a NaN in the last run")
    assert not staging_dir(out).exists()
    assert [p.name for p in out.iterdir()] == ["index.json"]
    # A staging folder left by a killed run is cleared by the next one.
    staging_dir(out).mkdir()
    (staging_dir(out) / "stale").write_text("x")
    with StagedFolder(out, marker="index.json") as stage:
        assert list(stage.root.iterdir()) == []
