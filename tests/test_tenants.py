"""Tenants with the fake trainer (and the FAKE deployment server): three teams, an admin, a viewer.
Another team's job, deployment, dataset or model is a 404 on every route and verb, lists show
nothing of it, viewers only read, /metrics is the admins', the file is read again when it changes,
and the audit log has a line for every change and every refusal."""

import hashlib
import io
import json
import os
import sys
import time

import pytest
import yaml

from conftest import API, PROJECT, wait_for

FAKE_SERVER = os.path.join(PROJECT, "tests", "fake_server.py")
TOKENS = {"a": "tok-a", "a-view": "tok-a-view", "b": "tok-b", "c": "tok-c", "ops": "tok-ops"}
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def tenants_file(extra_c_token=None, quotas=None):
    c_tokens = [{"name": "c-ci", "role": "member", "sha256": sha(TOKENS["c"])}]
    if extra_c_token:
        c_tokens.append({"name": "c-new", "role": "member", "sha256": sha(extra_c_token)})
    return {
        "tenants": {
            "team-a": {
                "max_priority": "high",
                "quotas": quotas or {},
                "tokens": [
                    {"name": "a-ci", "role": "member", "sha256": sha(TOKENS["a"])},
                    {"name": "a-dash", "role": "viewer", "sha256": sha(TOKENS["a-view"])},
                ],
            },
            "team-b": {"tokens": [{"name": "b-ci", "role": "member", "sha256": sha(TOKENS["b"])}]},
            "team-c": {"tokens": c_tokens},
        },
        "admins": [{"name": "ops", "sha256": sha(TOKENS["ops"])}],
    }


def write_tenants(home, data):
    path = os.path.join(home, "config", "tenants.yaml")
    with open(path + ".tmp", "w") as handle:
        yaml.safe_dump(data, handle)
    os.replace(path + ".tmp", path)


class As:
    """A test client speaking with one token."""

    def __init__(self, client, token):
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method):
        def call(path, headers=None, **kw):
            return getattr(self.client, method)(path, headers={**self.headers, **(headers or {})}, **kw)

        return call


@pytest.fixture
def teams(make_app, home):
    write_tenants(home, tenants_file())
    app = make_app(
        "--steps", "2", deploy_command=f"{sys.executable} {FAKE_SERVER}", deploy_ports="18720-18729",
        max_concurrent_jobs=4,
    )  # fmt: skip
    client = app.test_client()
    return {name: As(client, token) for name, token in TOKENS.items()} | {"anonymous": client}


def done(who, job_id):
    return wait_for(lambda: (s := who.get(f"{API}/jobs/{job_id}").get_json())["status"] == "completed" and s)


def audit_lines(home):
    path = os.path.join(home, "logs", "audit.log")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def test_a_job_is_its_teams_alone_on_every_route_and_verb(teams):
    a, b, ops = teams["a"], teams["b"], teams["ops"]
    created = a.post(f"{API}/jobs", json=BODY)
    assert created.status_code == 201
    job_id = created.get_json()["job_id"]
    status = done(a, job_id)
    assert (status["tenant"], status["created_by"]) == ("team-a", "a-ci")
    app = teams["anonymous"].application
    for rule in app.url_map.iter_rules():
        if "<job_id>" not in rule.rule or rule.endpoint.startswith("dashboard."):
            continue  # the dashboard's pages hold no data: their scripts ask the API
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            path = rule.rule.replace("<evaluation_id>", "eval_00000000")
            theirs = b.open(path.replace("<job_id>", job_id), method=method, json={})
            nobodys = b.open(path.replace("<job_id>", "train_00000000"), method=method, json={})
            assert theirs.status_code == 404, (method, path, theirs.status_code)
            # ... worded as for a job that does not exist: nothing says it does.
            assert theirs.get_json() == json.loads(
                json.dumps(nobodys.get_json()).replace("train_00000000", job_id)
            )
    assert b.get(f"{API}/jobs").get_json()["total"] == 0
    assert a.get(f"{API}/jobs").get_json()["total"] == 1
    assert ops.get(f"{API}/jobs/{job_id}").status_code == 200  # admins see every team
    assert b.post(f"{API}/deployments", json={"job_id": job_id}).status_code == 404
    assert b.post(f"{API}/models", json={"name": "theirs", "job_id": job_id}).status_code == 404
    assert a.get(f"{API}/jobs/{job_id}").status_code == 200


def test_tokens_roles_and_the_admins_metrics(teams):
    anonymous, viewer, a, ops = teams["anonymous"], teams["a-view"], teams["a"], teams["ops"]
    assert anonymous.get(f"{API}/jobs").status_code == 401
    assert anonymous.get(f"{API}/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anonymous.get(f"{API}/health").status_code == 200
    job_id = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    done(a, job_id)
    assert viewer.get(f"{API}/jobs/{job_id}").status_code == 200  # a viewer reads its team's
    refused = viewer.post(f"{API}/jobs", json=BODY)
    assert refused.status_code == 403 and "viewer" in refused.get_json()["message"]
    assert viewer.delete(f"{API}/jobs/{job_id}").status_code == 403
    assert a.get("/metrics").status_code == 403 and ops.get("/metrics").status_code == 200


def test_deployments_datasets_and_models_are_their_teams_too(teams, home):
    a, b = teams["a"], teams["b"]
    job_id = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    done(a, job_id)
    deployment = a.post(f"{API}/deployments", json={"job_id": job_id}).get_json()
    assert deployment["tenant"] == "team-a"
    for method in ("get", "delete"):
        assert getattr(b, method)(f"{API}/deployments/{deployment['deployment_id']}").status_code == 404
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert b.post(f"{API}/deployments/{deployment['deployment_id']}/chat", json=chat).status_code == 404
    assert b.get(f"{API}/deployments").get_json()["total"] == 0
    assert a.get(f"{API}/deployments").get_json()["total"] == 1
    a.delete(f"{API}/deployments/{deployment['deployment_id']}")
    # An upload: another team neither sees, trains on, replaces nor deletes it.
    rows = b"".join(
        json.dumps({"instruction": f"q{i}", "output": f"a{i}"}).encode() + b"\n" for i in range(4)
    )
    uploaded = a.post(f"{API}/datasets", data={"name": "a_data", "file": (io.BytesIO(rows), "d.jsonl")})
    assert uploaded.status_code == 201 and uploaded.get_json().get("tenant", "team-a") == "team-a"
    assert b.get(f"{API}/datasets/a_data").status_code == 404
    assert "a_data" not in [d["name"] for d in b.get(f"{API}/datasets").get_json()["datasets"]]
    assert "demo_sft" in [
        d["name"] for d in b.get(f"{API}/datasets").get_json()["datasets"]
    ]  # the operator's
    on_theirs = b.post(f"{API}/jobs", json={**BODY, "dataset": "a_data"})
    assert on_theirs.status_code == 400 and "unknown dataset 'a_data'" in on_theirs.get_json()["message"]
    replaced = b.post(
        f"{API}/datasets?overwrite=true", data={"name": "a_data", "file": (io.BytesIO(rows), "d.jsonl")}
    )
    assert replaced.status_code == 409 and "taken" in replaced.get_json()["message"]
    assert b.delete(f"{API}/datasets/a_data").status_code == 404
    assert a.post(f"{API}/jobs", json={**BODY, "dataset": "a_data"}).status_code == 201
    # A registered name: invisible to the others, and not theirs to take.
    assert a.post(f"{API}/models", json={"name": "bot", "job_id": job_id}).status_code == 201
    assert b.get(f"{API}/models/bot").status_code == 404
    assert b.get(f"{API}/models").get_json()["registered"] == []
    assert b.post(f"{API}/deployments", json={"model": "bot:1"}).status_code == 400
    assert b.post(f"{API}/jobs", json={**BODY, "model_name": "bot:1"}).status_code == 400
    b_job = b.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    done(b, b_job)
    taken = b.post(f"{API}/models", json={"name": "bot", "job_id": b_job})
    assert taken.status_code == 409 and "taken" in taken.get_json()["message"]


def test_the_tenants_file_is_read_again_when_it_changes_and_a_bad_one_changes_nothing(teams, home):
    anonymous = teams["anonymous"]
    new = {"Authorization": "Bearer tok-c-new"}
    assert anonymous.get(f"{API}/jobs", headers=new).status_code == 401
    time.sleep(0.01)  # a new mtime
    write_tenants(home, tenants_file(extra_c_token="tok-c-new"))
    assert anonymous.get(f"{API}/jobs", headers=new).status_code == 200  # no restart
    with open(os.path.join(home, "config", "tenants.yaml"), "a") as handle:
        handle.write("admins: [broken\n")
    assert anonymous.get(f"{API}/jobs", headers=new).status_code == 200  # the previous file stays
    health = anonymous.get(f"{API}/health").get_json()
    assert not health["checks"]["tenants"]["ok"] and "tenants" in health["degraded"]
    assert "not used as it is" in health["checks"]["tenants"]["detail"]
    assert health["status"] == "healthy"  # shared by every instance: reported, not fatal
    assert anonymous.get(f"{API}/me", headers=new).get_json() == {
        "tenant": "team-c",
        "token": "c-new",
        "role": "member",
    }


def test_the_audit_log_has_a_line_per_change_and_per_refusal(teams, home):
    a, b = teams["a"], teams["b"]
    job_id = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    done(a, job_id)
    b.post(f"{API}/jobs/{job_id}/stop")
    teams["anonymous"].delete(f"{API}/jobs/{job_id}", headers={"X-Forwarded-For": "203.0.113.9"})
    a.delete(f"{API}/jobs/{job_id}")
    lines = audit_lines(home)
    create, stop, anonymous, delete = lines[-4:]
    assert create["tenant"] == "team-a" and create["token"] == "a-ci" and create["outcome"] == 201
    assert create["action"] == "POST /api/v1/training/jobs" and create["client"] == "127.0.0.1"
    assert stop["token"] == "b-ci" and stop["outcome"] == 404 and stop["resource"] == {"job_id": job_id}
    assert anonymous["token"] is None and anonymous["outcome"] == 401
    assert anonymous["client"] == "203.0.113.9"  # the test client's peer is a trusted proxy (127.0.0.1)
    assert delete["action"] == "DELETE /api/v1/training/jobs/<job_id>" and delete["outcome"] == 204
    assert all(
        set(line) == {"at", "tenant", "token", "client", "action", "resource", "outcome"} for line in lines
    )
    assert "tok-a" not in open(os.path.join(home, "logs", "audit.log")).read()


def test_plain_auth_tokens_are_admins_and_no_tokens_leaves_the_service_open(make_app, home):
    client = make_app("--steps", "2", auth_tokens="legacy-token").test_client()
    job_id = client.post(
        f"{API}/jobs", json=BODY, headers={"Authorization": "Bearer legacy-token"}
    ).get_json()["job_id"]
    status = client.get(f"{API}/jobs/{job_id}", headers={"Authorization": "Bearer legacy-token"}).get_json()
    assert status["tenant"] is None and status["created_by"] == "auth-token-1"
    assert client.get("/metrics", headers={"Authorization": "Bearer legacy-token"}).status_code == 200
    open_client = make_app("--steps", "2").test_client()
    assert open_client.get(f"{API}/jobs/{job_id}").status_code == 200
    assert open_client.get(f"{API}/me").get_json() == {"tenant": None, "token": None, "role": None}


def test_an_idempotency_key_is_each_teams_own(teams):
    a, b = teams["a"], teams["b"]
    key = {"Idempotency-Key": "nightly-42"}
    first = a.post(f"{API}/jobs", json=BODY, headers={**a.headers, **key})
    again = a.post(f"{API}/jobs", json=BODY, headers={**a.headers, **key})
    theirs = b.post(f"{API}/jobs", json=BODY, headers={**b.headers, **key})
    assert (first.status_code, again.status_code, theirs.status_code) == (201, 200, 201)
    assert again.get_json()["job_id"] == first.get_json()["job_id"] != theirs.get_json()["job_id"]


def test_quotas_a_team_at_its_running_limit_waits_without_blocking_the_others(make_app, home):
    write_tenants(home, tenants_file(quotas={"max_running_gpus": 1, "max_queued_jobs": 2}))
    client = make_app("--steps", "400", "--interval", "0.05", max_concurrent_jobs=3).test_client()
    a, b = As(client, TOKENS["a"]), As(client, TOKENS["b"])
    first = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    wait_for(lambda: a.get(f"{API}/jobs/{first}").get_json()["status"] == "running")
    second = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    third = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    refused = a.post(f"{API}/jobs", json=BODY)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    body = refused.get_json()
    assert body["errors"][0]["field"] == "max_queued_jobs" and body["max_queued_jobs"] == 2
    waiting = a.get(f"{API}/jobs/{second}").get_json()
    assert (waiting["status"], waiting["waiting_for"], waiting["queue_position"]) == ("pending", "quota", 1)
    # Another team's job behind them starts at once: slots are free, its team is under quota.
    theirs = b.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    wait_for(lambda: b.get(f"{API}/jobs/{theirs}").get_json()["status"] == "running")
    assert a.get(f"{API}/jobs/{second}").get_json()["status"] == "pending"
    a.post(f"{API}/jobs/{first}/stop")  # its quota frees: the next of its team starts
    wait_for(lambda: a.get(f"{API}/jobs/{second}").get_json()["status"] == "running")
    assert a.get(f"{API}/jobs/{third}").get_json()["waiting_for"] == "quota"
    assert any(line["outcome"] == 429 for line in audit_lines(home))
    for job_id in (second, third):
        a.post(f"{API}/jobs/{job_id}/stop")
    b.post(f"{API}/jobs/{theirs}/stop")


def test_a_request_refused_before_auth_is_audited_as_nobodys(teams, home):
    a = teams["a"]
    a.get(f"{API}/jobs")  # this connection's caller was team-a's token ...
    a.post(
        f"{API}/jobs", json=BODY, headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    )
    refused = audit_lines(home)[-1]
    assert refused["outcome"] == 403 and refused["token"] is None and refused["tenant"] is None
