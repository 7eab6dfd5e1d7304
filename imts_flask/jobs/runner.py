"""Running a job, in the monitor that claimed its launch (monitor/supervisor.py): llamafactory-cli
train, from the newest complete checkpoint when there is one, watched until it exits, and the
outcome recorded; and an export of its weights (llamafactory-cli export, or the adapter's files).

A stop (a DELETE, SIGTERM, the record's stop_requested_at) ends the trainer with the grace period;
a preempted job goes back to the queue for its next attempt. The supervisor does what every run
needs (claim, start, wait, heartbeat, usage); this module says what a job's attempt is.
"""

import contextlib
import logging
import os
import secrets
import shutil
import time

from ..errors import InsufficientStorage, Unavailable
from ..llamafactory.configs import attempt_config, build_export_config, resume_refusal
from ..llamafactory.trainer_log import FINAL_RESULTS, outcome, run_complete, trim_log
from ..llamafactory.trainer_state import validation_figures
from ..observe.gpus import Gpus
from ..observe.tracking import JobTracking
from ..procs import start_ticks, tree_pids
from ..runs.record import CHANGED, UNCHANGED, changed, setter
from ..state import JobStatus, now_utc
from . import exports, preemption
from .checkpoints import (
    CHECKPOINT_STATE,
    FINAL,
    TRAINING_RECORDS,
    copy_checkpoint,
    discard_incomplete,
    disk_bytes,
    incomplete_reason,
    latest_resumable,
)
from .liveness import record_completed
from .store import JobStore
from .validation import ValidationWatch
from .views import tensorboard_dir

log = logging.getLogger(__name__)

# How often a running job's disk use and GPU memory are measured again.
MEASURE_EVERY_S = 60.0

# The exporter writes into <job dir>/.export-staging-<token>; exports.publish moves it into place.
EXPORT_STAGING = ".export-staging-"


class _CannotStart(Exception):
    """This attempt cannot start its trainer; the message is the job's error."""


class _AlreadyFinished(Exception):
    """The run trained to its end before this attempt (its monitor was lost after the trainer ended)."""


def run(sup, state):
    """Run a claimed job's attempt and record how it ended."""
    _Attempt(sup, state).run()


class _Attempt:
    def __init__(self, sup, state):
        self.sup, self.state = sup, state
        self.store, self.job_id = sup.store, sup.run_id
        self.gpus = Gpus(sup.settings.gpu_ids)  # this host's, as the engine handed them
        self._measured = 0.0

    def run(self):
        sup, state = self.sup, self.state
        settings = sup.settings
        config_path = self.store.path(self.job_id, JobStore.TRAIN_CONFIG)
        if state.tensorboard:
            sup.extra_env["TENSORBOARD_LOGGING_DIR"] = tensorboard_dir(state.paths)
        try:
            resume, config = self._prepare(state)
            sup.torchrun = "deepspeed" in config
            try:
                proc = sup.start([settings.llamafactory_cli, "train", config_path], JobStore.TRAIN_LOG)
            except OSError as exc:
                raise _CannotStart(
                    f"could not start {settings.llamafactory_cli}: {exc.strerror or exc}"
                ) from exc
        except _CannotStart as exc:
            sup.update(setter(status=JobStatus.FAILED.value, error=str(exc)))
            return
        except _AlreadyFinished:
            output_dir = state.paths["output_dir"]
            reason = "the run had already trained to its end and saved its results: nothing to resume"
            sup.update(lambda s: record_completed(s, output_dir, reason))
            return
        ticks = start_ticks(proc.pid)

        state = sup.mark_running(
            proc,
            ticks,
            details={"resumed_from": resume["name"]} if resume else None,
            resumed_at_step=resume["step"] if resume else None,
        )
        if state is None:
            return
        log.info("trainer started: pid %s", proc.pid)
        watch = ValidationWatch(state.paths["output_dir"], state.early_stopping) if state.validation else None
        tracking = JobTracking(settings, state.paths["output_dir"])

        def on_beat():
            try:
                self._measure(proc)
                self._track(tracking, state, config)
                stalled = watch is not None and self._watch_validation(watch)
            except (InsufficientStorage, Unavailable) as exc:  # a full disk passes; the run goes on
                log.warning("a beat's figures could not be recorded (%s); the run goes on", exc)
                return None
            return "eval_loss stalled (early_stopping's min_delta)" if stalled else None

        rc = sup.wait(proc, ticks, on_beat=on_beat)
        log.info("trainer exited: %s", rc)
        used = disk_bytes(self.store.path(self.job_id))
        try:  # the last metrics reach MLflow before the record says how the run ended
            self._track(tracking, state, config)
        except (InsufficientStorage, Unavailable) as exc:
            log.warning("the run's MLflow id could not be recorded (%s)", exc)
        final = sup.update(lambda s: self._record_outcome(s, rc, used))
        if JobStatus(final.status).is_terminal():  # a preempted job's run goes on with its next attempt
            tracking.end(final.status)

    def _measure(self, trainer):
        """Now and then, record the job directory's disk use (a walk of it, not on every status read)
        and the GPU memory of the trainer's tree as this host's NVML sees it (for readers elsewhere)."""
        if time.monotonic() - self._measured < MEASURE_EVERY_S:
            return
        self._measured = time.monotonic()
        figures = {"disk_bytes": disk_bytes(self.store.path(self.job_id))}
        if self.gpus.ids:
            figures["gpu_memory_bytes"] = self.gpus.memory_of(
                tree_pids(trainer.pid, start_ticks(trainer.pid))
            )
        self.store.update(self.job_id, setter(**figures))

    def _track(self, tracking, state, config):
        """Start the job's MLflow run once (its id goes into the record), then log the new metrics."""
        if tracking.on and not tracking.run_id:
            run_id = tracking.start(state, config)
            if run_id and run_id != state.mlflow_run_id:
                self.sup.update(setter(mlflow_run_id=run_id))
        tracking.beat()

    def _watch_validation(self, watch):
        """Record the evaluations logged since the last beat; return whether the run should end."""
        figures = watch.read()
        if figures:
            self.sup.update(setter(**figures))
        return watch.should_end()

    def _prepare(self, state):
        """Put output_dir in order for this attempt and write its config; return (the checkpoint
        resumed from or None, the attempt's config).

        A job resumed from another job's checkpoint gets its own copy of it first. Incomplete
        checkpoints (a save cut short when the host died) are removed, never resumed from; the
        newest complete one is resumed from, and without one training starts over.
        """
        output_dir = state.paths["output_dir"]
        source = state.resumed_from
        if source and not state.seeded_at:
            path = os.path.join(self.store.path(source["job_id"], JobStore.OUTPUT), source["checkpoint"])
            try:
                copy = copy_checkpoint(path, output_dir)
            except OSError as exc:
                raise _CannotStart(
                    f"cannot resume: {source['checkpoint']} of job {source['job_id']} could not be copied "
                    f"({exc.strerror or exc}); it may have been removed"
                ) from exc
            problem = incomplete_reason(copy, source["step"])
            if problem:
                raise _CannotStart(
                    f"cannot resume: {source['checkpoint']} of job {source['job_id']}: {problem}"
                )
            self.sup.update(setter(seeded_at=now_utc()))
        if run_complete(output_dir):
            raise _AlreadyFinished
        for name in discard_incomplete(output_dir):
            log.warning("removed the incomplete %s: it is never resumed from", name)
        config = self.store.read_file(self.job_id, JobStore.TRAIN_CONFIG)
        # Never from a checkpoint at the run's end: transformers would train past it (85 of 84).
        checkpoint = None if resume_refusal(config) else latest_resumable(output_dir)
        planned = attempt_config(config, checkpoint["path"] if checkpoint else None)
        if (state.launch or {}).get("ray_workers"):
            planned["ray_num_workers"] = state.launch["ray_workers"]  # LLaMA Factory's own Ray training
        if planned != config:
            self.store.write_file(self.job_id, JobStore.TRAIN_CONFIG, planned)
        if checkpoint:
            trim_log(output_dir, checkpoint["step"])
            for name in FINAL_RESULTS:  # a stop's results, short of the end: this attempt writes its own
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(output_dir, name))
            log.info("attempt %s resumes from %s", state.attempt or 1, checkpoint["name"])
        return checkpoint, planned

    def _record_outcome(self, state, rc, used):
        sup = self.sup
        output_dir = state.paths["output_dir"]
        status, progress = outcome(
            rc, output_dir, sup.signalled or bool(state.stop_requested_at), sup.ending_early
        )
        state.set(pid=None, exit_code=rc if rc >= 0 else None, signal=None, final=progress, disk_bytes=used)
        if state.validation:
            figures = {k: v for k, v in validation_figures(output_dir).items() if v is not None}
            if status == JobStatus.COMPLETED.value and sup.ending_early:
                figures["stopped_early"] = True
            state.set(figures)
        if status == JobStatus.STOPPED.value and preemption.requeue(state):
            return changed(reason=preemption.reason(state))  # it waits for the GPUs it made way with
        state.preempting = None
        if status == JobStatus.COMPLETED.value:
            state.status = JobStatus.COMPLETED.value
            state.final["progress"] = 1.0
        elif status == JobStatus.STOPPED.value:
            state.status = JobStatus.STOPPED.value
        else:
            reason, lines = "see log_tail", None
            if rc == 0:
                lines = sup.failure(state.paths["log"], rc, reason)[2]
                reason = (
                    f"llamafactory-cli exited with code 0 before the last step "
                    f"({progress.get('current_step')} of {progress.get('total_steps')})"
                )
            else:
                reason, state.signal, lines = sup.failure(state.paths["log"], rc, reason)
            state.set(status=JobStatus.FAILED.value, error=reason, log_tail=lines)
        return CHANGED


def export(sup):
    """Run the export a job's record says is running and not yet claimed; record how it ended."""

    def claim(current):
        export = current.export or {}
        if export.get("status") != "running" or export.get("monitor"):
            return UNCHANGED
        export["monitor"] = sup.me
        return CHANGED

    store, job_id = sup.store, sup.run_id
    state = store.update(job_id, claim)
    export = state.export or {}
    if export.get("monitor") != sup.me:
        return
    target = export["export_dir"]
    job_dir = store.path(job_id)
    for name in os.listdir(job_dir):  # one export at a time: what an earlier one left is stale
        if name.startswith(EXPORT_STAGING):
            shutil.rmtree(os.path.join(job_dir, name), ignore_errors=True)
    staged = os.path.join(job_dir, f"{EXPORT_STAGING}{secrets.token_hex(4)}")
    try:
        rc = _export_into(sup, export, staged)
        if rc == 0 and not os.path.isdir(staged):
            rc, reason = 1, "the exporter wrote nothing"
        else:
            reason = None
        if rc == 0:
            exports.publish(staged, sup.settings.path("exports_dir"), target)
    except exports.ExportRefused as exc:
        rc, reason = 1, f"not written: {exc}"
    except OSError as exc:
        rc, reason = 1, f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(staged, ignore_errors=True)

    def record(current):
        current_export = current.export or {}
        if current_export.get("export_dir") != target:
            return UNCHANGED
        current_export["finished_at"] = now_utc()
        if rc == 0:
            current_export.update(status="completed", model_path=target, error=None)
        else:
            detail, _, lines = sup.failure(store.path(job_id, JobStore.EXPORT_LOG), rc, "see export.log")
            current_export.update(status="failed", error=reason or detail, log_tail=lines)
        current.export = current_export
        return CHANGED

    store.update(job_id, record)


def _export_into(sup, export, staged):
    store, job_id = sup.store, sup.run_id
    train_config = store.read_file(job_id, JobStore.TRAIN_CONFIG)
    lora = train_config.get("finetuning_type") == "lora"
    checkpoint = export.get("checkpoint") or FINAL
    weights = train_config["output_dir"]
    if checkpoint != FINAL:
        weights = os.path.join(weights, checkpoint)
    if lora and not export["merge_lora"]:
        # The adapter alone: its weights, config and tokenizer files, without checkpoints, logs
        # and a checkpoint's optimizer state.
        os.makedirs(staged)
        for name in os.listdir(weights):
            source = os.path.join(weights, name)
            if (
                os.path.isfile(source)
                and name not in TRAINING_RECORDS
                and not name.startswith(CHECKPOINT_STATE)
            ):
                shutil.copy2(source, os.path.join(staged, name))
        return 0
    config = build_export_config(train_config, staged, weights)
    path = store.write_file(job_id, JobStore.EXPORT_CONFIG, config)
    proc = sup.start([sup.settings.llamafactory_cli, "export", path], JobStore.EXPORT_LOG)
    return sup.wait(proc, start_ticks(proc.pid))
