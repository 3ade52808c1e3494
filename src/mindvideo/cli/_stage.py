"""What the command modules share: their parser, and for a stage ``--config FILE --out DIR
[key=value ...]``.

Every command's parser is a :class:`CommandParser`; a stage's help is its summary in the
registry (:data:`mindvideo.config.STAGES`). Options that set a config key are declared with
:meth:`CommandParser.add_key_option`; :func:`resolve_config` then builds the typed config from
the preset, ``--config``, the overrides and those options, in that order, later ones winning,
and :func:`run_stage` runs (or, with ``--dry-run``, plans) the stage with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mindvideo.config import STAGES, load_config, save_config
from mindvideo.utils import UserError
from mindvideo.utils.integrity import check_inputs

log = logging.getLogger(__name__)


class CommandParser:
    """The parser of one ``mindvideo`` command being built; ``run(args)`` is what it does.

    ``help`` (the line in ``mindvideo --help``) defaults to a stage's summary in the registry.
    Options are added in the order they show in ``--help``: the command's own
    (:meth:`add_argument`, :meth:`add_key_option`), then a stage's common ones
    (:meth:`add_stage_arguments`).
    """

    def __init__(
        self,
        sub: argparse._SubParsersAction,
        name: str,
        run: Callable[[argparse.Namespace], int],
        description: str,
        help: str | None = None,
    ) -> None:
        help = help if help is not None else STAGES[name].summary
        self.parser = sub.add_parser(name, help=help, description=description)
        self.parser.set_defaults(func=run, stage=name, config_keys={})

    def set_output(
        self,
        estimate: Callable[[argparse.Namespace], int] | None = None,
        path: Callable[[argparse.Namespace], Path | None] | None = None,
        is_file: bool = False,
    ) -> None:
        """How the CLI guards what the command writes (:func:`mindvideo.utils.outputs.
        guard_output`, before any work): ``estimate(args)``, the bytes it will write (estimated
        from its inputs; default: only a margin); ``path(args)``, what it writes (default
        ``--out``); ``is_file``: that is a file, not a folder."""
        self.parser.set_defaults(estimate_output=estimate, output_of=path, out_is_file=is_file)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """An option of the command that sets no config key."""
        return self.parser.add_argument(*args, **kwargs)

    def add_key_option(self, flag: str, help: str, key: str | None = None, **kwargs: Any) -> None:
        """An option that, when given, sets config key ``key`` (dotted for nested keys; default:
        the option's own name, ``--finetune-data`` → ``finetune_data``); a path as a string."""
        action = self.parser.add_argument(flag, help=help, **kwargs)
        keys = self.parser.get_default("config_keys")
        self.parser.set_defaults(config_keys={**keys, action.dest: key or action.dest})

    def add_data_option(
        self, help: str, flag: str = "--data", first: str = "data", rest: str = "subjects"
    ) -> None:
        """``--data S1 [S2 ...]``: one prepared subject (config key ``data``) or several for a
        shared model (``data: S1``, ``subjects: [S2, ...]``); other keys with ``first`` and
        ``rest``."""
        self.add_key_option(
            flag, help, key=f"{first}{SUBJECTS_KEY}{rest}", nargs="+", metavar="PREPARED", type=Path
        )

    def add_stage_arguments(self, dry_run: bool = False, resume: str | None = None) -> None:
        """``--resume`` (a training stage: ``resume`` names one of its checkpoints),
        ``--config``, ``--out``, ``--dry-run`` (with ``dry_run``; then ``--out`` may be left out
        of a dry run only: see :func:`require_out`) and the ``key=value`` overrides."""
        parser = self.parser
        if resume is not None:
            parser.add_argument(
                "--resume",
                metavar="latest|PATH",
                help=f"continue an interrupted run: 'latest' or {resume}",
            )
        parser.add_argument(
            "--config", type=Path, help="YAML recipe (e.g. configs/tiny/STAGE.yaml)"
        )
        parser.add_argument(
            "--out",
            type=Path,
            required=not dry_run,
            help="output directory of this stage"
            + (" (optional with --dry-run)" if dry_run else ""),
        )
        if dry_run:
            parser.add_argument(
                "--dry-run",
                action="store_true",
                help=(
                    "check the configuration, paths and shapes as a real run does, print the "
                    "plan, parameter counts and a memory estimate; train and write nothing"
                ),
            )
        parser.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="override config keys (dotted for nested keys: rest.volumes=600)",
        )


def _split_overrides_from_data(args: argparse.Namespace) -> None:
    """``--data S1 S2 key=value``: argparse gives the ``key=value`` overrides that follow
    ``--data``'s folders to ``--data``; hand them back to the overrides."""
    for dest, key in args.config_keys.items():
        value = getattr(args, dest, None)
        if SUBJECTS_KEY not in key or not value:
            continue
        paths = list(value)
        moved = []
        while paths and "=" in os.fspath(paths[-1]) and not os.path.exists(paths[-1]):
            moved.insert(0, os.fspath(paths.pop()))
        if moved:
            if not paths:
                raise UserError("--data needs at least one prepared folder before key=value.")
            setattr(args, dest, paths)
            args.overrides = [*moved, *(args.overrides or [])]


def resolve_config(args: argparse.Namespace, base: Any = None) -> Any:
    """The stage's typed config: preset ``base`` (or the defaults) ← ``--config`` ← overrides
    ← the options declared with :meth:`CommandParser.add_key_option` that were given."""
    _split_overrides_from_data(args)
    cfg = load_config(STAGES[args.stage].config, args.config, args.overrides, base=base)
    for dest, key in args.config_keys.items():
        value = getattr(args, dest)
        if value is not None and SUBJECTS_KEY in key:  # --data S1 S2 ...
            first, *rest = (os.fspath(v) for v in value)
            first_key, rest_key = key.split(SUBJECTS_KEY)
            cfg = dataclasses.replace(cfg, **{first_key: first, rest_key: rest})
        elif value is not None:
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            cfg = _replace_key(cfg, key.split("."), value)
    if not getattr(args, "inputs_checked", False):  # once per command, before any work
        check_inputs(input_paths(cfg, args.stage))
        args.inputs_checked = True
    return cfg


# The stage that writes the input a config key names (the fix for a damaged file in it); keys
# of a nested ``pretrained`` section are downloads.
_WRITTEN_BY = {
    "data": "prepare",
    "finetune_data": "prepare",
    "init": "pretrain",
    "mbm": "pretrain",
    "contrast": "contrast",
    "cotrain": "cotrain",
    "generator": "tune-video",
    "checkpoint": "cotrain",
    "reconstructions": "reconstruct",
    "text_encoder": "tune-video",
    "lowlevel": "lowlevel",
}
_ENCODER_WRITTEN_BY = {"contrast": "pretrain", "cotrain": "contrast", "explain": "contrast"}


SUBJECTS_KEY = "+"
"""Joins the two config keys ``--data S1 S2 ...`` sets (:meth:`CommandParser.add_data_option`):
the first folder's and the list of the others'."""


def input_paths(cfg: Any, stage: str, prefix: str = "") -> list[tuple[str, str, str]]:
    """(what, path, fix) for every existing path among the config's values (nested too): the
    stage's inputs, checked whole before it runs and sized for its output estimate."""
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            found += input_paths(value, stage, f"{key}.")
        elif isinstance(value, list) and f.name.endswith("subjects"):  # a shared model's
            found += [
                (f"the {key} input", v, "re-run mindvideo prepare to write it again")
                for v in value
                if isinstance(v, str) and os.path.exists(v)
            ]
        elif isinstance(value, str) and value and f.name != "device" and os.path.exists(value):
            writer = _ENCODER_WRITTEN_BY.get(stage) if f.name == "encoder" else None
            writer = writer or _WRITTEN_BY.get(f.name)
            if key.startswith("pretrained.") or key == "root" or writer is None:
                fix = "re-download it (or re-run the command that wrote it)"
            else:
                fix = f"re-run mindvideo {writer} to write it again"
            found.append((f"the {key} input", value, fix))
    return found


def _replace_key(cfg: Any, key: list[str], value: Any) -> Any:
    """A copy of ``cfg`` with the (nested) field ``key`` set to ``value``."""
    head, *rest = key
    if rest:
        value = _replace_key(getattr(cfg, head), rest, value)
    return dataclasses.replace(cfg, **{head: value})


def save_resolved(cfg: Any, out: Path) -> Path:
    """Save the resolved config as ``OUT/config.yaml`` beside the stage's outputs."""
    return save_config(cfg, Path(out) / "config.yaml")


def require_out(args: argparse.Namespace) -> Path:
    """``--out``, which every run but a dry run needs."""
    if args.out is None:
        raise UserError(f"mindvideo {args.stage} needs --out DIR (only --dry-run runs without it).")
    return args.out


def run_stage(
    args: argparse.Namespace,
    run: Callable[..., Any],
    plan: Callable[..., Any] | None = None,
    report: Callable[[Any], str | None] = "wrote {}".format,
    staged: bool = False,
    **kwargs: Any,
) -> int:
    """Resolve the stage's config (:func:`resolve_config`); with ``--dry-run`` print
    ``plan(cfg, OUT, **kwargs)``, else call ``run(cfg, OUT, **kwargs)`` (``--out`` required) and
    log the line ``report`` makes of its result (default: "wrote RESULT"; None logs nothing).

    ``staged``: the stage writes a temporary folder beside ``OUT`` that replaces ``OUT`` only
    when the stage has finished (:func:`~mindvideo.utils.io.atomic_dir`), so a failed or
    interrupted run leaves no partial folder and an earlier result untouched. For stages whose
    folder is one result written at the end (not resumable state)."""
    cfg = resolve_config(args)
    if plan is not None and args.dry_run:
        return print_plan(plan(cfg, args.out, **kwargs))
    out = require_out(args)
    if staged:
        from mindvideo.utils.io import atomic_dir

        with atomic_dir(out) as tmp:
            result = run(cfg, tmp, **kwargs)
    else:
        result = run(cfg, out, **kwargs)
    line = report(result)
    if line is not None:
        log.info("%s", line)
    return 0


def print_plan(plan: Any) -> int:
    """Print a dry run's :class:`~mindvideo.utils.dry_run.RunPlan` (once, on the main process)."""
    import sys

    if int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(plan.format())
    return 0
