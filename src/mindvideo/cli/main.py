"""Entry point of the ``mindvideo`` command.

Each subcommand lives in its own module with ``register(subparsers)`` (adds its parser and sets
``func``) and keeps heavy imports inside its command function, so ``mindvideo --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path

from mindvideo import __version__
from mindvideo.config.registry import STAGES
from mindvideo.utils import UserError

# Every command: the demo and env first, the pipeline's stages in order (the registry in
# mindvideo.config), then the tools that read finished runs. Each is the module
# mindvideo.cli.NAME (dashes as underscores).
SUBCOMMANDS = ["demo", "env", *STAGES, "compare", "report", "convert", "export"]

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
                    + (
                        "; also the processes rendering the stimuli (default: every usable CPU)"
                        if name == "simulate"
                        else ""
                    )
                ),
            )
    return parser


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    from mindvideo.utils.logs import configure_logging

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    configure_logging(level, show_path=debug)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    setup_logging(args.debug, args.quiet)
    out = _output(args)
    interrupted = _Interrupts()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(interrupted)
            if out is not None:
                from mindvideo.utils.outputs import guard_output

                estimate = getattr(args, "estimate_output", None)
                need = estimate(args) if estimate is not None else 0
                is_file = getattr(args, "out_is_file", False)
                stack.enter_context(guard_output(out, args.command, need, is_file))
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
    except Exception as exc:
        from mindvideo.utils.outputs import write_failure

        if interrupted.seen and not args.debug:  # a library turned the interrupt into its error
            print(f"mindvideo {args.command}: interrupted", file=sys.stderr)
            return 130
        line = None if args.debug else write_failure(exc, out)
        if line is None:
            raise
        print(f"mindvideo {args.command}: error: {line}", file=sys.stderr)
        return 2
    return int(result or 0)


class _Interrupts:
    """Within the block, record that SIGINT arrived (then raise ``KeyboardInterrupt`` as
    Python's own handler does). Some libraries catch the interrupt of a read they were in and
    raise their own error instead (diffusers' weight loading: "Unable to load weights"); the
    record lets :func:`main` report the interrupt the user caused, not that error."""

    def __init__(self) -> None:
        self.seen = False
        self._before: object = None

    def _handler(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._before = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._before is not None:
            signal.signal(signal.SIGINT, self._before)  # type: ignore[arg-type]


def entry_point() -> int:
    """The ``mindvideo`` program: :func:`main`, then Ctrl-C ignored while Python shuts down.

    An interrupt that lands after the command has finished would otherwise kill the interpreter
    during its shutdown, with no message and a signal for an exit status, though the work is
    done. After an interrupt the process ends at once with status 130: the command has cleaned
    up already, and CPython may otherwise still die of the interrupt it had handled (it flags
    an interrupt raised inside code that a compiled extension ran, even when caught).
    """
    import signal

    try:
        code = main()
    except KeyboardInterrupt:  # between main's own handler and here
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


def _output(args: argparse.Namespace) -> Path | None:
    """The folder (or file) the command writes, guarded by :func:`guard_output`; ``None`` for a
    dry run, a command that writes nothing, and every process of a multi-process launch but the
    main one (rank 0 holds the lock for all)."""
    if getattr(args, "dry_run", False) or os.environ.get("RANK", "0") not in ("", "0"):
        return None
    output_of = getattr(args, "output_of", None)
    out = output_of(args) if output_of is not None else getattr(args, "out", None)
    return Path(out) if out is not None else None
