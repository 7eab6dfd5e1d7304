"""What the service asks of running jobs: schedule them, stop one, export one, wait for one.

It holds the executor (where monitors run), the liveness checks and the scheduler, and is the one
place the service reaches them through. Nothing here runs on a read: a stop or an export is a
change a client asked for, and the scheduler runs on events and in housekeeping.
"""

import os
import secrets
import signal
import time

from ..errors import Conflict
from ..executors import make_executor
from ..runs.record import CHANGED, UNCHANGED
from ..state import JobStatus, now_utc
from .liveness import Liveness, here, monitor_alive
from .scheduler import Scheduler
from .store import JobStore


class Launcher:
    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.executor = make_executor(settings)
        self.liveness = Liveness(settings, store, self.executor)
        self.scheduler = Scheduler(settings, store, self.executor, self.liveness)

    def schedule(self):
        """A scheduler pass: settle lost jobs, start queued ones that fit; the ids started."""
        return self.scheduler.schedule()

    def queue_position(self, job_id):
        return self.scheduler.queue_position(job_id)

    def waiting_for(self, state):
        return self.scheduler.waiting_for(state)

    def export_lost(self, export):
        return self.liveness.export_lost(export)

    # -- exporting --------------------------------------------------------------------------

    def start_export(self, job_id):
        """Start the export monitor of a job whose export record was just set to running."""
        launch = {"id": secrets.token_hex(4), "at": now_utc()}
        launch["submission_id"] = f"{job_id}-export-{launch['id']}"

        def record(state):
            if (state.export or {}).get("status") != "running":
                return UNCHANGED
            state.export["launch"] = launch
            return CHANGED

        self.store.update(job_id, record)
        self.scheduler.start_monitor(job_id, ["export", job_id], launch)

    # -- stopping ---------------------------------------------------------------------------

    def request_stop(self, job_id):
        """Record a stop request and tell the monitor; return the record after the request.

        The monitor, wherever it runs, reads the request from the job's record within a second; on
        this host it also gets SIGTERM at once. A job still in the engine's queue is withdrawn, and
        one whose monitor died on this host is settled now.
        """

        def mark(state):
            status = JobStatus(state.status)
            if status in (JobStatus.COMPLETED, JobStatus.FAILED):
                raise Conflict(
                    f"job {job_id} is already {status.value}; only pending or running jobs can be stopped",
                    extra={"job_status": status.value},
                )
            if state.take("preempting"):
                return CHANGED  # a user's stop during a preemption: the job ends stopped, not queued
            if status is JobStatus.STOPPED or state.stop_requested_at:
                return UNCHANGED
            state.stop_requested_at = now_utc()
            if status is JobStatus.PENDING:
                # Never started, or its monitor is starting: the monitor sees this and stands down.
                state.status = JobStatus.STOPPED.value
            return CHANGED

        before = self.store.read(job_id)
        state = self.store.update(job_id, mark)
        if state.status == JobStatus.RUNNING.value:
            if monitor_alive(state):
                os.kill(state.monitor["pid"], signal.SIGTERM)
            elif here(state.monitor):
                state = self.liveness.reconcile(state)
        elif before.status == JobStatus.PENDING.value and before.launch:
            self.executor.withdraw(before.launch)  # free its place in the engine's queue
        return state

    def wait_for(self, job_id, timeout_s, done=None):
        """Poll a job until `done(state)` (default: a terminal status) or the timeout; return the state.

        It settles the job it waits for if its monitor is lost meanwhile (the client asked for it).
        """
        done = done or (lambda s: JobStatus(s.status).is_terminal())
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.liveness.reconcile(self.store.read(job_id))
            if done(state) or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)
