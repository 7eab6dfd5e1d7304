"""Webhooks: every state change is POSTed to the job's URL, retried on failure, never blocking the API."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from imts_flask.jobs.store import JobStore
from imts_flask.jobs.webhooks import Notifier
from imts_flask.runs.record import setter
from imts_flask.settings import load_settings
from imts_flask.state import now_utc

from conftest import Receiver, wait_for

BASE = "/api/v1/training"
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


@pytest.fixture
def receiver():
    made = []

    def make(script=()):
        made.append(Receiver(script))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_each_state_change_is_posted_in_order(make_app, receiver):
    hook = receiver()
    client = make_app("--steps", "3", webhook_backoff_s=0.1).test_client()
    job_id = client.post(f"{BASE}/jobs", json={**BODY, "webhook_url": hook.url}).get_json()["job_id"]
    wait_for(lambda: len(hook.events) == 3, timeout=30)
    events = hook.events  # one sender per job at a time: they arrive in order
    assert [e["sequence"] for e in events] == [1, 2, 3]
    assert [e["status"] for e in events] == ["pending", "running", "completed"]
    assert [e["previous_status"] for e in events] == [None, "pending", "running"]
    assert {e["job_id"] for e in events} == {job_id} and events[0]["event"] == "job.status_changed"


def test_a_new_attempt_after_a_lost_monitor_is_posted_with_its_reason(make_app, receiver):
    hook = receiver()
    client = make_app(
        "--steps",
        "200",
        "--interval",
        "0.02",
        "--save-every",
        "10",
        webhook_backoff_s=0.1,
        housekeeping_s=0.3,
    )
    client = client.test_client()
    job_id = client.post(f"{BASE}/jobs", json={**BODY, "webhook_url": hook.url}).get_json()["job_id"]
    state = wait_for(lambda: (s := client.application.extensions["imts"].store.read(job_id)).trainer and s)
    os.kill(state.monitor["pid"], signal.SIGKILL)
    os.kill(state.trainer["pid"], signal.SIGKILL)
    wait_for(lambda: client.get(f"{BASE}/jobs/{job_id}").get_json()["status"] == "completed", timeout=60)
    wait_for(lambda: len(hook.events) == 5, timeout=30)
    events = sorted(hook.events, key=lambda e: e["sequence"])
    assert [(e["status"], e["attempt"]) for e in events] == [
        ("pending", 1),
        ("running", 1),
        ("pending", 2),
        ("running", 2),
        ("completed", 2),
    ]
    assert "lost" in events[2]["reason"] and events[0]["reason"] is None


def test_failed_deliveries_are_retried_with_backoff(make_app, receiver):
    hook = receiver(script=[503, 503])  # the first two POSTs fail
    client = make_app("--steps", "1000", "--interval", "0.05", webhook_backoff_s=0.1).test_client()
    job_id = client.post(f"{BASE}/jobs", json={**BODY, "webhook_url": hook.url}).get_json()["job_id"]
    wait_for(lambda: {"pending", "running"} <= {e["status"] for e in hook.events}, timeout=30)
    client.post(f"{BASE}/jobs/{job_id}/stop")
    log_path = os.path.join(
        os.path.dirname(client.get(f"{BASE}/jobs/{job_id}").get_json()["config_path"]), "webhooks.log"
    )
    outcomes = wait_for(
        lambda: (
            os.path.exists(log_path)
            and len(open(log_path).readlines()) == 3
            and [json.loads(line) for line in open(log_path)]
        ),
        timeout=30,
    )
    assert all(o["delivered"] for o in outcomes)
    # The first event is retried until delivered; the later ones wait for it and follow in order.
    assert [(o["sequence"], o["attempts"]) for o in outcomes] == [(1, 3), (2, 1), (3, 1)]
    assert [e["status"] for e in hook.events] == ["pending", "running", "stopped"]


# A process that writes a status change and is killed before it can start the change's sender:
# the host dying under a monitor at the wrong moment.
KILLED_AFTER_THE_WRITE = textwrap.dedent(
    """
    import os, signal, sys, types
    from imts_flask.jobs.store import JobStore
    from imts_flask.runs import store
    from imts_flask.runs.record import setter
    from imts_flask.jobs.webhooks import Notifier

    write = store.atomic_write_json
    def write_and_die(path, obj):
        write(path, obj)
        os.kill(os.getpid(), signal.SIGKILL)
    store.atomic_write_json = write_and_die
    jobs = JobStore(sys.argv[1], 5, Notifier(types.SimpleNamespace(webhook_url="")))
    jobs.update(sys.argv[2], setter(status="running"))
    """
)


def test_a_change_whose_writer_died_before_sending_is_sent_by_the_sweep(tmp_path, receiver):
    hook = receiver()
    settings = load_settings({"home": str(tmp_path), "webhook_backoff_s": 0.1})
    notifier = Notifier(settings)
    store = JobStore(settings.path("jobs_dir"), 5, notifier)
    job_id = store.create(
        lambda job_id, job_dir: {
            JobStore.STATE: {
                "job_id": job_id,
                "status": "pending",
                "history": [{"status": "pending", "at": now_utc(), "attempt": 1}],
                "webhook_url": hook.url,
            }
        }
    )  # created without announcing it: that event is due too
    child = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_WRITE, store.root, job_id], timeout=60)
    assert child.returncode == -signal.SIGKILL and store.read(job_id).status == "running"
    assert store.webhooks_due() == [job_id]
    time.sleep(1)
    assert hook.events == []  # nobody sent them

    notifier.sweep(store)
    wait_for(lambda: len(hook.events) == 2, timeout=30)
    assert [(e["sequence"], e["status"], e["previous_status"]) for e in hook.events] == [
        (1, "pending", None),
        (2, "running", "pending"),
    ]
    wait_for(lambda: (notifier.sweep(store), store.webhooks_due() == [])[1], timeout=30)

    store.update(job_id, setter(status="completed"))  # a change that sends itself
    wait_for(lambda: len(hook.events) == 3, timeout=30)
    notifier.sweep(store)
    time.sleep(1)
    assert [e["sequence"] for e in hook.events] == [1, 2, 3]  # nothing sent twice


def test_a_dead_receiver_does_not_slow_the_api(make_app):
    client = make_app(
        "--steps", "1", webhook_timeout_s=30, webhook_backoff_s=5, webhook_attempts=2
    ).test_client()
    # Nothing listens on this port: each delivery fails, and keeps retrying in the background.
    response = client.post(f"{BASE}/jobs", json={**BODY, "webhook_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 201
    assert client.get(f"{BASE}/jobs/{response.get_json()['job_id']}").status_code == 200


def test_the_service_wide_webhook_and_bad_urls(make_app, receiver):
    hook = receiver()
    client = make_app("--steps", "1", webhook_url=hook.url).test_client()
    client.post(f"{BASE}/jobs", json=BODY)
    wait_for(lambda: len(hook.events) == 3, timeout=30)
    for bad in ("ftp://x/y", "not a url", "http://" + "a" * 3000):
        response = client.post(f"{BASE}/jobs", json={**BODY, "webhook_url": bad})
        assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "webhook_url"
