"""Fault injection: no job is ever lost. One test per case of the issue, with real processes.

Cases 1-3 run the real llamafactory-cli on tiny-llama under gunicorn; the rest use the FAKE
trainer (tests/fake_trainer.py), which writes trainer_log.jsonl and exits as told. Each case checks
the end state and that no process of the job's tree is left.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import psutil
import pytest
import requests

from conftest import PROJECT, fake_cli, make_home, max_overlap, wait_for
from harness import Service, alive, tree_pids

BASE = "/api/v1/training"
FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 1}
REAL = {"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": FAST}
FAKE = {"model_name": "tiny-llama", "dataset": "demo_sft"}
TERMINAL = ("completed", "failed", "stopped")


def _job_dir(service, job_id):
    return os.path.join(service.home, "jobs", job_id)


def _trainer_starts(service, job_id):
    """How many times a trainer was started for a job (the monitor writes one header per start)."""
    path = os.path.join(_job_dir(service, job_id), "training.log")
    if not os.path.exists(path):
        return 0  # stopped while queued: never started
    return open(path, errors="replace").read().count(" imts monitor (pid ")


def _history(service, job_id):
    state = json.load(open(os.path.join(_job_dir(service, job_id), "state.json")))
    return [h["status"] for h in state["history"]]


@pytest.fixture
def real_service(tmp_path):
    services = []

    def start(**settings):
        svc = Service(make_home(tmp_path / f"home{len(services)}"), **settings).start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        if svc.proc and svc.proc.poll() is None:
            for job in requests.get(f"{svc.base}/jobs?status=running", timeout=30).json()["jobs"]:
                requests.post(f"{svc.base}/jobs/{job['job_id']}/stop", timeout=60)
        svc.stop()


@pytest.fixture
def fake_service(tmp_path):
    services = []

    def start(*options, workers=3, **settings):
        home = make_home(tmp_path / f"home{len(services)}")
        cli = fake_cli(home, *options)
        svc = Service(home, workers=workers, llamafactory_cli=cli, stop_grace_s=3, **settings).start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        for job in requests.get(f"{svc.base}/jobs?status=running", timeout=30).json()["jobs"]:
            requests.post(f"{svc.base}/jobs/{job['job_id']}/stop", timeout=60)
        svc.stop()


# 1 -------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_1_kill9_of_gunicorn_and_restart_loses_no_job(real_service):
    svc = real_service(max_concurrent_jobs=2)
    ids = [svc.create({**REAL, "epochs": 4.0}) for _ in range(3)]
    wait_for(lambda: all(svc.status(j)["current_step"] for j in ids[:2]), timeout=180, interval=0.3)
    before = {j: svc.status(j) for j in ids}
    svc.kill_hard()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{svc.base}/health", timeout=2)
    svc.start()
    for job_id in ids:
        after = svc.status(job_id)
        assert after["status"] in ("pending", "running", "completed"), after
        assert (after["current_step"] or 0) >= (before[job_id]["current_step"] or 0)
    for job_id in ids:
        final = svc.wait_done(job_id, timeout=400)
        assert final["status"] == "completed", final.get("error")
        assert final["progress"] == 1.0 and isinstance(final["current_loss"], float)
        assert final["current_step"] == final["total_steps"]
        assert _trainer_starts(svc, job_id) == 1
        assert _history(svc, job_id) == ["pending", "running", "completed"]
    listing = requests.get(f"{svc.base}/jobs", timeout=30).json()
    assert sorted(j["job_id"] for j in listing["jobs"]) == sorted(ids) and listing["total"] == 3


# 2 -------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_2_recycled_workers_answer_every_poll_and_agree(tmp_path):
    svc = Service(make_home(tmp_path / "home"), argv_extra=["--max-requests", "5"]).start()
    try:
        job_id = svc.create({**REAL, "epochs": 4.0})
        failures, series = [], [[] for _ in range(4)]

        def poll(out):
            while True:
                try:
                    response = requests.get(f"{svc.base}/jobs/{job_id}", timeout=30)
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(response.status_code)
                    continue
                body = response.json()
                out.append((body["status"], body["progress"]))
                if body["status"] in TERMINAL:
                    return
                time.sleep(0.05)

        threads = [threading.Thread(target=poll, args=(out,)) for out in series]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=400)
        assert failures == []
        order = ["pending", "running", "completed"]
        for out in series:
            assert out[-1] == ("completed", 1.0)
            assert [order.index(s) for s, _ in out] == sorted(order.index(s) for s, _ in out)
            assert [p for _, p in out] == sorted(p for _, p in out)  # every worker saw progress only grow
        assert sum(len(out) for out in series) > 20
        recycled = open(os.path.join(svc.home, "gunicorn.log")).read().count("Autorestarting worker")
        assert recycled >= 3, "workers should have been recycled during the job"
    finally:
        svc.stop()


# 3 -------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_3a_kill9_of_the_trainer_fails_the_job_with_the_signal(real_service):
    svc = real_service()
    job_id = svc.create({**REAL, "epochs": 50.0})
    running = wait_for(lambda: (s := svc.status(job_id))["current_step"] and s, timeout=120, interval=0.3)
    pids = tree_pids(running["pid"])
    os.kill(running["pid"], signal.SIGKILL)
    final = svc.wait_done(job_id, timeout=60)
    assert final["status"] == "failed" and final["signal"] == "SIGKILL" and final["exit_code"] is None
    assert "signal 9" in final["error"]
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=30)


@pytest.mark.e2e
def test_3b_kill9_of_the_monitor_on_the_last_attempt_is_lost_within_the_heartbeat_timeout(real_service):
    svc = real_service(heartbeat_timeout_s=10, housekeeping_s=1, max_attempts=1)
    job_id = svc.create({**REAL, "epochs": 50.0})
    running = wait_for(lambda: (s := svc.status(job_id))["current_step"] and s, timeout=120, interval=0.3)
    state_path = os.path.join(_job_dir(svc, job_id), "state.json")
    monitor = json.load(open(state_path))["monitor"]["pid"]
    pids = tree_pids(running["pid"])
    os.kill(monitor, signal.SIGKILL)
    killed_at = time.monotonic()
    # No API request from here: a worker's housekeeping must notice on its own.
    wait_for(lambda: json.load(open(state_path))["status"] != "running", timeout=60, interval=0.2)
    assert time.monotonic() - killed_at < 10 + 15 + 5  # heartbeat timeout + stop grace + slack
    state = json.load(open(state_path))
    assert state["status"] == "failed" and state["reason"] == "lost"
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("epochs", [1.4, 2.0])
def test_3d_a_run_that_finished_under_a_frozen_monitor_completes_at_its_total_steps(real_service, epochs):
    """The chaos soak's finding, with the real trainer: the monitor is frozen (SIGSTOP) past the
    heartbeat timeout while its trainer runs to the end. The job completes at its planned total
    (84 steps for 1.4 epochs, 120 for 2), attempt 1, never resumed past its end (85 of 84).

    The freeze comes once the trainer logs its first step: its start (about 6 s of imports here)
    must not count against the timeout, or the loss is found before the run could finish."""
    svc = real_service(heartbeat_s=1, heartbeat_timeout_s=10, housekeeping_s=1, stop_grace_s=3)
    job_id = svc.create({**REAL, "epochs": epochs, "custom_config": {**FAST, "save_steps": 40}})
    state_path = os.path.join(_job_dir(svc, job_id), "state.json")
    state = wait_for(lambda: (s := json.load(open(state_path)))["status"] == "running" and s, timeout=120)
    output = state["paths"]["output_dir"]
    log_path = os.path.join(output, "trainer_log.jsonl")
    wait_for(lambda: os.path.exists(log_path) and _log_entries(log_path), timeout=120, interval=0.05)
    os.kill(state["monitor"]["pid"], signal.SIGSTOP)
    wait_for(lambda: os.path.exists(os.path.join(output, "all_results.json")), timeout=300, interval=0.5)
    # No API request from here: a worker's housekeeping notices the silent monitor on its own.
    final = wait_for(lambda: (s := json.load(open(state_path)))["status"] != "running" and s, timeout=120)
    status = svc.status(job_id)
    assert final["status"] == "completed" and status["attempt"] == 1, final.get("error")
    assert status["current_step"] == status["total_steps"] == int(60 * epochs)
    assert "has not heartbeaten" in final["history"][-1]["reason"]
    assert _trainer_starts(svc, job_id) == 1


@pytest.mark.e2e
def test_3c_kill9_of_everything_after_a_checkpoint_resumes_on_restart(real_service):
    """The host dies: gunicorn, the monitor and the trainer go at once, and a save is cut short."""
    svc = real_service(housekeeping_s=1)  # the default save_steps (100) and max_attempts (3)
    job_id = svc.create({**REAL, "epochs": 4.0})
    output = os.path.join(_job_dir(svc, job_id), "output")
    # Half way to the next save, where a death falls on average.
    wait_for(lambda: (svc.status(job_id)["current_step"] or 0) >= 150, timeout=180, interval=0.1)
    state = json.load(open(os.path.join(_job_dir(svc, job_id), "state.json")))
    for pid in (state["monitor"]["pid"], state["trainer"]["pid"]):
        os.kill(pid, signal.SIGKILL)
    svc.kill_hard()
    wait_for(lambda: not alive(state["trainer"]["pid"]), timeout=30)
    log_path = os.path.join(output, "trainer_log.jsonl")
    step_at_death = _log_entries(log_path)[-1]["current_steps"]
    checkpoint = max(int(n.split("-")[1]) for n in os.listdir(output) if n.startswith("checkpoint-"))
    # The next save was under way: its weights are there, cut short, and trainer_state.json is not.
    torn = os.path.join(output, f"checkpoint-{checkpoint + 100}")
    os.makedirs(torn)
    weights = open(os.path.join(output, f"checkpoint-{checkpoint}", "adapter_model.safetensors"), "rb").read()
    open(os.path.join(torn, "adapter_model.safetensors"), "wb").write(weights[: len(weights) // 2])

    svc.start()
    restarted = time.monotonic()
    wait_for(  # running: the new attempt has cut its log back to the checkpoint and trains again
        lambda: (
            (s := svc.status(job_id))["status"] in ("running", "completed")
            and s["attempt"] == 2
            and s["current_step"] >= step_at_death
        ),
        timeout=300,
        interval=0.2,
    )
    caught_up = time.monotonic() - restarted
    final = svc.wait_done(job_id, timeout=400)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
    assert final["attempt"] == 2 and final["total_steps"] == 240 and final["current_step"] == 240
    events = requests.get(f"{svc.base}/jobs/{job_id}/events", timeout=30).json()["events"]
    assert [(e["status"], e["attempt"]) for e in events] == [
        ("pending", 1),
        ("running", 1),
        ("pending", 2),
        ("running", 2),
        ("completed", 2),
    ]
    assert events[3]["resumed_from"] == f"checkpoint-{checkpoint}"  # never the torn one
    # A new trainer took over at the checkpoint's step, not at step 0: it says so. (Its whole-second
    # clock, which an earlier version compared, reads 0:00:00 throughout on an idle machine.)
    training_log = open(os.path.join(_job_dir(svc, job_id), "training.log"), errors="replace").read()
    assert f"Resuming training from checkpoint with epoch 1 and global step {checkpoint}" in training_log
    series = requests.get(f"{svc.base}/jobs/{job_id}/metrics?limit=10000", timeout=30).json()["points"]
    assert [p["step"] for p in series] == list(range(1, 241))
    assert _trainer_starts(svc, job_id) == 2
    print(
        f"\nhost death at step {step_at_death}, resumed from checkpoint-{checkpoint} (save_steps 100): "
        f"{step_at_death - checkpoint} steps trained again; back at step {step_at_death} "
        f"{caught_up:.1f} s after the service restarted"
    )


def _log_entries(path):
    """The whole lines of a trainer_log.jsonl (a trainer killed mid-write may leave half a line)."""
    entries = []
    for line in open(path):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


# 4 -------------------------------------------------------------------------------------------


def test_4_a_live_unrelated_pid_is_never_reported_running_nor_signalled(make_app):
    client = make_app("--steps", "1", max_attempts=1).test_client()
    service = client.application.extensions["imts"]
    job_ids = [client.post(f"{BASE}/jobs", json=FAKE).get_json()["job_id"] for _ in range(2)]
    for job_id in job_ids:
        wait_for(lambda j=job_id: service.store.read(j).status == "completed")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])

    def forge(job_id, pid=bystander.pid):
        """The record names a process that lives, but is not the one that was started (a reused pid)."""
        path = service.store.path(job_id, "state.json")
        state = json.load(open(path))
        state.update(monitor={"pid": pid, "start_ticks": 1}, trainer={"pid": pid, "start_ticks": 1}, pid=pid)
        state.update(status="running", final=None, finished_at=None)
        open(path, "w").write(json.dumps(state))
        os.remove(os.path.join(state["paths"]["output_dir"], "all_results.json"))  # mid-run again
        open(os.path.join(service.store.root, ".active", job_id), "w").close()

    try:
        forge(job_ids[0])
        service.housekeeper.run()  # a worker's housekeeping: the pid lives, but it is not the monitor
        read = client.get(f"{BASE}/jobs/{job_ids[0]}").get_json()
        assert read["status"] == "failed" and read["reason"] == "lost" and read["pid"] is None
        forge(job_ids[1])
        stop = client.post(f"{BASE}/jobs/{job_ids[1]}/stop")  # a stop settles the job it stops
        assert stop.status_code == 200 and stop.get_json()["status"] == "stopped"
        assert bystander.poll() is None, "the unrelated process must not have been signalled"
    finally:
        bystander.kill()
        bystander.wait()


# 5 -------------------------------------------------------------------------------------------


def test_5a_stop_racing_a_natural_exit_ends_in_one_terminal_state(fake_service):
    svc = fake_service("--steps", "4", "--interval", "0.05", max_concurrent_jobs=4)
    for delay in (0.2, 0.4, 0.6, 0.8, 1.0):
        job_id = svc.create(FAKE)
        time.sleep(delay)
        response = requests.post(f"{svc.base}/jobs/{job_id}/stop", timeout=60)
        assert response.status_code in (200, 409), response.text
        final = svc.wait_done(job_id, timeout=30)
        assert response.status_code == 200 or final["status"] == "completed"
        for _ in range(5):
            time.sleep(0.2)
            assert svc.status(job_id)["status"] == final["status"]
        terminal = [s for s in _history(svc, job_id) if s in TERMINAL]
        assert terminal == [final["status"]]
        assert not [p for p in tree_pids(final["pid"] or 0) if alive(p)]


def test_5b_many_concurrent_stops_of_one_job(fake_service):
    svc = fake_service("--steps", "1000", "--interval", "0.05")
    job_id = svc.create(FAKE)
    running = wait_for(lambda: (s := svc.status(job_id))["status"] == "running" and s, timeout=30)
    pids = tree_pids(running["pid"])

    def stop(_):
        return requests.post(f"{svc.base}/jobs/{job_id}/stop", timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(stop, range(16)))
    assert set(codes) <= {200, 202} and 200 in codes
    final = svc.wait_done(job_id)
    assert final["status"] == "stopped"
    assert _history(svc, job_id) == ["pending", "running", "stopped"]
    assert not [p for p in pids if alive(p)]


# 6 -------------------------------------------------------------------------------------------


def _client_process(base, index):
    """One of several concurrent clients: 25 requests, 15 creates, 5 lists, 5 stops of its own jobs."""
    session = requests.Session()
    created, codes = [], []
    for n in range(25):
        if n % 5 == 4:
            response = session.post(f"{base}/jobs/{created[n // 5]}/stop", timeout=60)
        elif n % 5 == 3:
            response = session.get(f"{base}/jobs?limit=5", timeout=60)
        else:
            response = session.post(f"{base}/jobs", json=FAKE, timeout=60)
            if response.status_code == 201:
                created.append(response.json()["job_id"])
        codes.append(response.status_code)
    return created, codes


def test_6_concurrent_clients_lose_nothing_and_respect_capacity(fake_service):
    svc = fake_service(
        "--steps", "5", "--interval", "0.05", workers=4, max_concurrent_jobs=2, housekeeping_s=1
    )
    with ProcessPoolExecutor(8) as pool:
        results = list(pool.map(_client_process, [svc.base] * 8, range(8)))
    created = [job for jobs, _ in results for job in jobs]
    codes = [code for _, cs in results for code in cs]
    assert len(codes) == 200 and not [c for c in codes if c >= 500]
    assert set(codes) <= {200, 201, 202, 409}
    assert len(created) == len(set(created)) == codes.count(201)
    finals = {job: svc.wait_done(job, timeout=300) for job in created}
    assert all(f["status"] in ("completed", "stopped") for f in finals.values())
    listing = requests.get(f"{svc.base}/jobs?limit=1000", timeout=60).json()
    assert listing["total"] == len(created)
    assert max_overlap(svc.home) == 2  # the capacity was used, never exceeded
    assert sum(f["status"] == "completed" for f in finals.values()) >= 60
    for job in created:
        assert _trainer_starts(svc, job) <= 1
        assert [s for s in _history(svc, job) if s in TERMINAL] == [finals[job]["status"]]


# 7 -------------------------------------------------------------------------------------------


def test_7_stop_kills_a_trainer_that_ignores_sigterm_and_its_grandchild(fake_service):
    svc = fake_service("--steps", "1000", "--interval", "0.05", "--ignore-term", "--grandchild")
    job_id = svc.create(FAKE)
    running = wait_for(lambda: (s := svc.status(job_id))["status"] == "running" and s, timeout=30)
    grandchild_file = os.path.join(_job_dir(svc, job_id), "grandchild.pid")
    grandchild = int(wait_for(lambda: os.path.exists(grandchild_file) and open(grandchild_file).read()))
    assert psutil.Process(grandchild).ppid() == running["pid"]
    response = requests.post(f"{svc.base}/jobs/{job_id}/stop", timeout=60)
    assert response.status_code == 200
    assert svc.status(job_id)["status"] == "stopped"
    assert not alive(running["pid"]) and not alive(grandchild)


# 8 -------------------------------------------------------------------------------------------


def test_8_damaged_records_are_reported_and_the_api_keeps_working(make_app, home):
    client = make_app("--steps", "1").test_client()
    service = client.application.extensions["imts"]
    good = client.post(f"{BASE}/jobs", json=FAKE).get_json()["job_id"]
    wait_for(lambda: service.store.read(good).status == "completed")
    damaged = {}
    for content in (b"", b'{"job_id": "train_', b"\x00garbage\xff"):
        job_id = client.post(f"{BASE}/jobs", json=FAKE).get_json()["job_id"]
        wait_for(lambda j=job_id: service.store.read(j).status == "completed")
        open(service.store.path(job_id, "state.json"), "wb").write(content)
        damaged[job_id] = content
    bare = os.path.join(service.store.root, "train_0000aaaa")
    os.makedirs(bare)
    leftover = service.store.path(good, ".tmp-crashed")
    open(leftover, "w").write("half a write")
    os.utime(leftover, (0, 0))

    for job_id in [*damaged, "train_0000aaaa"]:
        response = client.get(f"{BASE}/jobs/{job_id}")
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "failed" and "damaged" in body["error"]
        assert client.post(f"{BASE}/jobs/{job_id}/stop").status_code == 409
    # A directory made by hand is listed after the next cleanup round (it puts it into the index).
    assert service.lifecycle.run()["indexed"] == (["train_0000aaaa"], [])
    listing = client.get(f"{BASE}/jobs").get_json()
    assert listing["total"] == 5 and {"train_0000aaaa", good} <= {j["job_id"] for j in listing["jobs"]}
    assert client.get(f"{BASE}/jobs/{good}").get_json()["status"] == "completed"
    restarted = make_app("--steps", "1")  # a new worker cleans up what a crash left behind
    assert not os.path.exists(leftover)
    assert restarted.test_client().post(f"{BASE}/jobs", json=FAKE).status_code == 201


# 9 -------------------------------------------------------------------------------------------


def test_9_enospc_during_a_state_write_answers_507_and_keeps_the_old_state(make_app, monkeypatch):
    client = make_app("--steps", "1000", "--interval", "0.05").test_client()
    service = client.application.extensions["imts"]
    job_id = client.post(f"{BASE}/jobs", json=FAKE).get_json()["job_id"]
    # Running, with its disk use measured (the monitor's first write after the start): the record
    # then stays as it is while the disk is "full".
    wait_for(lambda: (s := service.store.read(job_id)).status == "running" and s.disk_bytes)
    path = service.store.path(job_id, "state.json")
    before = open(path, "rb").read()

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imts_flask.fsio.os.fsync", no_space)  # where a full disk shows up
    response = client.post(f"{BASE}/jobs/{job_id}/stop")
    assert response.status_code == 507
    assert response.get_json()["error"] == "insufficient_storage"
    assert open(path, "rb").read() == before
    created = client.post(f"{BASE}/jobs", json=FAKE)
    assert created.status_code == 507 and sorted(service.store.job_ids()) == [job_id]
    monkeypatch.undo()
    assert client.post(f"{BASE}/jobs/{job_id}/stop").status_code == 200
    assert service.store.read(job_id).status == "stopped"


def test_the_suite_imports_nothing_heavy_into_the_api():
    code = (
        "import sys, wsgi; "
        "print([m for m in ('torch', 'transformers', 'llamafactory', 'ray', 'pyarrow') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_a_trainer_whose_start_cannot_be_recorded_is_stopped_not_left_running(tmp_path):
    """A full disk while a monitor records the trainer it just started: the trainer must not run
    on unrecorded (the soak saw the next attempt start a second one beside it)."""
    from imts_flask.errors import InsufficientStorage
    from imts_flask.monitor import open_store
    from imts_flask.monitor.supervisor import Supervisor
    from imts_flask.procs import start_ticks
    from imts_flask.settings import load_settings

    settings = load_settings({"home": make_home(tmp_path / "home"), "stop_grace_s": 2}, environ={})
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        monitor = Supervisor(settings, "train_0000abcd", open_store(settings))
        trainer = subprocess.Popen(["sleep", "60"], start_new_session=True)

        def full_disk(_state):
            raise InsufficientStorage("no space left on the device while updating job train_0000abcd")

        monitor.store.update = lambda job_id, change: change({})
        with pytest.raises(InsufficientStorage):
            monitor.record_started(trainer, start_ticks(trainer.pid), full_disk)
        assert trainer.poll() is not None, "the unrecorded trainer is still running"
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# A FAKE monitor: it takes the job's lock when told, then freezes (SIGSTOP) while holding it, as a
# monitor stopped inside a write of its record would.
_FROZEN_IN_LOCK = """
import os, signal, sys, filelock
sys.stdin.readline()
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def _frozen_in_lock(store, job_id):
    """Start the FAKE monitor above; (its process, its process record, a function that lets it take
    the lock and waits until it is frozen holding it)."""
    from imts_flask.executors import HOST
    from imts_flask.jobs.store import JobStore
    from imts_flask.procs import boot_id, start_ticks

    lock_path = os.path.join(store.root, JobStore.LOCKS, job_id + ".lock")
    frozen = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_IN_LOCK, lock_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    monitor = {"pid": frozen.pid, "start_ticks": start_ticks(frozen.pid), "host": HOST, "boot": boot_id()}

    def freeze():
        frozen.stdin.write(b"go\n")
        frozen.stdin.flush()
        assert frozen.stdout.readline() == b"held\n"
        wait_for(lambda: psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED, timeout=10)

    return frozen, monitor, freeze


def _running_under(store, job_id, monitor):
    from imts_flask.runs.record import setter

    store.update(job_id, setter(status="running", monitor=monitor, attempt=1))


def _silent_job(tmp_path):
    """A store with one job record, and settings that find a monitor lost after a second's silence."""
    from imts_flask.jobs.store import JobStore
    from imts_flask.settings import load_settings

    home = make_home(tmp_path / "home")
    settings = load_settings(
        {"home": home, "heartbeat_timeout_s": 1, "lock_timeout_s": 1, "max_attempts": 1}, environ={}
    )
    store = JobStore(settings.path("jobs_dir"), lock_timeout=settings.lock_timeout_s)
    job_id = store.create(
        lambda job_id, job_dir: {
            JobStore.STATE: {"job_id": job_id, "status": "pending", "history": [],
                             "paths": {"output_dir": os.path.join(job_dir, "output")}},
        }
    )  # fmt: skip
    heartbeat = store.path(job_id, JobStore.HEARTBEAT)
    open(heartbeat, "w").close()
    os.utime(heartbeat, (time.time() - 60, time.time() - 60))  # silent for a minute
    return settings, store, job_id


def test_10_a_lost_monitor_frozen_inside_its_jobs_lock_is_killed_and_the_job_settled(tmp_path):
    """The chaos soak's left-over case: a monitor frozen while it holds its job's lock. Its job used to
    stay running for good (every settle timed out on the lock) and each scheduling pass ended there,
    so no queued job started either. The liveness check kills it, which frees the lock, then settles."""
    from imts_flask.jobs.scheduler import Scheduler

    settings, store, job_id = _silent_job(tmp_path)
    frozen, monitor, freeze = _frozen_in_lock(store, job_id)
    try:
        _running_under(store, job_id, monitor)
        freeze()
        Scheduler(settings, store).schedule()
        frozen.wait(timeout=30)  # killed (psutil reaped it, so its exit status is not ours to read)
    finally:
        frozen.kill()
    state = store.read(job_id)
    assert state.status == "failed" and state.reason == "lost"
    assert "has not heartbeaten" in state.error


def test_10b_a_lock_held_by_another_frozen_process_holds_up_that_job_only(tmp_path, caplog):
    """A job's lock held by a frozen process that is not its monitor (which is dead): that job cannot
    be settled yet, and is left as it is; the scheduling pass goes on with the others."""
    from imts_flask.jobs.scheduler import Scheduler

    settings, store, job_id = _silent_job(tmp_path)
    dead = subprocess.Popen(["true"], start_new_session=True)
    dead.wait()
    frozen, monitor, freeze = _frozen_in_lock(store, job_id)
    try:
        _running_under(store, job_id, {**monitor, "pid": dead.pid})  # its monitor died
        freeze()
        with caplog.at_level(logging.WARNING):
            Scheduler(settings, store).schedule()  # it used to raise: the lock's timeout ended the pass
        assert psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED  # not the monitor: not killed
    finally:
        frozen.kill()
        frozen.wait()
    assert f"job {job_id}: not settled this pass" in caplog.text
    assert store.read(job_id).status == "running"  # nothing written; a later pass settles it
