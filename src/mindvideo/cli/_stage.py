"""What every stage command shares: ``--config FILE --out DIR [key=value ...]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mindvideo.config import load_config, save_config
from mindvideo.utils import UserError


def add_stage_arguments(
    parser: argparse.ArgumentParser, out_required: bool = True, dry_run: bool = False
) -> None:
    """``--config``, ``--out`` and ``key=value`` overrides; with ``dry_run`` also ``--dry-run``
    (then ``--out`` may be left out of a dry run only: see :func:`require_out`)."""
    parser.add_argument("--config", type=Path, help="YAML recipe (e.g. configs/tiny/STAGE.yaml)")
    parser.add_argument(
        "--out",
        type=Path,
        required=out_required and not dry_run,
        help="output directory of this stage" + (" (optional with --dry-run)" if dry_run else ""),
    )
    if dry_run:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=(
                "check the configuration, paths and shapes as a real run does, print the plan, "
                "parameter counts and a memory estimate; train and write nothing"
            ),
        )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys (dotted for nested keys: rest.volumes=600)",
    )


def resolve_config(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """The stage's typed config from preset ``base``, ``--config`` and overrides."""
    return load_config(cls, args.config, args.overrides, base=base)


def save_resolved(cfg: Any, out: Path) -> Path:
    """Save the resolved config as ``OUT/config.yaml`` beside the stage's outputs."""
    return save_config(cfg, Path(out) / "config.yaml")


def require_out(args: argparse.Namespace) -> Path:
    """``--out``, which every run but a dry run needs."""
    if args.out is None:
        raise UserError(
            f"mindvideo {args.command} needs --out DIR (only --dry-run runs without it)."
        )
    return args.out


def print_plan(plan: Any) -> int:
    """Print a dry run's :class:`~mindvideo.utils.dry_run.RunPlan` (once, on the main process)."""
    import os
    import sys

    if int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(plan.format())
    return 0
