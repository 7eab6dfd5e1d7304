"""Where a job's monitor runs: as a detached process on this host, or as a Ray job on a cluster.

One small interface, so that the launcher, the monitor, the store and the views never branch on
the executor:

    queues_jobs        True when the engine queues jobs for resources (the service then submits
                       every queued job at once and hands out no slots or GPU ids of its own)
    start(job_id, args, launch)
                       start `python -m imts_flask.jobs.monitor <args>` for the launch
    lost(launch, claimed)
                       what the engine knows of a launch: None while it may still run (or wait for
                       resources), else why it is gone
    stop(launch)       the fallback when a monitor does not finish a stop within its grace period
    health()           (ok, detail) for GET /health

Liveness by pid (with its start time) and by heartbeat is the launcher's, the same for both: a pid
means something only on its own host, which every record names.
"""

import os
import socket

from .local import LocalExecutor
from .ray import RayExecutor

# The name this host's pids are recorded under: the hostname, unless IMTS_HOSTNAME names it (hosts
# that share a hostname, containers say, must be told apart).
HOST = os.environ.get("IMTS_HOSTNAME") or socket.gethostname()


def make_executor(settings, store):
    """Return the executor the settings name (`executor`: local or ray)."""
    if settings.executor == "local":
        return LocalExecutor(settings, store)
    if settings.executor == "ray":
        if not settings.ray_address:
            raise ValueError("executor 'ray' needs ray_address (IMTS_RAY_ADDRESS), e.g. http://head:8265")
        return RayExecutor(settings, store)
    raise ValueError(f"executor must be 'local' or 'ray', not {settings.executor!r}")
