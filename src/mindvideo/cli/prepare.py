"""``mindvideo prepare``: raw data → a prepared subject, or the HCP pre-training corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mindvideo.cli._stage import add_stage_arguments, resolve_config

log = logging.getLogger(__name__)

DATASETS = ("wen2018", "wen2018-preprocessed", "hcp")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare",
        help="stage 1: raw Wen 2018 (or the authors' arrays, or HCP) → prepared data",
        description=(
            "Prepare one subject of Wen 2018 for training and evaluation (paper 3.2: drop, "
            "detrend, z-score, reproducibility ROI; frames at 3 FPS paired with TRs; captions), "
            "copy the authors' preprocessed arrays, or build the sharded HCP pre-training "
            "corpus of Glasser V1-V4. Re-running with the same inputs and config does nothing."
        ),
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="wen2018 (raw CIFTI + mp4; default), wen2018-preprocessed (the authors' arrays) or "
        "hcp (resting-state/task runs in HCP layout)",
    )
    parser.add_argument("--root", type=Path, help="folder of the raw dataset")
    parser.add_argument("--subject", type=int, help="Wen 2018 subject number (1-3)")
    add_stage_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import PrepareConfig

    cfg = resolve_config(PrepareConfig, args)
    flags = {
        "dataset": args.dataset,
        "root": str(args.root) if args.root is not None else None,
        "subject": args.subject,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    out = Path(args.out)
    summary = prepare(cfg, out)
    _save_config_if_changed(cfg, out)
    print(summary)
    return 0


def prepare(cfg: Any, out: Path) -> str:
    """Run the preparation ``cfg.dataset`` asks for; return a one-paragraph summary."""
    from mindvideo.utils import UserError

    if cfg.dataset == "hcp":
        from mindvideo.data.hcp import prepare_hcp

        prepare_hcp(cfg, out)
        return _hcp_summary(out)
    if cfg.dataset == "wen2018":
        from mindvideo.data.wen2018 import prepare_wen2018

        prepare_wen2018(cfg, out)
    elif cfg.dataset == "wen2018-preprocessed":
        from mindvideo.data.wen2018 import prepare_wen2018_preprocessed

        prepare_wen2018_preprocessed(cfg, out)
    else:
        raise UserError(
            f"Unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)} (--dataset)."
        )
    return _subject_summary(out)


def _save_config_if_changed(cfg: Any, out: Path) -> None:
    """``OUT/config.yaml``, rewritten only when it changed (a no-op re-run touches nothing)."""
    from mindvideo.config import config_to_yaml, save_config

    path = out / "config.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != config_to_yaml(cfg):
        save_config(cfg, path)


def _subject_summary(out: Path) -> str:
    from mindvideo.data.prepared import PreparedData

    data = PreparedData.open(out)
    m = data.manifest
    roi = m.get("roi")
    if roi:
        kept = (
            f"{data.n_voxels} voxels kept by the reproducibility ROI ({roi['n_significant']} of "
            f"{roi['n_vertices']} cortical vertices significant at P < {roi['alpha']}, "
            f"{roi['correction']}, top {roi['top_fraction']:g})"
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
