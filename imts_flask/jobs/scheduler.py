"""Handing out slots: queued jobs start in the queue's order (queue.py: priority, fair share, first
come) while capacity and GPUs remain; a `high` job that does not fit preempts (jobs/preemption.py).

There is no scheduler daemon: a pass runs on the events that can free or fill a slot (a job
created, stopped or ending, a lost monitor settled) and in every worker's housekeeping. A pass
first settles unfinished jobs whose monitor is gone (jobs/liveness.py), then, under one global
lock so that two workers never hand out the same slot or GPU, gives queued jobs a launch as the
executor places them; the monitors are started after the lock is released. Each launch has an id
its monitor must match, so a job is never started twice.
"""

import logging
import secrets
import time

from ..errors import Unavailable
from ..executors import make_executor
from ..runs import queue
from ..runs.record import CHANGED, UNCHANGED
from ..state import JobStatus, now_utc
from ..tenancy import quotas
from ..tenancy.audit import AuditLog
from . import preemption
from .liveness import Liveness
from .store import JobStore

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "_scheduler"


class Scheduler:
    def __init__(self, settings, store: JobStore, executor=None, liveness=None):
        self.settings = settings
        self.store = store
        self.executor = executor or make_executor(settings)
        self.liveness = liveness or Liveness(settings, store, self.executor)

    def schedule(self):
        """Settle lost jobs, then start queued jobs while the executor can place them; their ids."""
        for state in self.store.active_states():
            try:
                self.liveness.reconcile(state)
            except Unavailable as exc:  # one job's lock held: the others are still scheduled
                log.warning("job %s: not settled this pass (%s)", state.job_id, exc)
        to_start, preempted = [], []
        with self.store.lock(SCHEDULER_LOCK):
            states = self.store.active_states()
            holding = [s for s in states if not queue.queued(s)]
            taken = {gpu for s in holding for gpu in queue.gpus_of(s)}
            free_gpus = [g for g in self.executor.gpu_ids() if g not in taken]
            slots = self.settings.capacity - len(holding)
            limits, by_gpus = quotas.load(self.settings), bool(self.executor.gpu_ids())
            held = quotas.held(states, by_gpus)
            high_waits = False
            for state in queue.in_order(filter(queue.queued, states), held):
                if high_waits and not preemption.preempts(state):
                    break  # nothing lower takes the GPUs a high job waits for
                if quotas.at_limit(limits, held, state, by_gpus):
                    continue  # its team is at its quota: the others' runs behind it go on
                placement, free_gpus = self.executor.place(state, slots, free_gpus)
                if placement is None:
                    if not preemption.preempts(state):
                        break  # the head of the queue waits for its slot and GPUs
                    preempted += self._preempt(state, holding, slots, free_gpus)
                    high_waits = True
                    continue  # a high job waits for its victims; another high one may still fit
                launch = {"id": secrets.token_hex(4), "at": now_utc(), **placement}
                updated = self.store.update(state.job_id, self._hand_out(launch))
                if (updated.launch or {}).get("id") == launch["id"]:
                    slots -= 1
                    tenant = state.tenant
                    held[tenant] = held.get(tenant, 0) + quotas.units(state, by_gpus)
                    to_start.append((state.job_id, updated.launch))
        for victim, by in preempted:
            AuditLog(self.settings.path("audit_log")).write(
                tenant=victim.tenant,
                token=None,
                client=None,
                action="preempt",
                resource={"job_id": victim.job_id, "by": by},
                outcome="stopping",
            )
        for job_id, launch in to_start:
            self._start(job_id, launch)
        return [job_id for job_id, _ in to_start]

    def _preempt(self, state, holding, slots, free_gpus):
        """Ask the jobs that make way for a high one to stop; [(victim, by)] of those asked now."""
        if preemption.in_flight(holding, state.job_id):
            return []
        asked = []
        for victim in preemption.choose(self.settings, state, holding, slots, free_gpus, time.time()):
            updated = self.store.update(victim.job_id, preemption.mark(state.job_id))
            holding[holding.index(victim)] = updated  # not chosen twice in this pass
            if (updated.preempting or {}).get("by") == state.job_id:
                log.info("job %s: preempted to make way for %s", victim.job_id, state.job_id)
                asked.append((updated, state.job_id))
        return asked

    def _hand_out(self, launch):
        def change(state):
            if not queue.queued(state):
                return UNCHANGED
            self.executor.name_launch(state, launch)
            state.launch = launch
            return CHANGED

        return change

    def waiting_for(self, state):
        """Why a queued run waits, and the runs that hold what it waits for: ("quota", its team's
        runs holding slots), ("preemption", the runs making way for it) or ("capacity", the runs
        holding the slots and GPUs: jobs, evaluations, deployments)."""
        states = self.store.active_states()
        by_gpus = bool(self.executor.gpu_ids())
        holding = [s for s in states if not queue.queued(s) and s.job_id != state.job_id]
        if quotas.at_limit(quotas.load(self.settings), quotas.held(states, by_gpus), state, by_gpus):
            return "quota", [s for s in holding if s.tenant == state.tenant]
        if preemption.in_flight(states, state.job_id):
            making_way = [s for s in holding if (s.preempting or {}).get("by") == state.job_id]
            return "preemption", making_way
        return "capacity", holding

    def queue_position(self, job_id):
        """A waiting job's 1-based place in the queue (ours, or the engine's), else None."""
        states = self.store.active_states()
        by_gpus = bool(self.executor.gpu_ids())
        held = quotas.held(states, by_gpus)
        return queue.position(states, job_id, self.executor.waits, held, lambda s: quotas.units(s, by_gpus))

    def _start(self, job_id, launch):
        """Start the monitor of a job handed a slot; a failure to start marks the job failed.

        The monitor records itself when it claims the launch; one that never does (a worker that
        died before spawning it, an engine that dropped it) leaves the launch to expire, and the job
        is queued again. An engine that cannot be reached now (start returns None) is retried so.
        """
        try:
            started = self.start_monitor(job_id, ["train", job_id, launch["id"]], launch)
        except OSError as exc:
            log.exception("job %s: could not start its monitor", job_id)
            self.store.update(job_id, _failed(f"could not start the job's monitor: {exc}"))
            return
        if started:
            log.info("job %s: monitor started (%s)", job_id, started)
        else:
            log.warning("job %s: its monitor could not be started now; the launch will be retried", job_id)

    def start_monitor(self, job_id, args, launch):
        """Start `python -m imts_flask.monitor <args>` for a job, where the executor runs it."""
        job_dir = self.store.path(job_id)
        return self.executor.start(args, launch, job_dir, self.store.path(job_id, JobStore.MONITOR_LOG))


def _failed(error):
    def change(state):
        state.set(status=JobStatus.FAILED.value, error=error)
        return CHANGED

    return change
