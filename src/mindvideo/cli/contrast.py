"""``mindvideo contrast``: spatiotemporal encoder + multimodal contrastive learning (stage 3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "contrast",
        run,
        "Inflate the MBM encoder over windows of fMRI frames (spatiotemporal attention, "
        "paper 3.3) and train it with the contrastive language-image-fMRI loss (eq. 3) "
        "against frozen CLIP text and image towers (pretrained.clip, a local folder). Writes "
        "OUT/fmri_encoder/ (config.json + safetensors), OUT/retrieval.json (fMRI → caption / "
        "image retrieval on the test windows, before and after), OUT/config.yaml, "
        "OUT/checkpoints/ and OUT/logs/metrics.jsonl.",
    )
    parser.add_data_option(
        "prepared subject (mindvideo prepare); key: data. Several (S1 S2 ...): one model "
        "shared by all, in S1's voxel space, the others read through subject adapters (keys "
        "data and subjects)"
    )
    parser.add_key_option(
        "--encoder",
        "MBM folder written by mindvideo pretrain (OUT/mbm); sets config key encoder",
        type=Path,
    )
    parser.add_key_option(
        "--clip",
        "local CLIP model folder; sets config key pretrained.clip",
        key="pretrained.clip",
        type=Path,
    )
    parser.add_stage_arguments(dry_run=True, resume="OUT/checkpoints/step_N")
    parser.set_output(estimate=_estimate.training)


def run(args: argparse.Namespace) -> int:
    from mindvideo.training.contrast import contrast
    from mindvideo.training.dry_run import plan_contrast

    return run_stage(args, contrast, plan_contrast, report=_retrieval, resume=args.resume)


def _retrieval(result: Any) -> str:
    after, chance = result.retrieval["after"], result.retrieval["chance"]
    tokens = (
        f", by the conditioning tokens {after['condition_top1']:.3f}"
        if "condition_top1" in after
        else ""
    )
    return (
        f"fMRI → caption top-1 on the test windows: {after['caption_top1']:.3f}{tokens} "
        f"(chance {chance['caption_top1']:.3f}); wrote {result.encoder_dir}"
    )
