"""How many intra-op threads torch uses: chosen for the CPUs this process may use and the work
already running on them, and kept right while the run goes on.

torch starts one OpenMP thread per core of the machine. On a machine shared with other work that
is the wrong number: a parallel region waits for its slowest thread, and when a third runnable
thread shares two cores, one of torch's threads is off its core for a whole scheduler slice at a
time. The small models of the demo run thousands of short parallel regions a second, so the waits
dominate: one busy single-threaded process beside the tiny demo made its stand-ins 3.2× slower
at two threads (the whole demo 2.6×), and the automatic choice 1.1× (docs/benchmarks.md).

:func:`configure_threads` is called once per command. Automatic mode counts the CPUs in the
process's affinity mask (``os.sched_getaffinity``; fewer where a cgroup CPU quota says so),
subtracts the CPU time other processes are using on them (``/proc/stat``) and uses what is free.
Long loops (training steps, denoising steps, classifier batches) call :func:`adapt_threads`, which
looks again at most every :data:`PERIOD` seconds, from the CPU time counted since its last look,
and changes torch's thread count when another job has started or ended.

The same count limits the BLAS library numpy uses (``threadpoolctl``): the linear baseline and
the simulator's numpy work stall beside a busy process just as torch does.

A fixed count comes from ``--threads N`` (every command) or the ``MINDVIDEO_THREADS``
environment variable, in that order; ``OMP_NUM_THREADS`` set by the user is respected as a fixed
count too. ``mindvideo env`` and the demo's first line show the choice and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = [
    "ENV_VAR",
    "PERIOD",
    "ThreadChoice",
    "adapt_threads",
    "blas_controller",
    "configure_threads",
    "current_choice",
    "fixed_request",
    "fixed_threads",
    "usable_cpus",
]

ENV_VAR = "MINDVIDEO_THREADS"
"""Environment variable with a fixed thread count (``--threads`` wins over it)."""

PERIOD = 2.0
"""Seconds between two looks at the load in :func:`adapt_threads`."""

SLACK = 0.25
"""CPU other processes may use before a core counts as taken (a shell, an editor, a monitor)."""


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """torch's intra-op thread count and where it came from."""

    threads: int
    source: str
    """``--threads``, ``MINDVIDEO_THREADS``, ``OMP_NUM_THREADS`` or ``auto``."""
    cpus: int
    """CPUs this process may use (affinity mask and cgroup quota)."""
    busy: float | None = None
    """CPUs' worth of time other processes used when automatic mode looked (None: not known)."""

    @property
    def automatic(self) -> bool:
        return self.source == "auto"

    def describe(self) -> str:
        """One line, e.g. ``2 (auto: 2 usable CPUs, 0.0 busy with other work)``."""
        if not self.automatic:
            return f"{self.threads} (fixed by {self.source}; {self.cpus} usable CPUs)"
        load = "load unknown" if self.busy is None else f"{self.busy:.1f} busy with other work"
        return f"{self.threads} (auto: {self.cpus} usable CPUs, {load})"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """CPUs' worth of time the cgroup v2 ``cpu.max`` allows (None: no limit or no cgroup)."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


class _LoadMeter:
    """Other processes' CPU use on our CPUs since the last reading, from ``/proc/stat``."""

    def __init__(self, cpus: set[int] | None) -> None:
        self.cpus = cpus
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy CPU-seconds on our CPUs, our own CPU-seconds), or None."""
        try:
            lines = open("/proc/stat", encoding="ascii").read().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, _, fields = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu":
                continue
            if self.cpus is not None and int(name[3:]) not in self.cpus:
                continue
            ticks = [int(v) for v in fields.split()]
            busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait; no guests
        return time.monotonic(), busy / self.hz, time.process_time()

    def others(self) -> float | None:
        """CPUs' worth of time used by other processes since the previous call."""
        now = self._sample()
        last, self.last = self.last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        wall = now[0] - last[0]
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / wall


def _threads_for(cpus: int, busy: float | None) -> int:
    """What is free of ``cpus`` once others use ``busy`` of them (at least one thread)."""
    if busy is None:
        return cpus
    return max(1, min(cpus, math.floor(cpus - busy + SLACK)))


class _Governor:
    """The process's thread choice, and the meter automatic mode reads."""

    def __init__(self) -> None:
        self.choice: ThreadChoice | None = None
        self.meter: _LoadMeter | None = None
        self.next_look = 0.0

    def configure(self, requested: int | None = None, probe: float = 0.2) -> ThreadChoice:

        cpus = usable_cpus()
        source, fixed = fixed_request(requested)
        if fixed is not None:
            self.meter = None
            choice = ThreadChoice(fixed, source, cpus)
        else:
            try:
                mask: set[int] | None = set(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                mask = None
            self.meter = _LoadMeter(mask)
            busy = None
            if probe > 0 and self.meter.last is not None:
                time.sleep(probe)
                busy = self.meter.others()
            choice = ThreadChoice(_threads_for(cpus, busy), "auto", cpus, busy)
            self.next_look = time.monotonic() + PERIOD
        _apply(choice.threads)
        self.choice = choice
        return choice

    def adapt(self) -> None:
        if self.meter is None or self.choice is None:
            return
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + PERIOD
        busy = self.meter.others()
        if busy is None:
            return
        threads = _threads_for(self.choice.cpus, busy)
        if threads != self.choice.threads:
            log.debug("threads %d -> %d (others: %.2f CPUs)", self.choice.threads, threads, busy)
            _apply(threads)
        self.choice = dataclasses.replace(self.choice, threads=threads, busy=busy)


def _apply(threads: int) -> None:
    """torch's intra-op threads and numpy's BLAS threads to ``threads``."""
    import torch

    torch.set_num_threads(threads)
    controller = blas_controller()
    if controller is not None:
        # stays in force until changed here; a nested limit (the simulator's) restores it
        _LIMITS[:] = [controller.limit(limits=threads, user_api="blas")]


_LIMITS: list = []


@functools.lru_cache(maxsize=1)
def blas_controller():
    """threadpoolctl's ``ThreadpoolController`` over the loaded BLAS libraries (found once: it
    is slow), or None without threadpoolctl."""
    try:
        import numpy  # noqa: F401  (its BLAS must be loaded to be found)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def fixed_request(requested: int | None) -> tuple[str, int | None]:
    """The fixed count asked for, and by what: ``--threads``, then the environment
    (``("auto", None)`` when nothing fixes it)."""
    from mindvideo.utils.errors import UserError

    if requested is not None:
        if int(requested) < 1:
            raise UserError(f"--threads must be at least 1 (got {requested}).")
        return "--threads", int(requested)
    for var in (ENV_VAR, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"{var}={value!r} is not a thread count: set a whole number >= 1.")
        return var, n
    return "auto", None


_GOVERNOR = _Governor()


def configure_threads(requested: int | None = None, probe: float = 0.2) -> ThreadChoice:
    """Set torch's intra-op threads for this process and return the choice.

    Args:
        requested: a fixed count (``--threads``); None reads ``MINDVIDEO_THREADS`` and
            ``OMP_NUM_THREADS``, and without either chooses automatically.
        probe: seconds to watch the other processes' CPU use before the first choice
            (automatic mode only; 0 starts from every usable CPU).

    Raises:
        UserError: a count below 1, or an environment variable that is not a whole number.
    """
    return _GOVERNOR.configure(requested, probe)


def adapt_threads() -> None:
    """In automatic mode, look at the load again (at most every :data:`PERIOD` seconds) and
    change torch's thread count to the CPUs now free. Cheap enough to call every step."""
    _GOVERNOR.adapt()


def current_choice() -> ThreadChoice | None:
    """The choice :func:`configure_threads` made, updated by :func:`adapt_threads` (None before)."""
    return _GOVERNOR.choice


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch threads inside the block, which :func:`adapt_threads` leaves alone;
    afterwards the count and the automatic mode (if any) are back. ``None``: change nothing."""
    if threads is None:
        yield
        return
    import torch

    saved, before = (_GOVERNOR.choice, _GOVERNOR.meter), torch.get_num_threads()
    _GOVERNOR.meter = None  # no meter: adapt_threads does nothing
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        _GOVERNOR.choice, _GOVERNOR.meter = saved
        torch.set_num_threads(before)
