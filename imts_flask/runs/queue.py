"""The queue, as the job records tell it: which jobs wait, which hold a slot, in what order.

Pure functions of records, for the scheduler that hands out slots, the executors that say where a
job waits, the status view's queue_position and the metrics.

The order: the runs an admin moved to the head (in the order they were moved), then by priority
(high, normal, low), then fair share (the team holding the fewest GPUs, or runs, right now goes
first), then first come, first served. Fair share moves as runs start: two teams with runs queued
at the same priority take turns.
"""

import heapq
from collections import deque

from ..state import JobStatus, creation_order

PRIORITIES = ("low", "normal", "high")
RANK = {name: number for number, name in enumerate(PRIORITIES)}


def queued(state):
    """A pending job that has not been handed a slot yet."""
    return state.status == JobStatus.PENDING.value and not state.launch


def waiting(state):
    """A pending job whose monitor has not started it: queued here, or in an engine's queue."""
    return state.status == JobStatus.PENDING.value and not (state.monitor or {}).get("pid")


def gpus_of(state):
    """The GPU ids handed to a job (none while it waits, or where an engine placed it)."""
    return (state.launch or {}).get("gpus") or []


def rank(state):
    """A run's priority as a number: low 0, normal 1 (also a run that names none), high 2."""
    return RANK.get(state.priority or "normal", 1)


def in_order(states, held):
    """Yield `states` in the queue's order; `held` ({tenant: GPUs or runs it holds}) is read at each
    step, so a caller that adds what it hands out makes the teams take turns (a job queued again
    keeps its place: its creation time).

    Cost: one sort, then a heap of the (priority, team) groups: log(groups) a step. A group's key
    grows only (its team's holdings, its next job's age), so a key found stale is pushed back.
    """
    head = []
    groups = {}
    for state in sorted(states, key=creation_order):
        if state.queue_head_at:
            head.append(state)
        else:
            groups.setdefault((rank(state), state.tenant), deque()).append(state)
    yield from sorted(head, key=lambda s: (s.queue_head_at, creation_order(s)))

    def key(group):
        return (-group[0], held.get(group[1], 0), creation_order(groups[group][0]))

    heap = [(key(group), number, group) for number, group in enumerate(groups)]
    heapq.heapify(heap)
    while heap:
        found, number, group = heapq.heappop(heap)
        now = key(group)
        if now != found:
            heapq.heappush(heap, (now, number, group))
            continue
        yield groups[group].popleft()
        if groups[group]:
            heapq.heappush(heap, (key(group), number, group))


def position(states, job_id, waits, held, units):
    """A job's 1-based place among `states` that `waits(state)`, in queue order (as if each run
    ahead started, taking `units(state)`); None if not there."""
    held = dict(held)
    for number, state in enumerate(in_order([s for s in states if waits(s)], held), 1):
        if state.job_id == job_id:
            return number
        held[state.tenant] = held.get(state.tenant, 0) + units(state)
    return None
