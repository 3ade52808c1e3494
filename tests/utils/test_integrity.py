"""Inputs checked to be whole before loading: the problem in words, with the byte counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mindvideo.utils import UserError
from mindvideo.utils.integrity import check_inputs, damage


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return len(data)


def test_whole_files_pass(tmp_path):
    save_file({"w": torch.zeros(4, 4)}, tmp_path / "a.safetensors")
    torch.save({"w": torch.zeros(4)}, tmp_path / "b.bin")
    torch.save({"w": torch.zeros(4)}, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    np.save(tmp_path / "d.npy", np.zeros((3, 5), np.float32))
    (tmp_path / "e.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "f.txt").write_text("not checked")
    for path in tmp_path.iterdir():
        assert damage(path) is None, path


def test_a_truncated_safetensors_names_the_bytes_it_has_and_needs(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(100)}, path)  # 400 bytes of data after the header
    size = _truncate(path, -100 + path.stat().st_size)
    assert damage(path) == (
        f"truncated ({size - 100:,} bytes of the {size:,} bytes its header describes)"
    )
    _truncate(path, 5)
    assert damage(path) == "truncated (5 bytes, shorter than a safetensors header)"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    assert damage(path) == "damaged (its safetensors header is not valid JSON)"
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    assert damage(path) == "truncated (10 bytes; its header alone needs 1,000,008 bytes)"


def test_torch_files_npy_and_json(tmp_path):
    zipped = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(1000)}, zipped)
    _truncate(zipped, zipped.stat().st_size // 2)
    assert damage(zipped) == (
        "not a PyTorch weights file, or truncated (no zip archive directory at its end)"
    )
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((10, 10), np.float32))
    _truncate(npy, 128 + 200)
    assert damage(npy) == "truncated (328 bytes of the 528 bytes its shape (10, 10) needs)"
    npy.write_bytes(b"garbage")
    assert damage(npy).startswith("damaged (not a readable .npy header")
    bad = tmp_path / "config.json"
    bad.write_text('{"a": 1,')
    assert damage(bad).startswith("not valid JSON (Expecting property name")


def test_check_inputs_raises_one_line_naming_the_file_the_input_and_the_fix(tmp_path):
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(100)}, folder / "unet" / "model.safetensors")
    (folder / ".unet.ab12cd34.tmp").mkdir()  # a killed write's staging: not an input
    (folder / ".unet.ab12cd34.tmp" / "model.safetensors").write_bytes(b"xx")
    check_inputs([("the checkpoint input", folder, "re-run mindvideo cotrain")])
    _truncate(folder / "unet" / "model.safetensors", 50)
    with pytest.raises(UserError) as raised:
        check_inputs(
            [
                ("the data input", tmp_path / "missing", "re-run mindvideo prepare"),
                ("the checkpoint input", folder, "re-run mindvideo cotrain to write it again"),
            ]
        )
    message = str(raised.value)
    assert message.startswith(
        f"{folder / 'unet' / 'model.safetensors'} (in the checkpoint input {folder}) is truncated"
    )
    assert message.endswith("; re-run mindvideo cotrain to write it again.")
    assert "\n" not in message
