"""Resuming a stopped or failed job as a new job: which checkpoint, and the new job's files.

The new job takes the original's request, its training config (with its own paths) and its copy of
the datasets' entries, so it trains what the original planned, to the same total_steps. Its
trainer_log.jsonl starts with the original's history up to the checkpoint. The checkpoint itself
is copied by the new job's monitor (jobs/runner.py) before its trainer starts.
"""

import os

from ..errors import Conflict, ValidationFailed
from ..llamafactory.configs import resume_refusal
from ..llamafactory.trainer_log import TRAINER_LOG, log_until
from ..state import JobStatus
from .checkpoints import at_the_end, list_checkpoints
from .store import JobStore


class ResumePlan:
    """The checkpoint of `job_id` to go on from (`name`, else the newest complete one), or a refusal."""

    def __init__(self, store: JobStore, job_id, name=None):
        self.source = store.read(job_id)
        self.config = store.read_file(job_id, JobStore.TRAIN_CONFIG) if not self.source.broken else {}
        self.checkpoint = self._choose(store, name)
        self.datasets = store.read_file(job_id, JobStore.DATASET_INFO)
        self.request = store.read_file(job_id, JobStore.REQUEST)
        self._check_still_there()
        self.history = log_until(self.source.paths["output_dir"], self.checkpoint["step"])
        self.resumed_from = {
            "job_id": job_id,
            "checkpoint": self.checkpoint["name"],
            "step": self.checkpoint["step"],
        }

    def _choose(self, store, name):
        source = self.source
        job_id, status = source.job_id, source.status
        if source.broken:
            raise Conflict(f"job {job_id} has a damaged record and cannot be resumed")
        if status not in (JobStatus.STOPPED.value, JobStatus.FAILED.value):
            raise Conflict(
                f"job {job_id} is {status}; only stopped or failed jobs can be resumed",
                extra={"job_status": status},
            )
        refusal = resume_refusal(self.config)
        if refusal:
            raise Conflict(f"job {job_id} cannot be resumed: {refusal}")
        checkpoints = list_checkpoints(source.paths["output_dir"])
        if name is None:
            complete = [c for c in checkpoints if c["complete"]]
            if not complete:
                raise Conflict(
                    f"job {job_id} has no complete checkpoint to resume from"
                    + (f" ({checkpoints[-1]['name']}: {checkpoints[-1]['problem']})" if checkpoints else ""),
                    extra={"job_status": status},
                )
            before_end = [c for c in complete if not at_the_end(c)]
            if not before_end:
                raise Conflict(_at_the_end(job_id, complete[-1]), extra={"job_status": status})
            return before_end[-1]
        found = next((c for c in checkpoints if c["name"] == name), None)
        if found is None:
            raise ValidationFailed(
                f"job {job_id} has no checkpoint {name!r}; it has: "
                + (", ".join(c["name"] for c in checkpoints) or "none"),
                field="checkpoint",
                extra={"available": [c["name"] for c in checkpoints]},
            )
        if not found["complete"]:
            raise Conflict(f"{name} of job {job_id} is incomplete ({found['problem']}); resume from another")
        if at_the_end(found):
            raise Conflict(_at_the_end(job_id, found), extra={"job_status": status})
        return found

    def _check_still_there(self):
        """Refuse a resume whose model directory or dataset files have gone since the job ran."""
        model = str(self.config.get("model_name_or_path") or "")
        if os.path.isabs(model) and not os.path.isdir(model):
            raise Conflict(f"the job's model directory {model} no longer exists")
        for name, entry in self.datasets.items():
            if not os.path.exists(str(entry.get("file_name", ""))):
                raise Conflict(
                    f"the file of the job's dataset '{name}' ({entry.get('file_name')}) no longer exists"
                )

    def files(self, paths, state):
        """The new job's files ({relative name: content}) for JobStore.create, given its paths and state."""
        config = {
            **self.config,
            "dataset_dir": os.path.dirname(paths["dataset_info"]),
            "output_dir": paths["output_dir"],
            "resume_from_checkpoint": os.path.join(paths["output_dir"], self.checkpoint["name"]),
            "overwrite_output_dir": False,
        }
        return {
            JobStore.REQUEST: self.request,
            JobStore.DATASET_INFO: self.datasets,
            JobStore.TRAIN_CONFIG: config,
            JobStore.STATE: state,
            # The loss history up to the checkpoint, so progress and series go on from there.
            os.path.join(JobStore.OUTPUT, TRAINER_LOG): self.history,
        }


def _at_the_end(job_id, checkpoint):
    return (
        f"{checkpoint['name']} of job {job_id} is at the end of its run (step {checkpoint['step']} of "
        f"{checkpoint['max_steps']}): nothing is left to train, and resuming there would train past "
        "the plan; resume from an earlier checkpoint"
    )
