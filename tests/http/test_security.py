"""Safe to expose: authentication, the custom_config allowlist, confined paths, bounded inputs.

Each case asserts the status, the error body, and that nothing was written outside the jobs that
the test created itself.
"""

import hashlib
import json
import os
import threading

import pytest
import yaml

from conftest import ALPACA_ROWS, API, assert_error, jsonl_bytes, upload, uploads_root, wait_for

BASE = "/api/v1/training"
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


def _files(root):
    """Every file and directory under `root`, except the service's own log and lock files."""
    found = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.relpath(os.path.join(directory, name), root)
            if not path.startswith(("logs", os.path.join("jobs", ".locks"))):
                found.add(path)
    return found


# -- authentication ----------------------------------------------------------------------------


@pytest.fixture
def secured(make_app):
    digest = hashlib.sha256(b"second-token").hexdigest()
    return make_app("--steps", "1", auth_tokens="first-token", auth_token_sha256=digest).test_client()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic Zmlyc3QtdG9rZW4=",
        "bearer first-token",
        "Bearer first-tokenX",
        "Bearer first token",
        "Bearer " + "a" * 600,
        "Bearer \u00e9",
    ],
)
def test_every_bad_token_gets_the_same_401(secured, header):
    headers = {} if header is None else {"Authorization": header}
    response = secured.get(f"{BASE}/jobs", headers=headers)
    body = assert_error(response, 401, "Authorization")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    reference = secured.get(f"{BASE}/jobs").get_json()
    assert body == reference  # missing, malformed and wrong look alike


def test_valid_tokens_open_every_endpoint_but_health_needs_none(secured):
    assert secured.get(f"{BASE}/health").status_code == 200
    for token in ("first-token", "second-token"):
        headers = {"Authorization": f"Bearer {token}"}
        assert secured.get(f"{BASE}/jobs", headers=headers).status_code == 200
        assert secured.get("/metrics", headers=headers).status_code == 200
        assert secured.get(f"{BASE}/openapi.json", headers=headers).status_code == 200
    for path in ("/metrics", f"{BASE}/openapi.json", f"{BASE}/jobs/train_00000000", "/no/such/path"):
        assert_error(secured.get(path), 401)
    assert_error(secured.post(f"{BASE}/jobs", json=BODY), 401)
    assert secured.application.extensions["imts"].store.job_ids() == []
    created = secured.post(f"{BASE}/jobs", json=BODY, headers={"Authorization": "Bearer first-token"})
    assert created.status_code == 201


def test_tokens_never_reach_the_logs(secured, home):
    secured.get(f"{BASE}/jobs", headers={"Authorization": "Bearer wrong-secret-value"})
    secured.post(f"{BASE}/jobs", json=BODY, headers={"Authorization": "Bearer first-token"})
    for directory, _, files in os.walk(home):
        for name in files:
            text = open(os.path.join(directory, name), errors="replace").read()
            assert "first-token" not in text and "wrong-secret-value" not in text, name


def test_the_dashboard_is_open_but_its_data_is_not(secured):
    for path in ("/", "/dashboard", "/dashboard/jobs/train_00000000", "/dashboard/static/api.js"):
        response = secured.get(path)
        assert response.status_code in (200, 302), path
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    page = secured.get("/dashboard").get_data(as_text=True)
    assert '<script type="module"' in page and "<script>" not in page  # no inline script to allow
    assert_error(secured.get(f"{BASE}/gpus"), 401, "Authorization")
    assert_error(secured.get("/dashboard/../api/v1/training/jobs"), 401)


# -- custom_config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("custom", "field", "words"),
    [
        ({"trust_remote_code": True}, "custom_config.trust_remote_code", "runs code"),
        ({"output_dir": "/"}, "custom_config.output_dir", "set by the service"),
        ({"deepspeed": "/tmp/x.json"}, "custom_config.deepspeed", "a path"),
        ({"dataset_dir": "ONLINE"}, "custom_config.dataset_dir", "set by the service"),
        (
            {"template": "!!python/object/apply:os.system ['touch /tmp/imts-pwned']"},
            "custom_config.template",
            "names",
        ),
        ({"cutoff_len\nfoo": 1}, "custom_config.cutoff_len\nfoo", "unknown"),
        ({"report_to": "wandb"}, "custom_config.report_to", "set by the service"),
        ({"push_to_hub": True, "hub_model_id": "me/x"}, "custom_config.push_to_hub", "off the machine"),
        ({"ray_init_kwargs": {"runtime_env": {}}}, "custom_config.ray_init_kwargs", "runs code"),
        ({"swanlab_api_key": "k"}, "custom_config.swanlab_api_key", "not allowed"),
        ({"model_name_or_path": "/etc"}, "custom_config.model_name_or_path", "model_name"),
        ({"cutoff_len": [[[[1]]]]}, "custom_config.cutoff_len", "integer"),
    ],
)
def test_custom_config_refusals(client, home, custom, field, words):
    before = _files(home)
    body = assert_error(client.post(f"{BASE}/jobs", json={**BODY, "custom_config": custom}), 400, field)
    assert words in " ".join(e["reason"] for e in body["errors"] if e["field"] == field)
    assert _files(home) == before
    assert not os.path.exists("/tmp/imts-pwned")


def test_a_yaml_tag_in_a_text_value_stays_a_string(make_app):
    client = make_app("--steps", "1").test_client()
    tag = "!!python/object/apply:os.system ['touch /tmp/imts-pwned']"
    response = client.post(f"{BASE}/jobs", json={**BODY, "custom_config": {"default_system": tag}})
    assert response.status_code == 201
    config_path = client.get(f"{BASE}/jobs/{response.get_json()['job_id']}").get_json()["config_path"]
    assert yaml.safe_load(open(config_path))["default_system"] == tag  # quoted by safe_dump: plain text
    assert not os.path.exists("/tmp/imts-pwned")


def test_the_operator_extends_the_allowlist_and_opts_into_remote_code(make_app, home):
    config_dir = os.path.join(home, "config")
    with open(os.path.join(config_dir, "custom_config.yaml"), "w") as handle:
        yaml.safe_dump({"allow": {"neftune_noise_alpha": {"type": "number", "min": 0, "max": 100}}}, handle)
    os.makedirs(os.path.join(config_dir, "deepspeed"))
    with open(os.path.join(config_dir, "deepspeed", "ds_z2.json"), "w") as handle:
        json.dump({"zero_optimization": {"stage": 2}}, handle)
    client = make_app("--steps", "1", allow_trust_remote_code=True).test_client()
    custom = {"neftune_noise_alpha": 5, "deepspeed": "ds_z2", "trust_remote_code": True}
    response = client.post(f"{BASE}/jobs", json={**BODY, "custom_config": custom})
    assert response.status_code == 201, response.get_json()
    config = yaml.safe_load(
        open(client.get(f"{BASE}/jobs/{response.get_json()['job_id']}").get_json()["config_path"])
    )
    assert config["deepspeed"] == os.path.join(config_dir, "deepspeed", "ds_z2.json")
    assert config["neftune_noise_alpha"] == 5 and config["trust_remote_code"] is True
    assert_error(
        client.post(f"{BASE}/jobs", json={**BODY, "custom_config": {"neftune_noise_alpha": 500}}),
        400,
        "custom_config.neftune_noise_alpha",
    )
    assert_error(
        client.post(f"{BASE}/jobs", json={**BODY, "custom_config": {"deepspeed": "ds_z9"}}),
        400,
        "custom_config.deepspeed",
    )


def test_an_extension_that_allows_an_owned_key_stops_the_service(make_app, home):
    with open(os.path.join(home, "config", "custom_config.yaml"), "w") as handle:
        yaml.safe_dump({"allow": {"output_dir": {"type": "text"}}}, handle)
    with pytest.raises(ValueError, match="output_dir"):
        make_app()


# -- paths -------------------------------------------------------------------------------------


@pytest.fixture
def completed(make_app):
    client = make_app("--steps", "1").test_client()
    job_id = client.post(f"{BASE}/jobs", json=BODY).get_json()["job_id"]
    wait_for(lambda: client.get(f"{BASE}/jobs/{job_id}").get_json()["status"] == "completed")
    # The finished-jobs counter follows the record by a few milliseconds: nothing else is written.
    store = client.application.extensions["imts"].store
    wait_for(lambda: store.finished_counts().get("completed") == 1)
    return client, job_id


@pytest.mark.parametrize(
    "export_dir",
    [
        "/tmp/imts-out",
        "../../imts-out",
        "models/exports/../../imts-out",
        "x/../../../imts-out",
        "a\x00b",
        "a" * 300,
        "planted/escape",
        "models/exports",
        ".",
        "",
    ],
)
def test_export_dirs_outside_the_root_are_refused(completed, home, tmp_path, export_dir):
    client, job_id = completed
    outside = tmp_path / "outside"
    outside.mkdir()
    exports = os.path.join(home, "models", "exports")
    os.makedirs(exports, exist_ok=True)
    os.symlink(outside, os.path.join(exports, "planted"))  # a symlink planted in the exports root
    before = _files(home)
    assert_error(
        client.post(f"{BASE}/jobs/{job_id}/export", json={"export_dir": export_dir}), 400, "export_dir"
    )
    assert _files(home) == before and os.listdir(outside) == []
    assert not os.path.exists("/tmp/imts-out")


@pytest.mark.parametrize(
    "job_id", ["../x", "..%2fx", "train_%2e%2e", "train_../../etc", "train_abc", "TRAIN_12345678"]
)
def test_malformed_job_ids_touch_nothing(client, home, job_id):
    before = _files(home)
    for method, path in (("get", ""), ("post", "/stop"), ("get", "/logs"), ("post", "/export")):
        response = getattr(client, method)(f"{BASE}/jobs/{job_id}{path}", json={"export_dir": "x"})
        assert response.status_code in (400, 404) and response.is_json
    assert _files(home) == before


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model_name": "/etc"}, "model_name"),
        ({"model_name": "../models/tiny-llama"}, "model_name"),
        ({"model_name": "models/../../etc"}, "model_name"),
        ({"dataset": "../../etc/passwd"}, "dataset"),
        ({"dataset": "demo_sft\x00"}, "dataset"),
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
        ({"model_name": "m" * 300}, "model_name"),
    ],
)
def test_path_like_names_are_refused(client, home, patch, field):
    before = _files(home)
    assert_error(client.post(f"{BASE}/jobs", json={**BODY, **patch}), 400, field)
    assert _files(home) == before


# -- bounded inputs ----------------------------------------------------------------------------


def test_a_10_mb_body_is_413(client, home):
    before = _files(home)
    assert_error(
        client.post(
            f"{BASE}/jobs", data=b"{" + b" " * (10 * 1024 * 1024) + b"}", content_type="application/json"
        ),
        413,
    )
    assert _files(home) == before


@pytest.mark.parametrize("depth", [9, 100_000])
def test_deeply_nested_bodies_are_400(client, depth):
    body = (
        '{"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": {"x": '
        + "[" * depth
        + "]" * depth
        + "}}"
    )
    assert_error(client.post(f"{BASE}/jobs", data=body, content_type="application/json"), 400, "body")


def test_the_trainer_gets_an_allowlisted_environment_and_exact_argv(make_app, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("DATABASE_PASSWORD", "do-not-leak")
    client = make_app("--steps", "1").test_client()
    job_id = client.post(f"{BASE}/jobs", json=BODY).get_json()["job_id"]
    status = wait_for(
        lambda: (s := client.get(f"{BASE}/jobs/{job_id}").get_json())["status"] == "completed" and s
    )
    invocation = json.load(open(os.path.join(os.path.dirname(status["config_path"]), "fake_invocation.json")))
    assert invocation["argv"] == ["train", status["config_path"]]
    assert not {"AWS_SECRET_ACCESS_KEY", "DATABASE_PASSWORD"} & set(invocation["env_names"])
    assert {"HF_HUB_OFFLINE", "PATH"} <= set(invocation["env_names"])


# -- datasets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a/b", "../escape", "..", ".hidden", "-dash", "x\x00y", "n" * 65, "", "caf\u00e9", "a b", "a%2Fb"],
)
def test_dataset_names_that_could_reach_elsewhere_are_refused(client, home, name):
    before = _files(home)
    assert_error(upload(client, name, jsonl_bytes(ALPACA_ROWS)), 400, "name")
    assert _files(home) == before


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "a%00b", "n" * 65])
def test_malformed_dataset_names_in_paths_touch_nothing(client, home, name):
    before = _files(home)
    for method in ("get", "delete"):
        response = getattr(client, method)(f"{API}/datasets/{name}")
        assert response.status_code in (400, 404) and response.is_json
    assert _files(home) == before


def test_the_uploaded_file_name_never_chooses_a_path(client, home):
    response = upload(
        client, "named", jsonl_bytes(ALPACA_ROWS), filename="../../../../tmp/imts-planted.jsonl"
    )
    assert response.status_code == 201
    stored = response.get_json()["file"]
    assert stored.startswith(uploads_root(client) + os.sep + "named" + os.sep)
    assert os.path.basename(stored) == "data.jsonl" and not os.path.exists("/tmp/imts-planted.jsonl")


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("pairwise", jsonl_bytes(ALPACA_ROWS)),
        ("kto", jsonl_bytes(ALPACA_ROWS)),
        ("sharegpt", jsonl_bytes(ALPACA_ROWS)),
        ("text", jsonl_bytes(ALPACA_ROWS)),
        ("alpaca", jsonl_bytes([{"text": "plain"}])),
    ],
)
def test_a_file_claiming_one_format_and_holding_another_is_refused(client, home, fmt, content):
    before = _files(home)
    body = assert_error(upload(client, "liar", content, format=fmt), 400, "file")
    assert body["errors"][0]["reason"].startswith("row 1: ")
    assert _files(home) == before


def test_an_oversized_upload_is_413_and_leaves_nothing(make_app, home):
    client = make_app(max_upload_mb=1).test_client()
    before = _files(home)
    assert_error(upload(client, "huge", b"x" * (3 * 1024 * 1024)), 413)
    assert _files(home) == before


def test_concurrent_uploads_of_one_name_one_wins_never_a_mixture(make_app):
    app = make_app()
    results = []

    def send(rows):
        results.append(upload(app.test_client(), "race", jsonl_bytes(rows)))

    threads = [threading.Thread(target=send, args=(ALPACA_ROWS[: 2 + i],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [201, 409, 409, 409]
    winner = next(r.get_json() for r in results if r.status_code == 201)
    client = app.test_client()
    shown = client.get(f"{API}/datasets/race?preview=20").get_json()
    assert shown["rows"] == winner["rows"] == len(shown["preview"]) and shown["sha256"] == winner["sha256"]
    assert len(os.listdir(os.path.join(uploads_root(client), "race"))) == 1  # one version, no mixture
