"""One ``mindvideo demo --preset tiny`` run shared by the demo's tests.

The run trains every stand-in on the tiny simulated subject (the same models, seed and data the
stand-in tests check), so those tests read its ``standins`` folder instead of training a second
copy. It runs as a user runs it, in its own process, and keeps what it printed.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class DemoRun:
    run: Path
    returncode: int
    out: str
    err: str


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> DemoRun:
    """The tiny demo, seed 0, one torch thread (``MINDVIDEO_THREADS``, as every test); read-only
    by convention: a test that changes files works on a copy (re-running the same command, which
    only reuses, is allowed)."""
    run = tmp_path_factory.mktemp("tiny-demo") / "run"
    argv = [sys.executable, "-m", "mindvideo", "demo", "--preset", "tiny", "--out", str(run)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), check=False)
    return DemoRun(run, proc.returncode, proc.stdout, proc.stderr)
