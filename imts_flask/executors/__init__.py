"""Where a job's monitor runs: as a detached process on this host, or as a Ray job on a cluster.

One small interface, so that the scheduler, the liveness checks, the service and the metrics never
branch on the executor; where it matters, they ask it:

    gpu_ids()          the GPUs the service hands out itself (none where the engine places jobs)
    capacity()         (jobs that may run at once, GPUs) for the metrics
    gpus_for(asked)    how many GPUs a job gets, or a 400 if it can never have them
    waits(state)       whether a job waits for its turn (queued here, or in the engine's queue)
    place(state, slots, free_gpus)
                       a queued job's placement (its GPUs, or what it asks the engine for) and the
                       GPUs left, or None while it must wait
    name_launch(state, launch)
                       name a launch as the engine knows it (Ray: a submission id)
    withdraw(launch)   take a job stopped while waiting out of the engine's queue
    start(args, launch, job_dir, log_path)
                       start `python -m imts_flask.monitor <args>` for the launch
    lost(launch, claimed)
                       what the engine knows of a launch: None while it may still run (or wait for
                       resources), else why it is gone
    stop(launch)       the fallback when a monitor does not finish a stop within its grace period
    health()           (ok, detail) for GET /health

Liveness by pid (with its start time) and by heartbeat is jobs/liveness.py's, the same for both: a
pid means something only on its own host, which every record names.
"""

import os
import socket

from .local import LocalExecutor
from .ray import RayExecutor

# The name this host's pids are recorded under: the hostname, unless IMTS_HOSTNAME names it (hosts
# that share a hostname, containers say, must be told apart).
HOST = os.environ.get("IMTS_HOSTNAME") or socket.gethostname()


def make_executor(settings):
    """Return the executor the settings name (`executor`: local or ray)."""
    if settings.executor == "local":
        return LocalExecutor(settings)
    if settings.executor == "ray":
        if not settings.ray_address:
            raise ValueError("executor 'ray' needs ray_address (IMTS_RAY_ADDRESS), e.g. http://head:8265")
        return RayExecutor(settings)
    raise ValueError(f"executor must be 'local' or 'ray', not {settings.executor!r}")
