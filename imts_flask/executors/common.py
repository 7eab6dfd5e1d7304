"""What both executors give a monitor: its command line and its environment."""

import dataclasses
import json
import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MONITOR_SETTINGS_ENV = "IMTS_MONITOR_SETTINGS"
MONITOR_LOG_ENV = "IMTS_MONITOR_LOG"


def monitor_argv(settings, args):
    return [settings.python, "-m", "imts_flask.monitor", *args]


def monitor_env(settings):
    """The variables a monitor needs on any host: where the package is, and the service's settings."""
    return {
        "PYTHONPATH": PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        MONITOR_SETTINGS_ENV: json.dumps(dataclasses.asdict(settings)),
    }
