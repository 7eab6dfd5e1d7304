"""What both executors give a monitor: its command line and its environment."""

import dataclasses
import json

from ..settings import package_pythonpath

MONITOR_SETTINGS_ENV = "IMTS_MONITOR_SETTINGS"
MONITOR_LOG_ENV = "IMTS_MONITOR_LOG"


def monitor_argv(settings, args):
    return [settings.python, "-m", "imts_flask.monitor", *args]


def monitor_env(settings):
    """The variables a monitor needs on any host: where the package is, and the service's settings."""
    return {
        "PYTHONPATH": package_pythonpath(),
        MONITOR_SETTINGS_ENV: json.dumps(dataclasses.asdict(settings)),
    }
