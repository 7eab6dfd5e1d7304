"""What a probe's monitor does, through the supervisor's public face alone."""

import sys

from imts_flask.procs import start_ticks
from imts_flask.runs.record import setter
from imts_flask.state import JobStatus

from . import record


def run(sup, state):
    state = sup.mark_running()
    if state is None:
        return
    proc = sup.start([sys.executable, "-c", f"print({state.message!r})"], record.LOG)
    ticks = start_ticks(proc.pid)
    sup.record_started(proc, ticks, sup.owned(setter(pid=proc.pid)))
    rc = sup.wait(proc, ticks)
    outcome = JobStatus.COMPLETED if rc == 0 else JobStatus.FAILED
    sup.update(setter(status=outcome.value, pid=None, exit_code=rc))
