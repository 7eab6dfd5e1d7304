"""Shared base-model servers with a FAKE vLLM (tests/fake_vllm.py) and the fake trainer: what /v1
names, who may call what, adapters loaded once per server process, streams and their usage, the
tokens in /usage, a server killed and started again, one server for concurrent first requests.
The real vLLM with the real openai client is in tests/e2e/test_e2e_serving.py."""

import concurrent.futures
import json
import os
import signal
import stat
import sys
import time

import pytest

from conftest import (
    API,
    PROJECT,
    TENANT_TOKENS,
    As,
    api_create,
    api_done,
    api_status,
    completed_job,
    stop_processes_under,
    tenants_file,
    wait_for,
    write_tenants,
)

FAKE_VLLM = os.path.join(PROJECT, "tests", "fake_vllm.py")
PORTS = "18560-18569"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def serve_app(make_app, tmp_path, home):
    wrapper = os.path.join(str(tmp_path), "fake-vllm-python")
    with open(wrapper, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {sys.executable} {FAKE_VLLM} "$@"\n')
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)

    def build(tenants=False, **overrides):
        if tenants:
            write_tenants(home, tenants_file())
        settings = {
            "vllm_python": wrapper,
            "deploy_ports": PORTS,
            "max_concurrent_jobs": 2,
            "serve_start_wait_s": 60,
            "heartbeat_s": 0.5,
        }
        settings.update(overrides)
        return make_app(**settings)

    yield build
    # A monitor killed by the sweep may have been starting a server that the sweep did not see yet.
    for _ in range(2):
        stop_processes_under(str(tmp_path))
        time.sleep(1)


def chat(client, model, **extra):
    return client.post("/v1/chat/completions", json={"model": model, **CHAT, **extra})


def servers(client):
    response = client.get(f"{API}/servers")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["servers"]


def sent(home, server):
    """What the fake vLLM was sent, in order."""
    path = os.path.join(home, "servers", server["server_id"], "fake_vllm_requests.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def test_a_jobs_adapter_answers_from_its_base_models_server_loaded_once_with_its_template(serve_app, home):
    client = serve_app().test_client()
    job_id = completed_job(client)
    first = chat(client, job_id)
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert body["choices"][0]["message"]["content"] == " w0 w1 w2" and body["usage"]["completion_tokens"] == 3
    assert chat(client, job_id).status_code == 200
    (server,) = servers(client)
    assert server["status"] == "ready" and server["base_model"] == "tiny-llama"
    assert list(server["adapters"]) == [job_id] and server["adapter_loads"] == 1
    calls = sent(home, server)
    loads = [c for c in calls if c["path"] == "/v1/load_lora_adapter"]
    assert loads == [
        {
            "path": "/v1/load_lora_adapter",
            "body": {"lora_name": job_id, "lora_path": loads[0]["body"]["lora_path"]},
        }
    ]
    assert loads[0]["body"]["lora_path"].endswith(f"{job_id}/output")
    chats = [c["body"] for c in calls if c["path"] == "/v1/chat/completions"]
    assert len(chats) == 2 and all(c["model"] == job_id for c in chats)
    assert all(c["chat_template"].startswith("FAKE TEMPLATE") for c in chats)  # the one it trained with
    # The base model itself answers from the same server, with the server's default template.
    assert chat(client, "tiny-llama").status_code == 200
    assert (
        "chat_template"
        not in [c for c in sent(home, server) if c["path"] == "/v1/chat/completions"][-1]["body"]
    )
    assert len(servers(client)) == 1


def test_a_stream_is_relayed_and_its_usage_counted_without_the_event_the_caller_did_not_ask_for(serve_app):
    client = serve_app().test_client()
    job_id = completed_job(client)
    response = chat(client, job_id, stream=True)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = [line[6:] for line in response.data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [" w0", " w1", " w2"]
    asked = chat(client, job_id, stream=True, stream_options={"include_usage": True})
    events = [line[6:] for line in asked.data.decode().splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3
    usage = client.get(f"{API}/usage").get_json()["tokens"]
    assert usage == [
        {
            "tenant": None,
            "model": job_id,
            "prompt_tokens": 14,
            "completion_tokens": 6,
            "total_tokens": 20,
            "requests": 2,
        }
    ]


def test_another_teams_model_is_a_404_as_one_that_does_not_exist_in_openais_shape(serve_app):
    client = serve_app(tenants=True).test_client()
    a, b = As(client, TENANT_TOKENS["a"]), As(client, TENANT_TOKENS["b"])
    job_id = completed_job(a)
    assert a.post("/v1/chat/completions", json={"model": job_id, **CHAT}).status_code == 200
    for name in (job_id, f"{job_id}:final", "train_00000000", "nobody:1", "no-such-base"):
        response = b.post("/v1/chat/completions", json={"model": name, **CHAT})
        assert response.status_code == 404, (name, response.get_json())
        error = response.get_json()["error"]
        assert (
            error["code"] == "model_not_found"
            and error["param"] == "model"
            and error["type"] == "not_found_error"
        )
        assert job_id not in error["message"] or name.startswith(job_id)
    listed_a = {m["id"] for m in a.get("/v1/models").get_json()["data"]}
    listed_b = {m["id"] for m in b.get("/v1/models").get_json()["data"]}
    assert job_id in listed_a and job_id not in listed_b and "tiny-llama" in listed_b
    anonymous = client.get("/v1/models")
    assert anonymous.status_code == 401 and anonymous.get_json()["error"]["type"] == "authentication_error"
    # A viewer may call a model (nothing changes) but not stop a server; only admins stop one.
    viewer = As(client, TENANT_TOKENS["a-view"])
    assert viewer.post("/v1/chat/completions", json={"model": job_id, **CHAT}).status_code == 200
    (server,) = As(client, TENANT_TOKENS["ops"]).get(f"{API}/servers").get_json()["servers"]
    assert a.delete(f"{API}/servers/{server['server_id']}").status_code == 403
    # The server is everyone's; the adapters it holds of team a's models are not team b's to see.
    assert list(server["adapters"]) == [job_id]
    assert list(a.get(f"{API}/servers").get_json()["servers"][0]["adapters"]) == [job_id]
    assert b.get(f"{API}/servers").get_json()["servers"][0]["adapters"] == {}
    assert b.get(f"{API}/servers/{server['server_id']}").get_json()["adapters"] == {}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": CHAT["messages"]}, "model"),
        ({"model": ""}, "model"),
        ({"model": "tiny-llama"}, "messages"),
        ({"model": "tiny-llama", "messages": []}, "messages"),
        ({"model": "tiny-llama", "messages": ["hi"]}, "messages"),
        ({"model": "tiny-llama", "messages": CHAT["messages"], "stream": "yes"}, "stream"),
        (
            {"model": "tiny-llama", "messages": CHAT["messages"], "chat_template": "{{ 7*7 }}"},
            "chat_template",
        ),
        ({"model": "x" * 300, "messages": CHAT["messages"]}, "model"),
        ({"model": "train_abcdefgh:checkpoint-../../x", "messages": CHAT["messages"]}, "model"),
        ({"model": "train_abcdefgh\n", "messages": CHAT["messages"]}, "model"),
    ],
)
def test_a_bad_request_is_a_4xx_in_openais_shape_naming_the_field_and_starts_nothing(
    serve_app, home, body, param
):
    client = serve_app().test_client()
    response = client.post("/v1/chat/completions", json=body)
    assert 400 <= response.status_code < 500, response.get_json()
    assert response.get_json()["error"]["param"] == param, response.get_json()
    assert not os.path.exists(os.path.join(home, "servers")) or not os.listdir(os.path.join(home, "servers"))


def test_what_the_server_refuses_comes_back_as_it_said_it(serve_app):
    client = serve_app().test_client()
    job_id = completed_job(client)
    response = chat(client, job_id, max_tokens=100000)
    assert response.status_code == 400 and "too large" in response.get_json()["error"]["message"]
    streamed = chat(client, job_id, max_tokens=100000, stream=True)
    assert streamed.status_code == 400 and "too large" in streamed.get_json()["error"]["message"]


def test_a_full_fine_tune_is_sent_to_a_dedicated_deployment(serve_app):
    client = serve_app().test_client()
    job_id = completed_job(client, finetuning_type="full")
    response = chat(client, job_id)
    assert response.status_code == 409 and "dedicated deployment" in response.get_json()["error"]["message"]


def test_a_server_killed_9_is_started_again_and_its_adapters_load_again_on_their_next_request(
    serve_app, home
):
    client = serve_app().test_client()
    job_id = completed_job(client)
    assert chat(client, job_id).status_code == 200
    (server,) = servers(client)
    state = json.load(open(os.path.join(home, "servers", server["server_id"], "state.json")))
    os.kill(state["trainer"]["pid"], signal.SIGKILL)
    back = wait_for(
        lambda: (s := servers(client)[0])["restarts"] == 1 and s["status"] == "ready" and s,
        timeout=60,
        interval=0.2,
    )
    assert not back["adapters"]
    assert chat(client, job_id).status_code == 200
    assert list(servers(client)[0]["adapters"]) == [job_id]
    loads = [c for c in sent(home, server) if c["path"] == "/v1/load_lora_adapter"]
    assert len(loads) == 2


def test_concurrent_first_requests_start_one_server(serve_app):
    app = serve_app()
    client = app.test_client()
    job_id = completed_job(client)

    def one(_):
        return app.test_client().post("/v1/chat/completions", json={"model": job_id, **CHAT}).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, range(6))) == [200] * 6
    (server,) = servers(client)
    assert server["adapter_loads"] >= 1 and list(server["adapters"]) == [job_id]


def test_a_team_past_its_tokens_per_minute_gets_a_429_with_retry_after_and_others_go_on(serve_app, home):
    client = serve_app().test_client()
    write_tenants(home, tenants_file(quotas={"max_tokens_per_minute": 10}))  # team-a's; each chat uses 10
    a, b = As(client, TENANT_TOKENS["a"]), As(client, TENANT_TOKENS["b"])
    answers = [a.post("/v1/chat/completions", json={"model": "tiny-llama", **CHAT}) for _ in range(3)]
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(r.status_code in (200, 429) for r in answers)  # a minute may turn once
    error = refused[0].get_json()["error"]
    assert error["type"] == "rate_limit_error" and "max_tokens_per_minute is 10" in error["message"]
    assert 1 <= int(refused[0].headers["Retry-After"]) <= 61
    assert b.post("/v1/chat/completions", json={"model": "tiny-llama", **CHAT}).status_code == 200


def test_an_idle_server_gives_way_to_a_high_job_and_its_models_wait_for_a_slot_again(serve_app):
    app = serve_app(max_concurrent_jobs=1, serve_preempt_idle_s=0, serve_start_wait_s=2, housekeeping_s=0.5)
    client = app.test_client()
    job_id = completed_job(client)
    assert chat(client, job_id).status_code == 200
    (server,) = servers(client)
    high = api_create(client, priority="high")
    stopped = wait_for(
        lambda: (s := servers(client)[0])["status"] == "stopped" and s, timeout=60, interval=0.2
    )
    assert stopped["server_id"] == server["server_id"] and stopped["stop_reason"] == f"preempted by {high}"
    wait_for(lambda: api_status(client, high)["status"] in ("running", "completed"), timeout=60)
    # While the job holds the one slot, a call waits serve_start_wait_s for a new server, then 503.
    if api_status(client, high)["status"] == "running":
        waiting = chat(client, job_id)
        assert waiting.status_code in (200, 503)
        if waiting.status_code == 503:
            assert waiting.headers["Retry-After"] and waiting.get_json()["error"]["type"] == "server_error"
    assert api_done(client, high)["status"] == "completed"
    assert wait_for(lambda: chat(client, job_id).status_code == 200, timeout=60, interval=0.5)


def test_a_server_that_keeps_failing_is_not_started_again_for_each_request(serve_app):
    client = serve_app(
        serve_extra_args="--fake-exit 3", max_attempts=2, serve_retry_failed_s=300
    ).test_client()
    job_id = completed_job(client)
    first = chat(client, job_id)
    assert first.status_code == 503, first.get_json()
    error = first.get_json()["error"]
    assert "failed" in error["message"] and error["type"] == "server_error"
    assert 0 < int(first.headers["Retry-After"]) <= 300
    (server,) = servers(client)
    assert server["status"] == "failed" and "died 2 times" in server["error"]
    again = chat(client, job_id)
    assert again.status_code == 503 and "is tried in" in again.get_json()["error"]["message"]
    assert len(servers(client)) == 1  # no second server for a model that cannot be served
