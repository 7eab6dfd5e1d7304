"""What the evaluation endpoints do, below HTTP: create (checked, then queued), list, show, samples, stop."""

import hashlib
import json
import logging
import os

from ..errors import Conflict, NotFound
from ..jobs.checkpoints import choose_weights
from ..jobs.store import JobStore
from ..jobs.views import waiting_view
from ..runs.ids import EVALUATION_ID_PATTERN, evaluation_run
from ..runs.record import queued_now
from ..state import JobStatus, creation_order
from ..tenancy import principals, quotas
from . import plan, record
from .results import comparison, sample_count, samples
from .runner import EVALUATION_LOG

log = logging.getLogger(__name__)

GENERATION_DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0}
# The statuses of a job whose weights may be judged.
_JUDGED = (JobStatus.COMPLETED.value, JobStatus.STOPPED.value)


class Evaluations:
    def __init__(self, settings, store: JobStore, catalog, launcher, started):
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.launcher = launcher
        self.started = started  # called once an evaluation is queued: the service schedules soon

    # -- create ----------------------------------------------------------------------------

    def create(self, job_id, request, idempotency_key=None):
        """Check an evaluation of a job against what exists, write it, queue it; (view, replayed)."""
        job = self.store.read(job_id)  # 404 for an unknown job
        _check_job(job)
        stage = job.stage or "sft"
        output_dir = job.paths["output_dir"]
        checkpoint, weights = choose_weights(output_dir, request.get("checkpoint"), job.best_checkpoint)
        datasets = self.catalog.resolve_datasets(request["dataset"], stage)
        train_config = self.store.read_file(job_id, JobStore.TRAIN_CONFIG)
        gpus = self.launcher.executor.gpus_for(None)
        generation = {**GENERATION_DEFAULTS, **(request.get("generation") or {})}
        asked = {**request, "generation": generation}

        def make_files(run_id, run_dir, current_job):
            _check_job(current_job)  # again, under the job's lock: it may have been deleted meanwhile
            quotas.check_new_run(self.settings, self.store, principals.owner()["tenant"])
            dataset_dir = os.path.join(run_dir, "dataset")
            output = os.path.join(run_dir, "output")
            phases = plan.phases(stage, request["baseline"])
            configs = {phase: f"{phase}.yaml" for phase in phases}
            state = record.new_record(
                tenant=current_job.tenant,
                created_by=principals.owner()["created_by"],
                job_id=run_id,
                evaluation_id=run_id.split("/")[1],
                training_job_id=job_id,
                stage=stage,
                dataset=",".join(request["dataset"]),
                checkpoint=checkpoint,
                max_samples=request["max_samples"],
                baseline=request["baseline"],
                generation=generation if stage == "sft" else None,
                phases=phases,
                gpus=gpus,
                **queued_now(self.settings.max_attempts),
                paths={
                    "log": os.path.join(run_dir, EVALUATION_LOG),
                    "output_dir": output,
                    "request": os.path.join(run_dir, JobStore.REQUEST),
                    "dataset_info": os.path.join(run_dir, JobStore.DATASET_INFO),
                    "configs": {phase: os.path.join(run_dir, name) for phase, name in configs.items()},
                },
                about=record.ABOUT,
            )
            files = {
                JobStore.REQUEST: asked,
                JobStore.DATASET_INFO: datasets,
                JobStore.STATE: state,
            }
            for phase, name in configs.items():
                files[name] = plan.phase_config(phase, train_config, weights, asked, dataset_dir, output)
            return files

        def create(make):
            with quotas.admitting(self.settings, self.store, principals.owner()["tenant"]):
                return self.store.create_evaluation(job_id, make, _check_job)

        if idempotency_key is None:
            run_id, replayed = create(make_files), False
        else:
            text = json.dumps({"evaluate": job_id, **asked}, sort_keys=True)
            fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
            key = principals.scoped(idempotency_key)
            run_id, replayed = self.store.create_once(key, fingerprint, make_files, create)
        if not replayed:
            log.info(
                "job %s: evaluation %s created (%s on %s)", job_id, run_id, checkpoint, request["dataset"]
            )
            self.started()
        return self.view(self.store.read(run_id)), replayed

    # -- read ------------------------------------------------------------------------------

    def list(self, job_id, limit=100, offset=0):
        """(total, one page of a job's evaluations), newest first."""
        self.store.read(job_id)  # 404 for an unknown job
        states = []
        for evaluation_id in self.store.evaluation_ids(job_id):
            try:
                states.append(self.store.read(evaluation_run(job_id, evaluation_id)))
            except NotFound:
                continue
        states.sort(key=creation_order, reverse=True)
        return len(states), [self.view(s, detail=False) for s in states[offset : offset + limit]]

    def get(self, job_id, evaluation_id):
        state = self._read(job_id, evaluation_id)
        view = self.view(state)
        if view["status"] == JobStatus.PENDING.value:
            view["queue_position"] = self.launcher.queue_position(state.job_id)
            view.update(waiting_view(self.launcher.waiting_for(state)))
        return view

    def samples(self, job_id, evaluation_id, offset=0, limit=20):
        state = self._read(job_id, evaluation_id)
        rows = samples(state.paths["output_dir"], state.phases or [], offset, limit)
        return {
            "evaluation_id": evaluation_id,
            "job_id": job_id,
            "total": sample_count(state.paths["output_dir"], "tuned-predict"),
            "offset": offset,
            "limit": limit,
            "samples": rows,
        }

    def stop(self, job_id, evaluation_id):
        """Stop an evaluation and wait a bounded time; (view, finished stopping)."""
        self._read(job_id, evaluation_id)
        run_id = evaluation_run(job_id, evaluation_id)
        state = self.launcher.request_stop(run_id)
        self.started()  # a freed slot
        if not JobStatus(state.status).is_terminal():
            state = self.launcher.wait_for(run_id, self.settings.stop_wait_s)
        return self.view(state), JobStatus(state.status).is_terminal()

    def _read(self, job_id, evaluation_id):
        if not isinstance(evaluation_id, str) or not EVALUATION_ID_PATTERN.fullmatch(evaluation_id):
            raise NotFound(f"job {job_id} has no evaluation {evaluation_id[:40]!r}", field="evaluation_id")
        self.store.path(job_id)  # a malformed job id is a 400
        try:
            return self.store.read(evaluation_run(job_id, evaluation_id))
        except NotFound:
            self.store.read(job_id)  # an unknown job is its own 404
            raise NotFound(f"job {job_id} has no evaluation {evaluation_id}", field="evaluation_id") from None

    def view(self, state, detail=True):
        """What GET .../evaluations/{id} answers: the record, with the comparison of the figures."""
        job_id, _, evaluation_id = state.job_id.partition("/")
        status = state.status
        view = {
            "evaluation_id": evaluation_id,
            "job_id": job_id,
            "status": status,
            "stage": state.stage,
            "dataset": state.dataset,
            "checkpoint": state.checkpoint,
            "max_samples": state.max_samples,
            "baseline": state.baseline,
            "generation": state.generation,
            "phases": state.phases or [],
            "phase": state.phase if status == JobStatus.RUNNING.value else None,
            "phases_done": [p for p in state.phases or [] if p in (state.results or {})],
            "results": comparison(state.results, state.baseline),
            "samples": sample_count(state.paths["output_dir"], "tuned-predict")
            if detail and "tuned-predict" in (state.results or {})
            else None,
            "queue_position": None,
            "attempt": state.attempt,
            "created_at": state.created_at,
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "error": state.error,
            "log_path": state.path("log"),
            "output_dir": state.path("output_dir"),
        }
        if detail and status == JobStatus.FAILED.value:
            view["log_tail"] = state.log_tail or []
        return view


def _check_job(job):
    """A job whose weights may be judged: finished as completed or stopped, of a stage with evaluations."""
    if job.broken:
        raise Conflict(f"job {job.job_id} has a damaged record; it cannot be evaluated")
    if job.status not in _JUDGED:
        raise Conflict(
            f"job {job.job_id} is {job.status}; evaluations judge completed or stopped jobs",
            extra={"job_status": job.status},
        )
    refused = plan.unsupported(job.stage or "sft")
    if refused:
        raise Conflict(refused, extra={"job_status": job.status})
