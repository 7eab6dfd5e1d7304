"""The per-run monitor: the detached process that runs one run and records how it ended.

Started by the launcher (`python -m imts_flask.monitor train|export <run_id> ...`) in a session of
its own, where the executor runs it (this host, or a Ray node), so that web workers can come and
go. It is the run's process's parent, so it alone can read its exit status.

    train RUN_ID LAUNCH_ID   claim the launch, then run the run's kind's runner (runs.KINDS):
                             a job trains (jobs/runner.py), an evaluation runs its phases, a
                             deployment serves; then the scheduler hands the free slot on
    export JOB_ID            run the export a job's record says is running (jobs/runner.export)

supervisor.py is the context each runner is handed: claim, start, wait, heartbeat, stop.
"""

import dataclasses
import json
import logging
import os
import sys

from ..executors.common import MONITOR_LOG_ENV, MONITOR_SETTINGS_ENV
from ..jobs import runner as job_runner
from ..jobs.scheduler import Scheduler
from ..jobs.store import JobStore
from ..jobs.webhooks import Notifier
from ..runs import KINDS
from ..runs.record import setter
from ..settings import Settings
from ..state import JobStatus
from .supervisor import Supervisor

log = logging.getLogger(__name__)

USAGE = "usage: python -m imts_flask.monitor train RUN_ID LAUNCH_ID | export JOB_ID"


def train(sup, launch_id):
    """Run the launch `launch_id` of a pending run, if it is still that run's; then schedule."""
    state = sup.claim(launch_id)
    if state is None:
        return
    try:
        KINDS.runner(state.kind)(sup, state)
    finally:
        Scheduler(sup.settings, sup.store).schedule()  # its slot is free again: start the next run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not ((argv[:1] == ["train"] and len(argv) == 3) or (argv[:1] == ["export"] and len(argv) == 2)):
        print(USAGE, file=sys.stderr)
        return 2
    action, run_id, *extra = argv
    if os.environ.get(MONITOR_LOG_ENV):
        # Started by an engine (Ray) whose output goes elsewhere: write to the run's monitor.log.
        log_file = os.open(os.environ[MONITOR_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_file, 1)
        os.dup2(log_file, 2)
        os.close(log_file)
    raw = json.loads(os.environ.get(MONITOR_SETTINGS_ENV, "{}"))
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in raw.items() if k in known})
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s monitor[{run_id}] %(message)s")
    sup = Supervisor(settings, run_id, open_store(settings))
    try:
        if action == "train":
            train(sup, *extra)
        else:
            job_runner.export(sup)
    except Exception:
        log.exception("monitor failed")
        if action == "train":
            error = "the run's monitor failed unexpectedly; see monitor.log"
            sup.update(setter(status=JobStatus.FAILED.value, pid=None, error=error))
        return 1
    return 0


def open_store(settings):
    """The store as a monitor uses it: status changes are announced to webhooks."""
    return JobStore(
        settings.path("jobs_dir"),
        settings.lock_timeout_s,
        Notifier(settings),
        folders=KINDS.folders(settings),
    )
