"""The thread policy on a shared machine, against real busy processes (common/threads.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dccnext_cli.common.threads import BUSY_SPIN_COUNT, SPIN_COUNT, CoreShare, others_running, spin_count

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat") or (os.cpu_count() or 1) < 2,
                                reason="Linux /proc and two cores")


def _stranger_spinner() -> int:
    """A busy process that is not our descendant (its parent shell exits at once): someone else's load."""
    out = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.fixture
def stranger():
    pid = _stranger_spinner()
    yield pid
    os.kill(pid, signal.SIGKILL)


def _window(share: CoreShare) -> float:
    share.sample()
    time.sleep(share.every_s + 0.2)
    others = share.others()
    assert others is not None
    return others


def test_another_process_busy_on_a_core_counts_as_about_one_core():
    share = CoreShare(every_s=1.0)
    before = _window(share)  # whatever else the machine runs
    pid = _stranger_spinner()
    try:
        others = _window(share)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert 0.7 <= others - before <= 1.3, (before, others)
    share.ceiling = share.cores
    assert share.threads_for(others) == max(1, share.cores - round(others))


def test_own_busy_children_are_not_someone_else():
    # a data-loading worker is our own child: its CPU must not make us give threads away
    share = CoreShare(every_s=1.0)
    before = _window(share)
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        others = _window(share)
    finally:
        child.kill()
        child.wait()
    assert others - before < 0.3, (before, others)


def test_thread_count_stays_between_one_and_the_starting_count():
    share = CoreShare()
    share.cores, share.ceiling = 16, 8
    assert [share.threads_for(o) for o in (0.0, 3.2, 8.6, 15.0, 40.0)] == [8, 8, 7, 1, 1]


FIT = textwrap.dedent("""
    import json, time, torch
    from dccnext_cli.common import threads
    threads._share.every_s = 1.0
    start = torch.get_num_threads()
    threads.fit_threads()
    time.sleep(1.3)
    threads.fit_threads()
    print(json.dumps([start, torch.get_num_threads()]))
""")


def test_beside_a_busy_process_torch_gets_the_free_cores(stranger):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, check=True)
    start, fitted = json.loads(out.stdout.strip().splitlines()[-1])
    cores = len(os.sched_getaffinity(0))
    assert fitted == max(1, min(start, cores - 1)) < start


def test_a_thread_count_the_user_set_is_kept(stranger):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [2, 2]


SPIN = ("from dccnext_cli.common.threads import spin_briefly; import os; "
        "print(spin_briefly(), os.environ.get('GOMP_SPINCOUNT'))")


@pytest.mark.parametrize("env, expected", [
    ({}, "True 10000"),  # nothing else running
    ({"GOMP_SPINCOUNT": "5"}, "False 5"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "False None"),
])
def test_the_command_caps_the_spin_unless_the_user_chose(env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", SPIN], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == expected.split()


def test_beside_busy_processes_the_command_spins_shorter():
    pids = [_stranger_spinner() for _ in range(max(1, len(os.sched_getaffinity(0)) // 4))]  # a quarter of the cores
    try:
        time.sleep(0.3)  # the strangers are running
        clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        out = subprocess.run([sys.executable, "-c", SPIN], env=clean, capture_output=True, text=True, check=True)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    assert out.stdout.split() == ["True", BUSY_SPIN_COUNT] and BUSY_SPIN_COUNT != SPIN_COUNT


def test_others_running_counts_busy_strangers_not_itself(stranger):
    time.sleep(0.3)
    assert others_running() >= 1
    os.kill(stranger, signal.SIGSTOP)  # stopped: not runnable
    try:
        time.sleep(0.1)
        assert others_running() == 0
    finally:
        os.kill(stranger, signal.SIGCONT)


@pytest.mark.parametrize("others, cores, expected", [
    (0, 2, "10000"), (1, 2, "500"), (2, 2, "500"), (0, 16, "10000"), (3, 16, "10000"), (4, 16, "500"),
])
def test_the_spin_cap_shortens_from_a_quarter_of_the_cores_busy(others, cores, expected):
    assert spin_count(others, cores) == expected
