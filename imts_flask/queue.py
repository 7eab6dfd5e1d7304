"""The queue, as the job records tell it: which jobs wait, which hold a slot, in what order.

Pure functions of records, for the scheduler that hands out slots, the executors that say where a
job waits, the status view's queue_position and the metrics.
"""

from .state import JobStatus, creation_order


def queued(state):
    """A pending job that has not been handed a slot yet."""
    return state.get("status") == JobStatus.PENDING.value and not state.get("launch")


def waiting(state):
    """A pending job whose monitor has not started it: queued here, or in an engine's queue."""
    return state.get("status") == JobStatus.PENDING.value and not (state.get("monitor") or {}).get("pid")


def gpus_of(state):
    """The GPU ids handed to a job (none while it waits, or where an engine placed it)."""
    return (state.get("launch") or {}).get("gpus") or []


def in_order(states):
    """Jobs first come, first served: by creation time (a job queued again keeps its place)."""
    return sorted(states, key=creation_order)


def position(states, job_id, waits):
    """A job's 1-based place among `states` that `waits(state)`, in queue order; None if not there."""
    ordered = in_order(s for s in states if waits(s))
    return next((i + 1 for i, s in enumerate(ordered) if s["job_id"] == job_id), None)
