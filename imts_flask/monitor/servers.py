"""A server kept alive by its monitor: the loop the kinds that serve share (deployments/runner.py,
serving/runner.py).

The server is the monitor's child in its own process group, its output appended to the run's log.
The monitor heartbeats as for a job; each beat it asks the server's /v1/models (once it answers, the
run is ready), counts the requests in the log, and ends an idle server when its idle setting says
so. A server that dies is started again (`restarts`, up to max_attempts in all) before the run is
failed with the reason and the log's tail. A stop (DELETE, SIGTERM) ends the server with the grace
period; the slot is then free and the scheduler runs.
"""

import contextlib
import dataclasses
import logging
import os
import signal
import time

from ..errors import InsufficientStorage, Unavailable
from ..procs import start_ticks, terminate_tree
from ..runs.endpoints import answers
from ..runs.record import changed, setter
from ..state import JobStatus, now_utc

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 2.0
# uvicorn's access lines of the requests a server answers (LLaMA Factory's app and vLLM's alike).
REQUESTS = (b'"POST /v1/chat/completions', b'"POST /v1/completions')


@dataclasses.dataclass
class Served:
    """What a kind tells the loop about its server."""

    argv: list  # the server's command line
    log_name: str  # its output, in the run's directory
    host: str
    port: int
    api_key: str
    idle_minutes: float  # 0: never stopped for idleness
    start_timeout_s: float
    env: dict = dataclasses.field(default_factory=dict)


class Watch:
    """What the monitor looks at on each beat of a live server."""

    def __init__(self, sup, state, served, log_path, started):
        self.sup, self.state, self.served_by = sup, state, served
        self.log_path = log_path
        self.started = started
        self.offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        self.ready = False
        self.served = state.requests_served or 0
        self.last_request = time.time()
        self.idle = False
        self.timed_out = False

    def tick(self):
        """While the server starts, ask it at every look: ready is recorded within 0.2 s."""
        served = self.served_by
        if not self.ready and answers(served.host, served.port, served.api_key, timeout=0.5):
            try:
                self.sup.update(setter(ready_at=now_utc()))
            except (InsufficientStorage, Unavailable) as exc:
                log.warning("ready, but not recorded yet (%s): trying again", exc)
                return
            self.ready = True
            self.last_request = time.time()
            log.info("the server answers on port %s: ready", served.port)

    def beat(self):
        changes = self._counted()
        if changes:
            self._record(changes)
        timeout = self.served_by.start_timeout_s
        if not self.ready and time.monotonic() - self.started > timeout:
            self.timed_out = True
            return f"the server did not answer /v1/models within {timeout:.0f} s"
        idle_s = self.served_by.idle_minutes * 60
        if self.ready and idle_s > 0 and time.time() - self.last_request > idle_s:
            self.idle = True
            return f"no request for {self.served_by.idle_minutes:g} minutes"
        return None

    def tally(self):
        """Record the requests logged since the last look (also once the server has exited)."""
        changes = self._counted()
        if changes:
            self._record(changes)

    def _record(self, changes):
        try:
            self.sup.update(setter(**changes))
        except (InsufficientStorage, Unavailable) as exc:  # the total goes with the next write
            log.warning("figures not recorded this time (%s)", exc)

    def _counted(self):
        new = self._new_requests()
        if not new:
            return {}
        self.served += new
        self.last_request = time.time()
        return {"requests_served": self.served, "last_request_at": now_utc()}

    def _new_requests(self):
        """Requests answered since the last look (whole lines only)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(4 * 1024 * 1024)
        except OSError:
            return 0
        end = data.rfind(b"\n") + 1
        self.offset += end
        return sum(data[:end].count(line) for line in REQUESTS)


def keep_serving(sup, state, served, restart_changes=None):
    """Serve a claimed run until it is stopped, idle, or its server keeps dying.

    `restart_changes`: what else a (re)started server resets in the record (a shared server's
    loaded adapters, say)."""
    store, run_id, settings = sup.store, sup.run_id, sup.settings
    sup.extra_env.update(served.env)
    log_path = store.path(run_id, served.log_name)
    restarts = state.restarts or 0
    while True:
        try:
            proc = sup.start(served.argv, served.log_name)
        except OSError as exc:
            end(sup, JobStatus.FAILED, error=f"the server could not start: {exc}")
            return
        ticks = start_ticks(proc.pid)
        running = setter(
            pid=proc.pid,
            trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid},
            ready_at=None,
            **(restart_changes or {}),
        )
        current = sup.record_started(proc, ticks, sup.owned(running))
        if current.pid != proc.pid:
            terminate_tree(proc.pid, ticks, 0, popen=proc)
            return
        log.info("server started: pid %s on %s:%s", proc.pid, served.host, served.port)
        watch = Watch(sup, current, served, log_path, time.monotonic())
        sup.ending_early = False
        rc = sup.wait(proc, ticks, on_beat=watch.beat, on_tick=watch.tick)
        log.info("server exited: %s", rc)
        # What it left of its process group: vLLM's engine and its workers outlive a killed API
        # process (2 GB each on a CPU host), and no pid of the group is reused while one lives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        watch.tally()  # what it answered since the last beat
        if sup.stop_requested():
            preempting = sup.read().preempting
            why = f"preempted by {preempting['by']}" if preempting else "requested"
            end(sup, JobStatus.STOPPED, stop_reason=why, preempting=None)
            return
        if watch.idle:
            end(sup, JobStatus.STOPPED, stop_reason="idle")
            return
        reason, signal_name, lines = sup.failure(log_path, rc, f"see {served.log_name}", what="the server")
        if watch.timed_out:
            reason = f"the server did not answer /v1/models within {served.start_timeout_s:.0f} s"
        restarts += 1
        if restarts >= max(1, settings.max_attempts):
            end(
                sup,
                JobStatus.FAILED,
                error=f"the server died {restarts} times; the last: {reason}",
                exit_code=rc if rc >= 0 else None,
                signal=signal_name,
                log_tail=lines,
            )
            return
        log.warning("the server died (%s); starting it again (restart %d)", reason, restarts)
        sup.update(setter(restarts=restarts, error=reason, pid=None, trainer=None, ready_at=None))
        time.sleep(RESTART_PAUSE_S)


def end(sup, status, **values):
    def change(state):
        state.set(status=status.value, pid=None, trainer=None, **values)
        why = values.get("error") or (values.get("stop_reason") and f"stopped: {values['stop_reason']}")
        return changed(reason=why) if why else changed()

    sup.update(change)
