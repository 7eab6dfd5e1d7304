"""Preemption: a `high` job that cannot start stops lower-priority jobs with a checkpoint and takes
their place; they go back to the queue and resume from that checkpoint when GPUs free.

- Only a `high` run preempts, and only running training jobs of priority `low` (and `normal` with
  the `preempt_normal` setting) that are `preemptible`, were preempted fewer than
  `max_preemptions` times, and have a complete checkpoint or have run less than `preempt_grace_s`
  (a job without one loses little only when it has just started).
- The fewest victims that free the slot and GPUs it needs: lowest priority first, then the most
  recently started (it loses least). None at all if they cannot free enough.
- While a preemption it asked for is in flight it asks for no other (the victim is stopping).
- The victim's record gets `preempting` {by, at} and a stop request: its monitor stops the trainer
  as for any stop (with enable_jit_checkpoint a fresh checkpoint is saved), and where a stop would
  end in `stopped` the job is queued again (`requeue`) with `preempted_by` and `preemptions`; its
  attempt is not used up. A user's stop during a preemption wins: the job ends stopped.
"""

import logging

from ..llamafactory.trainer_log import run_complete
from ..runs import queue
from ..runs.record import UNCHANGED, changed
from ..state import JobStatus, now_utc, parse_time
from .checkpoints import latest_resumable

log = logging.getLogger(__name__)

HIGH = queue.RANK["high"]


def preempts(state):
    """Whether a run may preempt others when it cannot start."""
    return queue.rank(state) == HIGH and not state.kind


def in_flight(holding, job_id):
    """Whether a preemption asked for by `job_id` has not ended yet."""
    return any((s.preempting or {}).get("by") == job_id for s in holding)


def choose(settings, requester, holding, slots, free_gpus, now):
    """The jobs to preempt so that `requester` fits, or [] where they cannot free enough."""
    lowest = queue.RANK["normal"] if settings.preempt_normal else queue.RANK["low"]
    candidates = [s for s in holding if queue.rank(s) <= lowest and _may_preempt(settings, s, now)]
    candidates.sort(key=lambda s: (queue.rank(s), -_started(s)))
    need_gpus = (requester.gpus or 0) - len(free_gpus)
    chosen = []
    for victim in candidates:
        if slots >= 1 and need_gpus <= 0:
            break
        chosen.append(victim)
        slots += 1
        need_gpus -= len(queue.gpus_of(victim))
    return chosen if slots >= 1 and need_gpus <= 0 else []


def _started(state):
    at = parse_time(state.started_at)
    return at.timestamp() if at else 0.0


def _may_preempt(settings, state, now):
    if state.kind == "server":
        return _idle_server(settings, state, now)
    if (
        state.kind
        or state.status != JobStatus.RUNNING.value
        or state.preemptible is False
        or state.stop_requested_at
        or (state.preemptions or 0) >= settings.max_preemptions
    ):
        return False
    output_dir = state.path("output_dir") or ""
    if run_complete(output_dir):
        return False  # it has finished training; its monitor is recording that
    if latest_resumable(output_dir) is not None:
        return True
    return now - _started(state) < settings.preempt_grace_s


def _idle_server(settings, state, now):
    """A shared server gives way to training where the operator lets it (serve_preemptible) once no
    request came for serve_preempt_idle_s: its models start it again on their next request."""
    if not settings.serve_preemptible or state.status != JobStatus.RUNNING.value or state.stop_requested_at:
        return False
    last = parse_time(state.last_request_at or state.ready_at or state.started_at)
    return last is not None and now - last.timestamp() >= settings.serve_preempt_idle_s


def mark(by):
    """The change that asks a running job to make way for job `by`."""

    def change(state):
        if state.status != JobStatus.RUNNING.value or state.stop_requested_at:
            return UNCHANGED  # it ended, or someone stopped it meanwhile
        at = now_utc()
        state.preempting = {"by": by, "at": at}
        state.stop_requested_at = at
        return changed()

    return change


def requeue(state):
    """Queue a preempted job again instead of recording it stopped; True if it was one."""
    preempting = state.take("preempting")
    if not preempting:
        return False
    state.set(
        status=JobStatus.PENDING.value,
        pid=None,
        trainer=None,
        launch=None,
        monitor=None,
        stop_requested_at=None,
        preempted_by=preempting["by"],
        preemptions=(state.preemptions or 0) + 1,
    )
    state.stop_forced_at = None
    log.info("job %s: preempted by %s; queued again", state.job_id, preempting["by"])
    return True


def reason(state):
    return f"preempted by {state.preempted_by}: queued again, it resumes from its checkpoint"
