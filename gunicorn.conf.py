"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Training runs in detached monitor processes, so workers can be recycled or restarted at any time
without touching jobs. Every value can be overridden by an IMTS_* variable.
"""

import os

bind = f"{os.environ.get('IMTS_HOST', '127.0.0.1')}:{os.environ.get('IMTS_PORT', '8000')}"
workers = int(os.environ.get("IMTS_WORKERS", "3"))
threads = int(os.environ.get("IMTS_THREADS", "4"))
worker_class = "gthread"
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
