"""``mindvideo reconstruct``: fMRI windows of a prepared subject → video clips (stage 6)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mindvideo.cli import _estimate
from mindvideo.cli._stage import CommandParser, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    parser = CommandParser(
        sub,
        "reconstruct",
        run,
        "Reconstruct one video clip per fMRI window of a prepared subject's test split (or of "
        "raw CIFTI runs, --fmri) with a pipeline folder (adversarial guidance against the mean "
        "test fMRI). Writes OUT/clips/*.mp4 (+ .gif, .npy), OUT/index.json, "
        "OUT/reconstructions.npy and OUT/ground_truth.npy (not for raw runs); a re-run skips "
        "finished clips.",
    )
    parser.add_key_option(
        "--checkpoint",
        "pipeline folder (model_index.json, fmri_encoder/, unet/, vae/, scheduler/); "
        "sets config key checkpoint",
        type=Path,
    )
    parser.add_key_option("--data", "prepared subject directory; sets config key data", type=Path)
    parser.add_key_option(
        "--subject",
        "with a pipeline trained on several subjects: which one --data is (e.g. subject2); "
        "default: found by its prepared data; sets config key subject",
    )
    parser.add_key_option(
        "--fmri",
        "raw CIFTI runs (.dtseries.nii) of the pipeline's subject to decode instead of --data, "
        "with the pipeline's own ROI, preprocessing and normaliser; sets config key fmri",
        nargs="+",
        metavar="RUN",
    )
    parser.add_stage_arguments(dry_run=True)
    parser.set_output(estimate=_estimate.reconstruct)


def run(args: argparse.Namespace) -> int:
    from mindvideo.pipeline.dry_run import plan_reconstruct
    from mindvideo.pipeline.reconstruct import reconstruct

    # reconstruct() also writes OUT/config.yaml
    return run_stage(args, reconstruct, plan_reconstruct, report=_clips)


def _clips(result: Any) -> str:
    return (
        f"{result.n_windows} clips in {result.out} ({result.generated} generated now, "
        f"{result.skipped} kept from an earlier run)"
    )
