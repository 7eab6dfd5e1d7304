"""A real gunicorn serving a throw-away home, for end-to-end and fault-injection tests."""

import os
import signal
import subprocess
import sys

import psutil
import requests

from imts_flask.launcher import free_port

from conftest import DEMO_DATA, PROJECT, SHARED_DATA, wait_for

VENV_BIN = os.path.dirname(sys.executable)
GUNICORN = os.path.join(VENV_BIN, "gunicorn")


class Service:
    """A service home and the gunicorn serving it, restartable."""

    def __init__(self, home, argv_extra=(), workers=3, **settings):
        self.home = home
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.root}/api/v1/training"
        data_dirs = [DEMO_DATA] + ([SHARED_DATA] if os.path.isdir(SHARED_DATA) else [])
        self.env = {
            **os.environ,
            "IMTS_HOME": home,
            "IMTS_DATA_DIR": os.pathsep.join(data_dirs),
            "IMTS_STOP_GRACE_S": "15",
            "IMTS_STOP_WAIT_S": "25",
            "IMTS_EXPORT_WAIT_S": "20",
            **{"IMTS_" + name.upper(): str(value) for name, value in settings.items()},
        }
        self.workers = workers
        self.argv_extra = list(argv_extra)
        self.proc = None

    def start(self, argv=None):
        argv = argv or [
            GUNICORN,
            "-b",
            f"127.0.0.1:{self.port}",
            "-w",
            str(self.workers),
            "--timeout",
            "60",
            *self.argv_extra,
            "wsgi:app",
        ]
        log = open(os.path.join(self.home, "gunicorn.log"), "ab")
        self.proc = subprocess.Popen(
            argv, cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._healthy, timeout=60, interval=0.2)
        return self

    def _healthy(self):
        try:
            return requests.get(f"{self.base}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def kill_hard(self):
        """kill -9 the gunicorn master and every worker, as a crash would; job monitors live on."""
        master = psutil.Process(self.proc.pid)
        doomed = [p for p in [master, *master.children(recursive=True)] if _is_gunicorn(p)]
        for proc in doomed:
            proc.kill()
        self.proc.wait()
        psutil.wait_procs(doomed, timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    # -- API helpers -----------------------------------------------------------------------

    def create(self, body):
        response = requests.post(f"{self.base}/jobs", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def status(self, job_id):
        response = requests.get(f"{self.base}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_done(self, job_id, timeout=300):
        return wait_for(
            lambda: (s := self.status(job_id))["status"] in ("completed", "failed", "stopped") and s,
            timeout=timeout,
            interval=0.5,
        )


def _is_gunicorn(proc):
    try:
        return GUNICORN in proc.cmdline()
    except psutil.Error:  # gone, or a zombie (a monitor killed a moment ago, not reaped yet)
        return False


def tree_pids(pid):
    try:
        root = psutil.Process(pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
