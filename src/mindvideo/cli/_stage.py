"""What every stage command shares: ``--config FILE --out DIR [key=value ...]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mindvideo.config import load_config, save_config


def add_stage_arguments(parser: argparse.ArgumentParser, out_required: bool = True) -> None:
    parser.add_argument("--config", type=Path, help="YAML recipe (e.g. configs/tiny/STAGE.yaml)")
    parser.add_argument(
        "--out", type=Path, required=out_required, help="output directory of this stage"
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
