"""Running a deployment's server, in the monitor that claimed its launch (monitor/supervisor.py).

The server is the monitor's child in its own process group, its output appended to deployment.log.
The monitor heartbeats as for a job; each beat it asks the server's /v1/models (once it answers the
deployment is ready), counts the chat completions in the log, and ends an idle server when
idle_stop_minutes says so. A server that dies is started again (`restarts`, up to max_attempts in
all) before the deployment is failed with the reason and the log's tail. A stop (DELETE, SIGTERM)
ends the server with the grace period; the slot is then free and the scheduler runs.
"""

import logging
import os
import shlex
import sys
import time
import urllib.error
import urllib.request

from ..errors import InsufficientStorage, Unavailable
from ..executors import HOST
from ..procs import start_ticks, terminate_tree
from ..runs.record import changed, setter
from ..settings import PROJECT_ROOT, package_pythonpath
from ..state import JobStatus, now_utc
from . import record

log = logging.getLogger(__name__)

CHAT = '"POST /v1/chat/completions'  # uvicorn's access line of a chat completion
RESTART_PAUSE_S = 2.0
# The server script, outside the package the API workers import (it imports LLaMA Factory).
SERVER = os.path.join(PROJECT_ROOT, "deploy", "llamafactory_server.py")


def server_command(settings, config_path):
    """The server's argv: settings.deploy_command, or LLaMA Factory's app under this interpreter."""
    if settings.deploy_command:
        return shlex.split(settings.deploy_command) + [config_path]
    return [settings.python or sys.executable, SERVER, config_path]


def probe_host(host):
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def answers(host, port, api_key, timeout=2.0):
    """Whether the server's /v1/models answers 200 with this key."""
    request = urllib.request.Request(
        f"http://{probe_host(host)}:{port}/v1/models", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


class _Watch:
    """What the monitor looks at on each beat of a live server."""

    def __init__(self, sup, state, api_key, log_path, started):
        self.sup, self.state, self.api_key = sup, state, api_key
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
        if not self.ready and answers(self.state.host, self.state.port, self.api_key, timeout=0.5):
            try:
                self.sup.update(setter(ready_at=now_utc()))
            except (InsufficientStorage, Unavailable) as exc:
                log.warning("ready, but not recorded yet (%s): trying again", exc)
                return
            self.ready = True
            self.last_request = time.time()
            log.info("the server answers on port %s: ready", self.state.port)

    def beat(self):
        settings = self.sup.settings
        changes = self._counted()
        if changes:
            self._record(changes)
        if not self.ready and time.monotonic() - self.started > settings.deploy_start_timeout_s:
            self.timed_out = True
            return f"the server did not answer /v1/models within {settings.deploy_start_timeout_s:.0f} s"
        idle_s = settings.idle_stop_minutes * 60
        if self.ready and idle_s > 0 and time.time() - self.last_request > idle_s:
            self.idle = True
            return f"no request for {settings.idle_stop_minutes:g} minutes (idle_stop_minutes)"
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
        """Chat completions logged since the last look (whole lines only)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(4 * 1024 * 1024)
        except OSError:
            return 0
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", "replace").count(CHAT)


def run(sup, state):
    """Serve a claimed deployment until it is stopped, idle, or its server keeps dying."""
    store, run_id, settings = sup.store, sup.run_id, sup.settings
    state = sup.mark_running(ready_at=None)
    if state is None:
        return
    if settings.executor != "local" and not settings.deploy_public_host:
        # Placed by an engine on one of its nodes: the base_url names that node.
        base_url = f"http://{HOST}:{state.port}/v1"
        state = sup.update(setter(base_url=base_url))
    with open(state.paths["api_key"], encoding="utf-8") as handle:
        api_key = handle.read().strip()
    sup.extra_env.update(
        API_HOST=state.host,
        API_PORT=str(state.port),
        API_KEY=api_key,
        API_MODEL_NAME=state.model,
        PYTHONPATH=package_pythonpath(),
    )
    log_path = store.path(run_id, record.LOG)
    restarts = state.restarts or 0
    while True:
        try:
            proc = sup.start(server_command(settings, state.paths["config"]), record.LOG)
        except OSError as exc:
            _end(sup, JobStatus.FAILED, error=f"the server could not start: {exc}")
            return
        ticks = start_ticks(proc.pid)
        running = setter(
            pid=proc.pid, trainer={"pid": proc.pid, "start_ticks": ticks, "pgid": proc.pid}, ready_at=None
        )
        current = sup.record_started(proc, ticks, sup.owned(running))
        if current.pid != proc.pid:
            terminate_tree(proc.pid, ticks, 0, popen=proc)
            return
        log.info("server started: pid %s on %s:%s", proc.pid, state.host, state.port)
        watch = _Watch(sup, current, api_key, log_path, time.monotonic())
        sup.ending_early = False
        rc = sup.wait(proc, ticks, on_beat=watch.beat, on_tick=watch.tick)
        log.info("server exited: %s", rc)
        watch.tally()  # what it answered since the last beat
        if sup.stop_requested():
            _end(sup, JobStatus.STOPPED, stop_reason="requested")
            return
        if watch.idle:
            _end(sup, JobStatus.STOPPED, stop_reason="idle")
            return
        reason, signal_name, lines = sup.failure(log_path, rc, "see deployment.log", what="the server")
        if watch.timed_out:
            reason = f"the server did not answer /v1/models within {settings.deploy_start_timeout_s:.0f} s"
        restarts += 1
        if restarts >= max(1, settings.max_attempts):
            _end(
                sup,
                JobStatus.FAILED,
                error=f"the server died {restarts} times; the last: {reason}",
                exit_code=rc if rc >= 0 else None,
                signal=signal_name,
                log_tail=lines,
            )
            return
        log.warning("the server died (%s); starting it again (restart %d)", reason, restarts)
        dead = setter(
            restarts=restarts, error=reason, pid=None, trainer=None, ready_at=None
        )  # starting again
        sup.update(dead)
        time.sleep(RESTART_PAUSE_S)


def _end(sup, status, **values):
    def change(state):
        state.set(status=status.value, pid=None, trainer=None, **values)
        why = values.get("error") or (values.get("stop_reason") and f"stopped: {values['stop_reason']}")
        return changed(reason=why) if why else changed()

    sup.update(change)
