"""Start, stop and reconcile the detached per-job monitor processes."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time

from .errors import Conflict
from .procs import is_same_process, start_ticks, terminate_tree
from .state import JobStatus, now_utc
from .store import JobStore

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Variables the trainer may inherit from the service; everything else is dropped.
_PASS_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HF_HOME",
    "HF_HUB_CACHE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
MONITOR_SETTINGS_ENV = "IMTS_MONITOR_SETTINGS"


def trainer_env(settings):
    """Build the trainer's environment from an allowlist plus the offline switches."""
    env = {key: os.environ[key] for key in _PASS_ENV if key in os.environ}
    bin_dir = os.path.dirname(os.path.abspath(settings.llamafactory_cli))
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "/usr/bin:/bin")  # torchrun is looked up on PATH
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=os.path.join(settings.path("cache_dir"), "datasets"),
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
        USE_RAY="0",
    )
    return env


def monitor_alive(state):
    monitor = state.get("monitor") or {}
    return is_same_process(monitor.get("pid"), monitor.get("start_ticks"))


def _monitor_gone(state):
    """Tell whether a job that is not finished has lost the monitor that was started for it."""
    if state.get("broken") or JobStatus(state["status"]).is_terminal():
        return False
    return bool((state.get("monitor") or {}).get("pid")) and not monitor_alive(state)


class Launcher:
    """Start monitors for jobs and exports, stop jobs, and mark jobs whose monitor died as lost."""

    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store

    # -- starting --------------------------------------------------------------------------

    def _spawn(self, job_id, action):
        """Start `python -m imts_flask.monitor <action> <job_id>` in its own session; return its pid."""
        env = dict(os.environ)
        env["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env[MONITOR_SETTINGS_ENV] = json.dumps(dataclasses.asdict(self.settings))
        with open(self.store.path(job_id, JobStore.MONITOR_LOG), "ab") as out:
            proc = subprocess.Popen(
                [self.settings.python, "-m", "imts_flask.monitor", action, job_id],
                cwd=self.store.path(job_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        return proc.pid, start_ticks(proc.pid)

    def start(self, job_id):
        """Start the monitor of a pending job; a failure to start marks the job failed."""
        try:
            pid, ticks = self._spawn(job_id, "train")
        except OSError as exc:
            log.exception("job %s: could not start its monitor", job_id)
            error = f"could not start the job's monitor: {exc}"
            self.store.update(job_id, lambda s: s.update(status=JobStatus.FAILED.value, error=error))
            return

        def record(state):
            if state["status"] != JobStatus.PENDING.value or (state.get("monitor") or {}).get("pid"):
                return False  # the monitor got there first, or the job was stopped
            state["monitor"] = {"pid": pid, "start_ticks": ticks}

        self.store.update(job_id, record)
        log.info("job %s: monitor started (pid %s)", job_id, pid)

    def start_export(self, job_id):
        self._spawn(job_id, "export")

    # -- stopping --------------------------------------------------------------------------

    def request_stop(self, job_id):
        """Record a stop request and tell the monitor; return the state after the request."""

        def mark(state):
            status = JobStatus(state["status"])
            if status in (JobStatus.COMPLETED, JobStatus.FAILED):
                raise Conflict(
                    f"job {job_id} is already {status.value}; only pending or running jobs can be stopped",
                    extra={"job_status": status.value},
                )
            if status is JobStatus.STOPPED or state.get("stop_requested_at"):
                return False
            state["stop_requested_at"] = now_utc()
            if status is JobStatus.PENDING:
                state["status"] = JobStatus.STOPPED.value
                state["error"] = None

        state = self.store.update(job_id, mark)
        if state["status"] == JobStatus.RUNNING.value:
            monitor = state.get("monitor") or {}
            if monitor_alive(state):
                os.kill(monitor["pid"], signal.SIGTERM)
            else:
                state = self.reconcile(state)
        return state

    # -- reconciling -----------------------------------------------------------------------

    def reconcile(self, state):
        """Settle a non-terminal job whose monitor is gone: kill its trainer tree, record the end.

        A recorded outcome always wins; a job whose monitor (pid and start time) is gone becomes
        failed "lost", or stopped if a stop had been requested.
        """
        if not _monitor_gone(state):
            return state
        trainer = state.get("trainer") or {}
        # Outside the lock: the grace period may take seconds. Two workers killing twice is harmless.
        killed = terminate_tree(trainer.get("pid"), trainer.get("start_ticks"), self.settings.stop_grace_s)

        def settle(current):
            if not _monitor_gone(current):
                return False
            current["pid"] = None
            if current.get("stop_requested_at"):
                current["status"] = JobStatus.STOPPED.value
            else:
                current["status"] = JobStatus.FAILED.value
                current["reason"] = "lost"
                current["error"] = "lost: the job's monitor process died without recording an outcome"
            log.warning(
                "job %s: monitor gone, marked %s (%d processes killed)",
                current["job_id"],
                current["status"],
                killed,
            )

        return self.store.update(state["job_id"], settle)

    def wait_terminal(self, job_id, timeout_s, done=None):
        """Poll a job until `done(state)` (default: a terminal status) or the timeout; return the state."""
        done = done or (lambda s: JobStatus(s["status"]).is_terminal())
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.reconcile(self.store.read(job_id))
            if done(state) or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)
