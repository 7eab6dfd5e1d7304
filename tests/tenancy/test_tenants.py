"""Tenants with the fake trainer (and the FAKE deployment server): three teams, an admin, a viewer.
Another team's job, deployment, dataset or model is a 404 on every route and verb, lists show
nothing of it, viewers only read, /metrics is the admins', the file is read again when it changes,
and the audit log has a line for every change and every refusal."""

import collections
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from imts_flask.tenancy import config

from conftest import (
    API,
    FAKE_SERVER,
    PROJECT,
    TENANT_TOKENS,
    As,
    audit_lines,
    make_home,
    tenants_file,
    wait_for,
    write_tenants,
)

BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


@pytest.fixture
def teams(make_app, home):
    write_tenants(home, tenants_file())
    app = make_app(
        "--steps", "2", deploy_command=f"{sys.executable} {FAKE_SERVER}", deploy_ports="18720-18729",
        max_concurrent_jobs=4,
    )  # fmt: skip
    client = app.test_client()
    return {name: As(client, token) for name, token in TENANT_TOKENS.items()} | {"anonymous": client}


def done(who, job_id):
    return wait_for(lambda: (s := who.get(f"{API}/jobs/{job_id}").get_json())["status"] == "completed" and s)


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
    _settled()  # changed in place: read once it has been still a moment
    assert anonymous.get(f"{API}/jobs", headers=new).status_code == 200
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
    a, b = As(client, TENANT_TOKENS["a"]), As(client, TENANT_TOKENS["b"])
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


# -- the tenants file fails closed -------------------------------------------------------------


def _tenants_path(home):
    return os.path.join(home, "config", "tenants.yaml")


def _settled():
    time.sleep(config.SETTLE_S + 0.2)


def _closed_and_degraded(teams, why):
    anonymous = teams["anonymous"]
    for path in (f"{API}/jobs", f"{API}/datasets", f"{API}/deployments", "/metrics"):
        assert anonymous.get(path).status_code == 401, path
    assert teams["a"].get(f"{API}/jobs").status_code == 200  # the last valid file's tokens still work
    assert teams["a"].get("/metrics").status_code == 403
    health = anonymous.get(f"{API}/health").get_json()
    assert "tenants" in health["degraded"] and why in health["checks"]["tenants"]["detail"], health
    assert "stays in force" in health["checks"]["tenants"]["detail"]


@pytest.mark.parametrize(
    "damage, why",
    [
        ("renamed", "is missing"),
        ("emptied", "holds no token"),
        ("no_tokens", "holds no token"),
        ("broken", "not used as it is"),
    ],
)
def test_a_tenants_file_gone_empty_or_without_tokens_keeps_the_last_valid_one(teams, home, damage, why):
    path = _tenants_path(home)
    if damage == "renamed":
        os.rename(path, path + ".away")
    elif damage == "emptied":
        open(path, "w").close()
    elif damage == "no_tokens":
        write_tenants(home, {"tenants": {}})
    else:
        write_tenants(home, {"tenants": {"team-a": {"tokens": [{"name": "x", "sha256": "short"}]}}})
    _settled()
    _closed_and_degraded(teams, why)
    (os.rename(path + ".away", path) if damage == "renamed" else write_tenants(home, tenants_file()))
    _settled()
    health = teams["anonymous"].get(f"{API}/health").get_json()
    assert "tenants" not in health["degraded"] and health["checks"]["tenants"]["ok"]


def test_a_file_rewritten_in_place_is_not_read_half_written(teams, home):
    """Truncated, then written again a moment later: the half-written file is never taken (a team's
    quotas or tokens cut off mid-list), the whole one is once it has been still."""
    path = _tenants_path(home)
    text = yaml.safe_dump(tenants_file(extra_c_token="tok-c-new"))
    new = {"Authorization": "Bearer tok-c-new"}
    with open(path, "w") as handle:  # in place: the same inode
        handle.write(text[: len(text) // 3])
        handle.flush()
        for _ in range(3):
            assert teams["anonymous"].get(f"{API}/jobs").status_code == 401
            assert teams["b"].get(f"{API}/jobs").status_code == 200
            time.sleep(0.2)
        handle.write(text[len(text) // 3 :])
    assert teams["anonymous"].get(f"{API}/health").get_json()["checks"]["tenants"]["ok"]
    _settled()
    assert teams["anonymous"].get(f"{API}/jobs", headers=new).status_code == 200


def test_a_worker_booting_while_the_file_is_missing_keeps_the_last_valid_one(make_app, home):
    """gunicorn starts new workers at any time: one that starts while the file is renamed away reads
    the last valid file's snapshot, and so does a job's monitor applying the quotas."""
    write_tenants(home, tenants_file(quotas={"max_queued_jobs": 5}))
    make_app()  # reads the file: its snapshot is kept
    os.rename(_tenants_path(home), _tenants_path(home) + ".away")
    client = make_app().test_client()  # a new worker
    assert client.get(f"{API}/jobs").status_code == 401
    assert As(client, TENANT_TOKENS["a"]).get(f"{API}/jobs").status_code == 200
    health = client.get(f"{API}/health").get_json()
    assert "tenants" in health["degraded"] and "is missing" in health["checks"]["tenants"]["detail"]
    quotas_read = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; sys.path.insert(0, sys.argv[1]);"
            "from imts_flask.settings import load_settings; from imts_flask.tenancy import quotas;"
            "print(json.dumps(quotas.load(load_settings({'home': sys.argv[2]}))))",
            PROJECT,
            home,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(quotas_read.stdout.splitlines()[-1])["team-a"] == {"max_queued_jobs": 5}, quotas_read


def test_tenants_are_turned_off_by_the_setting_not_by_a_file_that_vanished(make_app, home):
    write_tenants(home, tenants_file())
    make_app()
    os.rename(_tenants_path(home), _tenants_path(home) + ".away")
    assert make_app().test_client().get(f"{API}/jobs").status_code == 401
    opened = make_app(tenants_file="").test_client()  # the restart with the setting changed
    assert opened.get(f"{API}/jobs").status_code == 200
    assert "tenants" not in opened.get(f"{API}/health").get_json()["degraded"]


def test_under_gunicorn_a_file_renamed_emptied_and_rewritten_in_a_loop_never_lets_anyone_in(tmp_path):
    """The verification's loop: while the file is renamed away and back, emptied, rewritten in place
    and replaced by one without tokens, and workers are recycled every few requests, no anonymous
    request is answered and every member's request still is."""
    from harness import Service

    home = make_home(tmp_path / "home")
    write_tenants(home, tenants_file())
    svc = Service(home, argv_extra=["--max-requests", "7"], workers=2).start()
    path = _tenants_path(home)
    stop = threading.Event()
    text = yaml.safe_dump(tenants_file())

    def churn():
        while not stop.is_set():
            os.rename(path, path + ".away")
            time.sleep(0.05)
            os.rename(path + ".away", path)
            with open(path, "w") as handle:  # truncated, then written again
                time.sleep(0.05)
                handle.write(text)
            write_tenants(home, {"tenants": {}})
            time.sleep(0.05)
            write_tenants(home, tenants_file())

    churner = threading.Thread(target=churn)
    churner.start()
    anonymous, member = collections.Counter(), collections.Counter()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for path_ in ("/jobs", "/datasets", "/deployments", "/models"):
                anonymous[requests.get(f"{svc.base}{path_}", timeout=30).status_code] += 1
            anonymous[requests.get(f"{svc.root}/metrics", timeout=30).status_code] += 1
            headers = {"Authorization": f"Bearer {TENANT_TOKENS['a']}"}
            member[requests.get(f"{svc.base}/jobs", headers=headers, timeout=30).status_code] += 1
    finally:
        stop.set()
        churner.join()
        svc.stop()
    assert set(anonymous) == {401}, anonymous
    assert set(member) == {200}, member
    assert sum(anonymous.values()) > 100


def test_an_admins_key_can_never_name_a_teams_key(teams):
    """A team's keys were kept as "<tenant>/<key>" and an admin's as is: an admin's "team-b/K"
    replayed team-b's job made with K. The namespaces are apart by construction now."""
    b, ops = teams["b"], teams["ops"]
    made = b.post(f"{API}/jobs", json=BODY, headers={**b.headers, "Idempotency-Key": "K"})
    assert made.status_code == 201
    admins = ops.post(f"{API}/jobs", json=BODY, headers={**ops.headers, "Idempotency-Key": "team-b/K"})
    assert admins.status_code == 201 and admins.get_json()["job_id"] != made.get_json()["job_id"]
    assert "Idempotent-Replayed" not in admins.headers
    again = b.post(f"{API}/jobs", json=BODY, headers={**b.headers, "Idempotency-Key": "K"})
    assert again.status_code == 200 and again.get_json()["job_id"] == made.get_json()["job_id"]


def test_max_queued_jobs_holds_under_racing_creates(tmp_path):
    """Twelve creates at once through three gunicorn workers, for a team that may keep 3 runs
    queued while the one slot is busy: exactly 3 are taken, the others are 429s."""
    import concurrent.futures

    from conftest import fake_cli
    from harness import Service

    home = make_home(tmp_path / "home")
    write_tenants(home, tenants_file(quotas={"max_queued_jobs": 3}))
    svc = Service(
        home, workers=3, llamafactory_cli=fake_cli(home, "--steps", "2000", "--interval", "0.05")
    ).start()
    b = {"Authorization": f"Bearer {TENANT_TOKENS['b']}"}
    a = {"Authorization": f"Bearer {TENANT_TOKENS['a']}"}
    try:
        busy = requests.post(f"{svc.base}/jobs", json=BODY, headers=b, timeout=30).json()["job_id"]
        wait_for(
            lambda: (
                requests.get(f"{svc.base}/jobs/{busy}", headers=b, timeout=30).json()["status"] == "running"
            )
        )
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.post(f"{svc.base}/jobs", json=BODY, headers=a, timeout=60), range(12)
                )
            )
        codes = collections.Counter(r.status_code for r in answers)
        assert codes == {201: 3, 429: 9}, codes
        listed = requests.get(f"{svc.base}/jobs?status=pending", headers=a, timeout=30).json()
        assert listed["total"] == 3
    finally:
        for job in requests.get(
            f"{svc.base}/jobs", headers={"Authorization": f"Bearer {TENANT_TOKENS['ops']}"}, timeout=30
        ).json()["jobs"]:
            requests.post(
                f"{svc.base}/jobs/{job['job_id']}/stop",
                headers={"Authorization": f"Bearer {TENANT_TOKENS['ops']}"},
                timeout=60,
            )
        svc.stop()


def test_a_waiting_job_names_its_own_teams_holders_and_counts_the_others(make_app, home):
    write_tenants(home, tenants_file())
    client = make_app("--steps", "2000", "--interval", "0.05", max_concurrent_jobs=2).test_client()
    a, b, ops = (
        As(client, TENANT_TOKENS["a"]),
        As(client, TENANT_TOKENS["b"]),
        As(client, TENANT_TOKENS["ops"]),
    )
    ours = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    theirs = b.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    for who, job_id in ((a, ours), (b, theirs)):
        wait_for(lambda w=who, j=job_id: w.get(f"{API}/jobs/{j}").get_json()["status"] == "running")
    waiting = a.post(f"{API}/jobs", json=BODY).get_json()["job_id"]
    seen = a.get(f"{API}/jobs/{waiting}").get_json()
    assert (seen["waiting_for"], seen["held_by"], seen["held_by_others"]) == ("capacity", [ours], 1)
    assert theirs not in json.dumps(seen)  # another team's job is counted, never named
    admin = ops.get(f"{API}/jobs/{waiting}").get_json()
    assert sorted(admin["held_by"]) == sorted([ours, theirs]) and admin["held_by_others"] == 0
    for job_id in (waiting, ours, theirs):
        ops.post(f"{API}/jobs/{job_id}/stop")
