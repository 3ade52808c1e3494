"""Copies of the simulated raw Wen 2018 dataset (the ``simulated_dataset`` fixture), to modify."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_dataset(src: Path, dst: Path, train=(1, 2, 3, 4), test=(1, 2), scenes=True) -> Path:
    """A copy of (some segments of) a simulated dataset, to modify."""
    for kind, ks in (("seg", train), ("test", test)):
        for k in ks:
            name = f"{kind}{k}"
            shutil.copytree(src / "subject1/fmri" / name, dst / "subject1/fmri" / name)
            (dst / "stimuli").mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "stimuli" / f"{name}.mp4", dst / "stimuli")
    if scenes:
        shutil.copy(src / "scenes.json", dst)
    return dst
