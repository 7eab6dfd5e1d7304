"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Training runs in detached monitor processes, so workers can be recycled or restarted at any time
without touching jobs. Every value can be overridden by an IMTS_* variable.

Workers are gevent's: each connection is a greenlet, so a slow client (a header line every few
seconds, a body a byte at a time) holds a few kilobytes, not one of a handful of threads; 1000
connections a worker (IMTS_WORKER_CONNECTIONS). Blocking calls in the app (files, locks,
subprocesses, sleeps while a stop is awaited) yield to the other connections once gevent has
patched them, which gunicorn does when a worker starts. Behind Nginx (deploy/nginx.conf) slow
clients never reach gunicorn at all, but make run serves without it.
"""

import os

from imts_flask.http import server  # no Flask, no app: only what gunicorn needs

# Prometheus multiprocess mode: every worker writes its samples into its master's own folder and a
# scrape adds up that folder, so two masters on one home (two instances, or a restart overlapping
# the old master's graceful exit) never empty or remove each other's. The variable must be set before
# prometheus_client is first imported (workers fork from this process). By default the folders are
# on /dev/shm, off the data disk; IMTS_METRICS_DIR names another place for them.
_home = os.path.abspath(os.environ.get("IMTS_HOME", os.path.dirname(os.path.abspath(__file__))))
os.environ["IMTS_METRICS_DIR"] = os.environ.get("IMTS_METRICS_DIR") or server.metrics_dir(_home)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = server.own_metrics_dir(os.environ["IMTS_METRICS_DIR"])

from prometheus_client import multiprocess  # noqa: E402  (after the variable above)

# gunicorn's own answers (a header too large, a URI too long, an unreadable request) in the
# API's JSON error shape; and no secret-looking query parameter in the access log.
server.install()
logger_class = server.RedactingLogger

bind = f"{os.environ.get('IMTS_HOST', '127.0.0.1')}:{os.environ.get('IMTS_PORT', '8000')}"
workers = int(os.environ.get("IMTS_WORKERS", "3"))
worker_class = os.environ.get("IMTS_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("IMTS_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("IMTS_THREADS", "4"))  # for IMTS_WORKER_CLASS=gthread
# Requests never wait on training; stop and export wait at most IMTS_STOP_WAIT_S / IMTS_EXPORT_WAIT_S.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then; jobs are not affected.
max_requests = 2000
max_requests_jitter = 200
# Do not preload: nothing is imported or started in the master.
preload_app = False
accesslog = os.environ.get("IMTS_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("IMTS_LOG_LEVEL", "info").lower()


def on_starting(arbiter):
    server.claim_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def child_exit(arbiter, worker):
    multiprocess.mark_process_dead(worker.pid)


def on_exit(arbiter):
    # This master's samples only: another master's folder beside it stays (and a folder left by a
    # master killed -9 goes at the next master's start).
    server.release_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
