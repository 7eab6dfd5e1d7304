"""Datasets over HTTP: upload (multipart), list, show with a preview, replace, delete; models and
templates. Flask's test client; jobs run real monitors driving the FAKE trainer."""

import errno
import io
import json
import os

import pytest

from conftest import (
    ALPACA_ROWS,
    API,
    api_create,
    api_done,
    api_status,
    jsonl_bytes,
    upload,
    uploads_registry,
    uploads_root,
    wait_for,
)

PAIRWISE_ROWS = [{"instruction": "Greet", "input": "", "chosen": "Hello", "rejected": "Go"}] * 4


def _leftovers(client):
    staging = os.path.join(uploads_root(client), ".staging")
    return os.listdir(staging) if os.path.isdir(staging) else []


def test_an_uploaded_dataset_is_listed_shown_and_trained_on(make_app):
    client = make_app("--steps", "3").test_client()
    response = upload(client, "my_sft", jsonl_bytes(ALPACA_ROWS))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert {k: body[k] for k in ("name", "format", "stages", "rows", "columns")} == {
        "name": "my_sft",
        "format": "alpaca",
        "stages": ["sft"],
        "rows": 6,
        "columns": ["input", "instruction", "output"],
    }
    assert body["bytes"] == len(jsonl_bytes(ALPACA_ROWS)) and len(body["sha256"]) == 64 and body["created_at"]
    assert response.headers["Location"] == f"{API}/datasets/my_sft"
    listed = {d["name"]: d for d in client.get(f"{API}/datasets").get_json()["datasets"]}
    assert listed["my_sft"]["source"] == "upload" and listed["demo_sft"]["source"] == "operator"
    shown = client.get(f"{API}/datasets/my_sft?preview=2").get_json()
    assert shown["preview"] == ALPACA_ROWS[:2] and shown["sha256"] == body["sha256"]
    assert client.get(f"{API}/datasets/demo_sft?preview=1").get_json()["preview"][0]["instruction"]
    job_id = api_create(client, {"model_name": "tiny-llama", "dataset": "my_sft"})
    assert api_done(client, job_id)["status"] == "completed"
    info = json.load(
        open(
            os.path.join(
                os.path.dirname(api_status(client, job_id)["config_path"]), "dataset", "dataset_info.json"
            )
        )
    )
    assert info["my_sft"]["file_name"] == body["file"] and os.path.isabs(body["file"])
    assert _leftovers(client) == []


def test_a_bad_row_is_named_and_nothing_is_registered(make_app):
    client = make_app().test_client()
    rows = ALPACA_ROWS[:2] + [{"instruction": "x"}] + ALPACA_ROWS
    response = upload(client, "broken", jsonl_bytes(rows))
    assert response.status_code == 400
    body = response.get_json()
    assert body["errors"][0] == {"field": "file", "reason": "row 3: output is missing"}
    assert "row 3: output is missing" in body["message"]
    assert uploads_registry(client) == {} and _leftovers(client) == []
    assert not os.path.exists(os.path.join(uploads_root(client), "broken"))
    assert client.get(f"{API}/datasets/broken").status_code == 404


def test_a_preference_dataset_trains_dpo_and_is_refused_for_sft(make_app):
    client = make_app("--steps", "2").test_client()
    assert upload(client, "prefs", json.dumps(PAIRWISE_ROWS).encode(), "p.json").get_json()["stages"] == [
        "rm",
        "dpo",
    ]
    refused = client.post(f"{API}/jobs", json={"model_name": "tiny-llama", "dataset": "prefs"})
    assert refused.status_code == 400 and "fit for rm/dpo" in refused.get_json()["message"]
    job_id = api_create(client, {"model_name": "tiny-llama", "dataset": "prefs", "stage": "dpo"})
    assert api_done(client, job_id)["status"] == "completed"


def test_a_name_is_taken_once_and_replacing_keeps_jobs_on_their_version(make_app):
    client = make_app("--steps", "1000", "--interval", "0.05").test_client()
    first = upload(client, "shared", jsonl_bytes(ALPACA_ROWS)).get_json()
    again = upload(client, "shared", jsonl_bytes(ALPACA_ROWS[:3]))
    assert again.status_code == 409 and "overwrite=true" in again.get_json()["message"]
    job_id = api_create(client, {"model_name": "tiny-llama", "dataset": "shared"})
    wait_for(lambda: api_status(client, job_id)["status"] == "running")
    busy = upload(client, "shared", jsonl_bytes(ALPACA_ROWS[:3]), query="?overwrite=true")
    assert busy.status_code == 409 and busy.get_json()["job_ids"] == [job_id]
    assert client.delete(f"{API}/datasets/shared").status_code == 409
    client.post(f"{API}/jobs/{job_id}/stop")
    replaced = upload(client, "shared", jsonl_bytes(ALPACA_ROWS[:3]), query="?overwrite=true")
    assert replaced.status_code == 201 and replaced.get_json()["rows"] == 3
    assert replaced.get_json()["file"] != first["file"]
    assert os.path.exists(first["file"]), "the stopped job's version must stay (it may be resumed)"
    job_dir = os.path.dirname(api_status(client, job_id)["config_path"])
    assert (
        json.load(open(os.path.join(job_dir, "dataset", "dataset_info.json")))["shared"]["file_name"]
        == first["file"]
    )
    service = client.application.extensions["imts"]
    in_use = service.lifecycle.dataset_files_in_use()
    assert first["file"] in in_use and service.uploads.collect(in_use, min_age_s=0) == []
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 204
    assert service.uploads.collect(service.lifecycle.dataset_files_in_use()) == []  # replaced a moment ago
    removed = service.uploads.collect(service.lifecycle.dataset_files_in_use(), min_age_s=0)
    assert removed == [os.path.dirname(first["file"])]
    assert not os.path.exists(first["file"]) and os.path.exists(replaced.get_json()["file"])


def test_delete_removes_an_upload_not_an_operators_dataset(make_app):
    client = make_app().test_client()
    upload(client, "doomed", jsonl_bytes(ALPACA_ROWS))
    assert client.delete(f"{API}/datasets/doomed").status_code == 204
    assert client.get(f"{API}/datasets/doomed").status_code == 404
    assert not os.path.exists(os.path.join(uploads_root(client), "doomed")) and uploads_registry(client) == {}
    assert client.delete(f"{API}/datasets/doomed").status_code == 404
    refused = client.delete(f"{API}/datasets/demo_sft")
    assert refused.status_code == 403 and refused.get_json()["error"] == "forbidden"
    taken = upload(client, "demo_sft", jsonl_bytes(ALPACA_ROWS))
    assert taken.status_code == 409 and "operator" in taken.get_json()["message"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "ok", "content": b"x", "filename": "data.txt"}, "file"),
        ({"name": "ok", "content": b"", "filename": "data.jsonl"}, "file"),
        ({"name": "ok", "content": b"[]", "filename": "data.json"}, "file"),
        ({"name": "ok", "content": jsonl_bytes(ALPACA_ROWS), "format": "sharegpt"}, "file"),
        ({"name": "ok", "content": jsonl_bytes(ALPACA_ROWS), "format": "yaml"}, "format"),
        ({"name": "", "content": jsonl_bytes(ALPACA_ROWS)}, "name"),
    ],
)
def test_bad_uploads_are_400_and_leave_nothing(make_app, kwargs, field):
    client = make_app().test_client()
    response = upload(client, kwargs.pop("name"), kwargs.pop("content"), **kwargs)
    assert response.status_code == 400, response.get_json()
    assert field in [e["field"] for e in response.get_json()["errors"]]
    assert uploads_registry(client) == {} and _leftovers(client) == []


def test_not_multipart_or_no_file_part_is_400(make_app):
    client = make_app().test_client()
    response = client.post(f"{API}/datasets", json={"name": "x"})
    assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "body"
    response = client.post(f"{API}/datasets", data={"name": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "file"
    assert client.post(f"{API}/datasets?overwrite=maybe", data={}).status_code == 400


def test_an_upload_over_max_upload_mb_is_413(make_app):
    client = make_app(max_upload_mb=1).test_client()
    response = upload(client, "big", b'{"text": "' + b"x" * (2 * 1024 * 1024) + b'"}\n')
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"
    assert "1048576" in response.get_json()["message"]
    assert uploads_registry(client) == {} and _leftovers(client) == []
    assert (
        client.post(f"{API}/jobs", data=b"x" * (1024 * 1024 + 1), content_type="application/json").status_code
        == 413
    )


def test_a_full_disk_while_the_file_streams_in_is_507(make_app, monkeypatch):
    client = make_app().test_client()

    class FullDisk(io.BytesIO):
        name = "/nonexistent"

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imts_flask.http.requests.tempfile.NamedTemporaryFile", lambda **kw: FullDisk())
    response = upload(client, "full", jsonl_bytes(ALPACA_ROWS))
    assert response.status_code == 507 and response.get_json()["error"] == "insufficient_storage"
    assert uploads_registry(client) == {} and _leftovers(client) == []


def test_models_and_templates_are_listed(make_app):
    client = make_app().test_client()
    models = client.get(f"{API}/models").get_json()["models"]
    tiny = next(m for m in models if m["name"] == "tiny-llama")
    assert tiny["source"] == "registry" and tiny["template"] == "default"
    assert tiny["architecture"] == "LlamaForCausalLM" and tiny["parameters"] > 100_000 and tiny["bytes"] > 0
    templates = client.get(f"{API}/templates").get_json()["templates"]
    assert {"default", "llama3", "qwen"} <= set(templates)
