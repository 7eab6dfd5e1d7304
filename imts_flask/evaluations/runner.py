"""Running an evaluation's phases, in the monitor that claimed its launch (imts_flask/monitor.py).

Each phase is one llamafactory-cli run with its own config, in its own process group, its output
appended to evaluation.log. A phase whose results are on disk is done: an attempt after a lost
monitor (a host that died) goes on with the next one. The record says the phase running, and
gets each finished phase's figures at once, so a reader sees them as they come.
"""

import logging
import os

from ..errors import ServiceError
from ..observe.tracking import log_evaluation
from ..procs import start_ticks, terminate_tree
from ..runs.record import CHANGED, UNCHANGED, changed, setter
from ..state import JobStatus, now_utc
from .results import comparison, phase_done, phase_figures

log = logging.getLogger("imts.monitor")

EVALUATION_LOG = "evaluation.log"


def run_evaluation(monitor, state):
    """Run the phases of a claimed evaluation and record how it ended."""
    store, run_id = monitor.store, monitor.job_id
    monitor.launch = state.launch
    output_dir = state.paths["output_dir"]

    def mark_running(current):
        if current.status != JobStatus.PENDING.value or current.monitor != monitor.me:
            return UNCHANGED
        current.set(status=JobStatus.RUNNING.value, started_at=current.started_at or now_utc())
        return CHANGED

    state = store.update(run_id, mark_running)
    if state.status != JobStatus.RUNNING.value or state.monitor != monitor.me:
        log.info("evaluation became %s while starting: nothing to run", state.status)
        return
    for phase in state.phases:
        phase_dir = os.path.join(output_dir, phase)
        if phase_done(phase_dir):
            _record_phase(monitor, phase, phase_dir)  # done by an earlier attempt
            continue
        if _stop_requested(monitor):
            break
        rc = _run_phase(monitor, phase, state.paths["configs"][phase])
        if _stop_requested(monitor):
            break
        if rc != 0 or not phase_done(phase_dir):
            reason, signal_name, lines = monitor.failure(
                store.path(run_id, EVALUATION_LOG), rc, "see log_tail"
            )
            if rc == 0:
                reason = f"llamafactory-cli wrote no results for phase {phase}"
            error = f"phase {phase}: {reason}"
            failed = setter(
                status=JobStatus.FAILED.value,
                pid=None,
                trainer=None,
                error=error,
                exit_code=rc if rc >= 0 else None,
                signal=signal_name,
                log_tail=lines,
            )
            store.update(run_id, monitor._owned(failed))
            return
        _record_phase(monitor, phase, phase_dir)
    else:
        # The figures go to the job's MLflow run before the record says completed: a caller that
        # sees "completed" finds them there (a crash in between logs them again, on the same keys).
        try:
            current = store.read(run_id)
            job = store.read(current.training_job_id)
            results = comparison(current.results, current.baseline)
            log_evaluation(monitor.settings, job.mlflow_run_id, current.evaluation_id, results)
        except (OSError, ServiceError) as exc:  # the figures are in the record; only MLflow lacks them
            log.warning("the evaluation's figures could not be sent to MLflow (%s)", exc)
        ended = setter(status=JobStatus.COMPLETED.value, pid=None, trainer=None, phase=None, exit_code=0)
        store.update(run_id, monitor._owned(ended))
        log.info("evaluation completed")
        return
    store.update(run_id, monitor._owned(_stopped))


def _stopped(state):
    state.set(status=JobStatus.STOPPED.value, pid=None, trainer=None)
    return changed(reason="stopped between or during its phases")


def _stop_requested(monitor):
    if monitor.stop.set:
        return True
    try:
        return bool(monitor.store.read(monitor.job_id).stop_requested_at)
    except Exception:  # a record being replaced: the monitor's own look will see it
        return False


def _run_phase(monitor, phase, config_path):
    try:
        proc = monitor._run([monitor.settings.llamafactory_cli, "train", config_path], EVALUATION_LOG)
    except OSError as exc:
        log.error("phase %s could not start: %s", phase, exc)
        return 127
    ticks = start_ticks(proc.pid)

    def running(current):
        if current.monitor != monitor.me or current.status != JobStatus.RUNNING.value:
            return UNCHANGED
        current.set(
            phase=phase, pid=proc.pid, trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid}
        )
        return CHANGED

    state = monitor.record_started(proc, ticks, running)
    if state.pid != proc.pid:
        terminate_tree(proc.pid, ticks, 0, popen=proc)
        return -15
    log.info("phase %s started: pid %s", phase, proc.pid)
    rc = monitor._wait(proc, ticks)
    log.info("phase %s exited: %s", phase, rc)
    return rc


def _record_phase(monitor, phase, phase_dir):
    figures = phase_figures(phase_dir)

    def change(state):
        results = dict(state.results or {})
        if results.get(phase) == figures:
            return UNCHANGED
        results[phase] = figures
        state.results = results
        return CHANGED

    monitor.store.update(monitor.job_id, monitor._owned(change))
