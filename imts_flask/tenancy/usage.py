"""GPU-hours and CPU time: what each run used, a ledger of it by month, and its sums by team and day.

Each run (job, evaluation, deployment) records `gpu_seconds` (GPUs held x seconds its processes
ran, every attempt; time spent waiting in the queue, preempted included, counts nothing) and
`cpu_seconds`; its monitor adds to them as it runs. When an attempt ends, whoever records the end
(its monitor, or the liveness check of a lost one) appends what the attempt added to the ledger,
`logs/usage/<YYYY-MM>.jsonl`, one JSON line:

    {"at": "2026-11-30T09:00:00", "day": "2026-11-30", "tenant": "team-a", "kind": "job",
     "id": "train_a1b2c3d4", "launch": "9f3e01ab", "since": 0.0, "gpu_seconds": 1843.2,
     "cpu_seconds": 96.4}

then the record's `accounted`. A line written twice (a crash between the two) has the same run,
launch and starting figure (`since`), and counts once. GPU-hours are attributed to the day (UTC)
the attempt ended; runs still going count today what they used so far.
"""

import json
import logging
import os
import resource
import threading
import time

from ..procs import tree_cpu_seconds
from ..state import now_utc

log = logging.getLogger(__name__)

_files = {}  # path -> _Month, read once and then from where it was left
_files_lock = threading.Lock()  # requests read them in threads (or greenlets) side by side


def unaccounted(state):
    """(gpu_seconds, cpu_seconds) a run used that the ledger does not hold yet."""
    done = state.accounted or {}
    return (
        max(0.0, (state.gpu_seconds or 0.0) - done.get("gpu_seconds", 0.0)),
        max(0.0, (state.cpu_seconds or 0.0) - done.get("cpu_seconds", 0.0)),
    )


def children_cpu_seconds():
    """CPU seconds of this process's ended (reaped) children and their descendants."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


class Meter:
    """What one process of a run (a trainer, an evaluation phase, a server) adds to the run's
    gpu_seconds and cpu_seconds while it runs: its GPUs x its wall time, its tree's CPU time."""

    WRITE_EVERY_S = 30.0

    def __init__(self, state, gpus, pid, ticks):
        self.base = (state.gpu_seconds or 0.0, state.cpu_seconds or 0.0)
        self.gpus, self.pid, self.ticks = gpus, pid, ticks
        self.started = self.written = time.monotonic()
        self.cpu = 0.0
        self.reaped_before = children_cpu_seconds()

    def due(self):
        return time.monotonic() - self.written >= self.WRITE_EVERY_S

    def figures(self, ended=False):
        """The run's totals now; `ended`: after the process was reaped, from the kernel's own count."""
        self.written = time.monotonic()
        cpu = children_cpu_seconds() - self.reaped_before if ended else tree_cpu_seconds(self.pid, self.ticks)
        self.cpu = max(self.cpu, cpu)
        return {
            "gpu_seconds": round(self.base[0] + self.gpus * (self.written - self.started), 3),
            "cpu_seconds": round(self.base[1] + self.cpu, 3),
        }


class _Month:
    """One month's ledger file as read so far: its lines by (run, launch, since), each counted once."""

    def __init__(self):
        self.offset = 0
        self.ino = None
        self.lines = {}

    def refresh(self, path):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self.__init__()
            return self
        if stat.st_ino != self.ino or stat.st_size < self.offset:
            self.__init__()
            self.ino = stat.st_ino
        if stat.st_size == self.offset:
            return self
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(stat.st_size - self.offset)
        whole = data.rfind(b"\n") + 1  # a line being appended right now is read next time
        for raw in data[:whole].splitlines():
            try:
                line = json.loads(raw)
                self.lines.setdefault((line["id"], line.get("launch"), line.get("since")), line)
            except (ValueError, KeyError, TypeError):
                log.warning("usage: skipped a damaged line of %s", path)
        self.offset += whole
        return self


class Ledger:
    def __init__(self, settings):
        self.root = settings.path("usage_dir")

    def _path(self, month):
        return os.path.join(self.root, f"{month}.jsonl")

    def append(self, state, kind):
        """Append what a run's ended attempt used; return the `accounted` it now reaches (or None)."""
        gpu, cpu = unaccounted(state)
        if gpu <= 0 and cpu <= 0:
            return None
        at = now_utc()
        line = {
            "at": at,
            "day": at[:10],
            "tenant": state.tenant,
            "kind": kind,
            "id": state.job_id,
            "launch": (state.launch or {}).get("id"),
            # With id and launch, the line's key: the figure the attempt started from.
            "since": (state.accounted or {}).get("gpu_seconds", 0.0),
            "gpu_seconds": round(gpu, 3),
            "cpu_seconds": round(cpu, 3),
        }
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self._path(at[:7]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return {name: getattr(state, name) or 0.0 for name in ("gpu_seconds", "cpu_seconds")}

    def lines(self, month):
        path = self._path(month)
        with _files_lock:  # one reader moves a month's offset at a time: no line read twice or skipped
            return list(_files.setdefault(path, _Month()).refresh(path).lines.values())

    def months(self):
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n[:-6] for n in names if n.endswith(".jsonl") and len(n) == 13)

    def gpu_hours_this_month(self, tenant, live_states):
        """GPU-hours `tenant` used this calendar month (UTC): the ledger's, plus its running runs'."""
        month = now_utc()[:7]
        seconds = sum(line["gpu_seconds"] for line in self.lines(month) if line.get("tenant") == tenant)
        seconds += sum(unaccounted(s)[0] for s in live_states if s.tenant == tenant)
        return seconds / 3600.0

    def totals(self, live_states):
        """{tenant: gpu_seconds} over the whole ledger and the runs going on (counters: never down)."""
        found = {}
        for month in self.months():
            for line in self.lines(month):
                found[line.get("tenant")] = found.get(line.get("tenant"), 0.0) + line["gpu_seconds"]
        for state in live_states:
            found[state.tenant] = found.get(state.tenant, 0.0) + unaccounted(state)[0]
        return found

    def report(self, start, end, tenant=None, live_states=()):
        """Usage per team and day between two dates (inclusive), and per team in all: GPU-hours,
        CPU-hours and the runs that used them. `tenant` (None: every team) limits it to one."""
        today = now_utc()[:10]
        rows = {}

        def add(key, gpu, cpu, run_id):
            row = rows.setdefault(key, {"gpu_seconds": 0.0, "cpu_seconds": 0.0, "runs": set()})
            row["gpu_seconds"] += gpu
            row["cpu_seconds"] += cpu
            row["runs"].add(run_id)

        def count(team, day, gpu, cpu, run_id):
            add((team, day), gpu, cpu, run_id)
            add((team, None), gpu, cpu, run_id)

        for month in self.months():
            if not (start[:7] <= month <= end[:7]):
                continue
            for line in self.lines(month):
                team = line.get("tenant")
                if start <= line["day"] <= end and tenant in (None, team):
                    count(team, line["day"], line["gpu_seconds"], line["cpu_seconds"], line["id"])
        if start <= today <= end:
            for state in live_states:
                gpu, cpu = unaccounted(state)
                if (gpu or cpu) and tenant in (None, state.tenant):
                    count(state.tenant, today, gpu, cpu, state.job_id)

        def shown(key, row):
            return {
                "tenant": key[0],
                **({"day": key[1]} if key[1] else {}),
                "gpu_hours": round(row["gpu_seconds"] / 3600.0, 4),
                "cpu_hours": round(row["cpu_seconds"] / 3600.0, 4),
                "runs": len(row["runs"]),
            }

        ordered = sorted(rows.items(), key=lambda item: (item[0][1] or "", str(item[0][0])))
        return {
            "from": start,
            "to": end,
            "tenants": [shown(key, row) for key, row in ordered if key[1] is None],
            "days": [shown(key, row) for key, row in ordered if key[1] is not None],
        }
