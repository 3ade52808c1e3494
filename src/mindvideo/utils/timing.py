"""Seconds per step of a stage, for its ``timings`` report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed(times: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the block takes as ``times[step]`` (when it ends without an error)."""
    t0 = time.perf_counter()
    yield
    times[step] = time.perf_counter() - t0
