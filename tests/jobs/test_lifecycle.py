"""End of life: DELETE, retention, checkpoint pruning, the guide's log path, disk use.

Real monitor processes drive the FAKE trainer (tests/fake_trainer.py).
"""

import contextlib
import os
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from imts_flask.jobs.store import JobStore
from imts_flask.runs.record import setter

from conftest import API, api_create, api_done, api_status, fake_cli, make_home, wait_for
from harness import Service

SAVING = ("--steps", "40", "--interval", "0.01", "--save-every", "10")


def _job_dir(client, job_id):
    return os.path.dirname(api_status(client, job_id)["config_path"])


def _link(client, job_id):
    return os.path.join(client.application.extensions["imts"].settings.log_links_dir, job_id)


def _age(client, job_id, days):
    """Make a finished job look as if it ended `days` ago (as an operator's clock would see it)."""
    service = client.application.extensions["imts"]
    ended = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - days * 86400))
    service.store.update(job_id, setter(finished_at=ended))


def _imts_log(client):
    settings = client.application.extensions["imts"].settings
    return open(os.path.join(settings.path("logs_dir"), "imts.log")).read()


def test_delete_removes_a_finished_job_and_keeps_its_export(make_app):
    client = make_app(*SAVING).test_client()
    job_id = api_create(client)
    api_done(client, job_id)
    exported = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "kept", "merge_lora": False})
    assert exported.status_code == 200
    job_dir = _job_dir(client, job_id)
    assert os.path.realpath(_link(client, job_id)) == os.path.realpath(job_dir)

    response = client.delete(f"{API}/jobs/{job_id}")
    assert response.status_code == 204 and response.get_data() == b""
    assert not os.path.exists(job_dir) and not os.path.lexists(_link(client, job_id))
    assert client.get(f"{API}/jobs/{job_id}").status_code == 404
    assert job_id not in [j["job_id"] for j in client.get(f"{API}/jobs").get_json()["jobs"]]
    assert os.path.isfile(os.path.join(exported.get_json()["model_path"], "adapter_model.safetensors"))
    store = client.application.extensions["imts"].store
    assert os.listdir(os.path.join(store.root, store.TRASH)) == []
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 404
    assert f"job {job_id}: deleted" in _imts_log(client)


def test_delete_refuses_unfinished_jobs_and_bad_ids(make_app):
    client = make_app("--steps", "1000", "--interval", "0.05", max_concurrent_jobs=1).test_client()
    running, queued = api_create(client), api_create(client)
    wait_for(lambda: api_status(client, running)["status"] == "running")
    for job_id, status in ((running, "running"), (queued, "pending")):
        response = client.delete(f"{API}/jobs/{job_id}")
        assert response.status_code == 409 and response.get_json()["job_status"] == status
        assert os.path.isdir(_job_dir(client, job_id))
    assert client.delete(f"{API}/jobs/train_00000000").status_code == 404
    assert client.delete(f"{API}/jobs/..%2Fjobs").status_code in (400, 404)
    assert client.delete(f"{API}/jobs/TRAIN_1").status_code == 400
    for job_id in (queued, running):
        assert client.post(f"{API}/jobs/{job_id}/stop").status_code == 200
        assert client.delete(f"{API}/jobs/{job_id}").status_code == 204


def test_a_job_a_pending_resume_still_needs_is_not_deleted(make_app):
    client = make_app("--steps", "1000", "--interval", "0.02", "--save-every", "10", max_concurrent_jobs=1)
    client = client.test_client()
    source = api_create(client)
    wait_for(lambda: os.path.isdir(os.path.join(api_status(client, source)["output_dir"], "checkpoint-10")))
    client.post(f"{API}/jobs/{source}/stop")
    blocker = api_create(client)  # holds the only slot, so the resumed job waits unseeded
    wait_for(lambda: api_status(client, blocker)["status"] == "running")
    resumed = client.post(f"{API}/jobs/{source}/resume").get_json()["job_id"]
    response = client.delete(f"{API}/jobs/{source}")
    assert response.status_code == 409 and response.get_json()["job_ids"] == [resumed]
    client.post(f"{API}/jobs/{blocker}/stop")
    wait_for(lambda: api_status(client, resumed)["status"] == "running")
    assert client.delete(f"{API}/jobs/{source}").status_code == 204  # it has its own copy now
    client.post(f"{API}/jobs/{resumed}/stop")


def test_retention_removes_jobs_older_than_retention_days(make_app):
    client = make_app("--steps", "2", retention_days=7).test_client()
    service = client.application.extensions["imts"]
    old, recent = api_create(client), api_create(client)
    for job_id in (old, recent):
        api_done(client, job_id)
    _age(client, old, days=8)
    _age(client, recent, days=6)
    old_dir = _job_dir(client, old)
    done = service.lifecycle.run()
    assert done["deleted"] == [old]
    assert not os.path.exists(old_dir) and not os.path.lexists(_link(client, old))
    assert api_status(client, recent)["status"] == "completed"
    assert f"job {old}: deleted (completed" in _imts_log(client)


def test_retention_is_off_by_default(make_app):
    client = make_app("--steps", "2").test_client()
    job_id = api_create(client)
    api_done(client, job_id)
    _age(client, job_id, days=3650)
    assert client.application.extensions["imts"].lifecycle.run()["deleted"] == []
    assert api_status(client, job_id)["status"] == "completed"


def test_keep_checkpoints_prunes_completed_jobs_only(make_app):
    client = make_app(*SAVING, keep_checkpoints=1).test_client()
    service = client.application.extensions["imts"]
    completed = api_create(client)
    api_done(client, completed)
    before = api_status(client, completed)["disk_bytes"]
    failing = make_app(*SAVING, "--exit", "1", keep_checkpoints=1).test_client()
    failed = api_create(failing)
    api_done(failing, failed)

    done = service.lifecycle.run()
    assert done["pruned"] == {completed: ["checkpoint-10", "checkpoint-20", "checkpoint-30"]}
    output = api_status(client, completed)["output_dir"]
    assert sorted(n for n in os.listdir(output) if n.startswith("checkpoint-")) == ["checkpoint-40"]
    assert os.path.exists(os.path.join(output, "adapter_model.safetensors"))  # the final weights stay
    assert api_status(client, completed)["disk_bytes"] < before
    failed_output = api_status(client, failed)["output_dir"]
    assert len([n for n in os.listdir(failed_output) if n.startswith("checkpoint-")]) == 4
    assert f"job {completed}: removed checkpoint-10 (keep_checkpoints=1)" in _imts_log(client)
    assert service.lifecycle.run()["pruned"] == {}


def test_the_guides_log_path_resolves_and_links_are_repaired(make_app):
    client = make_app("--steps", "2").test_client()
    service = client.application.extensions["imts"]
    job_id = api_create(client)
    api_done(client, job_id)
    guide_path = os.path.join(service.settings.home, "logs", "training_jobs", job_id, "training.log")
    assert open(guide_path).read() == open(api_status(client, job_id)["log_path"]).read()
    assert not os.path.isabs(os.readlink(_link(client, job_id)))  # survives moving IMTS_HOME
    os.unlink(_link(client, job_id))
    dangling = _link(client, "train_0000dead")
    os.symlink("../../jobs/train_0000dead", dangling)
    assert service.lifecycle.run()["links"] == (1, 1)
    assert os.path.exists(guide_path) and not os.path.lexists(dangling)


def test_cleanup_rounds_run_once_per_interval_across_workers(make_app):
    first = make_app(cleanup_interval_s=3600).extensions["imts"]
    second = make_app(cleanup_interval_s=3600).extensions["imts"]
    assert first.lifecycle.maybe_run() is True
    assert second.lifecycle.maybe_run() is False  # another worker ran one within the interval
    with first.store.try_lock("_cleanup") as taken:
        assert taken
        assert make_app(cleanup_interval_s=0).extensions["imts"].lifecycle.maybe_run() is False


def test_disk_use_is_in_the_status_and_in_metrics(make_app):
    client = make_app(*SAVING).test_client()
    job_id = api_create(client)
    final = api_done(client, job_id)
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(_job_dir(client, job_id))
        for f in files
    )
    assert final["disk_bytes"] >= size > 0
    families = {
        f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    }
    # Per job only while it runs (the series stay bounded by what is live); the total counts it.
    assert not [s for s in families["imts_job_disk_bytes"].samples if s.labels == {"job_id": job_id}]
    assert families["imts_jobs_disk_bytes"].samples[0].value == final["disk_bytes"]
    # A record written before disk use was measured gets it from the next cleanup round.
    client.application.extensions["imts"].store.update(job_id, setter(disk_bytes=None))
    assert client.application.extensions["imts"].lifecycle.run()["measured"] == [job_id]
    assert api_status(client, job_id)["disk_bytes"] == final["disk_bytes"]


def test_a_running_job_reports_its_disk_use_and_an_unfinished_checkpoint(make_app):
    client = make_app("--steps", "1000", "--interval", "0.02", "--save-every", "10").test_client()
    job_id = api_create(client)
    output = api_status(client, job_id)["output_dir"]
    wait_for(lambda: os.path.isdir(os.path.join(output, "checkpoint-10")))
    running = wait_for(
        lambda: (s := api_status(client, job_id))["disk_bytes"] and s
    )  # measured on its first beat
    assert running["status"] == "running"
    os.makedirs(os.path.join(output, "checkpoint-99990"))  # as if the trainer were writing it now
    listed = client.get(f"{API}/jobs/{job_id}/checkpoints").get_json()["checkpoints"]
    assert listed[-1]["name"] == "checkpoint-99990" and listed[-1]["problem"] == "being saved"
    assert listed[0]["complete"] is True
    client.post(f"{API}/jobs/{job_id}/stop")


def test_creating_an_app_reads_no_job_directory(make_app, home, monkeypatch):
    """Booting a worker touches nothing that other processes change (a job's directory may vanish
    under a DELETE at any moment): housekeeping is not on the boot path."""
    app = make_app()
    client = app.test_client()
    job_ids = [
        client.post(f"{API}/jobs", json={"model_name": "tiny-llama", "dataset": "demo_sft"}).get_json()[
            "job_id"
        ]
        for _ in range(3)
    ]
    looked = []
    listdir, scandir = os.listdir, os.scandir
    monkeypatch.setattr(os, "listdir", lambda p=".": looked.append(str(p)) or listdir(p))
    monkeypatch.setattr(os, "scandir", lambda p=".": looked.append(str(p)) or scandir(p))
    make_app()
    assert not [p for p in looked if any(j in p for j in job_ids)], looked


def test_a_cleanup_round_removes_a_crash_leftovers_in_a_finished_jobs_directory(make_app):
    client = make_app("--steps", "2").test_client()
    job_id = api_create(client)
    api_done(client, job_id)
    leftover = os.path.join(_job_dir(client, job_id), ".tmp-left-by-a-crash")
    open(leftover, "w").close()
    os.utime(leftover, (0, 0))
    done = client.application.extensions["imts"].lifecycle.run()
    assert done["temp_files"] == 1 and not os.path.exists(leftover)


def test_workers_booting_while_jobs_are_deleted_keep_the_service_up(tmp_path):
    """gunicorn --max-requests 5 recycles workers all the time; 300 DELETEs meanwhile, and /health
    polled: no worker fails to boot (gunicorn would stop the service if one did)."""
    home = make_home(tmp_path / "home")
    store = JobStore(os.path.join(home, "jobs"))
    ids = [
        store.create(lambda job_id, job_dir: {JobStore.STATE: {"job_id": job_id, "status": "stopped"}})
        for _ in range(300)
    ]
    svc = Service(
        home, argv_extra=["--max-requests", "5"], workers=3, llamafactory_cli=fake_cli(home)
    ).start()
    try:
        answers = []
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    answers.append(requests.get(f"{svc.base}/health", timeout=10).status_code)

        poller = threading.Thread(target=poll)
        poller.start()
        for job_id in ids:
            assert requests.delete(f"{svc.base}/jobs/{job_id}", timeout=30).status_code == 204
        stop.set()
        poller.join()
        assert svc.proc.poll() is None, "gunicorn stopped"
        assert answers and set(answers) == {200}
    finally:
        svc.stop()
