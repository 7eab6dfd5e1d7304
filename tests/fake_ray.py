"""A FAKE Ray job server for executor tests: the Jobs REST API's few calls, with entrypoints run as
local processes on pretend nodes. It is not Ray; tests/executors/test_cluster.py runs a real Ray cluster.

- POST /api/jobs/            submit (a known submission_id is refused, as Ray does)
- GET  /api/jobs/<id>        PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, with driver_node_id
- GET  /api/jobs/            every submission
- POST /api/jobs/<id>/stop   SIGTERM to the entrypoint's process tree
- GET  /api/version

Each pretend node runs one entrypoint at a time; a submission waits PENDING for a free node, as Ray
holds a job until a node has its resources. Entrypoints get the runtime_env's env_vars and
IMTS_HOSTNAME=<the node>, so the service sees their pids as another host's.
"""

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil


class FakeRay:
    def __init__(self, nodes=("fake-node-a",)):
        self.free = list(nodes)
        self.jobs = {}  # submission id -> record
        self.submissions = []  # bodies as received
        self.down = False  # answer nothing (connection refused is simulated by a 503-free close)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.address = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._run, daemon=True).start()

    # -- the pretend cluster ---------------------------------------------------------------

    def _run(self):
        while True:
            with self.lock:
                for job in self.jobs.values():
                    if job["status"] == "PENDING" and self.free:
                        self._start(job, self.free.pop(0))
                    elif job["status"] == "RUNNING" and job["proc"].poll() is not None:
                        ended = "SUCCEEDED" if job["proc"].returncode == 0 else "FAILED"
                        self._end(job, "STOPPED" if job.get("stopping") else ended)
            time.sleep(0.05)

    def _start(self, job, node):
        env = {**os.environ, **job["body"].get("runtime_env", {}).get("env_vars", {}), "IMTS_HOSTNAME": node}
        job.update(status="RUNNING", driver_node_id=node)
        job["proc"] = subprocess.Popen(job["body"]["entrypoint"], shell=True, env=env, start_new_session=True)

    def _end(self, job, status, message=""):
        job.update(status=status, message=message or f"Job {status.lower()}.")
        self.free.append(job["driver_node_id"])

    def kill_node(self, node):
        """The node dies: its entrypoint's whole process tree is killed, the job FAILED."""
        with self.lock:
            for job in self.jobs.values():
                if job["status"] == "RUNNING" and job["driver_node_id"] == node:
                    _kill_tree(job["proc"].pid, signal.SIGKILL)
                    job["proc"].wait()
                    job.update(status="FAILED", message="Job supervisor actor died: the node died")
                    # the node is gone: it takes no more jobs

    def stop(self):
        self.server.shutdown()
        for job in self.jobs.values():
            if job.get("proc") and job["proc"].poll() is None:
                _kill_tree(job["proc"].pid, signal.SIGKILL)

    # -- HTTP ------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code, body):
                data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if fake.down:  # as good as unreachable: the connection closes without an answer
                    self.close_connection = True
                    return None
                if self.path == "/api/version":
                    return self._reply(200, {"version": "4", "ray_version": "fake"})
                if self.path == "/api/jobs/":
                    with fake.lock:
                        return self._reply(200, [_public(j) for j in fake.jobs.values()])
                job = fake.jobs.get(self.path.removeprefix("/api/jobs/"))
                return self._reply(200, _public(job)) if job else self._reply(404, "Job does not exist")

            def do_POST(self):
                if fake.down:  # as good as unreachable: the connection closes without an answer
                    self.close_connection = True
                    return None
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/api/jobs/":
                    with fake.lock:
                        sid = body["submission_id"]
                        fake.submissions.append(body)
                        if sid in fake.jobs:
                            return self._reply(500, f"Job with submission_id {sid} already exists.")
                        fake.jobs[sid] = {"submission_id": sid, "status": "PENDING", "body": body}
                    return self._reply(200, {"submission_id": sid, "job_id": sid})
                sid = self.path.removeprefix("/api/jobs/").removesuffix("/stop")
                with fake.lock:
                    job = fake.jobs.get(sid)
                    if job and job["status"] == "PENDING":
                        job.update(status="STOPPED", message="Job was stopped before it started")
                    elif job and job["status"] == "RUNNING":
                        job["stopping"] = True
                        _kill_tree(job["proc"].pid, signal.SIGTERM)
                return self._reply(200, {"stopped": bool(job)})

            def log_message(self, *args):
                pass

        return Handler


def _public(job):
    keys = ("submission_id", "status", "message", "driver_node_id")
    return {
        **{k: job.get(k) for k in keys},
        "entrypoint": job["body"]["entrypoint"],
        "metadata": job["body"].get("metadata"),
    }


def _kill_tree(pid, sig):
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
