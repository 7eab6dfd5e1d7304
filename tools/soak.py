"""Chaos soak: the service as deployed, a steady workload of real runs, a fault every few seconds,
and its guarantees checked all along and once everything has settled.

    make soak                                     # 25 minutes, seed 1
    make soak SOAK_ARGS="--minutes 3 --seed 7"    # what CI runs, with seed 1
    .venv/bin/python tools/soak.py --minutes 30 --report soak.json

The service is gunicorn as deployed (gunicorn.conf.py, 3 workers, 2 slots, heartbeat timeout 20 s)
in a scratch home, on a tmpfs where this machine lets the soak mount one (so a full disk can be made
for real), with tenants: team-a (which may ask for priority high) and team-b, each with its token,
and an admin. It trains tiny-llama with the real llamafactory-cli, judges with it, and serves with
LLaMA Factory's real server. The workload, as either team: creates jobs (fractional and whole epoch
counts, Idempotency-Keys, uploaded datasets), stops, resumes and deletes them, uploads and deletes
datasets; evaluates completed jobs; deploys one, chats with it through the service and through its
own OpenAI endpoint with its key, and stops it; calls fine-tunes of tiny-llama-hd64 through the
service's /v1 (shared serving: one vLLM server, adapters loaded on demand; where `make vllm` has
made vLLM's venv, else it says so and skips them); and now and then a low job of team-b that a high
job of team-a preempts. The faults, one every 20-60 s (--fault-every), taken in a seeded order that
meets each kind early:

    gunicorn_kill    kill -9 of the gunicorn master and workers, then a restart
    overlap_restart  SIGTERM to the master and a new one started at once on the same home and port,
                     while the old one finishes its graceful exit
    worker_kill      kill -9 of one worker (gunicorn starts another)
    monitor_kill     kill -9 of a running job's monitor
    trainer_kill     kill -9 of a running job's trainer
    monitor_freeze   SIGSTOP of a monitor, left stopped past the heartbeat timeout
    host_death       kill -9 of everything (gunicorn, monitors, trainers, servers), then a restart
    save_death       the same in the middle of a checkpoint save (caught as it happens, or a save
                     cut short is left on disk as a host dying then would leave it)
    burst            50 concurrent requests
    full_disk        the home's filesystem filled for 15 s (only on the soak's tmpfs)
    tenants_edit     the tenants file rewritten: renamed over, written in place, briefly renamed away
                     or emptied (every version keeps both teams' tokens)
    server_kill      kill -9 of the shared vLLM server (with serving)

Invariants, checked continuously: never more processes holding slots (trainers, evaluation phases,
deployment servers) than the capacity, no run with two of them, every run answered 201/202 listed
(once) until it is answered 204, no request of one team answered with another's run (listings and
reads by id), every anonymous request refused with 401, a chat answered in full or with an error
event, no 5xx outside restart windows, a change during a full disk answered 507 or 503. Once the
workload stops and every run is finished: every job, evaluation and deployment terminal, completed
jobs at their total_steps, a killed trainer's job failed with the signal, a lost monitor's job
resumed from a complete checkpoint (or failed "lost" after max_attempts), a preempted job resumed
and ended, every record readable, no process of the home left, nothing in staging or trash. The
report has runs by outcome, faults by kind, attempts, steps trained again per host death and the
latency of /health. The exit status is 1 if any invariant was broken, 0 otherwise.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil
import requests
import yaml

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)
from imts_flask.llamafactory.environment import free_port  # noqa: E402
from imts_flask.llamafactory.trainer_log import read_progress  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
TERMINAL = ("completed", "failed", "stopped")
FAULTS = (
    "gunicorn_kill",
    "overlap_restart",
    "worker_kill",
    "monitor_kill",
    "trainer_kill",
    "monitor_freeze",
    "host_death",
    "save_death",
    "burst",
    "full_disk",
    "tenants_edit",
    "server_kill",
)
NEEDS_A_RUNNING_JOB = {"monitor_kill", "trainer_kill", "monitor_freeze", "save_death"}
# Faults after which a job goes on in a new attempt (its monitor is gone).
JOB_ID = re.compile(r"train_[a-z0-9]{8}")
LOSSES = {"monitor_kill", "monitor_freeze", "host_death", "save_death"}
# The workload leaves a job a fault hit alone this long, so that its recovery is seen whole.
RECOVERY_S = 120
# Leftovers younger than this may still belong to a write in flight (JobStore.clean_temp_files).
LEFTOVER_AGE_S = 300
# The teams' and the admin's tokens (the tenants file holds their digests).
TOKENS = {"a": "soak-team-a", "b": "soak-team-b", "ops": "soak-admin"}
SERVE_MODEL = "tiny-llama-hd64"  # the demo model vLLM's CPU attention serves
VLLM_PYTHON = os.path.join(PROJECT, ".venv-vllm", "bin", "python")


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)  # the workload's
        self.chaos_rng = random.Random(args.seed + 1)  # the faults': each thread its own sequence
        self.lock = threading.RLock()
        self.done = threading.Event()
        self.jobs = {}  # job_id -> what the soak knows and expects of it
        self.violations = collections.Counter()  # each distinct violation, with how often it was seen
        self.faults = collections.Counter()
        self.fault_log = []
        self.codes = collections.Counter()
        self.windows = []  # [start, end]: the service was killed and not yet back
        self.full_disk = []  # [start, end]
        self.health = []
        self.datasets = []
        self.retrained = []  # steps trained again after each host death, per job
        self.resumed_after_death = 0
        self.deaths = []  # (job_id, step reached when the host died)
        self.evaluations = {}  # evaluation_id -> {job_id, created, final}
        self.deployments = {}  # deployment_id -> {created, key, stopped, final}
        self.chats = collections.Counter()  # outcome -> count
        self.serving = os.path.exists(VLLM_PYTHON) and not args.no_serving
        self.served = collections.Counter()  # /v1 outcome -> count
        self.servers = {}  # server_id -> its last view
        self.preemptions = []  # (low job, high job)
        self.home = None
        self.mounted = False
        self.proc = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1/training"
        self.started = time.monotonic()

    # -- the service ------------------------------------------------------------------------

    def prepare_home(self):
        self.home = self.args.home or tempfile.mkdtemp(prefix="imts-soak-")
        os.makedirs(self.home, exist_ok=True)
        if not self.args.no_tmpfs and os.geteuid() == 0:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.args.tmpfs_mb}m", "tmpfs", self.home],
                capture_output=True,
                text=True,
            )
            self.mounted = result.returncode == 0
            if not self.mounted:
                self.note(f"full_disk will not run: no tmpfs could be mounted ({result.stderr.strip()})")
        os.makedirs(os.path.join(self.home, "config"), exist_ok=True)
        registry = {
            "models": {
                name: {"path": os.path.join(PROJECT, "models", name)} for name in ("tiny-llama", SERVE_MODEL)
            }
        }
        with open(os.path.join(self.home, "config", "models.yaml"), "w") as handle:
            yaml.safe_dump(registry, handle)
        self.write_tenants(self.tenants_data())

    def tenants_data(self, extra=None):
        """team-a (up to priority high) and team-b, with their tokens, and the admin; `extra`: one more
        token of team-b (a tenants_edit adds and drops one)."""

        def token(name, secret):
            return {"name": name, "role": "member", "sha256": hashlib.sha256(secret.encode()).hexdigest()}

        b_tokens = [token("b-ci", TOKENS["b"])] + ([token("b-extra", extra)] if extra else [])
        return {
            "tenants": {
                "team-a": {"max_priority": "high", "tokens": [token("a-ci", TOKENS["a"])]},
                "team-b": {"tokens": b_tokens},
            },
            "admins": [{"name": "ops", "sha256": hashlib.sha256(TOKENS["ops"].encode()).hexdigest()}],
        }

    def tenants_path(self):
        return os.path.join(self.home, "config", "tenants.yaml")

    def write_tenants(self, data, in_place=False):
        text = yaml.safe_dump(data)
        if in_place:  # truncated, then written again a moment later, as an editor may
            with open(self.tenants_path(), "w") as handle:
                handle.write(text[: len(text) // 2])
                handle.flush()
                time.sleep(0.2)
                handle.write(text[len(text) // 2 :])
            return
        with open(self.tenants_path() + ".new", "w") as handle:
            handle.write(text)
        os.replace(self.tenants_path() + ".new", self.tenants_path())

    def env(self):
        return {
            **os.environ,
            "IMTS_HOME": self.home,
            "IMTS_DATA_DIR": os.path.join(PROJECT, "data"),
            "IMTS_PORT": str(self.port),
            "IMTS_WORKERS": str(self.args.workers),
            "IMTS_MAX_CONCURRENT_JOBS": str(self.args.capacity),
            "IMTS_HEARTBEAT_TIMEOUT_S": str(self.args.heartbeat_timeout),
            "IMTS_HOUSEKEEPING_S": "2",
            "IMTS_STOP_GRACE_S": "8",
            "IMTS_STOP_WAIT_S": "15",
            "IMTS_DEFAULT_SAVE_STEPS": "20",
            "IMTS_MIN_FREE_DISK_MB": "64",  # the home is a 1 GB tmpfs: a full one is below it
            "IMTS_ACCESS_LOG": os.path.join(self.home, "access.log"),
            "IMTS_DEPLOY_PORTS": f"{self.args.deploy_port}-{self.args.deploy_port + 19}",
            "IMTS_PREEMPT_GRACE_S": "600",
            # Shared serving: a request waits a little for a starting server, then is a 503.
            "IMTS_SERVE_START_WAIT_S": "20",
            "IMTS_SERVE_MAX_MODEL_LEN": "256",
        }

    def start_service(self):
        log = open(os.path.join(self.home, "gunicorn.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(VENV_BIN, "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=PROJECT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base}/health", timeout=2).status_code in (200, 503):
                    return
            time.sleep(0.2)
        raise RuntimeError("the service did not come up; see gunicorn.log in " + self.home)

    def kill_service(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self, kind, kill_jobs=False):
        """Kill the service (and with `kill_jobs` every process of the home) and start it again."""
        window = [time.monotonic(), None]
        with self.lock:
            self.windows.append(window)
        self.kill_service()
        if kill_jobs:
            for proc in self.home_processes():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        time.sleep(self.chaos_rng.uniform(1, 3))
        self.start_service()
        window[1] = time.monotonic()
        self.note(f"{kind}: the service was back after {window[1] - window[0]:.1f} s")

    def home_processes(self):
        """Monitors, trainers, webhook senders and row checkers working for this home."""
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            with contextlib.suppress(psutil.Error):
                cwd, cmdline = proc.info["cwd"] or "", " ".join(proc.info["cmdline"] or [])
                if proc.pid != os.getpid() and (cwd.startswith(self.home) or f"{self.home}/" in cmdline):
                    if "gunicorn" not in cmdline:
                        found.append(proc)
        return found

    def trainers(self):
        """{job_id: [live trainer processes]} (zombies and stopped ones do not train)."""
        found = collections.defaultdict(list)
        for proc in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
                    continue
                if any("llamafactory-cli" in part for part in cmdline[:2]) and "train" in cmdline:
                    config = cmdline[-1]
                    if config.startswith(f"{self.home}/jobs/"):
                        found[config.split("/")[-2]].append(proc)
        return found

    def slot_holders(self):
        """{run: [live processes holding its slot]}: trainers, evaluation phases, deployment servers,
        shared vLLM servers (their API process: its engine is its child)."""
        found = self.trainers()
        for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED) or not cmdline:
                    continue
                cwd = proc.info["cwd"] or ""
                if "vllm.entrypoints.openai.api_server" in cmdline and cwd.startswith(
                    f"{self.home}/servers/"
                ):
                    found[os.path.basename(cwd)].append(proc)
                    continue
                config = cmdline[-1]
                if config.startswith(f"{self.home}/deployments/") and config.endswith("server_config.yaml"):
                    if "imts_flask.monitor" not in cmdline:
                        found[config.split("/")[-2]].append(proc)
        return found

    def monitor_of(self, job_id):
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                if "imts_flask.monitor" in cmdline and job_id in cmdline and "train" in cmdline:
                    return proc
        return None

    # -- HTTP -------------------------------------------------------------------------------

    def in_window(self, started, ended):
        with self.lock:
            windows = list(self.windows)
        now = time.monotonic()
        return any(s - 1 <= ended and started <= (e if e is not None else now) + 5 for s, e in windows)

    def disk_full(self, started, ended):
        with self.lock:
            spans = list(self.full_disk)
        now = time.monotonic()
        return any(s - 1 <= ended and started <= (e if e is not None else now) + 3 for s, e in spans)

    def call(self, method, path, timeout=30, who="a", **kwargs):
        """(status, JSON body) of a request as team `who`'s token ("ops": the admin's; None: no token);
        (None, None) when the service could not be reached."""
        started = time.monotonic()
        headers = dict(kwargs.pop("headers", None) or {})
        if who is not None:
            headers["Authorization"] = f"Bearer {TOKENS[who]}"
        try:
            response = requests.request(method, self.base + path, timeout=timeout, headers=headers, **kwargs)
        except requests.RequestException as exc:
            ended = time.monotonic()
            if not self.in_window(started, ended):
                self.violate(f"{method} {path}: no answer outside a restart window ({exc})")
                self.note(
                    f"  that {method} was sent at {started - self.started:.1f}s and failed "
                    f"after {ended - started:.1f} s"
                )
            with self.lock:
                self.codes["no answer"] += 1
            return None, None
        ended = time.monotonic()
        with self.lock:
            self.codes[f"{response.status_code // 100}xx"] += 1
        if who is not None and response.status_code == 401 and not self.in_window(started, ended):
            # Every version of the tenants file the soak writes keeps both teams' tokens.
            self.violate(f"{method} {path}: team {who}'s token refused (401)")
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
            self.violate(f"{method} {path}: {response.status_code} with a body that is not JSON")
        if response.status_code >= 500 and not self.in_window(started, ended):
            allowed = response.status_code in (503, 507) and self.disk_full(started, ended)
            if not allowed:
                self.violate(f"{method} {path}: {response.status_code} outside a restart window: {body}")
        return response.status_code, body

    # -- bookkeeping ------------------------------------------------------------------------

    def note(self, text):
        line = f"[{time.monotonic() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        with self.lock:
            self.fault_log.append(line)

    def violate(self, text):
        with self.lock:
            self.violations[text] += 1
            first = self.violations[text] == 1
        if first:
            self.note("VIOLATION: " + text)

    def track(self, job_id, **facts):
        with self.lock:
            job = self.jobs.setdefault(
                job_id, {"created": time.monotonic(), "faults": [], "deleted": None, "team": "a"}
            )
            job.update(facts)
            return job

    def unfinished(self):
        """Jobs not known to be finished (from the latest status read of each)."""
        with self.lock:
            return [
                j for j, job in self.jobs.items() if not job["deleted"] and job.get("status") not in TERMINAL
            ]

    def running(self):
        status, body = self.call("GET", "/jobs?status=running&limit=100", who="ops")
        return [j["job_id"] for j in body["jobs"]] if status == 200 else []

    # -- the workload -----------------------------------------------------------------------

    def request_body(self, who="a"):
        rng = self.rng
        own = [name for name, team in self.datasets if team == who]
        dataset = rng.choice(["demo_sft", "demo_sft", *own[-2:]])
        served = self.serving and rng.random() < 0.3  # a fine-tune /v1 will call
        return {
            "model_name": SERVE_MODEL if served else "tiny-llama",
            "dataset": dataset,
            "epochs": rng.choice([1.0, 1.4, 2.0, 2.5]),
            "learning_rate": 1e-3,
            "custom_config": {
                "template": "default",
                "cutoff_len": 128,
                "logging_steps": rng.choice([1, 2, 5]),
                "save_steps": rng.choice([10, 20, 30]),
            },
        }

    def create(self, body=None, key=None, who="a"):
        headers = {"Idempotency-Key": key} if key else {}
        body = body or self.request_body()
        status, answer = self.call("POST", "/jobs", json=body, headers=headers, who=who)
        if status in (200, 201):
            self.track(answer["job_id"], key=key, team=who, model=(body or {}).get("model_name"))
            return answer["job_id"]
        if status is not None and status not in (409, 503, 507):
            self.violate(f"create answered {status}: {answer}")
        return None

    def workload(self):
        rng = self.rng
        while not self.done.is_set():
            self.refresh()
            action = rng.random()
            unfinished = self.unfinished()
            if len(unfinished) < self.args.queue and action < 0.5:
                who = rng.choice("ab")
                key = uuid.uuid4().hex if rng.random() < 0.3 else None
                body = self.request_body(who)
                job_id = self.create(body, key, who)
                if key and job_id and rng.random() < 0.5:  # a retry: the same job, never a second one
                    status, again = self.call(
                        "POST", "/jobs", json=body, headers={"Idempotency-Key": key}, who=who
                    )
                    if status == 200 and again["job_id"] != job_id:
                        self.violate(f"an Idempotency-Key replay made {again['job_id']}, not {job_id}")
            elif action < 0.55:
                self.stop_one()
            elif action < 0.63:
                self.resume_one()
            elif action < 0.72:
                self.delete_one()
            elif action < 0.76:
                self.upload()
            elif action < 0.78:
                self.delete_dataset()
            elif action < 0.83:
                self.evaluate_one()
            elif action < 0.87:
                self.deployment_step()
            elif action < 0.9:
                self.serving_step()
            elif action < 0.93 and len(unfinished) < self.args.queue:
                self.preemption_scenario()
            if not self.preemptions and time.monotonic() - self.started > 30:
                self.preemption_scenario()  # at least once, early: a short soak meets it too
            self.check_listing()
            self.check_isolation()
            self.done.wait(rng.uniform(1, 3))

    def refresh(self):
        status, body = self.call("GET", "/jobs?limit=1000", who="ops")
        if status != 200:
            return
        with self.lock:
            for job in body["jobs"]:
                if job["job_id"] in self.jobs:
                    self.jobs[job["job_id"]]["status"] = job["status"]
        for evaluation_id, evaluation in list(self.evaluations.items()):
            if evaluation.get("status") not in TERMINAL:
                status, view = self.call(
                    "GET", f"/jobs/{evaluation['job_id']}/evaluations/{evaluation_id}", who=evaluation["team"]
                )
                if status == 200:
                    evaluation["status"] = view["status"]

    def pick(self, statuses):
        """(a job in one of `statuses`, its team) for the workload to act on; not one a fault hit
        lately (so that its recovery is seen whole), nor one a preemption scenario watches."""
        recent = time.monotonic() - RECOVERY_S
        with self.lock:
            ids = [
                j
                for j, job in self.jobs.items()
                if not job["deleted"]
                and job.get("status") in statuses
                and not job.get("scenario")
                and not any(f["at"] > recent for f in job["faults"])
            ]
            job_id = self.rng.choice(sorted(ids)) if ids else None
            return job_id, (self.jobs[job_id]["team"] if job_id else None)

    def stop_one(self):
        job_id, who = self.pick(("pending", "running"))
        if job_id:
            self.track(job_id, stop_requested=True)
            status, body = self.call("POST", f"/jobs/{job_id}/stop", timeout=60, who=who)
            if status not in (None, 200, 202, 409, 503, 507):  # call() judges 503/507 by the full disk
                self.violate(f"stop of {job_id} answered {status}: {body}")
            elif status in (503, 507) and job_id not in body["message"]:
                self.violate(f"stop of {job_id} answered about another job: {body['message']}")

    def resume_one(self):
        job_id, who = self.pick(("stopped", "failed"))
        if job_id:
            status, body = self.call("POST", f"/jobs/{job_id}/resume", who=who)
            if status == 201:
                self.track(body["job_id"], resumed_from=body["resumed_from"], team=who)
            elif status not in (None, 409, 507, 503):
                self.violate(f"resume of {job_id} answered {status}: {body}")

    def delete_one(self):
        job_id, who = self.pick(TERMINAL)
        if job_id:
            status, body = self.call("DELETE", f"/jobs/{job_id}", who=who)
            if status in (204, 404):
                self.track(job_id, deleted=time.monotonic())
            elif status not in (None, 409, 503, 507):
                self.violate(f"delete of {job_id} answered {status}: {body}")

    def upload(self):
        who = self.rng.choice("ab")
        name = f"soak_{len(self.datasets)}_{self.rng.randrange(10**6)}"
        rows = json.load(open(os.path.join(PROJECT, "data", "demo_sft.json")))[:40]
        content = "".join(json.dumps(row) + "\n" for row in rows).encode()
        status, body = self.call(
            "POST", "/datasets", files={"file": ("d.jsonl", content)}, data={"name": name}, who=who
        )
        if status == 201:
            self.datasets.append((name, who))
        elif status not in (None, 503, 507):
            self.violate(f"upload of {name} answered {status}: {body}")

    def delete_dataset(self):
        if self.datasets:
            name, who = self.rng.choice(self.datasets)
            status, body = self.call("DELETE", f"/datasets/{name}", who=who)
            if status in (204, 404):
                self.datasets.remove((name, who))
            elif status not in (None, 409, 503, 507):
                self.violate(f"delete of dataset {name} answered {status}: {body}")

    def check_listing(self):
        """Every job answered 201 is listed once until it is answered 204, to its team and the admin;
        a team's listing holds nothing of the other team's."""
        asked = time.monotonic()
        for who in ("ops", "a", "b"):
            listed = self.list_all(who)
            if listed is None:
                return
            ids = [j["job_id"] for j in listed]
            twice = [j for j, n in collections.Counter(ids).items() if n > 1]
            if twice:
                self.violate(f"listed twice (to {who}): {twice}")
            if who != "ops":
                foreign = [j["job_id"] for j in listed if j.get("tenant") != f"team-{who}"]
                if foreign:
                    self.violate(f"team {who}'s listing holds other teams' jobs: {foreign}")
            with self.lock:
                mine = {j for j, job in self.jobs.items() if who == "ops" or job["team"] == who}
                expected = {
                    j for j in mine if self.jobs[j]["created"] < asked and not self.jobs[j]["deleted"]
                }
                gone = {j for j in mine if self.jobs[j]["deleted"] and self.jobs[j]["deleted"] < asked}
            missing, stale = expected - set(ids), gone & set(ids)
            if missing:
                self.violate(f"created but not listed (to {who}): {sorted(missing)}")
            if stale:
                self.violate(f"deleted but still listed (to {who}): {sorted(stale)}")

    def list_all(self, who):
        listed, offset = [], 0
        while True:
            status, body = self.call("GET", f"/jobs?limit=1000&offset={offset}", who=who)
            if status != 200:
                return None
            listed += body["jobs"]
            offset += len(body["jobs"])
            if offset >= body["total"] or not body["jobs"]:
                return listed

    def check_isolation(self):
        """A team reading the other team's job, evaluation or deployment by id gets the 404 of one
        that does not exist; an anonymous request gets 401."""
        with self.lock:
            jobs = [(j, job["team"]) for j, job in self.jobs.items() if not job["deleted"]]
            runs = [(f"/deployments/{d}", x["team"]) for d, x in self.deployments.items()]
            runs += [(f"/jobs/{x['job_id']}/evaluations/{e}", x["team"]) for e, x in self.evaluations.items()]
        runs += [(f"/jobs/{j}", team) for j, team in jobs]
        for path, team in self.rng.sample(runs, k=min(3, len(runs))):
            other = "b" if team == "a" else "a"
            status, body = self.call("GET", path, who=other)
            if status not in (None, 404, 503):
                self.violate(f"team {other} read team {team}'s {path}: {status}")
        status, _ = self.call("GET", "/jobs", who=None)
        if status not in (None, 401):
            self.violate(f"an anonymous GET /jobs answered {status}")

    # -- evaluations, deployments, preemption ----------------------------------------------------

    def evaluate_one(self):
        """Judge a completed job on a few rows (its team asks)."""
        job_id, who = self.pick(("completed",))
        if not job_id or sum(e.get("status") not in TERMINAL for e in self.evaluations.values()) >= 1:
            return
        body = {"dataset": "demo_sft", "max_samples": 4, "generation": {"max_new_tokens": 4}}
        status, view = self.call("POST", f"/jobs/{job_id}/evaluations", json=body, who=who)
        if status == 202:
            with self.lock:
                self.evaluations[view["evaluation_id"]] = {
                    "job_id": job_id, "team": who, "created": time.monotonic(), "status": view["status"]
                }  # fmt: skip
        elif status not in (None, 404, 409, 503, 507):
            self.violate(f"evaluation of {job_id} answered {status}: {view}")

    def deployment_step(self):
        """One live deployment at most: make one of a completed job, chat with a ready one (through
        the service, and through its own endpoint with its key), stop one that has served a while."""
        live = [(d, x) for d, x in self.deployments.items() if not x.get("stopped")]
        if not live:
            job_id, who = self.pick(("completed",))
            if job_id:
                status, view = self.call("POST", "/deployments", json={"job_id": job_id}, who=who)
                if status == 201:
                    with self.lock:
                        self.deployments[view["deployment_id"]] = {
                            "team": who, "created": time.monotonic(), "key": view["api_key"],
                            "base_url": view["base_url"], "job_id": job_id,
                        }  # fmt: skip
                elif status not in (None, 404, 409, 503, 507):
                    self.violate(f"deployment of {job_id} answered {status}: {view}")
            return
        deployment_id, facts = live[0]
        status, view = self.call("GET", f"/deployments/{deployment_id}", who=facts["team"])
        if status != 200:
            return
        facts["status"] = view["status"]
        if view["status"] == "ready" and self.rng.random() < 0.8:
            self.chat(deployment_id, facts)
        if time.monotonic() - facts["created"] > 120 or view["status"] == "failed":
            self.stop_deployment(deployment_id, facts)

    def chat(self, deployment_id, facts):
        body = {"messages": [{"role": "user", "content": "Add three and three."}], "max_tokens": 4}
        try:
            answer = requests.post(
                f"{self.base}/deployments/{deployment_id}/chat",
                json=body,
                headers={"Authorization": f"Bearer {TOKENS[facts['team']]}"},
                timeout=120,
            )
        except requests.RequestException:
            return  # a fault's window, or the server restarting: judged by the record, not here
        if answer.status_code == 200:
            whole = answer.text.rstrip().endswith("data: [DONE]") or "event: error" in answer.text
            self.chats["through the service"] += 1
            if not whole:
                self.violate(f"a chat with {deployment_id} ended with neither [DONE] nor an error event")
        elif answer.status_code not in (409, 503):
            self.violate(f"a chat with {deployment_id} answered {answer.status_code}: {answer.text[:200]}")
        with contextlib.suppress(requests.RequestException):
            direct = requests.post(
                f"{facts['base_url']}/chat/completions",
                json={"model": deployment_id, **body},
                headers={"Authorization": f"Bearer {facts['key']}"},
                timeout=120,
            )
            self.chats[f"its own endpoint: {direct.status_code}"] += 1

    def serving_step(self):
        """Call a completed fine-tune of the serving model through /v1 as its team (plain or
        streamed): answered whole, or refused with what a client retries (503 while its server
        starts, 429); another team's call of it is a 404."""
        if not self.serving:
            return
        with self.lock:
            ids = sorted(
                j
                for j, job in self.jobs.items()
                if job.get("model") == SERVE_MODEL and job.get("status") == "completed" and not job["deleted"]
            )
        if not ids:
            return
        job_id = self.rng.choice(ids)
        team = self.jobs[job_id]["team"]
        stream = self.rng.random() < 0.3
        body = {"model": job_id, "messages": [{"role": "user", "content": "Say a colour."}], "max_tokens": 4}
        root = self.base.split("/api/")[0]
        started = time.monotonic()
        try:
            answer = requests.post(
                f"{root}/v1/chat/completions",
                json={**body, "stream": stream},
                headers={"Authorization": f"Bearer {TOKENS[team]}"},
                timeout=120,
            )
        except requests.RequestException:
            self.served["no answer"] += 1
            return  # a fault's window: judged by the records
        code = answer.status_code
        self.served[f"{'stream' if stream else 'plain'} {code}"] += 1
        if code == 200:
            whole = (
                answer.text.rstrip().endswith("data: [DONE]") or "event: error" in answer.text
                if stream
                else bool(answer.json().get("choices"))
            )
            if not whole:
                self.violate(f"/v1 answered {job_id} with neither a whole answer nor an error event")
        elif code == 404 and self.jobs[job_id]["deleted"]:
            pass
        elif code not in (409, 429, 503) and not self.in_window(started, time.monotonic()):
            self.violate(f"/v1 chat with {job_id} answered {code}: {answer.text[:200]}")
        other = "b" if team == "a" else "a"
        with contextlib.suppress(requests.RequestException):
            foreign = requests.post(
                f"{root}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {TOKENS[other]}"},
                timeout=30,
            )
            if foreign.status_code not in (404, 503) and not self.in_window(started, time.monotonic()):
                self.violate(f"team {other} called team {team}'s {job_id} through /v1: {foreign.status_code}")

    def server_views(self):
        status, body = self.call("GET", "/servers?limit=100", who="ops")
        if status == 200:
            for server in body["servers"]:
                self.servers[server["server_id"]] = server
        return status == 200

    def stop_servers(self):
        for server_id, view in list(self.servers.items()):
            if view.get("status") not in ("stopped", "failed"):
                status, answer = self.call("DELETE", f"/servers/{server_id}", timeout=60, who="ops")
                if status in (200, 202):
                    self.servers[server_id] = answer
                elif status not in (None, 503, 507):
                    self.violate(f"stop of server {server_id} answered {status}: {answer}")

    def stop_deployment(self, deployment_id, facts):
        status, view = self.call("DELETE", f"/deployments/{deployment_id}", timeout=60, who=facts["team"])
        if status in (200, 202):
            facts["stopped"] = time.monotonic()
        elif status not in (None, 503, 507):
            self.violate(f"stop of {deployment_id} answered {status}: {view}")

    def preemption_scenario(self):
        """team-b's long low jobs until every slot is taken, then team-a's high one: it stops the
        newest low one, which waits and resumes from its checkpoint once a slot frees."""
        with self.lock:
            if any(job.get("scenario") and job.get("status") not in TERMINAL for job in self.jobs.values()):
                return
        lows = []
        for _ in range(self.args.capacity):
            low_id = self.create({**self.request_body("b"), "epochs": 6.0, "priority": "low"}, who="b")
            if not low_id:
                return
            self.track(low_id, scenario="low")
            lows.append(low_id)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not self.done.is_set():
                status, view = self.call("GET", f"/jobs/{low_id}", who="b")
                if status == 200 and view["status"] != "pending":
                    break
                self.done.wait(1)
            if len(self.running()) >= self.args.capacity or self.live_deployment_holds_a_slot(len(lows)):
                break
        high_id = self.create({**self.request_body("a"), "epochs": 1.0, "priority": "high"}, who="a")
        if high_id:
            self.track(high_id, scenario="high")
            with self.lock:
                self.preemptions.extend((low, high_id) for low in lows)
            self.note(f"preemption scenario: {high_id} (high, team-a) after {lows} (low, team-b)")

    def live_deployment_holds_a_slot(self, running_lows):
        holders = self.slot_holders()
        return sum(len(p) for p in holders.values()) >= self.args.capacity and running_lows >= 1

    # -- the faults -------------------------------------------------------------------------

    def fault_plan(self):
        """The faults in a seeded order in which each kind comes once before any comes twice."""
        while True:
            kinds = [
                k
                for k in FAULTS
                if (k != "full_disk" or self.mounted) and (k != "server_kill" or self.serving)
            ]
            self.chaos_rng.shuffle(kinds)
            yield from kinds

    def chaos(self):
        plan = self.fault_plan()
        low, high = self.args.fault_every
        while not self.done.wait(self.chaos_rng.uniform(low, high)):
            kind = next(plan)
            if kind in NEEDS_A_RUNNING_JOB:
                job_id = self.wait_running(30)
                if job_id is None:
                    self.note(f"{kind}: no job ran within 30 s; skipped")
                    continue
            else:
                job_id = None
            if self.done.is_set():
                return
            with self.lock:
                self.faults[kind] += 1
            getattr(self, "fault_" + kind)(job_id)

    def wait_running(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.done.is_set():
            running = self.running()
            for job_id in self.chaos_rng.sample(running, k=len(running)):
                if self.monitor_of(job_id) and self.trainers().get(job_id):
                    return job_id
            time.sleep(0.5)
        return None

    def hit(self, job_id, kind, **facts):
        """Note a fault that hit a job, with the step its trainer had reached and its attempt."""
        job_dir = os.path.join(self.home, "jobs", job_id)
        step = read_progress(os.path.join(job_dir, "output")).get("current_step")
        attempt = None
        with contextlib.suppress(OSError, ValueError):
            attempt = json.load(open(os.path.join(job_dir, "state.json"))).get("attempt")
        fault = {"kind": kind, "step": step, "attempt": attempt, "at": time.monotonic(), **facts}
        with self.lock:
            self.track(job_id)["faults"].append(fault)
        return fault

    def fault_server_kill(self, _job_id):
        servers = [
            p
            for p in self.home_processes()
            if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline())
            and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not servers:
            self.note("server_kill: no shared server runs; skipped")
            return
        victim = self.chaos_rng.choice(servers)
        self.note(f"server_kill: kill -9 of the shared server {victim.pid}")
        with contextlib.suppress(psutil.Error):
            victim.kill()

    def fault_gunicorn_kill(self, _job_id):
        self.note("gunicorn_kill: kill -9 of gunicorn")
        self.restart("gunicorn_kill")

    def fault_worker_kill(self, _job_id):
        workers = [p for p in psutil.Process(self.proc.pid).children() if "gunicorn" in " ".join(p.cmdline())]
        if workers:
            victim = self.chaos_rng.choice(workers)
            self.note(f"worker_kill: kill -9 of worker {victim.pid}")
            window = [time.monotonic(), None]
            with self.lock:
                self.windows.append(window)  # requests in flight on it may go unanswered
            victim.kill()
            time.sleep(1)
            window[1] = time.monotonic()

    def fault_monitor_kill(self, job_id):
        monitor = self.monitor_of(job_id)
        if monitor:
            step = self.hit(job_id, "monitor_kill")["step"]
            self.note(f"monitor_kill: kill -9 of the monitor of {job_id} at step {step}")
            with contextlib.suppress(psutil.Error):
                monitor.kill()

    def fault_trainer_kill(self, job_id):
        trainers = self.trainers().get(job_id) or []
        for proc in trainers:
            step = self.hit(job_id, "trainer_kill")["step"]
            self.note(f"trainer_kill: kill -9 of the trainer of {job_id} at step {step}")
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def fault_monitor_freeze(self, job_id):
        monitor = self.monitor_of(job_id)
        if monitor:
            step = self.hit(job_id, "monitor_freeze")["step"]
            self.note(f"monitor_freeze: SIGSTOP of the monitor of {job_id} at step {step}")
            with contextlib.suppress(psutil.Error):
                monitor.suspend()

    def monitored(self):
        """The jobs whose monitor is alive now: one just launched is not yet listed as running."""
        found = set()
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                mine = (proc.info["cwd"] or "").startswith(
                    f"{self.home}/"
                )  # a monitor runs in its run's folder
                if mine and "imts_flask.monitor" in cmdline and "train" in cmdline:
                    # A job's id alone: an evaluation's run id is train_<job>/eval_<id>.
                    found.update(part for part in cmdline if JOB_ID.fullmatch(part))
        return found

    def fault_host_death(self, _job_id, kind="host_death"):
        for job_id in sorted(set(self.running()) | self.monitored()):
            self.deaths.append((job_id, self.hit(job_id, kind)))
        self.note(f"{kind}: kill -9 of everything ({len(self.deaths)} running jobs hit so far)")
        self.restart(kind, kill_jobs=True)

    def fault_save_death(self, job_id):
        """Kill everything while a checkpoint is being saved: caught in the act, or left torn."""
        output = os.path.join(self.home, "jobs", job_id, "output")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for name in os.listdir(output):
                    path = os.path.join(output, name)
                    if name.startswith("checkpoint-") and not os.path.exists(
                        os.path.join(path, "trainer_state.json")
                    ):
                        self.note(f"save_death: caught {job_id} saving {name}")
                        return self.fault_host_death(None, "save_death")
            time.sleep(0.01)
        self.fault_host_death(None, "save_death")
        checkpoints = (
            sorted(
                (n for n in os.listdir(output) if n.startswith("checkpoint-")),
                key=lambda n: int(n.split("-")[1]),
            )
            if os.path.isdir(output)
            else []
        )
        if checkpoints:  # what a save cut short leaves: trainer_state.json is written last
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(output, checkpoints[-1], "trainer_state.json"))
            self.note(f"save_death: left {checkpoints[-1]} of {job_id} as a save cut short leaves it")
            self.hit(job_id, "torn_checkpoint", checkpoint=checkpoints[-1])

    def fault_burst(self, _job_id):
        self.note("burst: 50 concurrent requests")
        key = uuid.uuid4().hex
        body = self.request_body()
        calls = [("GET", "/jobs?limit=50", {})] * 20 + [("GET", "/health", {})] * 15
        calls += [("POST", "/jobs", {"json": body, "headers": {"Idempotency-Key": key}})] * 10
        calls += [("GET", f"/jobs/{j}", {}) for j in list(self.jobs)[-5:]]
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda c: self.call(c[0], c[1], **c[2]), calls))
        made = {
            a[1]["job_id"]
            for (m, _p, _k), a in zip(calls, answers, strict=True)
            if m == "POST" and a[0] in (200, 201)
        }
        if len(made) > 1:
            self.violate(f"one Idempotency-Key made {len(made)} jobs: {sorted(made)}")
        for job_id in made:
            self.track(job_id, key=key)

    def fault_overlap_restart(self, _job_id):
        """SIGTERM to the master, and a new master started at once on the same home and port while
        the old one finishes its graceful exit (each keeps its own metrics folder)."""
        old = self.proc
        window = [time.monotonic(), None]
        with self.lock:
            self.windows.append(window)
        self.note("overlap_restart: SIGTERM to the master, a new one started at once")
        with contextlib.suppress(ProcessLookupError):
            old.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        self.start_service()
        window[1] = time.monotonic()
        still = old.poll() is None
        self.note(
            f"overlap_restart: the new master answers; the old one {'still exits' if still else 'exited'}"
        )
        threading.Thread(target=old.wait, daemon=True).start()

    def fault_tenants_edit(self, _job_id):
        """The tenants file rewritten as operators do (every version keeps both teams' tokens)."""
        kind = self.chaos_rng.choice(["renamed_over", "in_place", "renamed_away", "emptied"])
        extra = None if self.chaos_rng.random() < 0.5 else f"extra-{self.chaos_rng.randrange(10**6)}"
        self.note(f"tenants_edit: {kind}")
        path = self.tenants_path()
        if kind == "renamed_over":
            self.write_tenants(self.tenants_data(extra))
        elif kind == "in_place":
            self.write_tenants(self.tenants_data(extra), in_place=True)
        elif kind == "renamed_away":
            os.replace(path, path + ".away")
            self.done.wait(2)
            os.replace(path + ".away", path)
        else:
            open(path, "w").close()
            self.done.wait(2)
            self.write_tenants(self.tenants_data(extra))

    def fault_full_disk(self, _job_id):
        filler = os.path.join(self.home, "soak-filler")
        free = shutil.disk_usage(self.home).free
        self.note(f"full_disk: filling the home's {free // 2**20} MB free for 15 s")
        span = [time.monotonic(), None]
        with self.lock:
            self.full_disk.append(span)
        for job_id in self.running():
            self.hit(job_id, "full_disk")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # unbuffered: no flush to fail at close
        try:
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, free)
            with contextlib.suppress(OSError):  # what fallocate left: a page or two
                while os.write(fd, b"\0" * 4096):
                    pass
            os.close(fd)
            self.done.wait(15)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(filler)
            span[1] = time.monotonic()

    # -- invariants -------------------------------------------------------------------------

    def watch(self):
        """Capacity and one process per run, every half second; /health every second."""
        next_health = 0.0
        while not self.done.wait(0.5):
            holders = self.slot_holders()
            live = sum(len(procs) for procs in holders.values())
            if live > self.args.capacity:
                self.violate(
                    f"{live} runs hold slots at once (capacity {self.args.capacity}): {sorted(holders)}"
                )
            for run, procs in holders.items():
                if len(procs) > 1:
                    self.violate(f"run {run} has {len(procs)} processes holding its slot")
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + 1
                started = time.monotonic()
                status, _ = self.call("GET", "/health", timeout=10)
                if status is not None:
                    self.health.append(time.monotonic() - started)

    def settle(self):
        """Stop the deployments, then wait until every run is finished; what never finishes is a
        violation."""
        deadline = time.monotonic() + self.args.settle_minutes * 60
        while time.monotonic() < deadline:
            for deployment_id, facts in list(self.deployments.items()):
                if not facts.get("stopped"):
                    self.stop_deployment(deployment_id, facts)
            if self.serving and self.server_views():
                self.stop_servers()
            self.refresh()
            if not self.unfinished() and not self.unfinished_others():
                return
            time.sleep(2)
        self.violate(f"never finished: {self.unfinished() + self.unfinished_others()}")

    def unfinished_others(self):
        """Evaluations and deployments not known to be finished."""
        found = [e for e, x in self.evaluations.items() if x.get("status") not in TERMINAL]
        for deployment_id, facts in self.deployments.items():
            status, view = self.call("GET", f"/deployments/{deployment_id}", who=facts["team"])
            if status == 200:
                facts["status"] = view["status"]
            if facts.get("status") not in ("stopped", "failed"):
                found.append(deployment_id)
        if self.serving:
            self.server_views()
            found += [
                s for s, view in self.servers.items() if view.get("status") not in ("stopped", "failed")
            ]
        return found

    def final_checks(self):
        settled_at = time.monotonic()
        self.check_listing()
        for job_id, job in sorted(self.jobs.items()):
            if job["deleted"]:
                continue
            status, view = self.call("GET", f"/jobs/{job_id}", who=job["team"])
            if status != 200:
                self.violate(f"{job_id}: GET answered {status}")
                continue
            job["final"] = view
            self.check_job(job_id, job, view)
        for path in self.records():
            try:
                json.load(open(path))
            except (OSError, ValueError) as exc:
                self.violate(f"{path}: the record cannot be read ({exc})")
        while time.monotonic() < settled_at + 30 and self.home_processes():
            time.sleep(1)
        left = [" ".join(p.cmdline()[:4]) for p in self.home_processes() if p.is_running()]
        if left:
            self.violate(f"processes of the home left after every job finished: {left}")
        for folder in ("jobs/.staging", "jobs/.trash", "data/uploads/.staging", "data/uploads/.trash"):
            path = os.path.join(self.home, folder)
            for name in os.listdir(path) if os.path.isdir(path) else []:
                age = time.time() - os.lstat(os.path.join(path, name)).st_mtime
                if age > LEFTOVER_AGE_S:
                    self.violate(f"{folder}/{name} left behind ({age:.0f} s old)")
                else:
                    self.note(
                        f"{folder}/{name}: a leftover {age:.0f} s old (removed after {LEFTOVER_AGE_S} s)"
                    )
        for evaluation_id, facts in sorted(self.evaluations.items()):
            status, view = self.call(
                "GET", f"/jobs/{facts['job_id']}/evaluations/{evaluation_id}", who=facts["team"]
            )
            if status == 404 and self.jobs.get(facts["job_id"], {}).get("deleted"):
                facts["final"] = {"status": "deleted with its job"}
                continue
            facts["final"] = view
            if status != 200 or view["status"] not in TERMINAL:
                self.violate(
                    f"evaluation {evaluation_id}: {status} {view and view.get('status')} after settling"
                )
            elif view["status"] == "completed" and not (view.get("results") or {}).get("tuned"):
                self.violate(f"evaluation {evaluation_id}: completed without figures")
        for deployment_id, facts in sorted(self.deployments.items()):
            status, view = self.call("GET", f"/deployments/{deployment_id}", who=facts["team"])
            facts["final"] = view
            if status != 200 or view["status"] not in ("stopped", "failed"):
                self.violate(
                    f"deployment {deployment_id}: {status} {view and view.get('status')} after settling"
                )
            elif view["status"] == "failed" and not view.get("error"):
                self.violate(f"deployment {deployment_id}: failed without a reason")
        for low, high in self.preemptions:
            for job_id in (low, high):
                job = self.jobs[job_id]
                final = job.get("final") or {}
                if final.get("status") != "completed" and not job["faults"] and not job["deleted"]:
                    self.violate(
                        f"{job_id} ({job.get('scenario')} priority) ended "
                        f"{final.get('status')}: {final.get('error')}"
                    )
        for job_id, fault in self.deaths:
            after = self.resumed_step(job_id, (fault["attempt"] or 1) + 1)
            if after is not None:
                self.resumed_after_death += 1
                if fault["step"] is not None:  # it had logged a step before the host died
                    self.retrained.append(fault["step"] - after)

    def check_job(self, job_id, job, view):
        kinds = [f["kind"] for f in job["faults"]]
        state = view["status"]
        if state not in TERMINAL:
            self.violate(f"{job_id}: {state} after settling")
        if state == "completed" and view["current_step"] != view["total_steps"]:
            self.violate(f"{job_id}: completed at step {view['current_step']} of {view['total_steps']}")
        if "trainer_kill" in kinds and state == "failed" and view["signal"] != "SIGKILL":
            if not self.lost_later(job, "trainer_kill"):
                self.violate(f"{job_id}: its trainer was killed, yet it failed with {view['error']!r}")
        if "trainer_kill" in kinds:
            # Counted from the attempt the kill hit: a loss before it (a host death while the job
            # waited for its monitor, which no listing of running jobs names) is not its doing.
            kill = next(f for f in job["faults"] if f["kind"] == "trainer_kill")
            after = sum(f["kind"] in LOSSES and f["at"] > kill["at"] for f in job["faults"])
            if view["attempt"] > (kill["attempt"] or 1) + after:
                self.violate(
                    f"{job_id}: a killed trainer (attempt {kill['attempt']}) was tried again "
                    f"(attempt {view['attempt']}); {self.story(job_id)}"
                )
        if state == "failed" and view["reason"] == "lost" and view["attempt"] < view["max_attempts"]:
            self.violate(f"{job_id}: failed lost at attempt {view['attempt']} of {view['max_attempts']}")
        if state == "failed" and view["reason"] != "lost" and "trainer_kill" not in kinds:
            if "full_disk" not in kinds and "torn_checkpoint" not in kinds:
                self.violate(f"{job_id}: failed: {view['error']}")
        if "torn_checkpoint" in kinds:
            torn = next(f["checkpoint"] for f in job["faults"] if f["kind"] == "torn_checkpoint")
            events = (self.call("GET", f"/jobs/{job_id}/events", who="ops")[1] or {}).get("events", [])
            if any(e.get("resumed_from") == torn for e in events):
                self.violate(f"{job_id}: resumed from {torn}, a save cut short")

    def story(self, job_id):
        """A job's history as its record tells it, for a violation's line."""
        try:
            state = json.load(open(os.path.join(self.home, "jobs", job_id, "state.json")))
        except (OSError, ValueError) as exc:
            return f"its record is unreadable ({exc})"
        entries = (
            f"{h.get('at')} {h.get('status')} #{h.get('attempt')}"
            + (f" ({h['reason']})" if h.get("reason") else "")
            for h in state.get("history", [])
        )
        return "history: " + " | ".join(entries)

    def lost_later(self, job, kind):
        """Whether a fault after `kind` (a host death, say) explains the job's end instead."""
        at = next(f["at"] for f in job["faults"] if f["kind"] == kind)
        return any(f["at"] > at for f in job["faults"] if f["kind"] != kind)

    def resumed_step(self, job_id, attempt):
        """The step attempt `attempt` of a job started from: its checkpoint's, 0 starting over, or None."""
        events = (self.call("GET", f"/jobs/{job_id}/events", who="ops")[1] or {}).get("events", [])
        for event in events:
            if event["status"] == "running" and event.get("attempt") == attempt:
                return int(event["resumed_from"].split("-")[1]) if event.get("resumed_from") else 0
        return None

    def records(self):
        jobs = os.path.join(self.home, "jobs")
        found = [os.path.join(jobs, n, "state.json") for n in os.listdir(jobs) if n.startswith("train_")]
        for job in os.listdir(jobs):
            evaluations = os.path.join(jobs, job, "evaluations")
            if job.startswith("train_") and os.path.isdir(evaluations):
                found += [os.path.join(evaluations, e, "state.json") for e in os.listdir(evaluations)]
        for folder, prefix in (("deployments", "deploy_"), ("servers", "serve_")):
            path = os.path.join(self.home, folder)
            if os.path.isdir(path):
                found += [
                    os.path.join(path, d, "state.json") for d in os.listdir(path) if d.startswith(prefix)
                ]
        return found

    # -- the run and its report -------------------------------------------------------------

    def run(self):
        self.prepare_home()
        self.start_service()
        self.note(f"soak: {self.args.minutes} min, seed {self.args.seed}, home {self.home}")
        threads = [threading.Thread(target=t, daemon=True) for t in (self.workload, self.chaos, self.watch)]
        for thread in threads:
            thread.start()
        self.done.wait(self.args.minutes * 60)
        self.done.set()
        for thread in threads:
            thread.join(timeout=120)
        self.note("the workload and the faults stop; settling")
        self.done.clear()
        watcher = threading.Thread(target=self.watch, daemon=True)
        watcher.start()
        self.settle()
        self.done.set()
        watcher.join(timeout=30)
        self.final_checks()
        return self.report()

    def report(self):
        outcomes = collections.Counter(
            (job.get("final") or {}).get("status", "deleted" if job["deleted"] else "?")
            for job in self.jobs.values()
        )
        attempts = collections.Counter(
            (job.get("final") or {}).get("attempt") for job in self.jobs.values() if job.get("final")
        )
        health = sorted(self.health) or [0.0]
        report = {
            "minutes": self.args.minutes,
            "seed": self.args.seed,
            "jobs": len(self.jobs),
            "outcomes": dict(outcomes),
            "attempts": {str(k): v for k, v in sorted(attempts.items())},
            "faults": dict(self.faults),
            "requests": dict(self.codes),
            "running_jobs_hit_by_host_deaths": len(self.deaths),
            "of_them_resumed": self.resumed_after_death,
            "steps_retrained_per_host_death": self.retrained,
            "health_ms": {
                "p50": 1000 * statistics.median(health),
                "p99": 1000 * health[min(len(health) - 1, int(len(health) * 0.99))],
                "max": 1000 * health[-1],
                "samples": len(self.health),
            },
            "full_disk_fault": self.mounted,
            "evaluations": dict(
                collections.Counter(
                    (e.get("final") or {}).get("status", "?") for e in self.evaluations.values()
                )
            ),
            "deployments": dict(
                collections.Counter(
                    (d.get("final") or {}).get("status", "?") for d in self.deployments.values()
                )
            ),
            "chats": dict(self.chats),
            "serving": dict(self.served) if self.serving else "skipped: no vLLM venv (make vllm)",
            "servers": dict(collections.Counter(v.get("status", "?") for v in self.servers.values())),
            "preemption_scenarios": len(self.preemptions),
            "jobs_preempted": sum(
                1
                for low, _ in self.preemptions
                if ((self.jobs[low].get("final") or {}).get("preemptions") or 0) > 0
            ),
            "violations": [{"what": text, "times": n} for text, n in self.violations.items()],
        }
        print("\n== soak report ==")
        print(
            f"{report['minutes']} min, seed {report['seed']}: {report['jobs']} jobs, "
            f"{sum(self.faults.values())} faults"
        )
        print("jobs by outcome:  " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        print("attempts:         " + ", ".join(f"{k}: {v}" for k, v in report["attempts"].items()))
        print("faults by kind:   " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())))
        print(f"evaluations:      {report['evaluations']}")
        print(f"deployments:      {report['deployments']}, chats {report['chats']}")
        print(f"shared serving:   {report['serving']}, servers {report['servers']}")
        print(
            f"preemption:       {report['jobs_preempted']} of {report['preemption_scenarios']} "
            "low jobs preempted"
        )
        print("requests:         " + ", ".join(f"{k} {v}" for k, v in sorted(self.codes.items())))
        print(f"host deaths hit:  {len(self.deaths)} running jobs, {self.resumed_after_death} resumed after")
        if self.retrained:
            print(
                f"steps trained again per host death: {self.retrained} "
                f"(mean {statistics.mean(self.retrained):.1f})"
            )
        h = report["health_ms"]
        print(
            f"/health:          p50 {h['p50']:.1f} ms, p99 {h['p99']:.1f} ms, max {h['max']:.1f} ms "
            f"({h['samples']} reads)"
        )
        print(f"violations:       {sum(self.violations.values())} ({len(self.violations)} distinct)")
        for violation, times in self.violations.items():
            print(f"  - {violation}" + (f" (x{times})" if times > 1 else ""))
        if self.violations:
            print("what gunicorn said about its workers (gunicorn.log):")
            for line in self.gunicorn_events()[-40:]:
                print("  " + line)
        if self.args.report:
            with open(self.args.report, "w") as handle:
                json.dump(report, handle, indent=2)
        return 1 if self.violations else 0

    def gunicorn_events(self):
        """The arbiter's and workers' lines about workers and errors: why a request went unanswered."""
        wanted = ("WORKER TIMEOUT", "was sent", "Worker exiting", "Booting worker", "[ERROR]", "[CRITICAL]")
        try:
            with open(os.path.join(self.home, "gunicorn.log"), errors="replace") as handle:
                return [line.rstrip() for line in handle if any(w in line for w in wanted)]
        except OSError:
            return []

    def cleanup(self):
        with contextlib.suppress(Exception):
            self.kill_service()
        for proc in self.home_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.mounted and not self.args.keep:
            time.sleep(1)
            subprocess.run(["umount", "-l", self.home], check=False)
        if not self.args.keep and not self.args.home:
            shutil.rmtree(self.home, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="how long the workload and faults run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every", type=float, nargs=2, default=(20.0, 60.0), metavar=("MIN", "MAX"))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument(
        "--deploy-port", type=int, default=18900, help="the first of 20 ports for deployments"
    )
    parser.add_argument("--heartbeat-timeout", type=float, default=20.0)
    parser.add_argument("--queue", type=int, default=3, help="unfinished jobs the workload keeps")
    parser.add_argument("--settle-minutes", type=float, default=10.0)
    parser.add_argument("--home", help="a home to use (default: a new temporary one)")
    parser.add_argument("--no-tmpfs", action="store_true", help="do not mount a tmpfs (no full_disk)")
    parser.add_argument("--tmpfs-mb", type=int, default=1024)
    parser.add_argument("--keep", action="store_true", help="keep the home for a look afterwards")
    parser.add_argument("--no-serving", action="store_true", help="no shared serving (no vLLM server)")
    parser.add_argument("--report", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
