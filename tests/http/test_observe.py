"""What clients read besides status: OpenAPI, logs, metrics, events, checkpoints, the loss plot,
conditional GETs and idempotent creates. Real monitors drive the FAKE trainer."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import requests
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from imts_flask.http.openapi import documented_rules
from imts_flask.http.server import metrics_dir
from imts_flask.jobs.files import decode_whole_chars
from imts_flask.runs.record import setter

from conftest import PROJECT, fake_cli, make_home, require, wait_for
from harness import Service

BASE = "/api/v1/training"
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


@pytest.fixture
def finished(make_app):
    """A client and a job that ran 12 fake steps to completion."""
    client = make_app("--steps", "12", "--interval", "0.01").test_client()
    job_id = client.post(f"{BASE}/jobs", json=BODY).get_json()["job_id"]
    wait_for(lambda: client.get(f"{BASE}/jobs/{job_id}").get_json()["status"] == "completed")
    return client, job_id


def _output_dir(client, job_id):
    return client.get(f"{BASE}/jobs/{job_id}").get_json()["output_dir"]


def test_openapi_document_is_valid_and_covers_every_route(client):
    spec = client.get(f"{BASE}/openapi.json").get_json()
    validate(spec)
    rules = documented_rules(client.application)
    assert rules and all(meta is not None for _, _, _, meta in rules), "a route has no @doc"
    for path, method, _, _ in rules:
        operation = spec["paths"][path][method.lower()]
        assert operation["responses"], (path, method)
    create = spec["paths"][f"{BASE}/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "TrainingJobRequest"
    )
    assert "400" in create["responses"] and spec["components"]["schemas"]["Error"]
    status = spec["components"]["schemas"]["JobStatus"]["properties"]
    assert {"job_id", "status", "pid", "config_path", "progress", "current_loss"} <= set(status)
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_log_can_be_tailed_by_offset_and_read_by_lines(finished):
    client, job_id = finished
    whole = open(client.get(f"{BASE}/jobs/{job_id}").get_json()["log_path"], "rb").read()
    chunks, offset = [], 0
    while True:
        page = client.get(f"{BASE}/jobs/{job_id}/logs?offset={offset}&limit=7").get_json()
        chunks.append(page["data"])
        assert page["next_offset"] >= offset
        offset = page["next_offset"]
        if page["eof"]:
            break
    assert "".join(chunks).encode() == whole and offset == len(whole)
    tail = client.get(f"{BASE}/jobs/{job_id}/logs?tail=2").get_json()
    assert tail["lines"] == whole.decode().splitlines()[-2:]
    past_end = client.get(f"{BASE}/jobs/{job_id}/logs?offset=999999999").get_json()
    assert past_end["data"] == "" and past_end["next_offset"] == len(whole) and past_end["eof"]
    for bad in ("limit=0", "limit=99999999", "offset=-1", "tail=0", "color=1"):
        assert client.get(f"{BASE}/jobs/{job_id}/logs?{bad}").status_code == 400


def test_log_slices_never_split_a_character():
    text = "损失下降".encode()
    assert decode_whole_chars(text[:4]) == ("损", 3)
    assert decode_whole_chars(text) == ("损失下降", 12)


def test_metrics_series_drops_duplicates_after_a_resume(finished):
    client, job_id = finished
    with open(os.path.join(_output_dir(client, job_id), "trainer_log.jsonl"), "a") as handle:
        # A resume from step 10 logs steps 11 and 12 again: the later entries win.
        for step in (11, 12):
            handle.write(
                json.dumps({"current_steps": step, "total_steps": 12, "loss": 0.01 * step, "lr": 1e-5}) + "\n"
            )
    series = client.get(f"{BASE}/jobs/{job_id}/metrics").get_json()
    steps = [p["step"] for p in series["points"]]
    assert steps == list(range(1, 13))
    assert series["points"][-1]["loss"] == pytest.approx(0.12) and series["next_since_step"] == 12
    later = client.get(f"{BASE}/jobs/{job_id}/metrics?since_step=10").get_json()
    assert [p["step"] for p in later["points"]] == [11, 12]
    assert client.get(f"{BASE}/jobs/{job_id}/metrics?limit=3").get_json()["next_since_step"] == 3


def test_events_list_each_transition(finished):
    client, job_id = finished
    events = client.get(f"{BASE}/jobs/{job_id}/events").get_json()["events"]
    assert [e["status"] for e in events] == ["pending", "running", "completed"]
    assert all(e["at"] for e in events)


def test_checkpoints_and_loss_plot(finished):
    client, job_id = finished
    assert client.get(f"{BASE}/jobs/{job_id}/checkpoints").get_json()["checkpoints"] == []
    assert client.get(f"{BASE}/jobs/{job_id}/artifacts/training_loss.png").status_code == 404
    output = _output_dir(client, job_id)
    for step in (10, 5):
        os.makedirs(os.path.join(output, f"checkpoint-{step}"))
    open(os.path.join(output, "training_loss.png"), "wb").write(b"\x89PNG\r\n\x1a\nfake")
    checkpoints = client.get(f"{BASE}/jobs/{job_id}/checkpoints").get_json()["checkpoints"]
    assert [(c["name"], c["step"]) for c in checkpoints] == [("checkpoint-5", 5), ("checkpoint-10", 10)]
    plot = client.get(f"{BASE}/jobs/{job_id}/artifacts/training_loss.png")
    assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data.startswith(b"\x89PNG")


def test_unchanged_status_answers_304(finished):
    client, job_id = finished
    first = client.get(f"{BASE}/jobs/{job_id}")
    etag = first.headers["ETag"]
    again = client.get(f"{BASE}/jobs/{job_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    client.application.extensions["imts"].store.update(job_id, setter(error="note"))
    changed = client.get(f"{BASE}/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    listing = client.get(f"{BASE}/jobs")
    assert client.get(f"{BASE}/jobs", headers={"If-None-Match": listing.headers["ETag"]}).status_code == 304


def test_head_carries_the_same_etag_as_get(finished):
    client, job_id = finished
    for path in (
        f"/jobs/{job_id}",
        "/jobs",
        f"/jobs/{job_id}/metrics",
        f"/jobs/{job_id}/events",
        f"/jobs/{job_id}/checkpoints",
        f"/jobs/{job_id}/logs",
        "/health",
    ):
        got, head = client.get(BASE + path), client.head(BASE + path)
        assert head.status_code == 200 and head.data == b"", path
        assert head.headers["ETag"] == got.headers["ETag"], path
        assert client.head(BASE + path, headers={"If-None-Match": got.headers["ETag"]}).status_code == 304


def test_idempotency_key_makes_retries_safe(make_app):
    client = make_app("--steps", "1").test_client()
    headers = {"Idempotency-Key": "order-42"}
    first = client.post(f"{BASE}/jobs", json=BODY, headers=headers)
    retry = client.post(f"{BASE}/jobs", json=BODY, headers=headers)
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.get_json()["job_id"] == first.get_json()["job_id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    other = client.post(f"{BASE}/jobs", json={**BODY, "epochs": 1.0}, headers=headers)
    assert other.status_code == 409 and other.get_json()["errors"][0]["field"] == "Idempotency-Key"
    assert client.post(f"{BASE}/jobs", json=BODY).get_json()["job_id"] != first.get_json()["job_id"]
    assert client.post(f"{BASE}/jobs", json=BODY, headers={"Idempotency-Key": ""}).status_code == 400
    assert len(client.application.extensions["imts"].store.job_ids()) == 2


def test_concurrent_retries_with_one_key_create_one_job(make_app):
    app = make_app("--steps", "1")
    results = []

    def post():
        response = app.test_client().post(f"{BASE}/jobs", json=BODY, headers={"Idempotency-Key": "same"})
        results.append((response.status_code, response.get_json()["job_id"]))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job_id for _, job_id in results}) == 1
    assert sorted(code for code, _ in results) == [200] * 7 + [201]
    assert len(app.extensions["imts"].store.job_ids()) == 1


def test_prometheus_metrics_add_up_across_gunicorn_workers(tmp_path):
    home = make_home(tmp_path / "home")
    svc = Service(home, workers=4, llamafactory_cli=fake_cli(home, "--steps", "2")).start()
    try:
        job_id = svc.create(BODY)
        svc.wait_done(job_id)
        # The index's counts and the counter follow the record's write by a few milliseconds.
        wait_for(
            lambda: (
                'imts_jobs_finished_total{state="completed"} 1.0'
                in requests.get(f"http://127.0.0.1:{svc.port}/metrics", timeout=30).text
            ),
            timeout=10,
        )
        for _ in range(60):
            assert (
                requests.get(f"{svc.base}/jobs?limit=1", timeout=30).status_code == 200
            )  # new connection each
        requests.get(f"{svc.base}/jobs/train_00000000", timeout=30)
        text = requests.get(f"http://127.0.0.1:{svc.port}/metrics", timeout=30).text
        (own,) = _masters_folders(home)  # one master: one folder of samples
        pids = {f.split("_")[-1] for f in os.listdir(own)}
    finally:
        svc.stop()
    assert _masters_folders(home) == []  # gone with the service: /dev/shm is RAM
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)

    def total(name, **labels):
        return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())

    assert total("imts_http_requests_total", endpoint=f"{BASE}/jobs", method="GET", status="200") == 60
    assert total("imts_http_requests_total", endpoint=f"{BASE}/jobs/<job_id>", status="404") == 1
    assert total("imts_http_request_duration_seconds_count", endpoint=f"{BASE}/jobs", method="GET") == 60
    assert len(pids) >= 2, "requests should have been answered by several workers"
    assert total("imts_jobs", state="completed") == 1 and total("imts_jobs", state="running") == 0
    assert total("imts_queue_length") == 0 and total("imts_job_slots") == 1
    assert total("imts_job_slots_total") == 1  # the old name, kept one release
    assert total("imts_jobs_finished_total", state="completed") == 1
    assert total("imts_tenant_gpu_seconds_total", tenant="") == 0  # no GPUs here: nothing held
    assert total("imts_disk_free_bytes") > 0
    assert total("imts_job_duration_seconds_count", state="completed") == 1


def _masters_folders(home):
    base = metrics_dir(os.path.abspath(home))
    names = os.listdir(base) if os.path.isdir(base) else []
    return sorted(os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n)))


def _requests_counted(root, endpoint):
    text = requests.get(f"{root}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "imts_http_requests_total" and s.labels["endpoint"] == endpoint
    )


def _answers_everything(svc):
    """/health, a listing, an id never seen (a new label) and /metrics: each 200 (or its 404)."""
    new_label = f"{BASE}/jobs/train_{os.urandom(4).hex()}"
    assert requests.get(f"{svc.base}/health", timeout=30).status_code == 200
    assert requests.get(f"{svc.base}/jobs", timeout=30).status_code == 200
    assert requests.get(f"{svc.root}{new_label}", timeout=30).status_code == 404
    assert requests.get(f"{svc.base}/templates", timeout=30).status_code == 200
    assert requests.get(f"{svc.root}/metrics", timeout=30).status_code == 200


def test_two_masters_on_one_home_keep_their_own_samples(tmp_path):
    """Two instances on one home (or a restart that overlaps the old master's exit): one's start
    never empties the other's samples, one's exit never removes the other's folder, and each scrape
    adds up its own workers only."""
    home = make_home(tmp_path / "home")
    cli = fake_cli(home, "--steps", "2")
    first = Service(home, workers=2, llamafactory_cli=cli).start()
    second = Service(home, workers=2, llamafactory_cli=cli)
    try:
        for _ in range(7):
            requests.get(f"{first.base}/models", timeout=30)
        second.start()  # its master starts while the first one serves
        for _ in range(3):
            requests.get(f"{second.base}/models", timeout=30)
        assert len(_masters_folders(home)) == 2
        assert _requests_counted(first.root, f"{BASE}/models") == 7  # not emptied by the second start
        assert _requests_counted(second.root, f"{BASE}/models") == 3  # nothing of the first's
        first.stop()  # its exit removes its own folder only
        assert len(_masters_folders(home)) == 1
        for _ in range(3):
            _answers_everything(second)
        assert _requests_counted(second.root, f"{BASE}/models") == 3
    finally:
        first.stop()
        second.stop()
    assert _masters_folders(home) == []


def test_a_restart_that_overlaps_the_old_masters_exit_answers_everything(tmp_path):
    """kill -TERM of the master, and the next one started on its address while the old one still
    exits gracefully (a stop it answers keeps one of its workers busy for a few seconds)."""
    home = make_home(tmp_path / "home")
    cli = fake_cli(home, "--steps", "400", "--interval", "0.05", "--ignore-term")
    settings = {"llamafactory_cli": cli, "stop_grace_s": 6, "stop_wait_s": 10}
    old = Service(home, workers=2, **settings).start()
    new = Service(home, workers=2, **settings)
    new.port, new.root, new.base = old.port, old.root, old.base  # the same address: a restart
    try:
        job_id = old.create(BODY)
        wait_for(lambda: old.status(job_id)["status"] == "running", timeout=30)
        stopping = threading.Thread(
            target=lambda: requests.post(f"{old.base}/jobs/{job_id}/stop", timeout=60), daemon=True
        )
        stopping.start()
        time.sleep(0.5)
        old.proc.send_signal(15)
        time.sleep(0.5)
        new.start()
        assert old.proc.poll() is None  # the old master is still exiting: the two overlap
        for _ in range(3):
            _answers_everything(new)
        old.proc.wait(timeout=60)
        for _ in range(3):
            _answers_everything(new)  # the old master has exited and removed its own folder only
        assert len(_masters_folders(home)) == 1
        assert new.wait_done(job_id, timeout=60)["status"] == "stopped"
    finally:
        old.stop()
        new.stop()


def test_a_folder_left_by_a_killed_master_goes_at_the_next_start_and_a_live_ones_stays(tmp_path):
    from imts_flask.http import server

    base = str(tmp_path / "metrics")
    holder = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from imts_flask.http import server; "
        "server.claim_metrics_dir(server.own_metrics_dir(sys.argv[2])); print('held', flush=True); "
        "time.sleep(600)"
    )
    live = subprocess.Popen([sys.executable, "-c", holder, PROJECT, base], stdout=subprocess.PIPE, text=True)
    dead = subprocess.Popen([sys.executable, "-c", holder, PROJECT, base], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "held" and dead.stdout.readline().strip() == "held"
        dead.kill()
        dead.wait()
        assert len([n for n in os.listdir(base) if not n.endswith(".lock")]) == 2
        mine = server.claim_metrics_dir(os.path.join(base, "master-test"))
        folders = sorted(n for n in os.listdir(base) if not n.endswith(".lock"))
        assert len(folders) == 2 and "master-test" in folders  # the dead one's went, the live one's stayed
        server.release_metrics_dir(mine)
        assert len([n for n in os.listdir(base) if not n.endswith(".lock")]) == 1
    finally:
        live.kill()
        live.wait()


def test_the_alert_rules_fire_when_they_should(tmp_path):
    """deploy/prometheus-rules.yml against tests/prometheus/rules_test.yml, with Prometheus' promtool:
    each alert fires on its case, and TrainingJobFailed not on a DELETE of a failed job."""
    promtool = shutil.which("promtool")
    require(promtool, "promtool (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "rules", os.path.join(PROJECT, "deploy", "prometheus-rules.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", os.path.join(PROJECT, "tests", "prometheus", "rules_test.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_metrics_follow_prometheus_conventions_and_count_finished_jobs_for_good(make_app):
    """promtool check metrics finds nothing to say; a DELETE takes a failed job off imts_jobs but not
    off imts_jobs_finished_total (which the TrainingJobFailed alert takes increase() of)."""
    promtool = shutil.which("promtool")
    require(promtool, "promtool (apt-get install prometheus)")
    client = make_app("--steps", "2", "--exit", "3").test_client()
    job_id = client.post(f"{BASE}/jobs", json=BODY).get_json()["job_id"]
    wait_for(lambda: client.get(f"{BASE}/jobs/{job_id}").get_json()["status"] == "failed")
    text = client.get("/metrics").get_data()
    linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    problems = [
        line for line in linted.stdout.decode().splitlines() + linted.stderr.decode().splitlines()
        if line.strip() and "imts_job_slots_total" not in line and "imts_gpus_total" not in line
    ]  # fmt: skip
    assert not problems  # the two old names, kept one release, are its only remarks

    def value(name, **labels):
        for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return None

    # The index's counts and the counter follow the record's write by a few milliseconds.
    wait_for(lambda: value("imts_jobs", state="failed") == 1, timeout=10)
    wait_for(lambda: value("imts_jobs_finished_total", state="failed") == 1, timeout=10)
    assert client.delete(f"{BASE}/jobs/{job_id}").status_code == 204
    assert value("imts_jobs", state="failed") == 0 and value("imts_jobs_finished_total", state="failed") == 1
