"""The service as the benchmarks run it: gunicorn as deployed (gunicorn.conf.py, 4 workers) on a
throw-away home, and the one HTTP helper they share (tools/bench.py, tools/bench_serving.py)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imts_flask.llamafactory.environment import free_port  # noqa: E402

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
TINY = os.path.join(PROJECT, "models", "tiny-llama")


def _http(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read() or b"null")


class Server:
    """gunicorn as deployed (gunicorn.conf.py), 4 workers, on a throw-away home."""

    def __init__(self, home, models=None, data_dir=None, **settings):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1/training"
        os.makedirs(os.path.join(home, "config"), exist_ok=True)
        models = models or {"tiny-llama": TINY}
        with open(os.path.join(home, "config", "models.yaml"), "w") as handle:
            registry = {name: {"path": path, "template": "default"} for name, path in models.items()}
            yaml.safe_dump({"models": registry}, handle)
        env = {
            **os.environ,
            "IMTS_HOME": home,
            "IMTS_DATA_DIR": data_dir or os.path.join(PROJECT, "data"),
            "IMTS_WORKERS": "4",
            "IMTS_PORT": str(self.port),
            "IMTS_ACCESS_LOG": os.path.join(home, "access.log"),
        }
        env.update({"IMTS_" + k.upper(): str(v) for k, v in settings.items()})
        log = open(os.path.join(home, "gunicorn.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(VENV_BIN, "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=PROJECT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            try:
                if _http("GET", f"{self.base}/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not come up")

    def workers(self):
        return [p for p in psutil.Process(self.proc.pid).children() if "gunicorn" in " ".join(p.cmdline())]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def wait_record(self, job_id, done=("completed", "failed", "stopped"), interval=0.05):
        """Poll the job's record on disk, not the API: a client polling status 20 times a second
        takes CPU from the trainer beside it (measured: 6% of its training loop on 2 cores)."""
        path = os.path.join(self.home, "jobs", job_id, "state.json")
        while True:
            with contextlib.suppress(OSError, ValueError):
                with open(path) as handle:
                    if json.load(handle)["status"] in done:
                        return _http("GET", f"{self.base}/jobs/{job_id}")[1]
            time.sleep(interval)

    def wait(self, job_id, done=("completed", "failed", "stopped"), interval=0.05):
        while True:
            status = _http("GET", f"{self.base}/jobs/{job_id}")[1]
            if status["status"] in done:
                return status
            time.sleep(interval)
