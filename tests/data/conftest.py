"""Fixtures shared by the data tests."""

from pathlib import Path

import pytest
from helpers.blip import write_tiny_blip


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BLIP captioning model + processor saved like a real model folder
    (read-only: captioning tests and the ``prepare`` captions test load it)."""
    return write_tiny_blip(tmp_path_factory.mktemp("blip"))
