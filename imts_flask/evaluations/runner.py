"""Running an evaluation's phases, in the monitor that claimed its launch (monitor/supervisor.py).

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
from ..state import JobStatus
from .results import comparison, phase_done, phase_figures

log = logging.getLogger(__name__)

EVALUATION_LOG = "evaluation.log"


def run(sup, state):
    """Run the phases of a claimed evaluation and record how it ended."""
    store, run_id = sup.store, sup.run_id
    output_dir = state.paths["output_dir"]
    state = sup.mark_running()
    if state is None:
        return
    for phase in state.phases:
        phase_dir = os.path.join(output_dir, phase)
        if phase_done(phase_dir):
            _record_phase(sup, phase, phase_dir)  # done by an earlier attempt
            continue
        if sup.stop_requested():
            break
        rc = _run_phase(sup, phase, state.paths["configs"][phase])
        if sup.stop_requested():
            break
        if rc != 0 or not phase_done(phase_dir):
            reason, signal_name, lines = sup.failure(store.path(run_id, EVALUATION_LOG), rc, "see log_tail")
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
            sup.update(failed)
            return
        _record_phase(sup, phase, phase_dir)
    else:
        # The figures go to the job's MLflow run before the record says completed: a caller that
        # sees "completed" finds them there (a crash in between logs them again, on the same keys).
        try:
            current = store.read(run_id)
            job = store.read(current.training_job_id)
            results = comparison(current.results, current.baseline)
            log_evaluation(sup.settings, job.mlflow_run_id, current.evaluation_id, results)
        except (OSError, ServiceError) as exc:  # the figures are in the record; only MLflow lacks them
            log.warning("the evaluation's figures could not be sent to MLflow (%s)", exc)
        ended = setter(status=JobStatus.COMPLETED.value, pid=None, trainer=None, phase=None, exit_code=0)
        sup.update(ended)
        log.info("evaluation completed")
        return
    sup.update(_stopped)


def _stopped(state):
    state.set(status=JobStatus.STOPPED.value, pid=None, trainer=None)
    return changed(reason="stopped between or during its phases")


def _run_phase(sup, phase, config_path):
    try:
        proc = sup.start([sup.settings.llamafactory_cli, "train", config_path], EVALUATION_LOG)
    except OSError as exc:
        log.error("phase %s could not start: %s", phase, exc)
        return 127
    ticks = start_ticks(proc.pid)

    def running(current):
        if current.monitor != sup.me or current.status != JobStatus.RUNNING.value:
            return UNCHANGED
        current.set(
            phase=phase, pid=proc.pid, trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid}
        )
        return CHANGED

    state = sup.record_started(proc, ticks, running)
    if state.pid != proc.pid:
        terminate_tree(proc.pid, ticks, 0, popen=proc)
        return -15
    log.info("phase %s started: pid %s", phase, proc.pid)
    rc = sup.wait(proc, ticks)
    log.info("phase %s exited: %s", phase, rc)
    return rc


def _record_phase(sup, phase, phase_dir):
    figures = phase_figures(phase_dir)

    def change(state):
        results = dict(state.results or {})
        if results.get(phase) == figures:
            return UNCHANGED
        results[phase] = figures
        state.results = results
        return CHANGED

    sup.update(change)
