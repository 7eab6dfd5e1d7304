"""IMTS training API: fine-tune LLMs with LLaMA Factory over HTTP."""

import logging
import logging.handlers
import os

from .settings import VERSION as __version__  # noqa: F401 (the package's version)

log = logging.getLogger(__name__)


def _configure_logging(settings):
    logs_dir = settings.path("logs_dir")
    os.makedirs(logs_dir, exist_ok=True)
    root = logging.getLogger("imts_flask")
    root.setLevel(settings.log_level)
    path = os.path.join(logs_dir, "imts.log")
    if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
        # WatchedFileHandler reopens the file after logrotate moves it; every worker appends.
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s")
        )
        root.addHandler(handler)


def create_app(overrides=None):
    """Build the Flask app: settings -> service (store, catalog, launcher, ...) -> the HTTP layer."""
    # Flask is imported here, not at module level, so the job monitor process stays light.
    from flask import Flask

    from . import http
    from .service import TrainingService
    from .settings import load_settings

    settings = load_settings(overrides)
    _configure_logging(settings)
    # Nothing here may fail on what other processes change meanwhile (a DELETE, another worker's
    # write): a worker that cannot boot makes gunicorn stop the whole service. Housekeeping such as
    # removing a crash's leftovers runs in the cleanup round, never here.
    service = TrainingService(settings)
    app = Flask(__name__)
    http.init_app(app, service)
    return app
