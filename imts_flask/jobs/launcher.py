"""Queue, start, stop and reconcile the detached per-job monitor processes."""

import logging
import os
import secrets
import signal
import socket
import time

from ..errors import Conflict
from ..executors import HOST, make_executor
from ..executors.common import MONITOR_SETTINGS_ENV  # noqa: F401 (the monitor reads it from here
from ..procs import boot_id, is_same_process, terminate_tree
from ..state import JobStatus, creation_order, now_utc, parse_time
from .store import JobStore
from ..llamafactory.trainer_log import read_progress, run_complete

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "_scheduler"
# A stop not done this long after the grace period is forced through the executor.
STOP_FALLBACK_S = 30.0


def here(record):
    """Whether a process record (pid, start_ticks, host) is of this host, where its pid means something."""
    return (record or {}).get("host", HOST) == HOST


def record_completed(state, output_dir, reason):
    """Record a run found complete on disk whose monitor could not say so; return the history's details."""
    progress = read_progress(output_dir)
    state.update(status=JobStatus.COMPLETED.value, pid=None, final={**progress, "progress": 1.0})
    return {"reason": reason}


def monitor_alive(state):
    monitor = state.get("monitor") or {}
    return here(monitor) and is_same_process(monitor.get("pid"), monitor.get("start_ticks"))


def _queued(state):
    """A pending job that has not been handed a slot yet."""
    return state.get("status") == JobStatus.PENDING.value and not state.get("launch")


def _waiting(state):
    """A pending job whose monitor has not started it: queued here, or in the engine's queue."""
    return state.get("status") == JobStatus.PENDING.value and not (state.get("monitor") or {}).get("pid")


class Launcher:
    """Start queued jobs within capacity, stop jobs, and settle jobs whose monitor is gone."""

    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.executor = make_executor(settings, store)

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
        """Return how an unfinished job lost its monitor, or None while it has one (or never had).

        On the monitor's own host its pid and start time decide; on any host a heartbeat older than
        heartbeat_timeout_s, or the executor's word (Ray: the job ended without an outcome).
        """
        if state.get("broken") or JobStatus(state["status"]).is_terminal():
            return None
        monitor = state.get("monitor") or {}
        if not monitor.get("pid"):
            return None
        if here(monitor) and monitor.get("boot") and monitor["boot"] != boot_id():
            return "the job's monitor vanished with its host (the machine restarted)"
        if here(monitor) and not is_same_process(monitor.get("pid"), monitor.get("start_ticks")):
            return "the job's monitor process died without recording an outcome"
        age = self._heartbeat_age(state["job_id"])
        if age > self.settings.heartbeat_timeout_s:
            return f"the job's monitor has not heartbeaten for {age:.0f} s"
        if age > 3 * self.settings.heartbeat_s:  # a beat or two missed: ask the engine (a node died?)
            return self.executor.lost(state.get("launch"), claimed=True)
        return None

    def export_lost(self, export):
        """Tell whether a running export lost its monitor (dead, or never appeared in time)."""
        if (export or {}).get("status") != "running":
            return False
        monitor = export.get("monitor")
        if monitor and here(monitor):
            return not is_same_process(monitor.get("pid"), monitor.get("start_ticks"))
        launch = export.get("launch") or {"at": export.get("requested_at")}
        return self.executor.lost(launch, claimed=bool(monitor)) is not None

    def _launch_expired(self, state):
        """A slot was handed out but no monitor showed up (its spawner died, or the engine dropped it)."""
        if not state.get("launch") or not _waiting(state):
            return None
        return self.executor.lost(state["launch"], claimed=False)

    def reconcile(self, state):
        """Settle an unfinished job whose monitor is gone: kill what is left, then retry or record the end.

        A recorded outcome always wins. A job whose monitor died or stopped heartbeating (the host
        rebooted, kill -9, the OOM killer) has its processes killed first (the trainer gets its grace
        period, and may save a checkpoint); then it is queued again for its next attempt, which
        resumes from its last complete checkpoint, or, after `max_attempts`, it is failed "lost"
        (stopped, if a stop had been requested). A job handed a slot whose monitor never appeared
        goes back to the queue.
        """
        expired = self._launch_expired(state)
        if expired:
            launch_id = state["launch"]["id"]

            def requeue(current):
                if (current.get("launch") or {}).get("id") != launch_id or not _waiting(current):
                    return False
                log.warning(
                    "job %s: launch %s is gone (%s); queued again", current["job_id"], launch_id, expired
                )
                current["launch"] = None

            state = self.store.update(state["job_id"], requeue)
        else:
            loss = self._loss(state)
            if loss is None:
                self._force_stop_if_overdue(state)
                return state
            monitor = state.get("monitor")
            # The first worker to see the loss writes why before it kills anything: a worker that
            # then finds the monitor dead (killed for its silence) settles it with the first cause.
            state = self.store.update(state["job_id"], lambda current: _note_loss(current, monitor, loss))
            if (state.get("lost") or {}).get("monitor") != monitor:
                return state  # settled meanwhile
            loss = state["lost"]["reason"]
            killed = self._kill(state)
            state = self.store.update(
                state["job_id"], lambda current: self._settle_lost(current, monitor, loss, killed)
            )
        if _queued(state):
            self.schedule()  # queued again: it may have a slot at once (schedule reconciles nothing more)
        return state

    def _kill(self, state):
        """Kill what is left of a job's processes: on this host by pid, anywhere through the executor.

        Outside the lock: the grace period may take seconds; two workers killing twice is harmless.
        The trainer first, with its grace period (it may save a checkpoint); then a hung monitor.
        """
        trainer, monitor = state.get("trainer") or {}, state.get("monitor") or {}
        killed = 0
        if here(trainer):
            killed += terminate_tree(
                trainer.get("pid"), trainer.get("start_ticks"), self.settings.stop_grace_s
            )
        if here(monitor):
            killed += terminate_tree(monitor.get("pid"), monitor.get("start_ticks"), 0)
        self.executor.stop(state.get("launch"))
        return killed

    def _settle_lost(self, state, monitor, loss, killed):
        if JobStatus(state["status"]).is_terminal() or state.get("monitor") != monitor:
            return False  # it recorded an outcome meanwhile, or another worker settled it
        attempt = state.get("attempt") or 1
        limit = state.get("max_attempts") or self.settings.max_attempts
        state.update(pid=None, trainer=None)
        state.pop("lost", None)  # its cause goes into the history entry
        output_dir = (state.get("paths") or {}).get("output_dir") or ""
        if run_complete(output_dir):
            # The trainer had run to its end and saved its results: a new attempt would train
            # past the plan (85 of 84) and fail. The job is complete, whoever was watching it.
            details = record_completed(state, output_dir, f"completed: its trainer had finished; {loss}")
            log.warning("job %s: %s, after its trainer finished; now completed", state["job_id"], loss)
            return details
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

    def _force_stop_if_overdue(self, state):
        """The fallback of a stop: a monitor that has not finished well after its grace period is stopped
        through the executor (Ray's stop_job) and, on its own host, by killing its process trees."""
        asked = parse_time(state.get("stop_requested_at"))
        overdue = self.settings.stop_grace_s + STOP_FALLBACK_S
        if (
            asked is None
            or state.get("status") != JobStatus.RUNNING.value
            or state.get("stop_forced_at")
            or time.time() - asked.timestamp() < overdue
        ):
            return
        updated = self.store.update(
            state["job_id"],
            lambda s: False if s.get("stop_forced_at") else s.update(stop_forced_at=now_utc()),
        )
        if updated.get("stop_forced_at") and updated["status"] == JobStatus.RUNNING.value:
            log.warning(
                "job %s: its monitor did not stop within %.0f s; forcing it", state["job_id"], overdue
            )
            self._kill(updated)

    # -- queue -----------------------------------------------------------------------------

    def schedule(self):
        """Start queued jobs, oldest first, while a slot and enough free GPUs remain.

        Under one global lock, so two workers never hand out the same slot or GPU; the monitors
        are spawned after the lock is released. An executor that queues jobs itself (Ray) gets
        every queued job at once, with the GPUs it asks for: the engine places them.
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
                launch = {"id": secrets.token_hex(4), "at": now_utc()}
                if self.executor.queues_jobs:
                    launch.update(gpus=None, num_gpus=need)  # the engine places it and picks its GPUs
                    if self.settings.ray_gpus_per_node and need > self.settings.ray_gpus_per_node:
                        # More GPUs than a node has: LLaMA Factory's Ray workers claim them across nodes.
                        launch.update(num_gpus=0, ray_workers=need)
                elif slots <= 0 or need > len(free_gpus):
                    break  # first come, first served: the head of the queue waits for its GPUs
                else:
                    launch["gpus"], free_gpus = free_gpus[:need], free_gpus[need:]
                updated = self.store.update(state["job_id"], _hand_out(launch))
                if (updated.get("launch") or {}).get("id") == launch["id"]:
                    slots -= 1
                    to_start.append((state["job_id"], launch))
        for job_id, launch in to_start:
            self._start(job_id, launch)
        return [job_id for job_id, _ in to_start]

    def queue_position(self, job_id):
        """Return a waiting job's 1-based place in the queue (ours, or the engine's), else None."""
        queued = _waiting if self.executor.queues_jobs else _queued
        waiting = sorted(filter(queued, self.store.active_states()), key=creation_order)
        return next((i + 1 for i, s in enumerate(waiting) if s["job_id"] == job_id), None)

    # -- starting --------------------------------------------------------------------------

    def _start(self, job_id, launch):
        """Start the monitor of a job handed a slot; a failure to start marks the job failed.

        The monitor records itself when it claims the launch; one that never does (a worker that
        died before spawning it, an engine that dropped it) leaves the launch to expire, and the job
        is queued again. An engine that cannot be reached now (start returns None) is retried so.
        """
        try:
            started = self.executor.start(job_id, ["train", job_id, launch["id"]], launch)
        except OSError as exc:
            log.exception("job %s: could not start its monitor", job_id)
            error = f"could not start the job's monitor: {exc}"
            self.store.update(job_id, lambda s: s.update(status=JobStatus.FAILED.value, error=error))
            return
        if started:
            log.info("job %s: monitor started (%s)", job_id, started)
        else:
            log.warning("job %s: its monitor could not be started now; the launch will be retried", job_id)

    def start_export(self, job_id):
        """Start the export monitor of a job whose export record was just set to running."""
        launch = {"id": secrets.token_hex(4), "at": now_utc()}
        launch["submission_id"] = f"{job_id}-export-{launch['id']}"

        def record(state):
            if (state.get("export") or {}).get("status") != "running":
                return False
            state["export"]["launch"] = launch

        self.store.update(job_id, record)
        self.executor.start(job_id, ["export", job_id], launch)

    # -- stopping --------------------------------------------------------------------------

    def request_stop(self, job_id):
        """Record a stop request and tell the monitor; return the state after the request.

        The monitor, wherever it runs, reads the request from the job's record within a second; on
        this host it also gets SIGTERM at once. A job still in the engine's queue is withdrawn.
        """

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

        before = self.store.read(job_id)
        state = self.store.update(job_id, mark)
        if state["status"] == JobStatus.RUNNING.value:
            if monitor_alive(state):
                os.kill(state["monitor"]["pid"], signal.SIGTERM)
            elif here(state.get("monitor")):
                state = self.reconcile(state)
        elif (
            before["status"] == JobStatus.PENDING.value and before.get("launch") and self.executor.queues_jobs
        ):
            self.executor.stop(before["launch"])  # free its place in the engine's queue
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


def _note_loss(state, monitor, loss):
    """Write why a job's monitor is lost (the first cause seen) before it is killed."""
    if JobStatus(state["status"]).is_terminal() or state.get("monitor") != monitor:
        return False
    if (state.get("lost") or {}).get("monitor") == monitor:
        return False  # another worker saw it first: its cause stands
    state["lost"] = {"reason": loss, "at": now_utc(), "monitor": monitor}
    return None


def _hand_out(launch):
    def change(state):
        if not _queued(state):
            return False
        if launch.get("gpus", []) is None:
            # The engine's name for the launch: the job's id the first time (`ray job status
            # train_xxx` finds it), then one per launch, since an engine keeps names it has seen.
            count = state.get("engine_launches") or 0
            launch["submission_id"] = state["job_id"] if not count else f"{state['job_id']}-{launch['id']}"
            state["engine_launches"] = count + 1
        state["launch"] = launch

    return change


def _gpus_of(state):
    return (state.get("launch") or {}).get("gpus") or []
