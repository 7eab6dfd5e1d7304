"""Process identity and process-tree termination, trusting a pid only with its start time."""

import os
import signal
import time

import psutil


def start_ticks(pid):
    """Return a live process's start time in clock ticks (/proc/<pid>/stat field 22), else None.

    Zombies count as gone: they have exited and only wait to be reaped.
    """
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except (OSError, ValueError, TypeError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def boot_id():
    """This boot of the machine (/proc/sys/kernel/random/boot_id): a pid of another boot means nothing."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def is_same_process(pid, ticks):
    """Tell whether `pid` is still the process that started at `ticks` (pids are reused)."""
    return bool(pid) and ticks is not None and start_ticks(pid) == ticks


def _tree(pid):
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _alive(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(procs, sig):
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def terminate_tree(pid, ticks, grace_s, popen=None):
    """Stop a process tree: SIGTERM to its group, wait up to `grace_s`, SIGKILL every survivor.

    Descendants are snapshotted before and during the wait, so children that moved to other
    sessions (torchrun ranks) are killed too. `popen`, when the caller is the parent, is polled
    so that the leader gets reaped and its exit status kept. Returns the number killed by SIGKILL.
    """
    if not is_same_process(pid, ticks):
        return 0
    known = {p.pid: p for p in _tree(pid)}
    try:
        os.killpg(pid, signal.SIGTERM)  # the trainer leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    _signal_all([p for p in known.values() if p.pid != pid], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if popen is not None:
            popen.poll()
        for proc in list(known.values()):
            if _alive(proc):
                known.update({c.pid: c for c in _children(proc)})
        if not any(_alive(p) for p in known.values()):
            return 0
        time.sleep(0.1)
    survivors = [p for p in known.values() if _alive(p)]
    _signal_all(survivors, signal.SIGKILL)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if popen is not None:
        popen.wait()
    psutil.wait_procs(survivors, timeout=5)
    return len(survivors)


def _children(proc):
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def tree_pids(pid, ticks):
    """Return the pids of a process and its descendants, if it is still the recorded process."""
    if not is_same_process(pid, ticks):
        return []
    return [p.pid for p in _tree(pid) if _alive(p)]


def tree_cpu_seconds(pid, ticks):
    """CPU seconds a process tree has used so far: each live member's own, plus what its ended
    children used (the leader's and each member's reaped children)."""
    if not is_same_process(pid, ticks):
        return 0.0
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total
