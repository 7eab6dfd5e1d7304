"""procs: a pid is trusted only with its start time; terminate_tree leaves nothing alive."""

import os
import subprocess
import sys
import time

import psutil

from imts_flask.procs import is_same_process, start_ticks, terminate_tree

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_start_ticks_identify_a_process():
    ticks = start_ticks(os.getpid())
    assert ticks and is_same_process(os.getpid(), ticks)
    assert not is_same_process(os.getpid(), ticks + 1)  # same pid, other start: a reused pid
    assert not is_same_process(None, ticks)
    assert start_ticks(2**22 + 12345) is None


def test_zombies_count_as_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_ticks(proc.pid) is None
    proc.wait()


def test_terminate_tree_kills_a_stubborn_tree_in_other_sessions():
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    grandchild = int(proc.stdout.readline())
    started = time.monotonic()
    killed = terminate_tree(proc.pid, start_ticks(proc.pid), grace_s=1.0, popen=proc)
    assert killed == 2
    assert time.monotonic() - started < 30
    assert proc.returncode == -9
    assert start_ticks(grandchild) is None


def test_terminate_tree_never_signals_a_different_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert terminate_tree(proc.pid, start_ticks(proc.pid) - 1, grace_s=0.1) == 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
