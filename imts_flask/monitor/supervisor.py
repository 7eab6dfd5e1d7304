"""A run's supervisor in its monitor process: the public context every kind's runner is handed.

The runner of a kind (jobs/runner.py, evaluations/runner.py, deployments/runner.py) says what the
run does; the supervisor does what every run needs around it:

    claim(launch_id)        make the launch this monitor's (only one monitor ever runs a launch)
    mark_running(**fields)  pending -> running, while the launch is still ours; None if it is not
    update(change)          change the record, only while the launch is ours
    start(argv, log_name)   start the run's process in its own group, its output appended to a log
    record_started(...)     record it, or stop it when the record cannot be written
    wait(proc, ticks, ...)  heartbeat, watch for a stop, measure what it uses, until it exits
    stop_requested()        a stop asked for by a signal or in the record, through any instance
    failure(log, rc, ...)   why a process failed, in words, with its log's last lines

SIGTERM, SIGINT and SIGHUP ask it to stop: the process group is terminated (SIGTERM, the grace
period, SIGKILL of survivors) and the runner records the run as stopped.
"""

import logging
import os
import re
import signal
import subprocess
import time

from ..errors import InsufficientStorage, Unavailable
from ..executors import HOST
from ..fsio import read_tail
from ..jobs.liveness import account
from ..llamafactory.environment import trainer_env
from ..procs import boot_id, start_ticks, terminate_tree
from ..runs.record import CHANGED, UNCHANGED, changed, setter
from ..state import JobStatus, now_utc
from ..tenancy.usage import Meter

log = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"^\w*(Error|Exception|error)\b.*|^.*Traceback")


def tail_lines(path, count):
    """The last `count` non-blank lines of a log, as a terminal would show them."""
    lines = [line for line in read_tail(path, 64 * 1024).splitlines() if line.strip()]
    # Progress bars redraw with carriage returns; keep what the terminal would show last.
    return [line.rsplit("\r", 1)[-1] for line in lines[-count:]]


def failure_reason(lines, fallback):
    """The last line of a log that reads as an error, or `fallback`."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()[:500]
    return fallback


def describe_exit(rc, what="llamafactory-cli"):
    """How a process ended, in words, and the name of the signal that killed it (or None)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"{what} was killed by signal {-rc} ({name})", name
    return f"{what} exited with code {rc}", None


class Supervisor:
    """The monitor of one run (a job, an evaluation, a deployment), in a process of its own."""

    def __init__(self, settings, run_id, store):
        self.settings = settings
        self.run_id = run_id
        self.store = store
        pid = os.getpid()
        # Who this monitor is, as the record names it: a launch is ours while record.monitor == me.
        self.me = {"pid": pid, "start_ticks": start_ticks(pid), "host": HOST, "boot": boot_id()}
        self.launch = None  # the claimed launch: its GPUs and Ray workers
        self.gpu_count = 0  # GPUs this run holds: its gpu_seconds grow by as many each second
        self.torchrun = False  # the trainer runs under torchrun (DeepSpeed)
        self.extra_env = {}  # for the run's process, besides its GPUs
        self.ending_early = False  # the runner's on_beat ended the run (patience, idleness)
        self._signalled = False
        self._looked = 0.0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        log.info("received signal %s: stopping the run's process", signum)
        self._signalled = True

    # -- the record ---------------------------------------------------------------------------

    def owned(self, change):
        """Wrap a change so that it applies only while this monitor owns the run's launch."""
        return lambda current: change(current) if current.monitor == self.me else UNCHANGED

    def update(self, change):
        """Change the run's record while its launch is ours; return the record as stored."""
        return self.store.update(self.run_id, self.owned(change))

    def read(self):
        return self.store.read(self.run_id)

    def claim(self, launch_id):
        """Make a pending run's launch `launch_id` this monitor's; return its record, or None when
        the run is not pending with that launch (another monitor has it, or it ended meanwhile)."""

        def claim(current):
            if current.status != JobStatus.PENDING.value or (current.launch or {}).get("id") != launch_id:
                return UNCHANGED
            current.monitor = self.me
            return CHANGED

        state = self.store.update(self.run_id, claim)
        if state.monitor != self.me:
            log.info("run is %s with launch %s, not %s: nothing to start",
                     state.status, (state.launch or {}).get("id"), launch_id)  # fmt: skip
            return None
        self.heartbeat()
        self.launch = state.launch
        self.gpu_count = len(self.launch.get("gpus") or []) or (state.gpus or 0)
        return state

    def mark_running(self, proc=None, ticks=None, details=None, **fields):
        """pending -> running with `fields`, while the launch is ours; return the record, or None
        when the run is no longer ours to run. With `proc` (the run's process, just started) the
        record names it, and it is stopped when the record cannot say so or the run is not ours;
        `details` go into the history event (as record.changed's)."""

        def running(current):
            if current.status != JobStatus.PENDING.value or current.monitor != self.me:
                return UNCHANGED
            current.set(status=JobStatus.RUNNING.value, started_at=current.started_at or now_utc(), **fields)
            if proc is not None:
                current.set(pid=proc.pid, trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid})
            return changed(**details) if details else CHANGED

        if proc is None:
            state = self.store.update(self.run_id, running)
        else:
            state = self.record_started(proc, ticks, running)
        if (
            state.status != JobStatus.RUNNING.value
            or state.monitor != self.me
            or (proc is not None and state.pid != proc.pid)
        ):
            log.info("the run became %s while starting: nothing to run", state.status)
            if proc is not None:
                terminate_tree(proc.pid, ticks, 0, popen=proc)
            return None
        return state

    @property
    def signalled(self):
        """Whether a signal (or the record, as the wait loop last read it) asked this run to stop."""
        return self._signalled

    def stop_requested(self):
        """Whether a stop was asked for: by a signal, or in the record (through any instance)."""
        if self._signalled:
            return True
        try:
            return bool(self.store.read(self.run_id).stop_requested_at)
        except Exception:  # a record being replaced: the next look will see it
            return False

    # -- the run's process --------------------------------------------------------------------

    def heartbeat(self):
        with open(self.store.path(self.run_id, self.store.HEARTBEAT), "w") as handle:
            handle.write(f"{time.time():.0f}\n")

    def start(self, argv, log_name):
        """Start the run's process in its own process group, its output appended to `log_name`."""
        log_path = self.store.path(self.run_id, log_name)
        launch = self.launch or {}  # an export has none: no GPU
        env = trainer_env(
            self.settings,
            launch.get("gpus"),
            self.torchrun,
            engine="gpus" in launch and launch["gpus"] is None,  # placed by Ray, with its GPUs
            ray_workers=launch.get("ray_workers") or 0,
        )
        with open(log_path, "ab") as out:
            out.write(f"=== {now_utc()} imts monitor (pid {os.getpid()}): {' '.join(argv)}\n".encode())
            out.flush()
            return subprocess.Popen(
                argv,
                cwd=self.store.path(self.run_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={**env, **self.extra_env},
            )

    def record_started(self, proc, ticks, change):
        """Record a process just started (a trainer, a phase, a server); if the record cannot be
        written (a full disk, a lock that times out) the process is stopped before the error goes
        on: a process its record does not name would run on unseen, and the run's next attempt
        would start a second one beside it (the chaos soak's full disk found two trainers)."""
        try:
            return self.store.update(self.run_id, change)
        except BaseException:
            log.error("could not record process %s: stopping it", proc.pid)
            terminate_tree(proc.pid, ticks, self.settings.stop_grace_s, popen=proc)
            raise

    def wait(self, proc, ticks, on_beat=None, on_tick=None):
        """Wait for the process, heartbeating; on a stop request terminate its tree. Return its code.

        `on_beat()` runs with each heartbeat; when it returns a reason the run is ended the same way.
        `on_tick()` runs on every look (5 a second), for what must be seen at once.
        """
        stopping = False
        last_beat = 0.0
        meter = Meter(self.store.read(self.run_id), self.gpu_count, proc.pid, ticks)
        while proc.poll() is None:
            self._look_for_stop()
            if (self._signalled or self.ending_early) and not stopping:
                stopping = True
                terminate_tree(proc.pid, ticks, self.settings.stop_grace_s, popen=proc)
                continue
            now = time.monotonic()
            if now - last_beat >= self.settings.heartbeat_s:
                self.heartbeat()
                reason = on_beat() if on_beat is not None else None
                if reason and not self.ending_early:
                    log.info("ending the run: %s", reason)
                    self.ending_early = True
                last_beat = now
            if on_tick is not None:
                on_tick()
            if meter.due():
                self._record_usage(meter.figures())
            time.sleep(0.2)
        self._record_usage(meter.figures(ended=True))
        self._account()
        return proc.returncode

    def failure(self, log_path, rc, fallback, what="llamafactory-cli"):
        """Why a process failed: (reason, signal name or None, the log's last lines)."""
        lines = tail_lines(log_path, self.settings.log_tail_lines)
        reason, signal_name = describe_exit(rc, what)
        return f"{reason}: {failure_reason(lines, fallback)}", signal_name, lines

    def _record_usage(self, figures):
        try:
            self.update(setter(**figures))
        except (InsufficientStorage, Unavailable) as exc:  # the next figures include these
            log.warning("usage figures could not be recorded (%s)", exc)

    def _account(self):
        """Put what this attempt used into the usage ledger, once (jobs/liveness.account)."""
        try:
            state = self.store.read(self.run_id)
        except (OSError, InsufficientStorage, Unavailable) as exc:
            log.warning("the usage ledger could not be written (%s); GET /usage lacks it", exc)
            return
        account(self.store, self.settings, state, self.me)

    def _look_for_stop(self):
        """Read the record once a second: a stop requested through any instance, on any host."""
        if self._signalled or time.monotonic() - self._looked < 1.0:
            return
        self._looked = time.monotonic()
        try:
            if self.store.read(self.run_id).stop_requested_at:
                log.info("a stop was requested in the run's record: stopping its process")
                self._signalled = True
        except Exception:  # a record being replaced, a lock: the next look will do
            log.debug("could not read the run's record", exc_info=True)
