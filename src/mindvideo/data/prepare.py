"""Stage 1 in one call: run the preparation a :class:`~mindvideo.config.PrepareConfig` asks for
(raw Wen 2018, the authors' arrays, or the HCP pre-training corpus) and summarise the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mindvideo.config import config_to_yaml, save_config
from mindvideo.utils import UserError

__all__ = ["DATASETS", "estimate_prepare_bytes", "prepare", "save_config_if_changed"]

DATASETS = ("wen2018", "wen2018-preprocessed", "hcp")
"""What ``prepare`` reads: raw CIFTI + mp4, the authors' arrays, or HCP-layout runs."""


def prepare(cfg: Any, out: Path) -> str:
    """Run the preparation ``cfg.dataset`` asks for; return a one-paragraph summary."""
    if cfg.roi.reference and cfg.dataset != "wen2018":
        raise UserError(
            f"roi.reference selects the voxels of a raw Wen 2018 subject (--dataset wen2018); "
            f"--dataset {cfg.dataset} fits no ROI."
        )
    if cfg.train_segments is not None and cfg.dataset != "wen2018":
        raise UserError(
            f"train_segments chooses among a raw Wen 2018 subject's segments (--dataset "
            f"wen2018); --dataset {cfg.dataset} takes every file it finds."
        )
    if cfg.dataset == "hcp":
        from mindvideo.data.hcp import prepare_hcp

        prepare_hcp(cfg, out)
        return _hcp_summary(out)
    if cfg.dataset == "wen2018":
        from mindvideo.data.wen2018 import prepare_wen2018

        prepare_wen2018(cfg, out)
    elif cfg.dataset == "wen2018-preprocessed":
        from mindvideo.data.wen2018_preprocessed import prepare_wen2018_preprocessed

        prepare_wen2018_preprocessed(cfg, out)
    else:
        raise UserError(
            f"Unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)} (--dataset)."
        )
    return _subject_summary(out)


def estimate_prepare_bytes(cfg: Any) -> int:
    """About how many bytes :func:`prepare` writes for ``cfg``, from the inputs' headers (no
    data read): the frames (uint8, ``fps`` × TR per TR, ``frame_size``²) and the fMRI (float32,
    at most every grayordinate), or the HCP corpus (the visual areas' voxels of every volume),
    or a copy of the authors' arrays."""
    from mindvideo.data.cifti import dtseries_shape

    root = Path(cfg.root)
    if cfg.dataset == "wen2018-preprocessed":
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if cfg.dataset == "hcp":
        from mindvideo.data import atlas
        from mindvideo.data.hcp import find_hcp_runs

        voxels = int(atlas.area_mask(cfg.hcp.areas).sum())
        return sum(4 * dtseries_shape(p)[0] * voxels for p in find_hcp_runs(root))
    from mindvideo.data.wen2018 import find_wen2018_runs

    layout = find_wen2018_runs(root, cfg.subject)
    volumes, grayordinates, tr_s = dtseries_shape(layout.runs()[0])
    segments = len(layout.train) + len(layout.test)
    frames = segments * volumes * round(cfg.fps * tr_s) * cfg.frame_size**2 * 3
    keep = cfg.test_repetitions == "keep"
    test_rows = sum(len(reps) if keep else 1 for reps in layout.test.values())
    return frames + 4 * volumes * grayordinates * (len(layout.train) + test_rows)


def save_config_if_changed(cfg: Any, out: Path) -> None:
    """``OUT/config.yaml``, rewritten only when it changed (a no-op re-run touches nothing)."""
    path = out / "config.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != config_to_yaml(cfg):
        save_config(cfg, path)


def _subject_summary(out: Path) -> str:
    from mindvideo.data.prepared import PreparedData

    data = PreparedData.open(out)
    m = data.manifest
    roi = m.get("roi")
    if roi and roi.get("rule") == "reference":
        subjects = ", ".join(str(r.get("subject")) for r in roi["references"])
        kept = (
            f"{data.n_voxels} voxels kept by the reference subjects' ROIs (subjects {subjects}; "
            f"in at least {roi['reference_min']} of them; no test on this subject)"
        )
    elif roi:
        kept = (
            f"{data.n_voxels} voxels kept by the reproducibility ROI ({roi['n_significant']} of "
            f"{roi['n_vertices']} cortical vertices significant at P < {roi['alpha']}, "
            f"{roi['correction']}, top {roi['top_fraction']:g}"
            f"{' per area' if roi.get('rule') == 'per-area' else ''})"
        )
    else:
        kept = f"{data.n_voxels} voxels (the authors' selection; no ROI mask)"
    captions = m.get("captions_source", "the authors' text arrays")
    return (
        f"Prepared subject {m.get('subject')} in {out}: {kept}; fMRI train "
        f"{list(data.fmri_train.shape)}, test {list(data.fmri_test.shape)}; frames train "
        f"{list(data.frames_train.shape)}, test {list(data.frames_test.shape)}; captions from "
        f"{captions}. Next: mindvideo pretrain with finetune_data={out}."
    )


def _hcp_summary(out: Path) -> str:
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    areas = ", ".join(f"{a} {n}" for a, n in index["voxels_per_area"].items())
    return (
        f"HCP pre-training corpus in {out}: {index['n_frames']} frames of {index['n_voxels']} "
        f"voxels ({areas}, in this order) from {len(index['runs'])} runs, in "
        f"{len(index['shards'])} shards of up to {index['frames_per_shard']} frames. Next: "
        f"mindvideo pretrain with data={out}."
    )
