"""Fixtures: a throw-away service home per test, apps built with create_app, a fake trainer."""

import contextlib
import hashlib
import os
import stat
import sys
import time

import pytest
import yaml

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

TINY_MODEL = os.path.join(PROJECT, "models", "tiny-llama")
DEMO_DATA = os.path.join(PROJECT, "data")
SHARED_DATA = os.path.abspath(os.path.join(PROJECT, "..", "shared", "llamafactory-data"))
FAKE_TRAINER = os.path.join(PROJECT, "tests", "fake_trainer.py")

# The integration guide's example request body (section 2.1), verbatim.
GUIDE_EXAMPLE = {
    "model_name": "meta-llama/Llama-3-8b",
    "dataset": "alpaca_en_demo",
    "stage": "sft",
    "finetuning_type": "lora",
    "batch_size": 2,
    "learning_rate": 5e-5,
    "epochs": 3.0,
    "lora_rank": 8,
    "lora_alpha": 16,
    "custom_config": {"template": "llama3", "cutoff_len": 2048},
}


def make_home(root, data_dirs=None):
    """Lay out a service home: config/models.yaml naming the demo model, and a tiny data dir."""
    os.makedirs(os.path.join(root, "config"), exist_ok=True)
    registry = {"models": {"tiny-llama": {"path": TINY_MODEL, "template": "default"}}}
    with open(os.path.join(root, "config", "models.yaml"), "w") as handle:
        yaml.safe_dump(registry, handle)
    return str(root)


def fake_cli(directory, *options):
    """Write an executable that runs the fake trainer with `options`; return its path."""
    path = os.path.join(directory, "fake-llamafactory-cli")
    with open(path, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {sys.executable} {FAKE_TRAINER} {" ".join(options)} "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path / "home")


def stop_processes_under(root):
    """Kill what a test left running under `root`: monitors, fake trainers and fake servers outlive
    the app that started them (detached, as in service); a server nobody stops would run on for the
    rest of the suite."""
    import psutil

    root = os.path.realpath(root)
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            places = [proc.info["cwd"] or "", *(proc.info["cmdline"] or [])]
            if proc.pid != os.getpid() and any(
                os.path.realpath(p).startswith(root + os.sep) for p in places if p
            ):
                left.append(proc)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


@pytest.fixture
def make_app(home, tmp_path):
    """Build an app on the throw-away home with a fake trainer behaving as `options` say; what its
    runs left running is stopped when the test ends."""

    def build(*options, **overrides):
        from imts_flask import create_app

        settings = {
            "home": home,
            "data_dirs": [DEMO_DATA],
            "llamafactory_cli": fake_cli(str(tmp_path), *options),
            "stop_grace_s": 3.0,
            "stop_wait_s": 15.0,
            "export_wait_s": 15.0,
            "min_free_disk_mb": 1,
            "housekeeping_s": 0,  # tests that need the background thread turn it on
        }
        settings.update(overrides)
        app = create_app(settings)
        app.config["TESTING"] = True
        return app

    yield build
    stop_processes_under(str(tmp_path))


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def wait_for(predicate, timeout=60, interval=0.1):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def max_overlap(home):
    """Read the FAKE trainer's spans under `home` and return the most trainers that ran at once."""
    path = os.path.join(home, "fake_spans.log")
    if not os.path.exists(path):
        return 0
    events = []
    for line in open(path):
        _job, kind, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    running = peak = 0
    for _at, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


API = "/api/v1/training"
TERMINAL = ("completed", "failed", "stopped")


def api_create(client, body=None, **extra):
    """POST a job through a Flask test client; return its id."""
    response = client.post(
        f"{API}/jobs", json={**(body or {"model_name": "tiny-llama", "dataset": "demo_sft"}), **extra}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["job_id"]


def api_status(client, job_id):
    response = client.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def api_done(client, job_id, timeout=60):
    """Wait until a job reaches a terminal status; return its status."""
    return wait_for(lambda: (s := api_status(client, job_id))["status"] in TERMINAL and s, timeout=timeout)


def completed_job(client, **extra):
    """Create a job and wait for it to complete; return its id."""
    job_id = api_create(client, **extra)
    assert api_done(client, job_id)["status"] == "completed"
    return job_id


def tree_digest(path):
    """{relative path: (size, mtime_ns, sha256)} of every file under `path`: proof nothing changed."""
    digest = {}
    for directory, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            stat = os.stat(full)
            with open(full, "rb") as handle:
                digest[os.path.relpath(full, path)] = (
                    stat.st_size,
                    stat.st_mtime_ns,
                    hashlib.sha256(handle.read()).hexdigest(),
                )
    return digest
