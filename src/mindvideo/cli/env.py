"""``mindvideo env``: versions, devices and threads, to paste into bug reports."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="print versions, devices and threads for bug reports")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindvideo.utils.environment import collect_environment

    for key, value in collect_environment().items():
        print(f"{key + ':':<16} {value}")
    return 0
