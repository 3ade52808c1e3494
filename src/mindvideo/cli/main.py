"""Entry point of the ``mindvideo`` command.

Each subcommand lives in its own module with ``register(subparsers)`` (adds its parser and sets
``func``) and keeps heavy imports inside its command function, so ``mindvideo --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mindvideo import __version__
from mindvideo.config.registry import STAGES
from mindvideo.utils import UserError

# Every command: the demo and env first, the pipeline's stages in order (the registry in
# mindvideo.config), then the tools that read finished runs. Each is the module
# mindvideo.cli.NAME (dashes as underscores).
SUBCOMMANDS = ["demo", "env", *STAGES, "compare", "report", "convert"]

# Commands that never run torch: they take no --threads and leave torch unimported.
NO_TORCH = {"prepare", "compare", "report"}

log = logging.getLogger("mindvideo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindvideo",
        description="MinD-Video: reconstruct the video a person watched from fMRI recordings.",
        epilog="Every stage: mindvideo STAGE --config FILE --out DIR [key=value ...]",
    )
    parser.add_argument("--version", action="version", version=f"mindvideo {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and debug logging"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"mindvideo.cli.{name.replace('-', '_')}")
        module.register(sub)
    for name, command in sub.choices.items():
        if name not in NO_TORCH:
            command.add_argument(
                "--threads",
                type=int,
                metavar="N",
                help=(
                    "torch intra-op threads (default: the usable CPUs not busy with other "
                    "work, re-checked as the run goes on; or MINDVIDEO_THREADS)"
                ),
            )
    return parser


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    # Logs go to stderr so that tables and paths printed on stdout stay clean for pipes.
    handler = RichHandler(
        console=Console(stderr=True),
        show_path=debug,
        show_time=False,
        markup=False,
        rich_tracebacks=False,
    )
    root = logging.getLogger("mindvideo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    setup_logging(args.debug, args.quiet)
    try:
        if args.command not in NO_TORCH:
            from mindvideo.utils.threads import configure_threads

            configure_threads(args.threads)
        result = args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"mindvideo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mindvideo {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
