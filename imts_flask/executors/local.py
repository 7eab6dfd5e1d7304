"""The local executor: each monitor is a detached process of this host, in its own session."""

import os
import subprocess
import time

from ..jobs.store import JobStore
from ..state import parse_time
from .common import monitor_argv, monitor_env


class LocalExecutor:
    name = "local"
    queues_jobs = False  # the service's own queue and capacity decide

    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store

    def start(self, job_id, args, launch):
        """Spawn the monitor, its output appended to the job's monitor.log; return its pid."""
        env = {**os.environ, **monitor_env(self.settings)}
        with open(self.store.path(job_id, JobStore.MONITOR_LOG), "ab") as out:
            proc = subprocess.Popen(
                monitor_argv(self.settings, args),
                cwd=self.store.path(job_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        return f"pid {proc.pid}"

    def lost(self, launch, claimed):
        """A claimed launch is judged by pid and heartbeat; an unclaimed one expires (launch_timeout_s)."""
        if claimed:
            return None
        at = parse_time((launch or {}).get("at"))
        if at is not None and time.time() - at.timestamp() > self.settings.launch_timeout_s:
            return f"no monitor appeared within {self.settings.launch_timeout_s:.0f} s"
        return None

    def stop(self, launch):
        """Nothing beyond the launcher's own kill of the recorded process trees (on this host)."""

    def health(self):
        return True, {"executor": "local"}
