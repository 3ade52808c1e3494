"""torch's thread count: fixed by the user, or chosen from the free CPUs and kept right."""

import os
import subprocess
import sys
import time

import pytest
import torch

from mindvideo.cli.main import main
from mindvideo.utils import UserError, threads
from mindvideo.utils.threads import adapt_threads, configure_threads, current_choice


@pytest.fixture(autouse=True)
def _restore_one_thread():
    """Every test here leaves the process as the suite runs it: one fixed thread."""
    yield
    configure_threads(1)


@pytest.fixture
def auto(monkeypatch):
    """Automatic mode: neither MINDVIDEO_THREADS (set for the suite) nor OMP_NUM_THREADS."""
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(
    ("cpus", "busy", "expected"),
    [(2, None, 2), (2, 0.0, 2), (2, 0.2, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.0, 1), (8, 2.1, 6)],
)
def test_threads_are_the_cpus_left_free(cpus, busy, expected):
    # a quarter of a CPU of other work (a shell, a monitor) does not take a core
    assert threads._threads_for(cpus, busy) == expected


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(monkeypatch):
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= threads.usable_cpus() <= mask
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.5)
    assert threads.usable_cpus() == 1


def test_a_fixed_count_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "2")
    choice = configure_threads(3)
    assert (choice.threads, choice.source) == (3, "--threads")
    assert torch.get_num_threads() == 3
    choice = configure_threads()
    assert (choice.threads, choice.source) == (2, threads.ENV_VAR)
    assert torch.get_num_threads() == 2
    assert "fixed by MINDVIDEO_THREADS" in choice.describe()


def test_omp_num_threads_set_by_the_user_is_respected(auto, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads().source == "OMP_NUM_THREADS"


@pytest.mark.parametrize(("var", "value"), [(threads.ENV_VAR, "many"), ("OMP_NUM_THREADS", "0")])
def test_a_bad_thread_count_is_one_clear_error(auto, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(UserError, match=f"{var}='{value}' is not a thread count"):
        configure_threads()
    with pytest.raises(UserError, match="--threads must be at least 1"):
        configure_threads(0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads the load from /proc/stat")
def test_auto_leaves_a_core_to_a_busy_process(auto):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the competitor is running
        choice = configure_threads(probe=0.5)
    finally:
        busy.kill()
        busy.wait()
    assert choice.automatic and choice.busy is not None
    # one busy thread (more under a parallel test run) is seen and left its core
    assert choice.busy > 0.7, choice
    assert choice.threads == max(1, min(choice.cpus, int(choice.cpus - choice.busy + 0.25)))
    assert choice.threads <= max(1, choice.cpus - 1)
    assert torch.get_num_threads() == choice.threads


def test_adapt_follows_the_load_at_most_every_period(auto, monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    choice = configure_threads(probe=0)
    assert (choice.threads, choice.busy) == (4, None)  # no look yet: every usable CPU
    governor = threads._GOVERNOR
    load = iter([1.0, 0.1, 3.9])
    monkeypatch.setattr(governor.meter, "others", lambda: next(load))
    seen = []
    for _ in range(3):
        adapt_threads()  # the period has not passed: nothing is measured, nothing changes
        assert torch.get_num_threads() == (seen[-1] if seen else 4)
        governor.next_look = 0.0  # the period has passed
        adapt_threads()
        seen.append(torch.get_num_threads())
        assert current_choice().threads == seen[-1]
    assert seen == [3, 4, 1]


def test_a_fixed_count_is_never_adapted(monkeypatch):
    configure_threads(2)
    threads._GOVERNOR.next_look = 0.0
    adapt_threads()
    assert torch.get_num_threads() == 2


def test_env_and_every_torch_command_show_and_take_the_choice(capsys):
    assert main(["env", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "torch threads:   2 (fixed by --threads; " in out and "usable cpus:" in out
    assert torch.get_num_threads() == 2
    assert main(["env", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # prepare never runs torch: it takes no --threads
        main(["prepare", "--threads", "1", "--out", "x"])


def test_numpy_blas_follows_the_choice():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return {
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        }

    if not blas_threads():
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")
    configure_threads(2)
    assert blas_threads() == {2}
    configure_threads(1)
    assert blas_threads() == {1}


def test_a_fixed_block_is_left_alone_and_automatic_mode_resumes_after(auto, monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    configure_threads(probe=0)
    governor = threads._GOVERNOR
    monkeypatch.setattr(governor.meter, "others", lambda: 0.0)
    with threads.fixed_threads(1):  # e.g. train_standins(num_threads=1)
        governor.next_look = 0.0
        adapt_threads()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4 and current_choice().automatic
    monkeypatch.setattr(governor.meter, "others", lambda: 1.0)
    governor.next_look = 0.0
    adapt_threads()
    assert torch.get_num_threads() == 3
