"""The local executor: each monitor is a detached process of this host, in its own session, and
the service's own queue hands out its slots and GPUs."""

import os
import subprocess
import time

from ..errors import ValidationFailed
from ..runs import queue
from ..state import parse_time
from .common import monitor_argv, monitor_env


class LocalExecutor:
    name = "local"

    def __init__(self, settings):
        self.settings = settings

    # -- the queue: the service's own slots and GPUs ------------------------------------------

    def gpu_ids(self):
        """The GPUs the service hands out to jobs itself."""
        return self.settings.gpu_ids

    def capacity(self):
        """(jobs that may run at once, GPUs handed out), for the metrics."""
        return self.settings.capacity, len(self.settings.gpu_ids)

    def gpus_for(self, asked):
        """How many GPUs a job gets: as asked (default 1 where GPUs exist), if that can ever fit."""
        available = self.settings.gpu_ids
        if asked is None:
            return 1 if available else 0
        if asked > len(available):
            where = (
                f"this service hands out {len(available)} ({','.join(available)})"
                if available
                else ("this service has no GPUs")
            )
            raise ValidationFailed(f"asks for {asked} GPUs but {where}", field="gpus")
        return asked

    def waits(self, state):
        """Whether a job waits for its turn in the queue (its place is queue_position)."""
        return queue.queued(state)

    def place(self, state, slots, free_gpus):
        """(the launch's placement, the GPUs left) for a queued job, or (None, free_gpus) to wait."""
        need = state.gpus or 0
        if slots <= 0 or need > len(free_gpus):
            return None, free_gpus  # first come, first served: the head of the queue waits for its GPUs
        return {"gpus": free_gpus[:need]}, free_gpus[need:]

    def name_launch(self, state, launch):
        """Nothing to name: the launch id is the monitor's."""

    def withdraw(self, launch):
        """Nothing to withdraw: a job waiting here holds nothing outside its record."""

    # -- monitors ------------------------------------------------------------------------------

    def start(self, args, launch, job_dir, log_path):
        """Spawn the monitor in the job's directory, its output appended to `log_path`; return its pid."""
        env = {**os.environ, **monitor_env(self.settings)}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                monitor_argv(self.settings, args),
                cwd=job_dir,
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
        """Nothing beyond the liveness module's own kill of the recorded process trees (on this host)."""

    def health(self):
        return True, {"executor": "local"}
