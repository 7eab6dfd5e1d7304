"""Queue, start, stop and reconcile the detached per-job monitor processes."""

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time

from .errors import Conflict
from .procs import is_same_process, terminate_tree
from .state import JobStatus, creation_order, now_utc, parse_time
from .store import JobStore

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULER_LOCK = "_scheduler"

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
    "NVIDIA_VISIBLE_DEVICES",
    "HF_HOME",
    "HF_HUB_CACHE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
MONITOR_SETTINGS_ENV = "IMTS_MONITOR_SETTINGS"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trainer_env(settings, gpu_ids=None, torchrun=False):
    """Build the trainer's environment from an allowlist, the offline switches and its GPUs.

    `gpu_ids` None means "no GPU handed out": on a service with GPUs the trainer then sees none.
    `torchrun` forces LLaMA Factory's torchrun launch (DeepSpeed needs it even on one GPU).
    """
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
    if settings.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids or [])
    elif "OMP_NUM_THREADS" not in env:
        # Training on CPUs: each job gets its share of the cores. Left to torch, every job starts a
        # thread per core, and jobs sharing the cores slowed down 30-fold here.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.capacity))
    if torchrun or (gpu_ids and len(gpu_ids) > 1):
        # LLaMA Factory's torchrun launch, one process per GPU, on a port of its own.
        env.update(
            FORCE_TORCHRUN="1", NPROC_PER_NODE=str(max(1, len(gpu_ids or []))), MASTER_PORT=str(free_port())
        )
    return env


def monitor_alive(state):
    monitor = state.get("monitor") or {}
    return is_same_process(monitor.get("pid"), monitor.get("start_ticks"))


def _queued(state):
    """A pending job that has not been handed a slot yet."""
    return state.get("status") == JobStatus.PENDING.value and not state.get("launch")


class Launcher:
    """Start queued jobs within capacity, stop jobs, and settle jobs whose monitor is gone."""

    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store

    # -- liveness --------------------------------------------------------------------------

    def _heartbeat_age(self, job_id):
        try:
            return time.time() - os.stat(self.store.path(job_id, JobStore.HEARTBEAT)).st_mtime
        except FileNotFoundError:
            return 0.0

    def monitor_gone(self, state):
        """Tell whether an unfinished job lost its monitor: dead (pid and start time) or silent."""
        return self._loss(state) is not None

    def _loss(self, state):
        """Return how an unfinished job lost its monitor, or None while it has one (or never had)."""
        if state.get("broken") or JobStatus(state["status"]).is_terminal():
            return None
        if not (state.get("monitor") or {}).get("pid"):
            return None
        if not monitor_alive(state):
            return "the job's monitor process died without recording an outcome"
        age = self._heartbeat_age(state["job_id"])
        if age > self.settings.heartbeat_timeout_s:
            return f"the job's monitor has not heartbeaten for {age:.0f} s"
        return None

    def export_lost(self, export):
        """Tell whether a running export lost its monitor (dead, or never appeared in time)."""
        if (export or {}).get("status") != "running":
            return False
        monitor = export.get("monitor")
        if monitor:
            return not is_same_process(monitor.get("pid"), monitor.get("start_ticks"))
        at = parse_time(export.get("requested_at"))
        return at is not None and time.time() - at.timestamp() > self.settings.launch_timeout_s

    def _launch_expired(self, state):
        """A slot was handed out but no monitor showed up in time (its spawner died)."""
        launch = state.get("launch") or {}
        if (
            state.get("status") != JobStatus.PENDING.value
            or not launch
            or (state.get("monitor") or {}).get("pid")
        ):
            return False
        at = parse_time(launch.get("at"))
        return at is not None and time.time() - at.timestamp() > self.settings.launch_timeout_s

    def reconcile(self, state):
        """Settle an unfinished job whose monitor is gone: kill what is left, then retry or record the end.

        A recorded outcome always wins. A job whose monitor died or stopped heartbeating (the host
        rebooted, kill -9, the OOM killer) has its processes killed first (the trainer gets its grace
        period, and may save a checkpoint); then it is queued again for its next attempt, which
        resumes from its last complete checkpoint, or, after `max_attempts`, it is failed "lost"
        (stopped, if a stop had been requested). A job handed a slot whose monitor never appeared
        goes back to the queue.
        """
        if self._launch_expired(state):

            def requeue(current):
                if not self._launch_expired(current):
                    return False
                log.warning(
                    "job %s: no monitor appeared for launch %s; queued again",
                    current["job_id"],
                    current["launch"]["id"],
                )
                current["launch"] = None

            state = self.store.update(state["job_id"], requeue)
        elif self.monitor_gone(state):
            trainer = state.get("trainer") or {}
            monitor = state.get("monitor") or {}
            # Outside the lock: the grace period may take seconds. Two workers killing twice is harmless.
            # The trainer first, with its grace period (it may save a checkpoint); then a hung monitor.
            killed = terminate_tree(
                trainer.get("pid"), trainer.get("start_ticks"), self.settings.stop_grace_s
            )
            killed += terminate_tree(monitor.get("pid"), monitor.get("start_ticks"), 0)
            state = self.store.update(state["job_id"], lambda current: self._settle_lost(current, killed))
        else:
            return state
        if _queued(state):
            self.schedule()  # queued again: it may have a slot at once (schedule reconciles nothing more)
        return state

    def _settle_lost(self, state, killed):
        loss = self._loss(state)
        if loss is None:
            return False  # another worker settled it, or the monitor came back
        attempt = state.get("attempt") or 1
        limit = state.get("max_attempts") or self.settings.max_attempts
        state.update(pid=None, trainer=None)
        if state.get("stop_requested_at"):
            state["status"] = JobStatus.STOPPED.value
            details = {"reason": f"stopped; {loss}"}
        elif attempt < limit:
            # Queued again as it was: its place in the queue is its creation time, so it goes first.
            state.update(status=JobStatus.PENDING.value, launch=None, monitor=None, attempt=attempt + 1)
            details = {"reason": f"lost: {loss}; attempt {attempt + 1} of {limit} resumes from a checkpoint"}
        else:
            state.update(status=JobStatus.FAILED.value, reason="lost")
            state["error"] = f"lost: {loss}" + (f" (attempt {attempt} of {limit})" if limit > 1 else "")
            details = {"reason": state["error"]}
        log.warning(
            "job %s: %s; now %s (%d processes killed)", state["job_id"], loss, state["status"], killed
        )
        return details

    # -- queue -----------------------------------------------------------------------------

    def schedule(self):
        """Start queued jobs, oldest first, while a slot and enough free GPUs remain.

        Under one global lock, so two workers never hand out the same slot or GPU; the monitors
        are spawned after the lock is released.
        """
        states = [self.reconcile(s) for s in self.store.active_states()]
        to_start = []
        with self.store.lock(SCHEDULER_LOCK):
            states = self.store.active_states()
            holding = [s for s in states if not _queued(s)]
            free_gpus = [
                g for g in self.settings.gpu_ids if g not in {g for s in holding for g in _gpus_of(s)}
            ]
            slots = self.settings.capacity - len(holding)
            for state in sorted(filter(_queued, states), key=creation_order):
                need = state.get("gpus") or 0
                if slots <= 0 or need > len(free_gpus):
                    break  # first come, first served: the head of the queue waits for its GPUs
                gpu_ids, free_gpus = free_gpus[:need], free_gpus[need:]
                launch = {"id": secrets.token_hex(4), "gpus": gpu_ids, "at": now_utc()}
                updated = self.store.update(state["job_id"], _hand_out(launch))
                if (updated.get("launch") or {}).get("id") == launch["id"]:
                    slots -= 1
                    to_start.append((state["job_id"], launch["id"]))
        for job_id, launch_id in to_start:
            self._start(job_id, launch_id)
        return [job_id for job_id, _ in to_start]

    def queue_position(self, job_id):
        """Return a queued job's 1-based place in the queue, or None if it is not queued."""
        queued = sorted(filter(_queued, self.store.active_states()), key=creation_order)
        return next((i + 1 for i, s in enumerate(queued) if s["job_id"] == job_id), None)

    # -- starting --------------------------------------------------------------------------

    def _spawn(self, job_id, *args):
        """Start `python -m imts_flask.monitor <args>` in its own session; return its pid."""
        env = dict(os.environ)
        env["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env[MONITOR_SETTINGS_ENV] = json.dumps(dataclasses.asdict(self.settings))
        with open(self.store.path(job_id, JobStore.MONITOR_LOG), "ab") as out:
            proc = subprocess.Popen(
                [self.settings.python, "-m", "imts_flask.monitor", *args],
                cwd=self.store.path(job_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        return proc.pid

    def _start(self, job_id, launch_id):
        """Start the monitor of a job handed a slot; a failure to start marks the job failed.

        The monitor records itself when it claims the launch; one that never does (a worker that
        died before spawning it) leaves the launch to expire and the job is queued again.
        """
        try:
            pid = self._spawn(job_id, "train", job_id, launch_id)
        except OSError as exc:
            log.exception("job %s: could not start its monitor", job_id)
            error = f"could not start the job's monitor: {exc}"
            self.store.update(job_id, lambda s: s.update(status=JobStatus.FAILED.value, error=error))
            return
        log.info("job %s: monitor started (pid %s)", job_id, pid)

    def start_export(self, job_id):
        self._spawn(job_id, "export", job_id)

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
                # Never started, or its monitor is starting: the monitor sees this and stands down.
                state["status"] = JobStatus.STOPPED.value

        state = self.store.update(job_id, mark)
        if state["status"] == JobStatus.RUNNING.value:
            if monitor_alive(state):
                os.kill(state["monitor"]["pid"], signal.SIGTERM)
            else:
                state = self.reconcile(state)
        return state

    def wait_for(self, job_id, timeout_s, done=None):
        """Poll a job until `done(state)` (default: a terminal status) or the timeout; return the state."""
        done = done or (lambda s: JobStatus(s["status"]).is_terminal())
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.reconcile(self.store.read(job_id))
            if done(state) or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)


def _hand_out(launch):
    def change(state):
        if not _queued(state):
            return False
        state["launch"] = launch

    return change


def _gpus_of(state):
    return (state.get("launch") or {}).get("gpus") or []
