"""Running a deployment's server, in the monitor that claimed its launch (monitor/supervisor.py):
LLaMA Factory's OpenAI-compatible app of one model, kept alive by monitor/servers.py (ready once its
/v1/models answers, restarted when it dies, stopped when idle for idle_stop_minutes)."""

import os
import shlex
import sys

from ..executors import HOST
from ..monitor.servers import Served, keep_serving
from ..runs.record import setter
from ..settings import PROJECT_ROOT, package_pythonpath
from . import record

# The server script, outside the package the API workers import (it imports LLaMA Factory).
SERVER = os.path.join(PROJECT_ROOT, "deploy", "llamafactory_server.py")


def server_command(settings, config_path):
    """The server's argv: settings.deploy_command, or LLaMA Factory's app under this interpreter."""
    if settings.deploy_command:
        return shlex.split(settings.deploy_command) + [config_path]
    return [settings.python or sys.executable, SERVER, config_path]


def run(sup, state):
    """Serve a claimed deployment until it is stopped, idle, or its server keeps dying."""
    settings = sup.settings
    state = sup.mark_running(ready_at=None)
    if state is None:
        return
    if settings.executor != "local" and not settings.deploy_public_host:
        # Placed by an engine on one of its nodes: the base_url names that node.
        state = sup.update(setter(base_url=f"http://{HOST}:{state.port}/v1"))
    with open(state.paths["api_key"], encoding="utf-8") as handle:
        api_key = handle.read().strip()
    env = dict(
        API_HOST=state.host,
        API_PORT=str(state.port),
        API_KEY=api_key,
        API_MODEL_NAME=state.model,
        PYTHONPATH=package_pythonpath(),
    )
    served = Served(
        argv=server_command(settings, state.paths["config"]),
        log_name=record.LOG,
        host=state.host,
        port=state.port,
        api_key=api_key,
        idle_minutes=settings.idle_stop_minutes,
        start_timeout_s=settings.deploy_start_timeout_s,
        env=env,
    )
    keep_serving(sup, state, served)
