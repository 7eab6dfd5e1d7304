"""What the API does with jobs, below HTTP: create, resume, read, list, stop, export, delete.

A job is a run of the kind "job" (runs/): its record (record.py), its directory in the store
(store.py), started by the scheduler (launcher.py) and run by its monitor (runner.py). What it
wrote (its log, loss series, checkpoints) is read by files.py.
"""

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time

from ..errors import Conflict, NotFound
from ..llamafactory.allowlist import validate_custom_config
from ..llamafactory.configs import build_train_config
from ..observe.gpus import Gpus
from ..procs import tree_pids
from ..runs.record import CHANGED, UNCHANGED
from ..state import JobStatus, now_utc
from ..tenancy import principals, quotas
from . import exports, record
from .checkpoints import FINAL, choose_weights
from .index import visible_total
from .launcher import Launcher
from .lifecycle import Lifecycle
from .liveness import here
from .resume import ResumePlan
from .store import JobStore
from .views import job_view, waiting_view
from .webhooks import Notifier

log = logging.getLogger(__name__)

ABOUT = (
    "Written by the IMTS training API. status is one of pending, running, completed, failed, stopped; "
    "completed, failed and stopped never change. pid is the trainer's process id while running. "
    "paths.config is the file llamafactory-cli reads, paths.log its output, paths.output_dir its results. "
    "Times are UTC."
)


def _job_paths(job_dir):
    return {
        "config": os.path.join(job_dir, JobStore.TRAIN_CONFIG),
        "output_dir": os.path.join(job_dir, JobStore.OUTPUT),
        "log": os.path.join(job_dir, JobStore.TRAIN_LOG),
        "request": os.path.join(job_dir, JobStore.REQUEST),
        "dataset_info": os.path.join(job_dir, JobStore.DATASET_INFO),
    }


class Jobs:
    """The jobs' use cases; the parts they use are handed in, built by the composition root."""

    def __init__(
        self, settings, store, catalog, registry, launcher, lifecycle, notifier, gpus, start_queued_soon
    ):
        self.settings = settings
        self.store: JobStore = store
        self.catalog = catalog  # catalog.Catalog: what a request may name
        self.registry = registry  # registry.service.Registry: the model versions a job may train on
        self.launcher: Launcher = launcher
        self.lifecycle: Lifecycle = lifecycle
        self.notifier: Notifier = notifier
        self.gpus: Gpus = gpus  # the GPUs this service hands out: a running job's memory is read on them
        self.start_queued_soon = start_queued_soon
        # Read once: a bad config/custom_config.yaml stops the service at start, not a request later.
        self.extra_custom_keys = catalog.extra_custom_keys()

    # -- create ----------------------------------------------------------------------------

    def create(self, request, original, idempotency_key=None):
        """Validate what a job needs against what exists, write the job, start it.

        Returns (state, replayed): replayed is True when `idempotency_key` already created this job.
        """
        validate_custom_config(
            request["custom_config"],
            extra_keys=self.extra_custom_keys,
            deepspeed_templates=self.catalog.deepspeed_templates(),
            trust_remote_code=self.settings.allow_trust_remote_code,
        )
        gpus = self.launcher.executor.gpus_for(request.get("gpus"))
        adapter = None
        if self.registry.is_reference(
            request["model_name"]
        ):  # a registered version: "support-bot:3", "support-bot@prod"
            model_path, default_template, adapter = self.registry.base_for_training(
                request["model_name"], request["finetuning_type"]
            )
        else:
            model_path, default_template = self.catalog.resolve_model(request["model_name"])
        template = request["custom_config"].get("template") or default_template or "default"
        self.catalog.check_template(template)
        datasets = self.catalog.resolve_datasets(request["dataset"], request["stage"])
        validation = request.get("validation")
        if validation and validation.get("dataset"):
            datasets.update(
                self.catalog.resolve_datasets(validation["dataset"], request["stage"], "validation.dataset")
            )
        self.store.require_free(self.settings.min_free_disk_mb)

        def make_files(job_id, job_dir):
            # Here, not before: a retry with its Idempotency-Key gets its job back, quota or not.
            quotas.check_new_run(
                self.settings,
                self.store,
                principals.owner()["tenant"],
                request["priority"],
                request["preemptible"],
            )
            paths = _job_paths(job_dir)
            config = build_train_config(
                request,
                model_path=model_path,
                adapter=adapter,
                template=template,
                dataset_dir=os.path.dirname(paths["dataset_info"]),
                output_dir=paths["output_dir"],
                jit_checkpoint=self.settings.enable_jit_checkpoint,
                deepspeed_dir=self.catalog.deepspeed_dir,
                save_steps=self.settings.default_save_steps,
                save_total_limit=self.settings.default_save_total_limit,
                tensorboard=request["tensorboard"],
            )
            described = {
                "model_name": request["model_name"],
                "dataset": ",".join(request["dataset"]),
                "stage": request["stage"],
                "finetuning_type": request["finetuning_type"],
                "gpus": gpus,
                "webhook_url": request.get("webhook_url"),
                "tensorboard": request["tensorboard"],
                "priority": request["priority"],
                "preemptible": request["preemptible"],
                **_validation_described(config, validation, request.get("early_stopping")),
                # Samples a step takes, all processes together: samples_per_second from steps a second.
                "samples_per_step": config["per_device_train_batch_size"]
                * config["gradient_accumulation_steps"]
                * max(1, gpus),
            }
            return {
                JobStore.REQUEST: original,
                JobStore.DATASET_INFO: datasets,
                JobStore.TRAIN_CONFIG: config,
                JobStore.STATE: self._new_state(job_id, paths, described),
            }

        return self._create(make_files, original, idempotency_key, principals.owner()["tenant"])

    def _new_state(self, job_id, paths, described):
        created = now_utc()
        # A job belongs to its creator's tenant; a resumed one stays with its source's (in `described`).
        described = {**principals.owner(), **described}
        return record.new_record(
            job_id=job_id,
            created_at=created,
            created_ns=time.time_ns(),  # orders jobs created within the same second
            updated_at=created,
            **described,
            max_attempts=max(1, self.settings.max_attempts),
            paths=paths,
            history=[{"status": JobStatus.PENDING.value, "at": created, "attempt": 1}],
            about=ABOUT,
        )

    def _create(self, make_files, fingerprinted, idempotency_key, tenant):
        """Write a new job (once per idempotency key), announce it and start the queue; (state, replayed)."""

        def create(make):
            with quotas.admitting(self.settings, self.store, tenant):  # checked and written as one
                return self.store.create(make)

        if idempotency_key is None:
            job_id, replayed = create(make_files), False
        else:
            text = json.dumps(fingerprinted, sort_keys=True)
            fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
            key = principals.scoped(idempotency_key)
            job_id, replayed = self.store.create_once(key, fingerprint, make_files, create)
        state = self.store.read(job_id)
        if not replayed:
            log.info("job %s: created (%s)", job_id, state.model_name)
            self.notifier.notify(self.store.path(job_id), state)
            self.start_queued_soon()
        return state, replayed

    # -- resume ----------------------------------------------------------------------------

    def resume(self, job_id, checkpoint=None, idempotency_key=None):
        """Create a new job that continues a stopped or failed job from one of its checkpoints.

        The new job has the same request, model, datasets and hyperparameters, copies the checkpoint
        into its own output_dir before its trainer starts, and carries the original's loss history
        up to that step. The original job's files are not changed. Returns (state, replayed).
        """
        plan = ResumePlan(self.store, job_id, checkpoint)
        self.store.require_free(self.settings.min_free_disk_mb)

        def make_files(new_id, job_dir):
            quotas.check_new_run(
                self.settings,
                self.store,
                principals.owner()["tenant"] or plan.source.tenant,
                plan.source.priority or "normal",
                plan.source.preemptible is not False,
            )
            paths = _job_paths(job_dir)
            described = plan.source.pick(record.RESUMED)
            state = self._new_state(
                new_id, paths, {**described, "resumed_from": plan.resumed_from, "seeded_at": None}
            )
            return plan.files(paths, state)

        asked = {"resume": job_id, "checkpoint": checkpoint}
        tenant = principals.owner()["tenant"] or plan.source.tenant
        return self._create(make_files, asked, idempotency_key, tenant)

    # -- read ------------------------------------------------------------------------------

    def get(self, job_id):
        """Return the current view of one job (a read: it settles nothing, the scheduler does)."""
        view = self.view(self.store.read(job_id))
        if view["status"] == JobStatus.PENDING.value and not view["gpu_ids"]:
            view["queue_position"] = self.launcher.queue_position(job_id)
            view.update(waiting_view(self.launcher.waiting_for(self.store.read(job_id))))
        return view

    def view(self, state, detail=True):
        """Turn a stored state into what GET /jobs/{id} answers, with live progress when running."""
        running = state.status == JobStatus.RUNNING.value
        return job_view(state, gpu_memory=self.gpu_memory_bytes(state) if running else None, detail=detail)

    def gpu_memory_bytes(self, state):
        """GPU memory of a running job's process tree: read now on its host, else the monitor's reading."""
        by_gpu = self.gpu_memory_by_gpu(state)
        return sum(by_gpu.values()) if by_gpu is not None else state.gpu_memory_bytes

    def gpu_memory_by_gpu(self, state):
        """{gpu id: bytes} of a running job on this host's GPUs, or None where this host cannot tell."""
        trainer = state.trainer or {}
        if not self.gpus.ids or not here(trainer):
            return None
        return self.gpus.memory_by_gpu(tree_pids(trainer.get("pid"), trainer.get("start_ticks")))

    def list(self, status=None, limit=100, offset=0, q=None, sort="created", order=None):
        """Return (total matching, one page of job views): newest first, or as `sort` and `order` say.

        Newest first (the default) reads the jobs index from its end until the page is full, and
        the total from its counts: the cost of the page, not of the history. A search or another
        order reads every line of the index (not every record).
        """
        lines = (line for line in self.store.listed() if principals.visible(line["tenant"]))
        if status:
            lines = (line for line in lines if line["status"] == status)
        if q:
            lines = (line for line in lines if self._matches(line, q.casefold()))
        if sort == "created" and order in (None, "desc") and not q:
            total = visible_total(self.store.index.counts(), status, principals.visible)
            chosen = list(itertools.islice(lines, offset, offset + limit))
        else:
            every = _ordered(list(lines), sort, order)
            total, chosen = len(every), every[offset : offset + limit]
        page = []
        for line in chosen:  # a read changes nothing: the cleanup round mends what a line left behind
            with contextlib.suppress(NotFound):  # a create that died before its rename: not a job
                state = self.store.read(line["job_id"])
                if status and state.status != status and not state.broken:
                    continue  # it ended a moment ago: not in the state asked for any more
                page.append(self.view(state, detail=False))
        return total, page

    def _matches(self, line, needle):
        if needle in f"{line['model_name']}\n{line['dataset']}".casefold():
            return True
        if not line["cut"]:
            return False
        with contextlib.suppress(NotFound):  # names too long for the index line: the record says
            state = self.store.read(line["job_id"])
            return needle in f"{state.model_name or ''}\n{state.dataset or ''}".casefold()
        return False

    def request(self, job_id):
        """The request a job was created with, as received (a resumed job's names its source)."""
        self.store.read(job_id)  # 404 for an unknown job
        try:
            return self.store.read_file(job_id, JobStore.REQUEST)
        except (OSError, ValueError):
            raise NotFound(f"job {job_id} has no request.json", field="job_id") from None

    # -- stop ------------------------------------------------------------------------------

    def stop(self, job_id):
        """Stop a job and wait a bounded time for it; return (state, finished stopping)."""
        state = self.launcher.request_stop(job_id)
        # A stopped queued job may unblock the queue: started in the background, as after a create,
        # so that the answer is about this stop (a full disk writing another job is not its failure).
        self.start_queued_soon()
        if not JobStatus(state.status).is_terminal():
            state = self.launcher.wait_for(job_id, self.settings.stop_wait_s)
        done = JobStatus(state.status).is_terminal()
        if done:
            log.info("job %s: stop answered with status %s", job_id, state.status)
        return self.view(state), done

    # -- export, delete ----------------------------------------------------------------------------

    def export(self, job_id, export_dir, merge_lora, checkpoint=None):
        """Start (or join) an export of a completed job's weights (the final ones, "best" or a
        checkpoint-N); return (export state, finished)."""
        state = self.store.read(job_id)
        if state.status != JobStatus.COMPLETED.value:
            raise Conflict(
                f"job {job_id} is {state.status}; only completed jobs can be exported",
                extra={"job_status": state.status},
            )
        target = exports.resolve(self.settings.path("exports_dir"), self.settings.home, export_dir)
        output_dir = state.path("output_dir", "")
        checkpoint, _path = choose_weights(output_dir, checkpoint, state.best_checkpoint)
        started = []

        def mark(current):
            previous = current.export or {}
            if self.launcher.export_lost(previous):
                previous.update(
                    status="failed", error="lost: the export's monitor process died", finished_at=now_utc()
                )
            same = (
                previous.get("export_dir") == target
                and previous.get("merge_lora") == merge_lora
                and (previous.get("checkpoint") or FINAL) == checkpoint
            )
            if previous.get("status") == "running":
                if same:
                    return UNCHANGED
                raise Conflict(f"an export of job {job_id} to {previous['export_dir']} is still running")
            if same and previous.get("status") == "completed" and os.path.isdir(target):
                return UNCHANGED
            if os.path.exists(target) and previous.get("export_dir") != target:
                raise Conflict(
                    f"export_dir {target} already exists; choose another directory or remove it",
                    field="export_dir",
                )
            current.export = {
                "status": "running",
                "export_dir": target,
                "merge_lora": merge_lora,
                "checkpoint": checkpoint,
                "model_path": None,
                "requested_at": now_utc(),
                "finished_at": None,
                "error": None,
            }
            started.append(True)
            return CHANGED

        self.store.update(job_id, mark)
        if started:
            log.info(
                "job %s: export of %s to %s (merge_lora=%s) started", job_id, checkpoint, target, merge_lora
            )
            self.launcher.start_export(job_id)
        state = self.launcher.wait_for(
            job_id,
            self.settings.export_wait_s,
            done=lambda s: (s.export or {}).get("status") != "running",
        )
        export = state.export
        return export, export["status"] != "running"

    def delete(self, job_id):
        """Delete a finished job's directory (its exports stay)."""
        self.lifecycle.delete(job_id)


def _ordered(lines, sort, order):
    """Index lines by creation (newest first), finish time, or final loss (lowest first); jobs
    without the figure last either way, then newest first."""
    descending = (order or ("asc" if sort == "loss" else "desc")) == "desc"
    if sort == "created":
        return sorted(lines, key=lambda line: line["created_ns"], reverse=descending)
    figure = "loss" if sort == "loss" else "finished"
    having = sorted(
        (line for line in lines if line[figure] is not None), key=lambda x: x["created_ns"], reverse=True
    )
    having.sort(key=lambda line: line[figure], reverse=descending)  # stable: ties stay newest first
    lacking = sorted(
        (line for line in lines if line[figure] is None), key=lambda x: x["created_ns"], reverse=True
    )
    return having + lacking


def _validation_described(config, validation, early_stopping):
    """The job record's validation and early_stopping, as the trainer's config runs them."""
    if not validation:
        return {}
    names = validation.get("dataset")
    described = {
        "validation": {
            "val_size": validation.get("val_size"),
            "dataset": ",".join(names) if names else None,
            "eval_steps": config["eval_steps"],
        }
    }
    if early_stopping:
        described["early_stopping"] = {
            "patience": early_stopping["patience"],
            "min_delta": early_stopping.get("min_delta") or 0.0,
        }
    return described
