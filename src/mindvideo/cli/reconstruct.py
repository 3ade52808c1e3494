"""``mindvideo reconstruct``: fMRI windows of a prepared subject → video clips (stage 6)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mindvideo.cli._stage import add_stage_arguments, print_plan, require_out, resolve_config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reconstruct",
        help="stage 6: reconstruct videos from fMRI with adversarial guidance (resumable)",
        description=(
            "Reconstruct one video clip per fMRI window of a prepared subject's test split with "
            "a pipeline folder (DDIM, adversarial guidance against the mean test fMRI). "
            "Writes OUT/clips/*.mp4 (+ .gif, .npy), OUT/index.json, OUT/reconstructions.npy and "
            "OUT/ground_truth.npy; a re-run skips finished clips."
        ),
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="pipeline folder (model_index.json, fmri_encoder/, unet/, vae/, scheduler/); "
        "sets config key checkpoint",
    )
    parser.add_argument(
        "--data", type=Path, help="prepared subject directory; sets config key data"
    )
    add_stage_arguments(parser, dry_run=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.config import ReconstructConfig

    cfg = resolve_config(ReconstructConfig, args)
    flags = {"checkpoint": args.checkpoint, "data": args.data}
    cfg = dataclasses.replace(cfg, **{k: str(v) for k, v in flags.items() if v is not None})

    if args.dry_run:
        from mindvideo.pipeline.reconstruct import plan_reconstruct

        return print_plan(plan_reconstruct(cfg, args.out))
    from mindvideo.pipeline.reconstruct import reconstruct

    result = reconstruct(cfg, require_out(args))  # also writes OUT/config.yaml
    log.info(
        "%d clips in %s (%d generated now, %d kept from an earlier run)",
        result.n_windows,
        result.out,
        result.generated,
        result.skipped,
    )
    return 0
