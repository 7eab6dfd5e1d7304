"""What a shared service lets callers do besides running jobs: change a job's place in the queue
(its priority; an admin moves one to the head) and read what each team used (GET /usage)."""

import datetime

from ..errors import Conflict, Forbidden, ValidationFailed
from ..runs import queue
from ..runs.record import CHANGED, UNCHANGED
from ..state import JobStatus, now_utc
from ..tenancy import principals, quotas
from ..tenancy.tokens import TokenLedger
from ..tenancy.usage import Ledger

MAX_DAYS = 366


class Sharing:
    def __init__(self, settings, store, schedule_soon):
        self.settings = settings
        self.store = store
        self.schedule_soon = schedule_soon  # a new order may start a job, or preempt one

    def change_job(self, job_id, priority=None, queue_head=None):
        """Change an unfinished job's priority, or (admins) move a waiting one to the head of the queue."""
        caller = principals.current()
        if queue_head is not None and caller is not None and not caller.admin:
            raise Forbidden(
                f"the token {caller.name!r} is not an admin's: only admins move jobs in the queue",
                field="queue_head",
            )
        if priority is not None:
            quotas.check_priority(self.settings, self.store.read(job_id).tenant, priority)

        def change(state):
            status = state.status
            if JobStatus(status).is_terminal():
                raise Conflict(
                    f"job {job_id} is already {status}: only a pending or running job's place can change",
                    extra={"job_status": status},
                )
            if queue_head and not queue.queued(state):
                raise Conflict(
                    f"job {job_id} is not waiting in the queue ({status}): it cannot move to its head",
                    field="queue_head",
                    extra={"job_status": status},
                )
            before = state.copy()
            if priority is not None:
                state.priority = priority
            if queue_head is True:
                state.queue_head_at = state.queue_head_at or now_utc()
            elif queue_head is False:
                state.queue_head_at = None
            return CHANGED if state != before else UNCHANGED

        updated = self.store.update(job_id, change)
        self.schedule_soon()
        return updated

    def usage(self, tenant=None, start=None, end=None):
        """GPU-hours, CPU-hours and runs per team and per day (default: this month so far). Members and
        viewers see their own team's only; admins every team's, or one's with `tenant`."""
        caller = principals.current()
        if caller is not None and not caller.admin:
            if tenant not in (None, caller.tenant):
                raise Forbidden(
                    f"the token {caller.name!r} may read team {caller.tenant}'s usage only", field="tenant"
                )
            tenant = caller.tenant
        today = now_utc()[:10]
        start, end = start or today[:8] + "01", end or today
        if start > end:
            raise ValidationFailed("must not be after `to`", field="from")
        span = datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)
        if span.days >= MAX_DAYS:
            raise ValidationFailed(f"at most {MAX_DAYS} days at once", field="to")
        report = Ledger(self.settings).report(start, end, tenant, self.store.active_states())
        report["tokens"] = TokenLedger(self.settings).report(start, end, tenant)
        return report
