"""What /v1/files and /v1/fine_tuning/jobs do, below HTTP, through the datasets' and jobs' services.

A file is an uploaded dataset named by its id (file-<24 hex>), checked row by row as every upload
is; a fine-tuning job is a job whose id is the job's, with openai.json beside its record.
"""

import contextlib
import os
import secrets

from ..errors import Conflict, NotFound, ValidationFailed
from ..jobs.store import JobStore
from ..state import JobStatus
from ..tenancy import principals
from . import mapping, preference

OPENAI = "openai.json"  # what OpenAI's request had that the service's does not
PURPOSES = ("fine-tune",)
# The service's names of a job's fields, as OpenAI's parameters are called.
PARAMS = {
    "model_name": "model",
    "dataset": "training_file",
    "validation.dataset": "validation_file",
    "validation": "validation_file",
    "epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "learning_rate": "hyperparameters.learning_rate_multiplier",
    "custom_config.seed": "seed",
    "custom_config.pref_beta": "hyperparameters.beta",
    "name": "file",
}


def openai_params(exc):
    """The same error, its fields named as OpenAI's parameters."""
    for error in exc.errors:
        error["field"] = PARAMS.get(error.get("field"), error.get("field"))
    return exc


class FineTuning:
    def __init__(self, settings, store: JobStore, jobs, job_files, datasets, uploads):
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.job_files = job_files
        self.datasets = datasets
        self.uploads = uploads

    # -- files ------------------------------------------------------------------------------

    def create_file(self, uploaded, filename, purpose):
        if purpose not in PURPOSES:
            raise ValidationFailed(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")
        file_id = "file-" + secrets.token_hex(12)
        if filename.lower().endswith(".jsonl") and preference.is_preference(uploaded):
            converted = uploaded + ".pairwise"
            preference.convert(uploaded, converted)
            os.replace(converted, uploaded)  # what is stored is what trains; its name stays the client's
        try:
            self.datasets.add(file_id, uploaded, filename)
        except ValidationFailed as exc:
            raise openai_params(exc) from None
        return self.file(file_id)

    def _meta(self, file_id):
        if not isinstance(file_id, str) or not mapping.FILE_ID.fullmatch(file_id):
            raise NotFound(f"no file {file_id!r}", field="file_id")
        try:
            meta = self.uploads.meta(file_id)
        except NotFound:
            raise NotFound(f"no file {file_id!r}", field="file_id") from None
        if not principals.visible(meta.get("tenant")):
            raise NotFound(f"no file {file_id!r}", field="file_id")
        return meta

    def file(self, file_id):
        meta = self._meta(file_id)
        return {
            "object": "file",
            "id": file_id,
            "bytes": meta.get("bytes") or 0,
            "created_at": mapping.seconds(meta.get("created_at")) or 0,
            "filename": meta.get("filename") or file_id,
            "purpose": "fine-tune",
            "status": "processed",
            "status_details": None,
            "expires_at": None,
            # The service's own reading of it.
            "format": meta.get("format"),
            "rows": meta.get("rows"),
        }

    def files(self):
        found = []
        for name in sorted(self.uploads.entries()):
            if mapping.FILE_ID.fullmatch(name):
                with contextlib.suppress(NotFound):
                    found.append(self.file(name))
        found.sort(key=lambda f: f["created_at"], reverse=True)
        return {"object": "list", "data": found, "has_more": False}

    def file_content(self, file_id):
        """(path, the name it was uploaded as) of a file's content."""
        meta = self._meta(file_id)
        return meta["path"], meta.get("filename") or file_id

    def delete_file(self, file_id):
        self._meta(file_id)
        self.datasets.delete(file_id)
        return {"object": "file", "id": file_id, "deleted": True}

    # -- jobs -------------------------------------------------------------------------------

    def create_job(self, request, original, kept, idempotency_key=None):
        for name in ("training_file", "validation_file"):
            if kept.get(name):
                try:
                    self._meta(kept[name])
                except NotFound:
                    raise ValidationFailed(f"{name} {kept[name]} does not exist", field=name) from None
        try:
            state, replayed = self.jobs.create(request, original, idempotency_key)
        except ValidationFailed as exc:
            raise openai_params(exc) from None
        if not replayed:
            self.store.write_file(state.job_id, OPENAI, kept)
        return self.job(state.job_id)

    def _job(self, job_id):
        """(record, openai.json or {}) of a job the caller may see; 404 as for one that does not exist."""
        try:
            state = self.store.read(job_id)
        except (NotFound, ValueError):
            raise NotFound(f"no fine-tuning job {job_id!r}", field="fine_tuning_job_id") from None
        if state.kind is not None or not principals.visible(state.tenant):
            raise NotFound(f"no fine-tuning job {job_id!r}", field="fine_tuning_job_id")
        kept = {}
        with contextlib.suppress(OSError, ValueError):
            kept = self.store.read_file(job_id, OPENAI)
        return state, kept

    def chain(self, job_id):
        """[(record, openai.json)] of a fine-tuning job and the jobs that continue it after each
        resume, first to last: OpenAI's job keeps its id across a pause and a resume, where a resume
        here is a new job (a stopped job never changes)."""
        found = [self._job(job_id)]
        while found[-1][1].get("resumed_as") and len(found) < 100:
            try:
                found.append(self._job(found[-1][1]["resumed_as"]))
            except NotFound:
                break
        return found

    def job(self, job_id):
        chain = self.chain(job_id)
        (head, kept), (current, _) = chain[0], chain[-1]
        request = {}
        with contextlib.suppress(NotFound):
            request = self.jobs.request(job_id)
        view = mapping.job_view(current, kept, self.jobs.view(current, detail=False), request)
        view.update(id=head.job_id, created_at=mapping.seconds(head.created_at) or 0)
        if kept.get("paused") and current.status == JobStatus.STOPPED.value:
            view["status"] = "paused"
        return view

    def list_jobs(self, after=None, limit=20, metadata=None):
        """Newest first from the jobs' index (`after`: a job id of the previous page)."""
        page, started = [], after is None
        for line in self.store.listed():
            if not principals.visible(line["tenant"]):
                continue
            if not started:
                started = line["job_id"] == after
                continue
            try:
                kept = self._job(line["job_id"])[1]
            except NotFound:
                continue
            if kept.get("continues"):
                continue  # a resumed run is listed under the id it continues
            if metadata and any((kept.get("metadata") or {}).get(k) != v for k, v in metadata.items()):
                continue
            with contextlib.suppress(NotFound):
                page.append(self.job(line["job_id"]))
            if len(page) > limit:
                break
        return {"object": "list", "data": page[:limit], "has_more": len(page) > limit}

    def cancel(self, job_id):
        chain = self.chain(job_id)
        current = chain[-1][0]
        if not JobStatus(current.status).is_terminal():
            self.jobs.stop(current.job_id)
        self._keep(chain[0][0].job_id, paused=None)  # a paused job cancelled stays cancelled
        return self.job(job_id)

    def pause(self, job_id):
        """Stop the job's current run with a checkpoint, to be resumed under the same id."""
        chain = self.chain(job_id)
        current = chain[-1][0]
        if current.status not in (JobStatus.PENDING.value, JobStatus.RUNNING.value):
            raise Conflict(
                f"job {job_id} is {self.job(job_id)['status']}: only a queued or running job pauses",
                field="fine_tuning_job_id",
            )
        self._keep(chain[0][0].job_id, paused=True)
        self.jobs.stop(current.job_id)
        return self.job(job_id)

    def resume(self, job_id):
        """Continue a paused job from its last checkpoint: a new run, listed under the same id."""
        chain = self.chain(job_id)
        (head, kept), (current, current_kept) = chain[0], chain[-1]
        if not kept.get("paused") or current.status != JobStatus.STOPPED.value:
            raise Conflict(
                f"job {job_id} is {self.job(job_id)['status']}, not paused", field="fine_tuning_job_id"
            )
        state, _ = self.jobs.resume(current.job_id)
        follower = {k: v for k, v in kept.items() if k not in ("paused", "resumed_as")}
        self.store.write_file(state.job_id, OPENAI, {**follower, "continues": head.job_id})
        self.store.write_file(current.job_id, OPENAI, {**current_kept, "resumed_as": state.job_id})
        self._keep(head.job_id, paused=None)
        return self.job(job_id)

    def _keep(self, job_id, **values):
        kept = self._job(job_id)[1]
        kept.update(values)
        self.store.write_file(job_id, OPENAI, {k: v for k, v in kept.items() if v is not None})

    def events(self, job_id, after=None, limit=20):
        """The job's own events (its state changes, those of its resumed runs) and its progress (a
        metrics event per logged step), newest first."""
        found = []
        for state, kept in self.chain(job_id):
            found += self._events_of(
                state, "paused" if kept.get("resumed_as") or kept.get("paused") else None
            )
        found.sort(key=lambda e: (e["created_at"], e["type"] == "metrics"), reverse=True)
        start = 0
        if after:
            start = next((i + 1 for i, e in enumerate(found) if e["id"] == after), len(found))
        page = found[start : start + limit]
        return {"object": "list", "data": page, "has_more": start + limit < len(found)}

    def _events_of(self, state, stopped=None):
        """`stopped`: what its stop was to OpenAI's job (paused), if not a cancel."""
        job_id = state.job_id
        found = []
        for n, entry in enumerate(state.history or []):
            word = mapping.STATUS.get(entry["status"], entry["status"])
            message = f"Job {stopped if stopped and entry['status'] == JobStatus.STOPPED.value else word}"
            if entry.get("reason"):
                message += f": {entry['reason']}"
            level = "error" if entry["status"] == "failed" else "info"
            found.append(_event(job_id, f"s{n}", entry.get("at"), level, message, "message", None))
        running_at = next(
            (e.get("at") for e in reversed(state.history or []) if e["status"] == "running"), None
        )
        points = self.job_files.metrics(job_id, 0, 100_000)["points"]
        for point in points:
            data = {
                "step": point["step"],
                "train_loss": point.get("loss"),
                "valid_loss": point.get("eval_loss"),
            }
            message = f"Step {point['step']}: training loss={point.get('loss')}"
            found.append(_event(job_id, f"m{point['step']}", running_at, "info", message, "metrics", data))
        return found

    def checkpoints(self, job_id, after=None, limit=10):
        kept = self._job(job_id)[1]
        state = self.chain(job_id)[-1][0]  # after a resume, the run that goes on
        job_id = state.job_id
        losses = {p["step"]: p.get("loss") for p in self.job_files.metrics(job_id, 0, 100_000)["points"]}
        found = []
        for checkpoint in reversed(self.job_files.checkpoints(job_id)["checkpoints"]):
            if not checkpoint["complete"]:
                continue
            step = checkpoint["step"]
            found.append(
                {
                    "object": "fine_tuning.job.checkpoint",
                    "id": f"ftckpt-{job_id}-{step}",
                    "created_at": mapping.seconds(checkpoint["modified_at"]) or 0,
                    "fine_tuned_model_checkpoint": mapping.checkpoint_model(state, kept, step),
                    "fine_tuning_job_id": job_id,
                    "step_number": step,
                    "metrics": {
                        "step": step,
                        "train_loss": losses.get(step),
                        "valid_loss": checkpoint.get("eval_loss"),
                    },
                }
            )
        start = 0
        if after:
            start = next((i + 1 for i, c in enumerate(found) if c["id"] == after), len(found))
        return {
            "object": "list",
            "data": found[start : start + limit],
            "has_more": start + limit < len(found),
        }

    def delete_model(self, name, job_id):
        """Delete a fine-tuned model: its job, by the rules DELETE of a job has."""
        for state, _ in reversed(self.chain(job_id)):
            self.jobs.delete(state.job_id)
        return {"id": name, "object": "model", "deleted": True}


def _event(job_id, key, at, level, message, kind, data):
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{job_id}-{key}",
        "created_at": mapping.seconds(at) or 0,
        "level": level,
        "message": message,
        "type": kind,
        "data": data,
    }
