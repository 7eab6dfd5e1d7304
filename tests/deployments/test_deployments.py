"""Deployments with a FAKE server (tests/fake_server.py) and the fake trainer: the API's checks, the
key shown once, the slot taken from the training queue, restarts, idle stops, lost monitors.
The real server with the real openai client is in tests/e2e/test_e2e_deployments.py."""

import json
import os
import socket
import stat
import sys

import psutil
import pytest
import requests

from imts_flask.deployments.service import port_free

from conftest import API, FAKE_SERVER, api_create, api_done, api_status, completed_job, wait_for

PORTS = "18530-18539"


def server_command(*options):
    return f"{sys.executable} {FAKE_SERVER} {' '.join(options)}"


@pytest.fixture
def deploy_app(make_app):
    def build(*server_options, trainer=(), **overrides):
        settings = {"deploy_command": server_command(*server_options), "deploy_ports": PORTS}
        settings.update(overrides)
        return make_app(*trainer, **settings)

    return build


def deploy(client, **body):
    response = client.post(f"{API}/deployments", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def deployment(client, deployment_id):
    response = client.get(f"{API}/deployments/{deployment_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def until(client, deployment_id, *statuses, timeout=60):
    return wait_for(
        lambda: (d := deployment(client, deployment_id))["status"] in statuses and d,
        timeout=timeout,
        interval=0.2,
    )


def test_a_deployment_becomes_ready_and_its_key_is_shown_once_and_kept_only_as_a_digest(deploy_app, home):
    client = deploy_app().test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id, name="support-bot", max_new_tokens=32)
    assert created["status"] == "pending" and created["api_key"].startswith("sk-imts-")
    assert created["base_url"] == f"http://127.0.0.1:{created['port']}/v1"
    assert created["model"] == "support-bot" and created["source"] == {
        "job_id": job_id,
        "checkpoint": "final",
    }
    ready = until(client, created["deployment_id"], "ready", "failed")
    assert ready["status"] == "ready", ready
    assert "api_key" not in ready
    # The key works against the server; a wrong one is a 401 there.
    models = requests.get(
        f"{created['base_url']}/models", headers={"Authorization": f"Bearer {created['api_key']}"}, timeout=5
    )
    assert models.json()["data"][0]["id"] == "support-bot"
    assert requests.get(f"{created['base_url']}/models", timeout=5).status_code == 401
    # On disk: the digest in state.json, the key in a file only the service's user reads.
    directory = os.path.join(home, "deployments", created["deployment_id"])
    state_text = open(os.path.join(directory, "state.json")).read()
    assert created["api_key"] not in state_text
    assert stat.S_IMODE(os.stat(os.path.join(directory, "api_key")).st_mode) == 0o600
    assert os.path.exists(os.path.join(directory, "server_config.yaml"))
    # Requests are counted from the server's access log.
    for _ in range(3):
        requests.post(
            f"{created['base_url']}/chat/completions",
            json={"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {created['api_key']}"},
            timeout=5,
        )
    served = wait_for(
        lambda: (d := deployment(client, created["deployment_id"]))["requests_served"] == 3 and d
    )
    assert served["last_request_at"]
    stopped = client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "stopped"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{created['base_url']}/models", timeout=5)


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "job_id"),
        ({"job_id": "train_00000000", "model": "x:1"}, "job_id"),
        ({"job_id": "train_00000000", "name": "Bad Name"}, "name"),
        ({"job_id": "train_00000000", "name": "../etc"}, "name"),
        ({"job_id": "train_00000000", "checkpoint": "../../x"}, "checkpoint"),
        ({"job_id": "train_00000000", "max_new_tokens": 0}, "max_new_tokens"),
        ({"job_id": "train_00000000", "gpus": "1"}, "gpus"),
        ({"model": "x:1", "checkpoint": "best"}, "checkpoint"),
        ({"model": "no such form"}, "model"),
        ({"job_id": "train_00000000", "unknown": 1}, "unknown"),
    ],
)
def test_bad_deployment_requests_are_400s_that_name_the_field_and_write_nothing(
    deploy_app, home, body, field
):
    client = deploy_app().test_client()
    response = client.post(f"{API}/deployments", json=body)
    assert response.status_code == 400, response.get_json()
    assert field in [e["field"] for e in response.get_json()["errors"]], response.get_json()
    assert not os.path.isdir(os.path.join(home, "deployments")) or not os.listdir(
        os.path.join(home, "deployments")
    )


def test_what_cannot_be_served_is_refused_with_the_reason(deploy_app):
    client = deploy_app().test_client()
    assert client.post(f"{API}/deployments", json={"job_id": "train_00000000"}).status_code == 404
    assert client.post(f"{API}/deployments", json={"job_id": "nope"}).status_code == 400
    assert client.post(f"{API}/deployments", json={"model": "ghost:1"}).status_code == 400
    job_id = completed_job(client)
    missing = client.post(f"{API}/deployments", json={"job_id": job_id, "checkpoint": "checkpoint-999999"})
    assert missing.status_code == 400 and missing.get_json()["errors"][0]["field"] == "checkpoint"
    assert client.get(f"{API}/deployments/deploy_00000000").status_code == 404
    assert client.get(f"{API}/deployments/train_00000000").status_code == 400
    assert client.delete(f"{API}/deployments/deploy_zz").status_code == 400


def test_a_running_job_is_a_409(deploy_app):
    client = deploy_app(trainer=("--steps", "200", "--sleep", "0.05")).test_client()
    job_id = api_create(client)
    wait_for(lambda: api_status(client, job_id)["status"] == "running")
    response = client.post(f"{API}/deployments", json={"job_id": job_id})
    assert response.status_code == 409 and "only completed or stopped" in response.get_json()["message"]
    client.post(f"{API}/jobs/{job_id}/stop")


def test_a_deployment_takes_a_training_slot_and_delete_gives_it_back(deploy_app):
    client = deploy_app(max_concurrent_jobs=1).test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    until(client, created["deployment_id"], "ready")
    waiting = api_create(client)
    assert api_status(client, waiting)["status"] == "pending"
    assert api_status(client, waiting)["queue_position"] == 1
    # The status names what holds the slot: "capacity" alone left a user guessing.
    status = api_status(client, waiting)
    assert (status["waiting_for"], status["held_by"], status["held_by_others"]) == (
        "capacity",
        [created["deployment_id"]],
        0,
    )
    second = deploy(client, job_id=job_id)  # a deployment waits the same way, and says so
    shown = deployment(client, second["deployment_id"])
    assert shown["waiting_for"] == "capacity" and shown["held_by"] == [created["deployment_id"]]
    client.delete(f"{API}/deployments/{second['deployment_id']}")
    assert client.delete(f"{API}/deployments/{created['deployment_id']}").status_code == 200
    assert api_done(client, waiting)["status"] == "completed"
    # A stopped deployment answers DELETE again with its record, and stays listed.
    again = client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert again.status_code == 200 and again.get_json()["status"] == "stopped"
    listed = client.get(f"{API}/deployments?status=stopped").get_json()
    assert [d["deployment_id"] for d in listed["deployments"]] == [
        second["deployment_id"],
        created["deployment_id"],
    ]


def test_a_server_that_dies_is_started_again_then_failed_with_the_reason(deploy_app):
    client = deploy_app("--die-after", "1.5", "--exit-code", "3", max_attempts=2).test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    restarting = wait_for(lambda: (d := deployment(client, created["deployment_id"]))["restarts"] == 1 and d)
    assert restarting["status"] in ("starting", "failed")  # never "ready" while its server is down
    failed = until(client, created["deployment_id"], "failed", timeout=90)
    assert failed["restarts"] == 1
    assert failed["error"].startswith("the server died 2 times; the last: the server exited with code 3")
    assert any("dying as told" in line for line in failed["log_tail"])


def test_a_server_that_never_answers_fails_after_the_start_timeout(deploy_app):
    client = deploy_app("--never-ready", deploy_start_timeout_s=3, max_attempts=1).test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    failed = until(client, created["deployment_id"], "failed", timeout=90)
    assert "did not answer /v1/models within 3 s" in failed["error"]


def test_an_idle_deployment_is_stopped_when_idle_stop_minutes_says_so(deploy_app):
    client = deploy_app(idle_stop_minutes=0.05).test_client()  # 3 s
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    stopped = until(client, created["deployment_id"], "stopped", timeout=60)
    assert stopped["ready_at"]


def test_ports_are_not_shared_and_running_out_of_them_is_a_409(deploy_app):
    client = deploy_app(deploy_ports="18540-18541").test_client()
    job_id = completed_job(client)
    first = deploy(client, job_id=job_id)
    second = deploy(client, job_id=job_id)
    assert {first["port"], second["port"]} == {18540, 18541}
    third = client.post(f"{API}/deployments", json={"job_id": job_id})
    assert third.status_code == 409 and "deploy_ports" in third.get_json()["message"]
    for created in (first, second):
        client.delete(f"{API}/deployments/{created['deployment_id']}")


def test_a_deployment_lives_on_without_the_service_and_survives_its_monitor(deploy_app, make_app):
    app = deploy_app(heartbeat_timeout_s=3, housekeeping_s=0.5)
    client = app.test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    until(client, created["deployment_id"], "ready")
    # Another service on the same home (a restart) sees it ready.
    fresh = deploy_app(heartbeat_timeout_s=3, housekeeping_s=0.5).test_client()
    assert deployment(fresh, created["deployment_id"])["status"] == "ready"
    # Its monitor is killed: the deployment is queued again and serves on the same port.
    monitor = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if created["deployment_id"] in " ".join(p.info["cmdline"] or [])
        and "imts_flask.monitor" in (p.info["cmdline"] or [])
    )
    monitor.kill()
    again = wait_for(
        lambda: (
            (d := deployment(fresh, created["deployment_id"]))["attempt"] == 2
            and d["status"] == "ready"
            and d
        ),
        timeout=60,
    )
    assert again["port"] == created["port"]
    run_dir = os.path.join(
        fresh.application.extensions["imts"].settings.path("deployments_dir"), created["deployment_id"]
    )
    history = json.load(open(os.path.join(run_dir, "state.json")))["history"]
    lost = next(e for e in history if "lost" in (e.get("reason") or ""))
    assert "starts its server again" in lost["reason"] and "checkpoint" not in lost["reason"]
    fresh.delete(f"{API}/deployments/{created['deployment_id']}")


def test_a_job_a_deployment_serves_cannot_be_deleted(deploy_app):
    client = deploy_app().test_client()
    job_id = completed_job(client)
    created = deploy(client, job_id=job_id)
    refused = client.delete(f"{API}/jobs/{job_id}")
    assert refused.status_code == 409 and created["deployment_id"] in refused.get_json()["message"]
    client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 204


def test_the_upstream_route_answers_only_the_holder_of_the_deployments_key(deploy_app):
    """Nginx's auth_request passes the client's headers: the port goes to a request carrying that
    deployment's own key, and anything else (no key, a wrong one, another deployment's, an id that
    names nothing) gets one and the same 401."""
    client = deploy_app(auth_tokens="s3cret").test_client()
    token = {"Authorization": "Bearer s3cret"}
    job_id = completed_job_with(client, token)
    created = client.post(f"{API}/deployments", json={"job_id": job_id}, headers=token).get_json()
    other = client.post(f"{API}/deployments", json={"job_id": job_id}, headers=token).get_json()
    upstream = f"{API}/deployments/{created['deployment_id']}/upstream"
    key = {"Authorization": f"Bearer {created['api_key']}"}
    wait_for(lambda: client.get(upstream, headers=key).status_code == 204)
    assert client.get(upstream, headers=key).headers["X-IMTS-Upstream-Port"] == str(created["port"])
    refusals = [
        client.get(upstream),
        client.get(upstream, headers={"Authorization": "Bearer sk-imts-wrong"}),
        client.get(upstream, headers=token),  # the service's own token is not the deployment's key
        client.get(upstream, headers={"Authorization": f"Bearer {other['api_key']}"}),
        client.get(f"{API}/deployments/deploy_00000000/upstream", headers=key),
        client.get(f"{API}/deployments/not-an-id/upstream", headers=key),
    ]
    assert {r.status_code for r in refusals} == {401}
    assert len({json.dumps({**r.get_json(), "path": ""}) for r in refusals}) == 1  # the same words
    assert all("X-IMTS-Upstream-Port" not in r.headers for r in refusals)
    client.delete(f"{API}/deployments/{created['deployment_id']}", headers=token)
    assert client.get(upstream, headers=key).status_code == 409  # its holder may know it stopped
    assert client.get(upstream).status_code == 401
    assert client.get(f"{API}/deployments/{created['deployment_id']}").status_code == 401  # the rest needs it
    client.delete(f"{API}/deployments/{other['deployment_id']}", headers=token)


def completed_job_with(client, headers):
    response = client.post(
        f"{API}/jobs", json={"model_name": "tiny-llama", "dataset": "demo_sft"}, headers=headers
    )
    job_id = response.get_json()["job_id"]
    done = wait_for(
        lambda: client.get(f"{API}/jobs/{job_id}", headers=headers).get_json()["status"] == "completed"
    )
    assert done
    return job_id


def test_the_chat_route_streams_a_ready_deployments_answer_with_its_own_key(deploy_app):
    client = deploy_app().test_client()
    created = deploy(client, job_id=completed_job(client))
    until(client, created["deployment_id"], "ready")
    chat = f"{API}/deployments/{created['deployment_id']}/chat"
    response = client.post(chat, json={"messages": [{"role": "user", "content": "Add three and three."}]})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = [
        line[5:].strip() for line in response.get_data(as_text=True).splitlines() if line.startswith("data:")
    ]
    assert events[-1] == "[DONE]" and "six" in events[0]
    for body in (
        {"messages": []},
        {"messages": [{"role": "root", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x" * 8001}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 99999},
    ):
        assert client.post(chat, json=body).status_code == 400, body
    client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert client.post(chat, json={"messages": [{"role": "user", "content": "x"}]}).status_code == 409


def _turns(*roles, size=10):
    return {"messages": [{"role": role, "content": "x" * size} for role in roles]}


@pytest.mark.parametrize(
    "body, field, reason",
    [
        (_turns("system"), "messages", "no user message"),
        (_turns("user", "assistant"), "messages", "last message must be the user's"),
        (_turns("assistant", "user"), "messages.0.role", "must be user"),
        (_turns("system", "user", "system", "user"), "messages.2.role", "only come first"),
        (_turns("user", "user"), "messages.1.role", "must be assistant"),
        (_turns(*["user", "assistant"] * 15, "user", size=8000), "messages", "characters in all"),
    ],
)
def test_the_chat_route_refuses_what_the_server_cannot_answer(deploy_app, body, field, reason):
    """LLaMA Factory's server checks a conversation only once its streamed answer has started, and
    then ends it empty: each of these is a 400 naming the field, and nothing reaches the server."""
    client = deploy_app().test_client()
    created = deploy(client, job_id=completed_job(client))
    until(client, created["deployment_id"], "ready")
    refused = client.post(f"{API}/deployments/{created['deployment_id']}/chat", json=body)
    assert refused.status_code == 400, refused.get_data(as_text=True)
    errors = refused.get_json()["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors
    client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert deployment(client, created["deployment_id"])["requests_served"] == 0


def test_a_stream_that_breaks_off_ends_with_an_error_event(deploy_app):
    client = deploy_app("--break-stream").test_client()
    created = deploy(client, job_id=completed_job(client))
    until(client, created["deployment_id"], "ready")
    answer = client.post(f"{API}/deployments/{created['deployment_id']}/chat", json=_turns("user"))
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert "six" in json.dumps(events[0])  # what came before the break is passed on
    assert "event: error" in text and events[-1]["error"]["code"] == "stream_failed"
    assert "without finishing" in events[-1]["error"]["message"]
    client.delete(f"{API}/deployments/{created['deployment_id']}")


def test_the_vllm_backend_is_refused_where_vllm_or_a_gpu_is_missing(deploy_app):
    client = deploy_app().test_client()
    job_id = completed_job(client)
    response = client.post(f"{API}/deployments", json={"job_id": job_id, "backend": "vllm"})
    assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "backend"
    assert client.post(f"{API}/deployments", json={"job_id": job_id, "backend": "tgi"}).status_code == 400


def test_a_port_whose_last_connections_wait_in_time_wait_is_free():
    # A server that closed its connections first leaves them in TIME-WAIT for a minute; the next
    # deployment binds with SO_REUSEADDR (as uvicorn does), so the port is free for it.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server's side closes first: its end of the connection waits in TIME-WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # a bind without SO_REUSEADDR sees the port taken
    assert port_free("127.0.0.1", port)
