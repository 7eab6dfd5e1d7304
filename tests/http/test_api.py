"""The API through Flask's test client, with real monitor processes driving the FAKE trainer."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from imts_flask.runs.record import setter

from conftest import assert_error, wait_for

BASE = "/api/v1/training"
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": {"cutoff_len": 64}}


def _create(client, body=BODY):
    response = client.post(f"{BASE}/jobs", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["job_id"]


def _status(client, job_id):
    response = client.get(f"{BASE}/jobs/{job_id}")
    assert response.status_code == 200
    return response.get_json()


def _finished(client, job_id):
    return wait_for(
        lambda: (s := _status(client, job_id))["status"] in ("completed", "failed", "stopped") and s
    )


def _jobs_on_disk(app):
    return sorted(app.extensions["imts"].store.job_ids())


def test_create_answers_as_the_guide_says(client):
    response = client.post(f"{BASE}/jobs", json=BODY)
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["job_id", "status", "message", "created_at"]
    assert re.fullmatch(r"train_[0-9a-f]{8}", body["job_id"])
    assert body["status"] == "pending"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", body["created_at"])
    assert response.headers["Location"] == f"{BASE}/jobs/{body['job_id']}"


def test_job_runs_to_completion_with_progress_and_loss(make_app):
    client = make_app("--steps", "20", "--interval", "0.05").test_client()
    job_id = _create(client)
    final = _finished(client, job_id)
    assert final["status"] == "completed"
    assert final["progress"] == 1.0 and final["current_loss"] == pytest.approx(0.1)
    assert final["current_step"] == final["total_steps"] == 20
    assert final["pid"] is None and final["exit_code"] == 0
    assert final["config_path"].endswith(f"{job_id}/training_config.yaml")
    assert os.path.exists(final["config_path"]) and os.path.exists(final["log_path"])
    assert final["started_at"] and final["finished_at"]


def test_running_job_reports_its_trainer_pid_and_partial_progress(make_app):
    client = make_app("--steps", "200", "--interval", "0.05").test_client()
    job_id = _create(client)
    running = wait_for(
        lambda: (s := _status(client, job_id))["status"] == "running" and 0 < s["progress"] < 1 and s
    )
    assert running["pid"] and os.path.exists(f"/proc/{running['pid']}")
    assert running["current_loss"] is not None and running["eta_seconds"] == 3
    client.post(f"{BASE}/jobs/{job_id}/stop")


def test_failed_job_says_why_with_the_log_tail(make_app):
    client = make_app(
        "--steps", "3", "--exit", "3", "--fail-message", "'ValueError: dataset is broken'"
    ).test_client()
    job_id = _create(client)
    final = _finished(client, job_id)
    assert final["status"] == "failed" and final["exit_code"] == 3
    assert "exited with code 3" in final["error"] and "ValueError: dataset is broken" in final["error"]
    assert any("ValueError" in line for line in final["log_tail"])


def test_stop_a_running_job_with_an_empty_body_and_no_content_type(make_app):
    client = make_app("--steps", "1000", "--interval", "0.05").test_client()
    job_id = _create(client)
    wait_for(lambda: _status(client, job_id)["status"] == "running")
    response = client.post(f"{BASE}/jobs/{job_id}/stop", data=b"", content_type=None)
    assert response.status_code == 200
    assert response.get_json()["message"] == f"任务 {job_id} 已停止"
    final = _status(client, job_id)
    assert final["status"] == "stopped" and final["pid"] is None and final["stop_requested"] is True
    again = client.post(f"{BASE}/jobs/{job_id}/stop")
    assert again.status_code == 200 and _status(client, job_id)["status"] == "stopped"


def test_stop_of_a_finished_job_is_a_conflict(make_app):
    client = make_app("--steps", "2").test_client()
    job_id = _create(client)
    _finished(client, job_id)
    body = assert_error(client.post(f"{BASE}/jobs/{job_id}/stop"), 409)
    assert body["job_status"] == "completed"
    assert _status(client, job_id)["status"] == "completed"


def test_list_is_newest_first_with_filter_and_paging(make_app):
    client = make_app("--steps", "1").test_client()
    ids = [_create(client) for _ in range(3)]  # within one second: the order must still hold
    for job_id in ids:
        _finished(client, job_id)
    listing = client.get(f"{BASE}/jobs").get_json()
    assert listing["total"] == 3 and [j["job_id"] for j in listing["jobs"]] == ids[::-1]
    assert set(listing["jobs"][0]) >= {"job_id", "status", "pid"}
    page = client.get(f"{BASE}/jobs?limit=1&offset=1").get_json()
    assert page["total"] == 3 and [j["job_id"] for j in page["jobs"]] == [ids[1]]
    assert client.get(f"{BASE}/jobs?status=running").get_json() == {
        "total": 0,
        "limit": 100,
        "offset": 0,
        "jobs": [],
    }
    assert_error(client.get(f"{BASE}/jobs?status=done"), 400, "status")


def test_camel_case_request_from_the_guides_dto(make_app):
    client = make_app("--steps", "1").test_client()
    body = {
        "modelName": "tiny-llama",
        "dataset": "demo_sft",
        "stage": "sft",
        "finetuningType": "lora",
        "batchSize": 4,
        "learningRate": 1e-4,
        "epochs": 1.0,
        "loraRank": 4,
        "loraAlpha": 8,
        "customConfig": None,
    }
    job_id = _create(client, body)
    config = open(_status(client, job_id)["config_path"]).read()
    assert "per_device_train_batch_size: 4" in config and "lora_rank: 4" in config


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": "demo_sft"}, "model_name"),
        ({**BODY, "model_name": "meta-llama/Llama-3-8b"}, "model_name"),
        ({**BODY, "dataset": "alpaca_nonexistent"}, "dataset"),
        ({**BODY, "stage": "dpo"}, "dataset"),
        ({**BODY, "stage": "ppo"}, "stage"),
        ({**BODY, "batch_size": -1}, "batch_size"),
        ({**BODY, "custom_config": {"template": "nonexistent_template"}}, "custom_config.template"),
        ({**BODY, "custom_config": {"output_dir": "/"}}, "custom_config.output_dir"),
    ],
)
def test_bad_requests_are_400_and_create_nothing(client, body, field):
    assert_error(client.post(f"{BASE}/jobs", json=body), 400, field)
    assert _jobs_on_disk(client.application) == []


def test_body_that_is_not_json_or_not_an_object(client):
    assert_error(client.post(f"{BASE}/jobs", data="{not json", content_type="application/json"), 400, "body")
    assert_error(client.post(f"{BASE}/jobs", data=""), 400, "body")
    assert_error(client.post(f"{BASE}/jobs", json=[1, 2]), 400, "body")
    assert _jobs_on_disk(client.application) == []


def test_json_without_content_type_is_415(make_app):
    # A body without a type is what a no-cors fetch of a Blob sends: JSON endpoints take application/json.
    client = make_app("--steps", "1").test_client()
    response = client.post(f"{BASE}/jobs", data=json.dumps(BODY), content_type=None)
    assert_error(response, 415, "Content-Type")
    assert _jobs_on_disk(client.application) == []


def test_oversized_body_is_413(client):
    assert_error(
        client.post(f"{BASE}/jobs", data="x" * (2 * 1024 * 1024), content_type="application/json"), 413
    )


def test_unknown_and_malformed_job_ids(client):
    assert_error(client.get(f"{BASE}/jobs/train_00000000"), 404, "job_id")
    assert_error(client.get(f"{BASE}/jobs/not-a-job"), 400, "job_id")
    assert_error(client.post(f"{BASE}/jobs/train_00000000/stop"), 404)
    assert_error(client.get(f"{BASE}/nowhere"), 404)
    assert_error(client.delete(f"{BASE}/jobs"), 405)


def test_a_405_says_which_methods_are_allowed(client):
    for method, path in (("TRACE", "/health"), ("DELETE", "/jobs"), ("PUT", "/jobs/train_00000000/stop")):
        response = client.open(f"{BASE}{path}", method=method)
        assert_error(response, 405)
        allowed = {m.strip() for m in response.headers["Allow"].split(",")}
        assert allowed and allowed <= {"GET", "HEAD", "OPTIONS", "POST", "DELETE", "PATCH", "PUT"}
        assert all(m in response.get_json()["message"] for m in allowed - {"HEAD", "OPTIONS"})


def test_a_huge_offset_is_a_400_naming_it(client):
    for query in ("offset=48166428573250261560586141696", "offset=1000000001", "offset=-1"):
        assert_error(client.get(f"{BASE}/jobs?{query}"), 400, "offset")
    assert client.get(f"{BASE}/jobs?offset=1000000000").status_code == 200
    assert_error(client.get(f"{BASE}/jobs/train_00000000/logs?offset={2**63}"), 400, "offset")


def test_unexpected_errors_are_500_without_internals(client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(client.application.extensions["imts"].jobs, "list", explode)
    response = client.get(f"{BASE}/jobs")
    body = assert_error(response, 500)
    assert "secret" not in response.get_data(as_text=True) and body["incident"]


def test_export_of_a_completed_job(make_app):
    client = make_app("--steps", "2").test_client()
    job_id = _create(client)
    _finished(client, job_id)
    response = client.post(
        f"{BASE}/jobs/{job_id}/export",
        json={"job_id": job_id, "export_dir": "./models/exports/my_model", "merge_lora": True},
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["message"] == "模型导出成功"
    exports_root = client.application.extensions["imts"].settings.path("exports_dir")
    assert body["model_path"] == os.path.join(exports_root, "my_model")
    assert os.path.exists(os.path.join(body["model_path"], "config.json"))
    assert _status(client, job_id)["export"]["status"] == "completed"
    again = client.post(f"{BASE}/jobs/{job_id}/export", json={"export_dir": "./models/exports/my_model"})
    assert again.status_code == 200


@pytest.mark.parametrize(
    "export_dir", ["/tmp/out", "../../out", "models/exports/../../x", "a\x00b", "models/exports"]
)
def test_export_outside_the_exports_root_is_refused(make_app, export_dir):
    client = make_app("--steps", "1").test_client()
    job_id = _create(client)
    _finished(client, job_id)
    assert_error(
        client.post(f"{BASE}/jobs/{job_id}/export", json={"export_dir": export_dir}), 400, "export_dir"
    )
    assert _status(client, job_id)["export"] is None


def test_export_of_an_unfinished_job_or_mismatched_id(make_app):
    client = make_app("--steps", "1000", "--interval", "0.05").test_client()
    job_id = _create(client)
    assert_error(client.post(f"{BASE}/jobs/{job_id}/export", json={"export_dir": "x"}), 409)
    assert_error(
        client.post(f"{BASE}/jobs/{job_id}/export", json={"job_id": "train_99999999", "export_dir": "x"}),
        400,
        "job_id",
    )
    client.post(f"{BASE}/jobs/{job_id}/stop")


def test_health(client, make_app, tmp_path):
    body = client.get(f"{BASE}/health").get_json()
    assert body["status"] == "healthy" and body["service"] == "training-api" and body["adapter_initialized"]
    broken = make_app(llamafactory_cli=str(tmp_path / "missing-cli")).test_client()
    response = broken.get(f"{BASE}/health")
    assert response.status_code == 503
    assert (
        response.get_json()["status"] == "unhealthy" and response.get_json()["adapter_initialized"] is False
    )
    full = make_app(min_free_disk_mb=10**12).test_client().get(f"{BASE}/health")
    assert full.status_code == 503 and full.get_json()["checks"]["disk_free"]["ok"] is False


def test_full_disk_refuses_new_jobs_with_507(make_app):
    client = make_app(min_free_disk_mb=10**12).test_client()
    assert_error(client.post(f"{BASE}/jobs", json=BODY), 507)
    assert _jobs_on_disk(client.application) == []


def test_a_job_whose_monitor_died_on_its_last_attempt_is_lost_and_its_trainer_killed(make_app):
    # Housekeeping notices a lost monitor (reads never settle anything).
    client = make_app(
        "--steps", "1000", "--interval", "0.05", max_attempts=1, housekeeping_s=0.3
    ).test_client()
    job_id = _create(client)
    running = wait_for(lambda: (s := _status(client, job_id))["status"] == "running" and s)
    state = client.application.extensions["imts"].store.read(job_id)
    os.kill(state.monitor["pid"], signal.SIGKILL)
    final = wait_for(lambda: (s := _status(client, job_id))["status"] != "running" and s, timeout=30)
    assert final["status"] == "failed" and final["reason"] == "lost"
    wait_for(
        lambda: (
            not os.path.exists(f"/proc/{running['pid']}")
            or open(f"/proc/{running['pid']}/stat").read().split(") ")[1][0] == "Z"
        ),
        timeout=10,
    )


def test_a_missing_trainer_fails_the_job_with_the_reason(make_app, tmp_path):
    client = make_app(llamafactory_cli=str(tmp_path / "no-such-cli")).test_client()
    job_id = _create(client)
    final = _finished(client, job_id)
    assert final["status"] == "failed" and "no-such-cli" in final["error"]


def test_an_export_whose_monitor_died_does_not_block_the_next(make_app):
    client = make_app("--steps", "1").test_client()
    service = client.application.extensions["imts"]
    job_id = _create(client)
    _finished(client, job_id)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    service.store.update(
        job_id,
        setter(
            export={
                "status": "running",
                "export_dir": "/nowhere",
                "merge_lora": True,
                "requested_at": "2026-01-01T00:00:00",
                "monitor": {"pid": dead.pid, "start_ticks": 1},
            }
        ),
    )
    response = client.post(f"{BASE}/jobs/{job_id}/export", json={"export_dir": "again"})
    assert response.status_code == 200, response.get_json()
    assert _status(client, job_id)["export"]["status"] == "completed"


def test_listing_searches_model_and_dataset_and_sorts_by_finish_or_loss(make_app):
    client = make_app("--steps", "3", "--interval", "0.01", max_concurrent_jobs=1).test_client()
    store = client.application.extensions["imts"].store
    ids = [
        _create(client, {**BODY, "dataset": name, "stage": stage})
        for name, stage in (("demo_sft", "sft"), ("demo_pt", "pt"), ("demo_sft", "sft"))
    ]
    for job_id in ids:
        _finished(client, job_id)
    ends = ("2026-01-01T00:00:03", "2026-01-01T00:00:01", "2026-01-01T00:00:02")
    for job_id, loss, end in zip(ids, (0.5, 0.2, 0.9), ends, strict=True):  # as if they had trained so
        store.update(job_id, lambda s, loss=loss: setter(final={**s.final, "current_loss": loss})(s))
        store.update(job_id, setter(finished_at=end))
    listed = client.get(f"{BASE}/jobs?q=SFT").get_json()
    assert listed["total"] == 2 and {j["job_id"] for j in listed["jobs"]} == {ids[0], ids[2]}
    assert client.get(f"{BASE}/jobs?q=tiny-LLAMA").get_json()["total"] == 3  # the model's name too
    assert client.get(f"{BASE}/jobs?q=nothing").get_json() == {
        "total": 0,
        "limit": 100,
        "offset": 0,
        "jobs": [],
    }
    by_loss = [j["job_id"] for j in client.get(f"{BASE}/jobs?sort=loss").get_json()["jobs"]]
    assert by_loss == [ids[1], ids[0], ids[2]]  # lowest final loss first
    assert [
        j["job_id"] for j in client.get(f"{BASE}/jobs?sort=loss&order=desc").get_json()["jobs"]
    ] == by_loss[::-1]
    by_finish = [j["job_id"] for j in client.get(f"{BASE}/jobs?sort=finished&order=asc").get_json()["jobs"]]
    assert by_finish == [ids[1], ids[2], ids[0]]
    assert [
        j["job_id"] for j in client.get(f"{BASE}/jobs?sort=loss&limit=1&offset=1").get_json()["jobs"]
    ] == [ids[0]]
    for query, field in (("sort=size", "sort"), ("order=up", "order"), ("q=", "q"), ("q=" + "x" * 201, "q")):
        assert_error(client.get(f"{BASE}/jobs?{query}"), 400, field)


def test_a_jobs_request_as_received_and_the_custom_config_keys(make_app):
    client = make_app("--steps", "1").test_client()
    camel = {
        "modelName": "tiny-llama",
        "dataset": "demo_sft",
        "customConfig": {"cutoff_len": 64},
        "epochs": 2,
    }
    job_id = _create(client, camel)
    assert client.get(f"{BASE}/jobs/{job_id}/request").get_json() == camel  # as sent, camelCase and all
    read = client.get(f"{BASE}/jobs/{job_id}/request?defaults=true").get_json()  # as the service read it
    assert read["model_name"] == "tiny-llama" and read["epochs"] == 2 and read["dataset"] == "demo_sft"
    assert (read["batch_size"], read["lora_rank"], read["priority"], read["preemptible"]) == (
        2,
        8,
        "normal",
        True,
    )
    assert_error(client.get(f"{BASE}/jobs/{job_id}/request?defaults=maybe"), 400, "defaults")
    assert_error(client.get(f"{BASE}/jobs/train_00000000/request"), 404, "job_id")
    keys = {k["key"]: k for k in client.get(f"{BASE}/custom-config").get_json()["keys"]}
    assert keys["cutoff_len"] == {
        "key": "cutoff_len",
        "type": "int",
        "min": 1,
        "max": 1048576,
        "choices": None,
    }
    assert "cosine" in keys["lr_scheduler_type"]["choices"] and keys["lora_dropout"]["max"] == 1
    assert (
        "output_dir" not in keys and "trust_remote_code" not in keys
    )  # the service's own, never a request's
