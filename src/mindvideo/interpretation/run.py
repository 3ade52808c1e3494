"""Stage 8 as a function: record encoder attention per learning stage and place it on the brain.

For each encoder given — after MBM pre-training (``mbm``), after contrastive learning
(``contrast``), after co-training (``cotrain``) — the attention of its first, middle and last
layers is averaged over the prepared subject's test windows (paper 3.5, 5.1), mapped to voxels
and to the 91,282 HCP grayordinates, summed within the Yeo-17 networks and drawn as bar charts and
flat maps (:func:`mindvideo.interpretation.write_explanation`). Without a voxel → grayordinate
map in the prepared data (the authors' arrays carry none) only the attention summaries are saved.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPLAIN_FILE = "explain.json"
#: Where each stage's encoder lives inside the folder a user may pass, in the order tried.
_ENCODER_SUBDIRS = {
    "mbm": ("", "mbm"),
    "contrast": ("", "fmri_encoder"),
    "cotrain": ("fmri_encoder", "pipeline/fmri_encoder", ""),
}
_FLAGS = {"mbm": "--mbm", "contrast": "--contrast", "cotrain": "--cotrain"}
_COMMANDS = {"mbm": "pretrain", "contrast": "contrast", "cotrain": "cotrain"}
"""The command whose output each stage's encoder is."""


def _encoder_folder(path: str | os.PathLike, stage: str) -> Path:
    """The folder holding the stage's encoder (``config.json`` + safetensors)."""
    from mindvideo.utils import UserError

    root = Path(path)
    if not root.exists():
        raise UserError(
            f"{root} does not exist; pass the output folder of `mindvideo {_COMMANDS[stage]}` with "
            f"{_FLAGS[stage]} (config key {stage})."
        )
    for sub in _ENCODER_SUBDIRS[stage]:
        folder = root / sub if sub else root
        if (folder / "config.json").is_file():
            return folder
    places = ", ".join(s or "." for s in _ENCODER_SUBDIRS[stage])
    raise UserError(
        f"{root} holds no encoder (no config.json in {places}); "
        f"pass the output folder of `mindvideo {_COMMANDS[stage]}` with {_FLAGS[stage]} "
        f"(config key {stage})."
    )


def _load_encoder(folder: Path, stage: str) -> Any:
    """An :class:`MBMAutoencoder` or :class:`SpatiotemporalEncoder`, by its config's class."""
    from mindvideo.encoder import MBMAutoencoder, SpatiotemporalEncoder
    from mindvideo.utils import UserError

    classes = {"MBMAutoencoder": MBMAutoencoder, "SpatiotemporalEncoder": SpatiotemporalEncoder}
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in classes:
        raise UserError(
            f"{folder / 'config.json'} describes a {name!r}, not an fMRI encoder "
            f"({', '.join(classes)}); pass the folder written by `mindvideo {stage}` "
            f"with {_FLAGS[stage]}."
        )
    try:
        return classes[name].from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(
            f"Could not load the encoder in {folder} ({exc}); re-run the stage."
        ) from exc


def _data_settings(folder: Path, encoder: Any, n_voxels: int) -> tuple[str, str]:
    """``(pad_mode, normalize)`` the encoder was trained with.

    A pipeline folder records both in ``model_index.json``; otherwise the pad mode is the one
    that turns the subject's V voxels into the encoder's ``num_voxels`` (the two modes never
    agree on that), and the normalisation is the training stages' ``train``.
    """
    from mindvideo.data.pairing import padded_size
    from mindvideo.utils import UserError

    index = folder.parent / "model_index.json"
    if index.is_file():
        settings = json.loads(index.read_text())
        pad_mode = settings.get("fmri_pad_mode", "zero")
        normalize = settings.get("fmri_normalize", "train")
    else:
        pad_mode, normalize = None, "train"
    patch, num_voxels = int(encoder.config.patch_size), int(encoder.config.num_voxels)
    modes = [pad_mode] if pad_mode else ["zero", "wrap_compat"]
    for mode in modes:
        if padded_size(n_voxels, patch, mode) == num_voxels:
            return mode, normalize
    raise UserError(
        f"The encoder in {folder} takes {num_voxels} voxels but the prepared data has "
        f"{n_voxels} ROI voxels ({padded_size(n_voxels, patch, 'zero')} padded); explain the "
        "encoders trained on this subject's prepared data (an MBM pre-trained on HCP must be "
        "fine-tuned on the subject first)."
    )


def _layers(names: list[str]) -> list[int | str]:
    return [int(n) if str(n).lstrip("-").isdigit() else str(n) for n in names]


def _grayordinates(prepared: Any) -> tuple[Any, str | None]:
    """The 91k index of each ROI voxel ``[V]``, or None with the reason."""
    import numpy as np

    from mindvideo.interpretation import grayordinates_from_mask
    from mindvideo.utils import UserError

    if prepared.voxel_grayordinates is not None:
        return np.asarray(prepared.voxel_grayordinates, np.int64), None
    if prepared.roi_mask is not None:
        try:
            index = grayordinates_from_mask(prepared.roi_mask)
        except UserError as exc:
            return None, f"its roi_mask is not over the HCP grayordinates ({exc})"
        if len(index) == prepared.n_voxels:
            return index, None
    return None, "it records no voxel_grayordinates.npy (e.g. the authors' preprocessed arrays)"


def explain(cfg: Any, out: str | os.PathLike) -> dict[str, Path]:
    """Record, map and draw the attention of every encoder in ``cfg`` (an ``ExplainConfig``).

    Returns ``{name: path}`` of the files written into ``out`` (module doc).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    from mindvideo.config import save_config
    from mindvideo.data.datasets import FMRIWindowDataset, collate_windows
    from mindvideo.data.prepared import PreparedData
    from mindvideo.interpretation import record_attention, write_explanation
    from mindvideo.utils import UserError, atomic_write_text

    if cfg.data is None:
        raise UserError(
            "explain needs a prepared subject: pass --data DIR or set data in the config."
        )
    stages = [s for s in ("mbm", "contrast", "cotrain") if getattr(cfg, s)]
    if not stages:
        raise UserError(
            "explain needs at least one encoder: pass --mbm, --contrast and/or --cotrain (the "
            "output folders of those stages)."
        )
    for key in ("batch_size", "window"):
        if getattr(cfg, key) < 1:
            raise UserError(f"Config key {key} must be at least 1, not {getattr(cfg, key)}.")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"Config key limit must be at least 1 or unset, not {cfg.limit}.")
    # Load every encoder before the slow part, so a wrong folder fails fast.
    encoders = {}
    for stage in stages:
        folder = _encoder_folder(getattr(cfg, stage), stage)
        encoders[stage] = (folder, _load_encoder(folder, stage))
    prepared = PreparedData.open(cfg.data)
    grayordinates, why_not = _grayordinates(prepared)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    summaries, info = [], {}
    for stage, (folder, encoder) in encoders.items():
        pad_mode, normalize = _data_settings(folder, encoder, prepared.n_voxels)
        is_mbm = type(encoder).__name__ == "MBMAutoencoder"
        if is_mbm:
            window = 1  # the MBM sees single TRs: every test TR once
        else:
            window = cfg.window
            lo, hi = int(encoder.config.window), int(encoder.config.max_window or 0)
            if not lo <= window <= max(lo, hi):
                raise UserError(
                    f"window = {window}, but the encoder in {folder} takes windows of {lo} "
                    f"TRs (up to {max(lo, hi)}); set window={lo}."
                )
        dataset = FMRIWindowDataset(
            prepared,
            "test",
            window=window,
            patch_size=int(encoder.config.patch_size),
            pad_mode=pad_mode,
            normalize=normalize,
            with_captions=False,
        )
        n = len(dataset) if cfg.limit is None else min(cfg.limit, len(dataset))
        loader = DataLoader(
            Subset(dataset, range(n)), batch_size=cfg.batch_size, collate_fn=collate_windows
        )
        summaries.append(
            record_attention(
                encoder, loader, layers=_layers(cfg.layers), stage=stage, device=device
            )
        )
        info[stage] = {
            "folder": str(folder.resolve()),
            "encoder": type(encoder).__name__,
            "window": window,
            "pad_mode": pad_mode,
            "normalize": normalize,
            "n_windows": n,
        }

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, outdir / "config.yaml")
    note = None
    if grayordinates is not None:
        written = write_explanation(summaries, grayordinates, outdir)
    else:
        note = (
            f"The prepared data {cfg.data} cannot be placed on the brain: {why_not}. Only the "
            "attention summaries (attention_{stage}.npz) were saved; prepare the subject from "
            "its CIFTI files for network sums and flat maps."
        )
        log.warning(note)
        written = {
            f"attention_{s.stage}": s.save(outdir / f"attention_{s.stage}.npz") for s in summaries
        }
    doc = {
        "data": str(Path(cfg.data).resolve()),
        "stages": info,
        "layers": list(cfg.layers),
        "grayordinates": grayordinates is not None,
        "n_voxels": int(prepared.n_voxels),
        "note": note,
    }
    path = outdir / EXPLAIN_FILE
    atomic_write_text(path, json.dumps(doc, indent=2, default=lambda o: np.asarray(o).tolist()))
    written["explain"] = path
    return written
