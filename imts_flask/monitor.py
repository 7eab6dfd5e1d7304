"""The per-job monitor: runs llamafactory-cli, waits for it, and records the outcome.

Started detached by the launcher (`python -m imts_flask.monitor train|export <job_id>`) in its own
session, so that web workers can come and go. It is the trainer's parent, so it alone can read
its exit status. SIGTERM asks it to stop the trainer (SIGTERM to the trainer's group, a grace
period, SIGKILL of survivors) and record the job as stopped. An evaluation's run id
(<job>/<evaluation>) goes through `train` too, and runs its phases (evaluations/runner.py).
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

from .deployments import record as deployment_record
from .deployments.runner import run_deployment
from .errors import InsufficientStorage, Unavailable
from .evaluations import record as evaluation_record
from .evaluations.runner import run_evaluation
from .executors import HOST
from .executors.common import MONITOR_LOG_ENV, MONITOR_SETTINGS_ENV
from .jobs import exports, preemption
from .jobs.checkpoints import (
    CHECKPOINT_STATE,
    FINAL,
    TRAINING_RECORDS,
    copy_checkpoint,
    discard_incomplete,
    disk_bytes,
    incomplete_reason,
    latest_resumable,
)
from .jobs.liveness import account, record_completed
from .jobs.scheduler import Scheduler
from .jobs.store import JobStore
from .jobs.validation import ValidationWatch
from .jobs.views import tensorboard_dir
from .llamafactory.configs import attempt_config, build_export_config, resume_refusal
from .llamafactory.environment import trainer_env
from .llamafactory.trainer_log import FINAL_RESULTS, outcome, run_complete, trim_log
from .llamafactory.trainer_state import validation_figures
from .observe.gpus import Gpus
from .observe.tracking import JobTracking
from .observe.webhooks import Notifier
from .procs import boot_id, start_ticks, terminate_tree, tree_pids
from .runs.record import CHANGED, UNCHANGED, changed, setter
from .settings import Settings
from .state import JobStatus, now_utc
from .tenancy.usage import Meter

log = logging.getLogger("imts.monitor")

# How often a running job's disk use and GPU memory are measured again.
MEASURE_EVERY_S = 60.0

# The exporter writes into <job dir>/.export-staging-<token>; exports.publish moves it into place.
EXPORT_STAGING = ".export-staging-"
_ERROR_LINE = re.compile(r"^\w*(Error|Exception|error)\b.*|^.*Traceback")


class _StopFlag:
    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        log.info("received signal %s: stopping the trainer", signum)
        self.set = True


def _tail_lines(path, count):
    from .fsio import read_tail

    lines = [line for line in read_tail(path, 64 * 1024).splitlines() if line.strip()]
    # Progress bars redraw with carriage returns; keep what the terminal would show last.
    return [line.rsplit("\r", 1)[-1] for line in lines[-count:]]


def _failure_reason(lines, fallback):
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()[:500]
    return fallback


def _describe_exit(rc, what="llamafactory-cli"):
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"{what} was killed by signal {-rc} ({name})", name
    return f"{what} exited with code {rc}", None


class _CannotStart(Exception):
    """This attempt cannot start its trainer; the message is the job's error."""


class _AlreadyFinished(Exception):
    """The run trained to its end before this attempt (its monitor was lost after the trainer ended)."""


class Monitor:
    def __init__(self, settings, job_id):
        self.settings = settings
        self.job_id = job_id
        self.store = JobStore(
            settings.path("jobs_dir"),
            settings.lock_timeout_s,
            Notifier(settings),
            deployments_root=settings.path("deployments_dir"),
        )
        self._measured = 0.0
        self.gpus = Gpus(settings.gpu_ids)  # this host's, as the engine handed them
        pid = os.getpid()
        self.me = {"pid": pid, "start_ticks": start_ticks(pid), "host": HOST, "boot": boot_id()}
        self.stop = _StopFlag()
        self.launch = None
        self.torchrun = False
        self.ending_early = False  # the monitor ended the run: min_delta's patience ran out
        self.extra_env = {}  # for the trainer, besides its GPUs: where TensorBoard writes
        self._looked = 0.0
        self.gpu_count = 0  # GPUs this run holds: its gpu_seconds grow by as many each second
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.stop)

    def _heartbeat(self):
        path = self.store.path(self.job_id, JobStore.HEARTBEAT)
        with open(path, "w") as handle:
            handle.write(f"{time.time():.0f}\n")

    def _run(self, argv, log_name):
        """Start a llamafactory-cli command in its own process group, output appended to a log."""
        log_path = self.store.path(self.job_id, log_name)
        launch = self.launch or {}  # an export has none: no GPU
        with open(log_path, "ab") as out:
            out.write(f"=== {now_utc()} imts monitor (pid {os.getpid()}): {' '.join(argv)}\n".encode())
            out.flush()
            return subprocess.Popen(
                argv,
                cwd=self.store.path(self.job_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={
                    **trainer_env(
                        self.settings,
                        launch.get("gpus"),
                        self.torchrun,
                        engine="gpus" in launch and launch["gpus"] is None,  # placed by Ray, with its GPUs
                        ray_workers=launch.get("ray_workers") or 0,
                    ),
                    **self.extra_env,
                },
            )

    def _wait(self, proc, ticks, on_beat=None, on_tick=None):
        """Wait for the child, heartbeating; on a stop request terminate its tree. Return its code.

        `on_beat()` runs with each heartbeat; when it returns a reason the run is ended the same way.
        `on_tick()` runs on every look (5 a second), for what must be seen at once.
        """
        stopping = False
        last_beat = 0.0
        meter = Meter(self.store.read(self.job_id), self.gpu_count, proc.pid, ticks)
        while proc.poll() is None:
            self._look_for_stop()
            if (self.stop.set or self.ending_early) and not stopping:
                stopping = True
                terminate_tree(proc.pid, ticks, self.settings.stop_grace_s, popen=proc)
                continue
            now = time.monotonic()
            if now - last_beat >= self.settings.heartbeat_s:
                self._heartbeat()
                reason = on_beat() if on_beat is not None else None
                if reason and not self.ending_early:
                    log.info("ending the run: %s", reason)
                    self.ending_early = True
                last_beat = now
            if on_tick is not None:
                on_tick()
            if meter.due():
                self._record_usage(meter.figures())
            time.sleep(0.2)
        self._record_usage(meter.figures(ended=True))
        self._account()
        return proc.returncode

    def _record_usage(self, figures):
        try:
            self.store.update(self.job_id, self._owned(setter(**figures)))
        except (InsufficientStorage, Unavailable) as exc:  # the next figures include these
            log.warning("usage figures could not be recorded (%s)", exc)

    def _account(self):
        """Put what this attempt used into the usage ledger, once (jobs/liveness.account)."""
        try:
            state = self.store.read(self.job_id)
        except (OSError, InsufficientStorage, Unavailable) as exc:
            log.warning("the usage ledger could not be written (%s); GET /usage lacks it", exc)
            return
        account(self.store, self.settings, state, self.me)

    def _look_for_stop(self):
        """Read the job's record once a second: a stop requested through any instance, on any host."""
        if self.stop.set or time.monotonic() - self._looked < 1.0:
            return
        self._looked = time.monotonic()
        try:
            if self.store.read(self.job_id).stop_requested_at:
                log.info("a stop was requested in the job's record: stopping the trainer")
                self.stop.set = True
        except Exception:  # a record being replaced, a lock: the next look will do
            log.debug("could not read the job's record", exc_info=True)

    def failure(self, log_path, rc, fallback, what="llamafactory-cli"):
        """Why a llamafactory-cli run failed: (reason, signal name or None, the log's last lines)."""
        lines = _tail_lines(log_path, self.settings.log_tail_lines)
        reason, signal_name = _describe_exit(rc, what)
        return f"{reason}: {_failure_reason(lines, fallback)}", signal_name, lines

    def _owned(self, change):
        """Wrap a state change so that it applies only while this monitor owns the job's attempt."""
        return lambda current: change(current) if current.monitor == self.me else UNCHANGED

    def record_started(self, proc, ticks, change):
        """Record a process just started (a trainer, a phase, a server); if the record cannot be
        written (a full disk, a lock that times out) the process is stopped before the error goes
        on: a process its record does not name would run on unseen, and the job's next attempt
        would start a second one beside it (the chaos soak's full disk found two trainers)."""
        try:
            return self.store.update(self.job_id, change)
        except BaseException:
            log.error("could not record process %s: stopping it", proc.pid)
            terminate_tree(proc.pid, ticks, self.settings.stop_grace_s, popen=proc)
            raise

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

    # -- training --------------------------------------------------------------------------

    def train(self, launch_id):
        def claim(current):
            # Only the monitor of the current launch may start the job, and only once.
            if current.status != JobStatus.PENDING.value or (current.launch or {}).get("id") != launch_id:
                return UNCHANGED
            current.monitor = self.me
            return CHANGED

        state = self.store.update(self.job_id, claim)
        if state.monitor != self.me:
            log.info(
                "job is %s with launch %s, not ours (%s): nothing to start",
                state.status,
                (state.launch or {}).get("id"),
                launch_id,
            )
            return
        self._heartbeat()
        self.launch = state.launch
        self.gpu_count = len(self.launch.get("gpus") or []) or (state.gpus or 0)
        if state.kind == evaluation_record.KIND:
            run_evaluation(self, state)
            Scheduler(self.settings, self.store).schedule()  # its slot is free again
            return
        if state.kind == deployment_record.KIND:
            run_deployment(self, state)
            Scheduler(self.settings, self.store).schedule()  # its slot is free again
            return
        config_path = self.store.path(self.job_id, JobStore.TRAIN_CONFIG)
        if state.tensorboard:
            self.extra_env["TENSORBOARD_LOGGING_DIR"] = tensorboard_dir(state.paths)
        try:
            resume, config = self._prepare_attempt(state)
            self.torchrun = "deepspeed" in config
            try:
                proc = self._run([self.settings.llamafactory_cli, "train", config_path], JobStore.TRAIN_LOG)
            except OSError as exc:
                raise _CannotStart(
                    f"could not start {self.settings.llamafactory_cli}: {exc.strerror or exc}"
                ) from exc
        except _CannotStart as exc:
            error = str(exc)
            self.store.update(self.job_id, self._owned(setter(status=JobStatus.FAILED.value, error=error)))
            Scheduler(self.settings, self.store).schedule()  # its slot is free again
            return
        except _AlreadyFinished:
            output_dir = state.paths["output_dir"]
            reason = "the run had already trained to its end and saved its results: nothing to resume"
            self.store.update(self.job_id, self._owned(lambda s: record_completed(s, output_dir, reason)))
            Scheduler(self.settings, self.store).schedule()
            return
        ticks = start_ticks(proc.pid)

        def mark_running(current):
            if current.status != JobStatus.PENDING.value or current.monitor != self.me:
                return UNCHANGED
            current.set(
                status=JobStatus.RUNNING.value,
                pid=proc.pid,
                started_at=current.started_at or now_utc(),
                trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid},
                monitor=self.me,
                resumed_at_step=resume["step"] if resume else None,
            )
            return changed(resumed_from=resume["name"]) if resume else CHANGED

        state = self.record_started(proc, ticks, mark_running)
        if state.pid != proc.pid:
            log.info("job became %s while starting: stopping the trainer", state.status)
            terminate_tree(proc.pid, ticks, 0, popen=proc)
            return
        log.info("trainer started: pid %s", proc.pid)
        watch = None
        if state.validation:
            watch = ValidationWatch(state.paths["output_dir"], state.early_stopping)
        tracking = JobTracking(self.settings, state.paths["output_dir"])

        def on_beat():
            try:
                self._measure(proc)
                self._track(tracking, state, config)
                stalled = watch is not None and self._watch_validation(watch)
            except (InsufficientStorage, Unavailable) as exc:  # a full disk passes; the run goes on
                log.warning("a beat's figures could not be recorded (%s); the run goes on", exc)
                return None
            return "eval_loss stalled (early_stopping's min_delta)" if stalled else None

        rc = self._wait(proc, ticks, on_beat=on_beat)
        log.info("trainer exited: %s", rc)
        used = disk_bytes(self.store.path(self.job_id))
        try:  # the last metrics reach MLflow before the record says how the run ended
            self._track(tracking, state, config)
        except (InsufficientStorage, Unavailable) as exc:
            log.warning("the run's MLflow id could not be recorded (%s)", exc)
        final = self.store.update(self.job_id, self._owned(lambda s: self._record_outcome(s, rc, used)))
        if JobStatus(final.status).is_terminal():  # a preempted job's run goes on with its next attempt
            tracking.end(final.status)
        Scheduler(self.settings, self.store).schedule()  # a slot is free: start the next queued job

    def _track(self, tracking, state, config):
        """Start the job's MLflow run once (its id goes into the record), then log the new metrics."""
        if tracking.on and not tracking.run_id:
            run_id = tracking.start(state, config)
            if run_id and run_id != state.mlflow_run_id:
                self.store.update(self.job_id, self._owned(setter(mlflow_run_id=run_id)))
        tracking.beat()

    def _watch_validation(self, watch):
        """Record the evaluations logged since the last beat; return whether the run should end."""
        figures = watch.read()
        if figures:
            self.store.update(self.job_id, self._owned(setter(**figures)))
        return watch.should_end()

    def _prepare_attempt(self, state):
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
            self.store.update(self.job_id, self._owned(setter(seeded_at=now_utc())))
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
        output_dir = state.paths["output_dir"]
        status, progress = outcome(
            rc, output_dir, self.stop.set or bool(state.stop_requested_at), self.ending_early
        )
        state.set(pid=None, exit_code=rc if rc >= 0 else None, signal=None, final=progress, disk_bytes=used)
        if state.validation:
            figures = {k: v for k, v in validation_figures(output_dir).items() if v is not None}
            if status == JobStatus.COMPLETED.value and self.ending_early:
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
            lines = _tail_lines(state.paths["log"], self.settings.log_tail_lines)
            if rc == 0:
                reason = (
                    f"llamafactory-cli exited with code 0 before the last step "
                    f"({progress.get('current_step')} of {progress.get('total_steps')})"
                )
            else:
                reason, state.signal = _describe_exit(rc)
                reason = f"{reason}: {_failure_reason(lines, 'see log_tail')}"
            state.set(status=JobStatus.FAILED.value, error=reason, log_tail=lines)
        return CHANGED

    # -- export ----------------------------------------------------------------------------

    def export(self):
        def claim(current):
            export = current.export or {}
            if export.get("status") != "running" or export.get("monitor"):
                return UNCHANGED
            export["monitor"] = self.me
            return CHANGED

        state = self.store.update(self.job_id, claim)
        export = state.export or {}
        if export.get("monitor") != self.me:
            return
        target = export["export_dir"]
        job_dir = self.store.path(self.job_id)
        for name in os.listdir(job_dir):  # one export at a time: what an earlier one left is stale
            if name.startswith(EXPORT_STAGING):
                shutil.rmtree(os.path.join(job_dir, name), ignore_errors=True)
        staged = os.path.join(job_dir, f"{EXPORT_STAGING}{secrets.token_hex(4)}")
        try:
            rc = self._export_into(state, export, staged)
            if rc == 0 and not os.path.isdir(staged):
                rc, reason = 1, "the exporter wrote nothing"
            else:
                reason = None
            if rc == 0:
                exports.publish(staged, self.settings.path("exports_dir"), target)
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
                lines = _tail_lines(
                    self.store.path(self.job_id, JobStore.EXPORT_LOG), self.settings.log_tail_lines
                )
                detail = reason or (_describe_exit(rc)[0] + ": " + _failure_reason(lines, "see export.log"))
                current_export.update(status="failed", error=detail, log_tail=lines)
            current.export = current_export
            return CHANGED

        self.store.update(self.job_id, record)

    def _export_into(self, state, export, staged):
        train_config = self.store.read_file(self.job_id, JobStore.TRAIN_CONFIG)
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
        path = self.store.write_file(self.job_id, JobStore.EXPORT_CONFIG, config)
        proc = self._run([self.settings.llamafactory_cli, "export", path], JobStore.EXPORT_LOG)
        return self._wait(proc, start_ticks(proc.pid))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not ((argv[:1] == ["train"] and len(argv) == 3) or (argv[:1] == ["export"] and len(argv) == 2)):
        print("usage: python -m imts_flask.monitor train JOB_ID LAUNCH_ID | export JOB_ID", file=sys.stderr)
        return 2
    action, job_id, *extra = argv
    if os.environ.get(MONITOR_LOG_ENV):
        # Started by an engine (Ray) whose output goes elsewhere: write to the job's monitor.log.
        log_file = os.open(os.environ[MONITOR_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_file, 1)
        os.dup2(log_file, 2)
        os.close(log_file)
    raw = json.loads(os.environ.get(MONITOR_SETTINGS_ENV, "{}"))
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in raw.items() if k in known})
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s monitor[{job_id}] %(message)s")
    monitor = Monitor(settings, job_id)
    try:
        getattr(monitor, action)(*extra)
    except Exception:
        log.exception("monitor failed")
        if action == "train":
            error = "the job's monitor failed unexpectedly; see monitor.log"
            monitor.store.update(
                job_id, monitor._owned(setter(status=JobStatus.FAILED.value, pid=None, error=error))
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
