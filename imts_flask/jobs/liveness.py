"""Whether a job's monitor lives, and settling a job whose monitor is gone.

Every worker judges the same way: on the monitor's own host its pid and start time (and this boot
of the machine) decide; on any host, a heartbeat older than heartbeat_timeout_s, or the executor's
word (Ray: the submission ended without an outcome). Settling runs in the scheduler's pass and in
housekeeping, never in a read: it kills what is left of the job's processes, then records the
end, or queues the job again for its next attempt.
"""

import logging
import os
import time

from ..errors import ServiceError, Unavailable
from ..executors import HOST
from ..llamafactory.trainer_log import read_progress, run_complete
from ..llamafactory.trainer_state import validation_figures
from ..procs import boot_id, is_same_process, terminate_tree
from ..runs import KINDS, queue
from ..runs.record import CHANGED, UNCHANGED, changed, setter
from ..state import JobStatus, now_utc, parse_time
from ..tenancy.usage import Ledger
from . import preemption
from .store import JobStore

log = logging.getLogger(__name__)

# A stop not done this long after the grace period is forced through the executor.
STOP_FALLBACK_S = 30.0


def here(process):
    """Whether a process record (pid, start_ticks, host) is of this host, where its pid means something."""
    return (process or {}).get("host", HOST) == HOST


def monitor_alive(state):
    monitor = state.monitor or {}
    return here(monitor) and is_same_process(monitor.get("pid"), monitor.get("start_ticks"))


def account(store, settings, state, monitor):
    """Put what `monitor`'s ended attempt used into the usage ledger, once, and mark it `accounted`.

    Called by the monitor as its attempt ends, and here for a lost monitor (with the figures it
    last recorded). Nothing is done for an attempt the record no longer says is `monitor`'s; a
    failure is logged: GET /usage lacks the attempt, the job loses nothing.
    """
    try:
        if state.monitor != monitor:
            return
        accounted = Ledger(settings).append(state, state.kind or "job")
        if accounted:
            mark = setter(accounted=accounted)
            store.update(
                state.job_id,
                lambda current: mark(current) if current.monitor == monitor else UNCHANGED,
            )
    except (OSError, ServiceError) as exc:
        log.warning("%s: the usage ledger could not be written (%s)", state.job_id, exc)


def record_completed(state, output_dir, reason):
    """Record a run found complete on disk whose monitor could not say so."""
    progress = read_progress(output_dir)
    state.set(status=JobStatus.COMPLETED.value, pid=None, final={**progress, "progress": 1.0})
    if state.kind is None and state.validation:
        state.set({k: v for k, v in validation_figures(output_dir).items() if v is not None})
    return changed(reason=reason)


class Liveness:
    def __init__(self, settings, store: JobStore, executor):
        self.settings = settings
        self.store = store
        self.executor = executor

    def _heartbeat_age(self, job_id):
        try:
            return time.time() - os.stat(self.store.path(job_id, JobStore.HEARTBEAT)).st_mtime
        except FileNotFoundError:
            return 0.0

    def loss(self, state):
        """How an unfinished job lost its monitor (died, stopped heartbeating, vanished with its host),
        or None while it has one, or never had one."""
        if state.broken or JobStatus(state.status).is_terminal():
            return None
        monitor = state.monitor or {}
        if not monitor.get("pid"):
            return None
        if here(monitor) and monitor.get("boot") and monitor["boot"] != boot_id():
            return "the job's monitor vanished with its host (the machine restarted)"
        if here(monitor) and not is_same_process(monitor.get("pid"), monitor.get("start_ticks")):
            return "the job's monitor process died without recording an outcome"
        age = self._heartbeat_age(state.job_id)
        if age > self.settings.heartbeat_timeout_s:
            return f"the job's monitor has not heartbeaten for {age:.0f} s"
        if age > 3 * self.settings.heartbeat_s:  # a beat or two missed: ask the engine (a node died?)
            return self.executor.lost(state.launch, claimed=True)
        return None

    def export_lost(self, export):
        """Whether a running export lost its monitor (dead, or never appeared in time)."""
        if (export or {}).get("status") != "running":
            return False
        monitor = export.get("monitor")
        if monitor and here(monitor):
            return not is_same_process(monitor.get("pid"), monitor.get("start_ticks"))
        launch = export.get("launch") or {"at": export.get("requested_at")}
        return self.executor.lost(launch, claimed=bool(monitor)) is not None

    def reconcile(self, state):
        """Settle an unfinished job whose monitor is gone; return its record as it is now.

        A recorded outcome always wins. A job whose monitor died or stopped heartbeating (the host
        rebooted, kill -9, the OOM killer) has its processes killed first (the trainer gets its grace
        period, and may save a checkpoint); then it is complete if its run had finished, queued again
        for its next attempt (which resumes from its last complete checkpoint), or after
        `max_attempts` failed "lost" (stopped, if a stop had been requested). A job handed a slot
        whose monitor never appeared goes back to the queue. The caller schedules what this queues.
        """
        expired = self._launch_expired(state)
        if expired:
            return self.store.update(state.job_id, _requeue(state.launch["id"], expired))
        loss = self.loss(state)
        if loss is None:
            self._force_stop_if_overdue(state)
            return state
        monitor = state.monitor
        # The first worker to see the loss writes why before it kills anything: a worker that then
        # finds the monitor dead (killed for its silence) settles it with that first cause.
        killed = 0
        try:
            state = self.store.update(state.job_id, lambda current: _note_loss(current, monitor, loss))
        except Unavailable:
            # The job's lock is held, and its lost monitor is the one holding it: frozen (SIGSTOP, a
            # hung disk) inside a write of the record. Only its death frees the lock.
            log.warning("job %s: %s, and its lock is held: killing its processes first", state.job_id, loss)
            killed = self.kill(state)
            state = self.store.update(state.job_id, lambda current: _note_loss(current, monitor, loss))
        if (state.lost or {}).get("monitor") != monitor:
            return state  # settled meanwhile
        loss = state.lost["reason"]
        killed += self.kill(state)
        account(self.store, self.settings, state, monitor)
        return self.store.update(
            state.job_id, lambda current: self._settle_lost(current, monitor, loss, killed)
        )

    def _launch_expired(self, state):
        """A slot was handed out but no monitor showed up (its spawner died, or the engine dropped it)."""
        if not state.launch or not queue.waiting(state):
            return None
        return self.executor.lost(state.launch, claimed=False)

    def kill(self, state):
        """Kill what is left of a job's processes: on this host by pid, anywhere through the executor.

        Outside the lock: the grace period may take seconds; two workers killing twice is harmless.
        The trainer first, with its grace period (it may save a checkpoint); then a hung monitor.
        """
        trainer, monitor = state.trainer or {}, state.monitor or {}
        killed = 0
        if here(trainer):
            killed += terminate_tree(
                trainer.get("pid"), trainer.get("start_ticks"), self.settings.stop_grace_s
            )
        if here(monitor):
            killed += terminate_tree(monitor.get("pid"), monitor.get("start_ticks"), 0)
        self.executor.stop(state.launch)
        return killed

    def _settle_lost(self, state, monitor, loss, killed):
        if JobStatus(state.status).is_terminal() or state.monitor != monitor:
            return UNCHANGED  # it recorded an outcome meanwhile, or another worker settled it
        attempt = state.attempt or 1
        limit = state.max_attempts or self.settings.max_attempts
        state.set(pid=None, trainer=None)
        state.lost = None  # its cause goes into the history entry
        output_dir = state.path("output_dir") or ""
        if run_complete(output_dir):
            # The trainer had run to its end and saved its results: a new attempt would train past
            # the plan (85 of 84) and fail. The job is complete, whoever was watching it.
            log.warning("job %s: %s, after its trainer finished; now completed", state.job_id, loss)
            return record_completed(state, output_dir, f"completed: its trainer had finished; {loss}")
        if preemption.requeue(state):
            reason = f"{preemption.reason(state)}; {loss}"
        elif state.stop_requested_at:
            state.status = JobStatus.STOPPED.value
            reason = f"stopped; {loss}"
        elif attempt < limit:
            # Queued again as it was: its place in the queue is its creation time, so it goes first.
            state.set(status=JobStatus.PENDING.value, launch=None, monitor=None, attempt=attempt + 1)
            reason = f"lost: {loss}; attempt {attempt + 1} of {limit} {KINDS.next_attempt(state)}"
        else:
            state.set(status=JobStatus.FAILED.value, reason="lost")
            state.error = f"lost: {loss}" + (f" (attempt {attempt} of {limit})" if limit > 1 else "")
            reason = state.error
        log.warning("job %s: %s; now %s (%d processes killed)", state.job_id, loss, state.status, killed)
        return changed(reason=reason)

    def _force_stop_if_overdue(self, state):
        """The fallback of a stop: a monitor that has not finished well after its grace period is stopped
        through the executor (Ray's stop_job) and, on its own host, by killing its process trees."""
        asked = parse_time(state.stop_requested_at)
        overdue = self.settings.stop_grace_s + STOP_FALLBACK_S
        if (
            asked is None
            or state.status != JobStatus.RUNNING.value
            or state.stop_forced_at
            or time.time() - asked.timestamp() < overdue
        ):
            return
        updated = self.store.update(state.job_id, _force_once)
        if updated.stop_forced_at and updated.status == JobStatus.RUNNING.value:
            log.warning("job %s: its monitor did not stop within %.0f s; forcing it", state.job_id, overdue)
            self.kill(updated)


def _requeue(launch_id, why):
    def change(state):
        if (state.launch or {}).get("id") != launch_id or not queue.waiting(state):
            return UNCHANGED
        log.warning("job %s: launch %s is gone (%s); queued again", state.job_id, launch_id, why)
        state.launch = None
        return CHANGED

    return change


def _note_loss(state, monitor, loss):
    """Write why a job's monitor is lost (the first cause seen) before it is killed."""
    if JobStatus(state.status).is_terminal() or state.monitor != monitor:
        return UNCHANGED
    if (state.lost or {}).get("monitor") == monitor:
        return UNCHANGED  # another worker saw it first: its cause stands
    state.lost = {"reason": loss, "at": now_utc(), "monitor": monitor}
    return CHANGED


def _force_once(state):
    if state.stop_forced_at:
        return UNCHANGED
    state.stop_forced_at = now_utc()
    return CHANGED
