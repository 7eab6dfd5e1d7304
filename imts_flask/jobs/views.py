"""What GET /jobs/{id} answers: a job's record turned into its status, live progress included.

The fields and their order are record.FIELDS' shown ones: each is the record's own value, or, for
the few the view works out (progress from the tail of the trainer's log, the GPUs handed out,
paths, ...), the function of that name below. No disk but the tail of the trainer's log; no Flask.
The schema of the answer derives from the same table (http/schemas.py), and tests/http/test_fuzz.py
checks the two against each other.
"""

import os

from ..llamafactory.trainer_log import eta_after_resume, read_progress
from ..state import JobStatus
from ..tenancy import principals
from . import record

TENSORBOARD = "tensorboard"
EXPORT_FIELDS = (
    "status", "export_dir", "merge_lora", "checkpoint", "model_path", "requested_at", "finished_at", "error"
)  # fmt: skip
_LEFT_OUT = object()


class _Job:
    """What the computed fields read: the record, its progress, and what the caller measured."""

    def __init__(self, state, gpu_memory, detail):
        self.state, self.gpu_memory, self.detail = state, gpu_memory, detail
        self.status = state.status
        self.running = self.status == JobStatus.RUNNING.value
        self.paths = state.paths or {}
        if state.final is not None:
            self.progress = dict(state.final)
        elif self.paths.get("output_dir"):
            # Pending jobs too: a job queued again after its host died, or a resumed one, shows
            # where it stands (a new job has no trainer_log.jsonl yet: one failed open).
            self.progress = read_progress(self.paths["output_dir"])
        else:
            self.progress = {}


def job_view(state, gpu_memory=None, detail=True):
    """The status of a job from its record; `gpu_memory` (bytes) is read by the caller where it can be."""
    job = _Job(state, gpu_memory, detail)
    view = {}
    for field in record.FIELDS:
        if field.shown:
            compute = _COMPUTED.get(field.name)
            value = compute(job) if compute else getattr(state, field.name)
            if value is not _LEFT_OUT:
                view[field.name] = value
    return view


def _eta(job):
    if not job.running:
        return None
    if job.state.resumed_at_step is not None:
        return eta_after_resume(job.progress, job.state.resumed_at_step)
    return job.progress.get("eta_seconds")


def _progress(job):
    fraction = 1.0 if job.status == JobStatus.COMPLETED.value else (job.progress.get("progress") or 0.0)
    return round(fraction, 6)


def _tokens_per_second(job):
    # LLaMA Factory's own average counts the tokens seen before a resume: not for a resumed run.
    average = None if job.state.resumed_at_step else job.progress.get("tokens_average")
    return _rounded(job.progress.get("tokens_per_second") or average)


def _samples_per_second(job):
    steps = job.progress.get("steps_per_second") or 0
    return _rounded(steps * (job.state.samples_per_step or 0) or None)


def _log_tail(job):
    if job.detail and job.status == JobStatus.FAILED.value:
        return job.state.log_tail or []
    return _LEFT_OUT


_COMPUTED = {
    "pid": lambda job: job.state.pid if job.running else None,
    "config_path": lambda job: job.paths.get("config"),
    "progress": _progress,
    "current_loss": lambda job: job.progress.get("current_loss"),
    "current_step": lambda job: job.progress.get("current_step"),
    "total_steps": lambda job: job.progress.get("total_steps"),
    "epoch": lambda job: job.progress.get("epoch"),
    "learning_rate": lambda job: job.progress.get("learning_rate"),
    "eta_seconds": _eta,
    "gpu_ids": lambda job: (job.state.launch or {}).get("gpus"),
    "queue_position": lambda job: None,  # the service fills it in for a waiting job
    "waiting_for": lambda job: None,  # and why it waits, and what holds the slots
    "held_by": lambda job: None,
    "held_by_others": lambda job: None,
    "gpu_memory_mb": lambda job: (
        job.gpu_memory // 2**20 if job.running and job.gpu_memory is not None else None
    ),
    "tokens_per_second": _tokens_per_second,
    "samples_per_second": _samples_per_second,
    "stop_requested": lambda job: bool(job.state.stop_requested_at),
    "output_dir": lambda job: job.paths.get("output_dir"),
    "log_path": lambda job: job.paths.get("log"),
    "export": lambda job: export_view(job.state.export),
    "tensorboard_dir": lambda job: tensorboard_dir(job.paths) if job.state.tensorboard else None,
    "log_tail": _log_tail,
}


def tensorboard_dir(paths):
    """Where a job's trainer writes TensorBoard event files: <job dir>/tensorboard."""
    return os.path.join(os.path.dirname(paths.get("config") or ""), TENSORBOARD)


def export_view(export):
    """The documented fields of a job's last export (the record also holds its monitor's pid)."""
    if not export:
        return None
    view = {key: export.get(key) for key in EXPORT_FIELDS}
    view["checkpoint"] = view["checkpoint"] or "final"  # exports before checkpoints could be named
    if export.get("log_tail"):
        view["log_tail"] = export["log_tail"]
    return view


def _rounded(value, digits=1):
    return round(value, digits) if isinstance(value, (int, float)) else None


def waiting_view(waiting):
    """waiting_for, held_by and held_by_others of a waiting run's view, from the scheduler's
    (reason, holders): the runs holding what it waits for, named where the caller may see them
    (another team's are counted, not named)."""
    reason, holders = waiting
    named = [s.job_id for s in holders if principals.visible(s.tenant)]
    return {"waiting_for": reason, "held_by": sorted(named), "held_by_others": len(holders) - len(named)}
