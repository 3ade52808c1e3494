"""``mindvideo export``: a light folder (what a stage trained + its base) → a standalone copy.

``mindvideo tune-video`` and ``mindvideo cotrain`` save only what they trained and name the
Stable Diffusion folder the rest comes from (:mod:`mindvideo.utils.base_folder`). To share a
model, or to keep it after the base is gone, :func:`export_folder` writes a folder that needs
nothing else: the UNet in full (rebuilt from its base and the trained tensors, then saved as
diffusers does), the frozen parts copied byte for byte from the base, everything else of the
folder copied as it is. A pipeline folder stays a pipeline folder (with its ``fmri_input/``), a
tune-video folder a Stable-Diffusion-layout generator. The result loads to the same weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mindvideo.generator.unet import TRAINED_WEIGHTS, VideoUNet
from mindvideo.utils import UserError, atomic_dir
from mindvideo.utils.base_folder import BASE_FILE, component_dir, read_base

__all__ = ["ExportResult", "export_folder", "folder_bytes"]

logger = logging.getLogger(__name__)

#: What a light folder may leave to its base, by kind of folder.
PARTS = {
    "pipeline": ("unet", "vae", "fmri_encoder", "scheduler"),
    "generator": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
}
#: Working folders of a stage that are not part of the model.
NOT_MODEL = {"cache", "checkpoints", "logs", BASE_FILE}


@dataclass
class ExportResult:
    """Where the standalone copy went, what kind of folder it is, and the sizes (bytes) of the
    light folder and of the copy."""

    out: Path
    kind: str
    light_bytes: int
    standalone_bytes: int

    def summary(self) -> str:
        return (
            f"wrote a standalone {self.kind} folder to {self.out}: "
            f"{self.standalone_bytes / 2**20:,.1f} MiB (the light folder holds "
            f"{self.light_bytes / 2**20:,.1f} MiB)"
        )


def folder_bytes(path: str | os.PathLike, skip: set[str] | frozenset[str] = frozenset()) -> int:
    """The size of the files under ``path`` (top-level entries named in ``skip`` left out)."""
    root = Path(path)
    return sum(
        f.stat().st_size
        for entry in root.iterdir()
        if entry.name not in skip
        for f in ([entry] if entry.is_file() else entry.rglob("*"))
        if f.is_file()
    )


def export_folder(src: str | os.PathLike, out: str | os.PathLike) -> ExportResult:
    """Write a standalone copy of the pipeline or tune-video folder ``src`` into ``out`` (a new
    or empty folder; written atomically). A folder that is already standalone is copied."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"{src} does not exist; pass a pipeline or tune-video folder.")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new folder for the copy.")
    if out.resolve() == src.resolve():
        raise UserError("--out must differ from the folder exported.")
    if (src / "model_index.json").is_file():
        kind = "pipeline"
    elif (src / "unet").is_dir():
        kind = "generator"
    else:
        raise UserError(
            f"{src} is neither a pipeline folder (model_index.json) nor a tune-video folder "
            "(unet/); pass the folder written by mindvideo cotrain, tune-video or convert."
        )
    read_base(src)  # a missing base is one clear error before anything is written
    with atomic_dir(out) as tmp:
        for part in PARTS[kind]:
            where = component_dir(src, part)
            if part == "unet" and (where / TRAINED_WEIGHTS).is_file():
                VideoUNet.from_pretrained(where).save_pretrained(tmp / part)
            else:
                shutil.copytree(where, tmp / part)
        for entry in src.iterdir():  # model_index.json, fmri_input/, config.yaml, ...
            if entry.name in NOT_MODEL or entry.name in PARTS[kind]:
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
    result = ExportResult(out, kind, folder_bytes(src, NOT_MODEL), folder_bytes(out))
    logger.info("%s", result.summary())
    return result
