"""Each team's quotas, from the tenants file: what it may hold running and keep queued.

- `max_running_gpus`: GPUs its running jobs, evaluations and deployments hold together (on a service
  without GPUs: how many of them run). A queued run of a team at its limit waits (`waiting_for:
  "quota"`) and the queue goes on with other teams' runs behind it: no head-of-line blocking.
- `max_queued_jobs`: runs it may have waiting; one more is a 429 with Retry-After.
- `max_gpu_hours`: GPU-hours its runs may use in a calendar month (UTC); past it a create is a 403
  with the figure (tenancy/usage.py keeps the ledger).
- `max_non_preemptible`: unfinished jobs it may have with `preemptible: false`.
- `max_tokens_per_minute`: prompt and completion tokens its requests to /v1 may use in a minute (UTC,
  counted per calendar minute); past it a request is a 429 with Retry-After (tenancy/tokens.py).

The scheduler runs in the API workers and in monitors alike, so the file is read here too (again when
it changes), through the same fail-closed reader as the tokens: a file that goes missing, empty or
bad leaves the last valid quotas in force, in every process (its snapshot in the cache directory).
"""

import contextlib
import logging

from ..errors import Forbidden, TooManyRequests
from ..runs import queue
from .config import shared_file
from .usage import Ledger

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30


def load(settings):
    """{tenant: its quotas} as the tenants file says now ({} without one, or with a bad one)."""
    return {name: team["quotas"] for name, team in teams(settings).items()}


def teams(settings):
    """{tenant: {max_priority, quotas}} of the tenants file in force ({} without one): the last valid
    file stays in force when it goes missing or bad (tenancy/config.py)."""
    return shared_file(settings).tenants


@contextlib.contextmanager
def admitting(settings, store, tenant):
    """Hold a team's admission lock while a new run of it is checked against its quotas and written:
    creates racing each other are counted one after the other, so max_queued_jobs is a limit, not a
    limit give or take the creates in flight. Teams without quotas, and admins, take no lock."""
    if tenant is None or not (teams(settings).get(tenant) or {}).get("quotas"):
        yield
        return
    with store.lock(f"quota.{tenant}"):
        yield


def units(state, by_gpus):
    """What a run counts against max_running_gpus: its GPUs, or 1 on a service without GPUs."""
    return (state.gpus or 0) if by_gpus else 1


def held(states, by_gpus):
    """{tenant: units its runs holding a slot hold}."""
    found = {}
    for state in states:
        if not queue.queued(state):
            found[state.tenant] = found.get(state.tenant, 0) + units(state, by_gpus)
    return found


def at_limit(quotas, held_units, state, by_gpus):
    """Whether a queued run must wait for its team's running quota."""
    limit = (quotas.get(state.tenant) or {}).get("max_running_gpus")
    return limit is not None and held_units.get(state.tenant, 0) + units(state, by_gpus) > limit


def check_priority(settings, tenant, priority):
    """A 403 for a priority above the team's max_priority (admins: any)."""
    allowed = (teams(settings).get(tenant) or {}).get("max_priority", "normal") if tenant else "high"
    if queue.RANK.get(priority, 1) > queue.RANK[allowed]:
        raise Forbidden(
            f"team {tenant} may ask for priority {allowed} at most, not {priority}",
            field="priority",
            extra={"max_priority": allowed},
        )


def check_new_run(settings, store, tenant, priority="normal", preemptible=True):
    """Refuse a new run that its team's quotas do not allow: a 403 past max_gpu_hours this month, a
    priority above its max_priority or one more non-preemptible job than max_non_preemptible; a 429
    when it already has max_queued_jobs runs waiting. Admins (no tenant) have no limits."""
    if tenant is None:
        return
    check_priority(settings, tenant, priority)
    limits = (teams(settings).get(tenant) or {}).get("quotas") or {}
    states = store.active_states() if limits else []
    if limits.get("max_gpu_hours") is not None:
        used = Ledger(settings).gpu_hours_this_month(tenant, states)
        if used >= limits["max_gpu_hours"]:
            raise Forbidden(
                f"team {tenant} has used {used:.2f} GPU-hours this month, its max_gpu_hours is "
                f"{limits['max_gpu_hours']}: no new runs until the next month (or a higher quota)",
                field="max_gpu_hours",
                extra={"max_gpu_hours": limits["max_gpu_hours"], "gpu_hours": round(used, 4)},
            )
    limit = limits.get("max_non_preemptible")
    if preemptible is False and limit is not None:
        held = sum(1 for s in states if s.tenant == tenant and s.preemptible is False)
        if held >= limit:
            raise Forbidden(
                f"team {tenant} has {held} unfinished jobs that may not be preempted, its "
                f"max_non_preemptible is {limit}",
                field="preemptible",
                extra={"max_non_preemptible": limit},
            )
    limit = limits.get("max_queued_jobs")
    if limit is None:
        return
    waiting = sum(1 for s in states if s.tenant == tenant and queue.queued(s))
    if waiting >= limit:
        raise TooManyRequests(
            f"team {tenant} has {waiting} runs queued, its max_queued_jobs is {limit}: "
            "wait for one to start, or stop one",
            field="max_queued_jobs",
            extra={"max_queued_jobs": limit, "queued": waiting},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
