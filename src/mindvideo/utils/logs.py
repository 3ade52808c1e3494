"""The library's log lines on the terminal: one handler on the ``mindvideo`` logger."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.INFO, show_path: bool = False) -> None:
    """Send the ``mindvideo`` loggers' records at ``level`` and above to stderr, so that
    tables and paths printed on stdout stay clean for pipes (the CLI and the demo's worker
    processes alike)."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(
        console=Console(stderr=True),
        show_path=show_path,
        show_time=False,
        markup=False,
        rich_tracebacks=False,
    )
    root = logging.getLogger("mindvideo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
