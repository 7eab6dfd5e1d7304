"""What a job wrote, read for the API: its log from a byte offset, its loss series, its events,
its checkpoints and the files LLaMA Factory drew (the loss plot)."""

import os
import time

from ..errors import Conflict, NotFound
from ..fsio import read_tail
from ..llamafactory.trainer_log import read_series
from ..llamafactory.trainer_state import checkpoint_evaluation
from ..state import TIME_FORMAT, JobStatus
from .checkpoints import list_checkpoints
from .store import JobStore


class JobFiles:
    def __init__(self, store):
        self.store = store

    def log(self, job_id, offset=0, limit=64 * 1024, tail=None):
        """Return a slice of training.log from a byte offset, or its last `tail` lines."""
        path = self.store.path(job_id, JobStore.TRAIN_LOG)
        self.store.read(job_id)  # 404 for an unknown job
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if tail is not None:
            lines = read_tail(path, 1024 * 1024).splitlines()[-tail:]
            return {"job_id": job_id, "size": size, "lines": lines}
        offset = min(offset, size)
        data = b""
        if offset < size:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(limit)
        text, used = decode_whole_chars(data)
        next_offset = offset + used
        return {
            "job_id": job_id,
            "offset": offset,
            "next_offset": next_offset,
            "size": size,
            "eof": next_offset >= size,
            "data": text,
        }

    def metrics(self, job_id, since_step=0, limit=1000):
        """Return the loss / learning-rate / epoch series of a job after `since_step`."""
        state = self.store.read(job_id)
        points = read_series(state.path("output_dir", ""), since_step, limit)
        return {
            "job_id": job_id,
            "since_step": since_step,
            "points": points,
            "next_since_step": points[-1]["step"] if points else since_step,
        }

    def events(self, job_id):
        """Return a job's state transitions with their times."""
        state = self.store.read(job_id)
        return {"job_id": job_id, "events": list(state.history or [])}

    def checkpoints(self, job_id):
        state = self.store.read(job_id)
        checkpoints = list_checkpoints(state.path("output_dir", ""))
        if state.status == JobStatus.RUNNING.value and checkpoints and not checkpoints[-1]["complete"]:
            checkpoints[-1]["problem"] = "being saved"  # the trainer is writing it right now
        for checkpoint in checkpoints:
            checkpoint["modified_at"] = time.strftime(TIME_FORMAT, time.gmtime(checkpoint["modified_at"]))
            if state.validation and checkpoint["complete"]:
                figures = checkpoint_evaluation(checkpoint["path"], checkpoint["step"]) or {}
                checkpoint.update(eval_loss=figures.get("eval_loss"), eval_metrics=figures or None)
                checkpoint["best"] = checkpoint["name"] == state.best_checkpoint
        return {"job_id": job_id, "checkpoints": checkpoints}

    def artifact_path(self, job_id, name):
        """Return the path of a file LLaMA Factory wrote for the job (only known names)."""
        state = self.store.read(job_id)
        path = os.path.join(state.path("output_dir", ""), name)
        if not os.path.isfile(path):
            if not JobStatus(state.status).is_terminal():  # LLaMA Factory draws it at the end
                raise Conflict(
                    f"job {job_id} is {state.status}: {name} is drawn when its training ends",
                    extra={"job_status": state.status},
                )
            raise NotFound(f"job {job_id} has no {name}", field="name")
        return path


def decode_whole_chars(data):
    """Decode UTF-8 without splitting a character at the end; return (text, bytes used)."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8"), len(data) - cut
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), len(data)
