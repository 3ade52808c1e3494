"""Shared fixtures: the tiny simulated datasets every data-path test reads.

The fixtures are session-scoped (built once per test run, ~10 s for both) and read-only by
convention: a test that modifies files copies them first.
"""

import atexit
import os
import shutil
import tempfile

# Before anything imports nilearn or matplotlib: nothing may touch the user's home or a display.
os.environ["NILEARN_DATA"] = tempfile.mkdtemp(prefix="mindvideo-nilearn-")
os.environ["MPLBACKEND"] = "Agg"
# Commands run in-process (main([...])) use one torch thread, as the tests do (see below).
os.environ["MINDVIDEO_THREADS"] = "1"

from pathlib import Path

import pytest

from mindvideo.config import PrepareConfig, SimulateConfig, load_config, simulate_preset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
atexit.register(shutil.rmtree, os.environ["NILEARN_DATA"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The slow tests first, longest first (``@pytest.mark.slow(minutes=N)``), spread over the
    workers of ``make test`` (pytest-xdist, ``--dist worksteal``).

    worksteal first deals each worker a contiguous share of the collection, and a worker keeps
    the test after its current one: two long tests at the head of one share would run one
    after the other. So the k-th longest test opens share ``k mod workers``, followed by a short
    test (the one its worker keeps: a slow test there would wait for the longest and then run
    after it, session fixtures included, while the other workers idle); the short tests fill
    the shares in collection order, and workers that finish early steal them."""

    def minutes(item) -> float:
        marker = item.get_closest_marker("slow")
        return 0.0 if marker is None else float(marker.kwargs.get("minutes", 0.5))

    order = sorted(items, key=lambda item: -minutes(item))
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers < 2:
        items[:] = order
        return
    slow = [item for item in order if minutes(item) > 0]
    fast = [item for item in order if minutes(item) == 0]
    # The share sizes worksteal deals: n // workers, then what is left over the rest.
    sizes, left = [], len(items)
    for w in range(workers):
        sizes.append(left // (workers - w))
        left -= sizes[-1]
    shares = [slow[w::workers] for w in range(workers)]
    for share in shares:
        if len(share) > 1 and fast:
            share.insert(1, fast.pop(0))
    for share, size in zip(shares, sizes, strict=True):
        take = max(0, size - len(share))
        share += fast[:take]
        del fast[:take]
    shares[-1] += fast  # only when slow tests outnumber a share
    items[:] = [item for share in shares for item in share]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and two test workers never fight for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sim_config() -> SimulateConfig:
    """The ``tiny`` simulate preset (seed 0), as the simulated fixtures use it."""
    return simulate_preset("tiny")


@pytest.fixture(scope="session")
def simulated_dataset(tmp_path_factory, sim_config):
    """A tiny simulated Wen 2018 dataset (seed 0); returns its root folder (a Path)."""
    from mindvideo.sim.simulate import simulate_wen2018

    return simulate_wen2018(sim_config, tmp_path_factory.mktemp("sim") / "wen2018")


@pytest.fixture(scope="session")
def simulated_rest(tmp_path_factory, sim_config):
    """The tiny HCP-style resting-state corpus (seed 0); returns its root folder (a Path)."""
    from mindvideo.sim.simulate import simulate_hcp_rest

    return simulate_hcp_rest(sim_config, tmp_path_factory.mktemp("sim") / "hcp_rest")


@pytest.fixture(scope="session")
def prepare_config(simulated_dataset) -> PrepareConfig:
    """``configs/tiny/prepare.yaml`` pointed at the tiny simulated dataset, subject 1."""
    return load_config(
        PrepareConfig,
        CONFIGS / "tiny" / "prepare.yaml",
        [f"root={simulated_dataset}", "subject=1"],
    )


@pytest.fixture(scope="session")
def prepared_dataset(prepare_config, tmp_path_factory):
    """The tiny simulated subject 1 prepared with the tiny recipe; returns its folder."""
    from mindvideo.data.wen2018 import prepare_wen2018

    return prepare_wen2018(prepare_config, tmp_path_factory.mktemp("prepared") / "subject1")


@pytest.fixture(scope="session")
def scene_labels(prepared_dataset, simulated_dataset):
    """The true scene labels of the tiny prepared subject (``mindvideo.data.labels``)."""
    from mindvideo.data.labels import load_scene_labels
    from mindvideo.data.prepared import PreparedData

    return load_scene_labels(PreparedData.open(prepared_dataset), simulated_dataset / "scenes.json")
