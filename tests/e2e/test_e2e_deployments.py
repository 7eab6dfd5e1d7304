"""End to end: a trained model served through the API with LLaMA Factory's real server, called with
the real `openai` client, under gunicorn; a registered version deployed by alias and trained on."""

import os
import shutil

import openai
import psutil
import pytest
import requests

from conftest import PROJECT, TINY_MODEL, make_home, require, wait_for
from harness import Service, start_nginx

pytestmark = pytest.mark.e2e

FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 1}
JOB = {
    "model_name": "tiny-llama",
    "dataset": "demo_sft",
    "epochs": 1.0,
    "learning_rate": 1e-3,
    "custom_config": FAST,
}

if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
    pytest.skip("the demo model is not built: run `make setup`", allow_module_level=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("e2e-deploy") / "home")
    # One slot: a deployment holds it as a training job would.
    svc = Service(home, housekeeping_s=1, max_concurrent_jobs=1, deploy_ports="18600-18619").start()
    yield svc
    for deployment in requests.get(f"{svc.base}/deployments", timeout=30).json()["deployments"]:
        requests.delete(f"{svc.base}/deployments/{deployment['deployment_id']}", timeout=60)
    svc.stop()


@pytest.fixture(scope="module")
def trained(service):
    job_id = service.create(JOB)
    assert service.wait_done(job_id)["status"] == "completed"
    return job_id


def deploy(service, **body):
    response = requests.post(f"{service.base}/deployments", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def deployment(service, deployment_id):
    response = requests.get(f"{service.base}/deployments/{deployment_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def until(service, deployment_id, *statuses, timeout=180):
    found = wait_for(
        lambda: (d := deployment(service, deployment_id))["status"] in statuses + ("failed",) and d,
        timeout=timeout,
        interval=0.5,
    )
    assert found["status"] in statuses, found
    return found


def chat(created, content="Add three and three.", **extra):
    client = openai.OpenAI(base_url=created["base_url"], api_key=created["api_key"], max_retries=0)
    return client.chat.completions.create(
        model=created["model"], messages=[{"role": "user", "content": content}], max_tokens=8, **extra
    )


def test_the_openai_client_chats_with_a_deployed_adapter_plain_and_streamed(service, trained):
    created = deploy(service, job_id=trained, name="demo-bot", max_new_tokens=16)
    until(service, created["deployment_id"], "ready")
    client = openai.OpenAI(base_url=created["base_url"], api_key=created["api_key"], max_retries=0)
    assert [m.id for m in client.models.list().data] == ["demo-bot"]
    answer = chat(created)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
    chunks = list(chat(created, stream=True))
    assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=created["base_url"], api_key="sk-wrong", max_retries=0).models.list()
    assert requests.get(f"{created['base_url']}/models", timeout=10).status_code == 401
    # No browser on another origin may read it: the server sends no CORS grant.
    preflight = requests.options(
        f"{created['base_url']}/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    served = wait_for(
        lambda: (d := deployment(service, created["deployment_id"]))["requests_served"] >= 2 and d
    )
    assert served["model"] == "demo-bot" and served["adapter"].endswith("/output")
    # The dashboard's chat route through the service, with the real server: what it cannot answer
    # is a 400 naming the field (it used to stream an empty 200), an answer ends with [DONE].
    route = f"{service.base}/deployments/{created['deployment_id']}/chat"
    refused = requests.post(
        route,
        json={"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        timeout=60,
    )
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "messages"
    answered = requests.post(
        route, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=120
    )
    assert answered.status_code == 200 and answered.text.rstrip().endswith("data: [DONE]")
    assert "event: error" not in answered.text
    # The one slot is the deployment's: a new job waits, saying what holds it; DELETE frees it and
    # the job trains.
    waiting = service.create(JOB)
    status = service.status(waiting)
    assert status["status"] == "pending" and status["waiting_for"] == "capacity"
    assert status["held_by"] == [created["deployment_id"]]
    stopped = requests.delete(f"{service.base}/deployments/{created['deployment_id']}", timeout=60)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    with pytest.raises(openai.APIConnectionError):
        chat(created)
    assert service.wait_done(waiting)["status"] == "completed"


def test_a_deployment_survives_a_kill_9_of_gunicorn_and_a_killed_server_comes_back(service, trained):
    created = deploy(service, job_id=trained)
    until(service, created["deployment_id"], "ready")
    service.kill_hard()
    assert chat(created).choices[0].message.content is not None  # served without the service
    service.start()
    assert deployment(service, created["deployment_id"])["status"] == "ready"
    # Its server is killed: the monitor starts it again on the same port.
    server = psutil.Process(ready_pid(service, created["deployment_id"]))
    server.kill()
    again = wait_for(
        lambda: (
            (d := deployment(service, created["deployment_id"]))["restarts"] == 1
            and d["status"] == "ready"
            and d
        ),
        timeout=180,
        interval=0.5,
    )
    assert again["port"] == created["port"] and chat(created).choices
    requests.delete(f"{service.base}/deployments/{created['deployment_id']}", timeout=60)


def ready_pid(service, deployment_id):
    import json

    with open(os.path.join(service.home, "deployments", deployment_id, "state.json")) as handle:
        return json.load(handle)["pid"]


def test_a_registered_version_is_deployed_by_alias_and_trained_on_by_name(service, trained):
    version = requests.post(
        f"{service.base}/models",
        json={"name": "demo-bot", "job_id": trained, "description": "e2e"},
        timeout=30,
    )
    assert version.status_code == 201, version.text
    number = version.json()["version"]
    alias = requests.put(
        f"{service.base}/models/demo-bot/aliases/production", json={"version": number}, timeout=30
    )
    assert alias.status_code == 200 and alias.json()["aliases"] == {"production": number}
    created = deploy(service, model="demo-bot@production")
    until(service, created["deployment_id"], "ready")
    assert created["source"]["model"] == f"demo-bot:{number}"
    assert chat(created).choices[0].message.content is not None
    requests.delete(f"{service.base}/deployments/{created['deployment_id']}", timeout=60)
    on_top = service.create({**JOB, "model_name": "demo-bot@production"})
    done = service.wait_done(on_top)
    assert done["status"] == "completed", done
    second = requests.post(
        f"{service.base}/models", json={"name": "demo-bot", "job_id": on_top}, timeout=30
    ).json()
    assert second["version"] == number + 1 and second["base_model"] == "demo-bot@production"


def test_nginx_serves_a_deployment_under_the_services_host_streaming_included(service, trained, tmp_path):
    require(shutil.which("nginx"), "nginx")
    location = open(os.path.join(PROJECT, "deploy", "nginx.conf")).read()
    location = location.replace("127.0.0.1:8000", f"127.0.0.1:{service.port}")
    proc, port = start_nginx(tmp_path, f"server {{ listen 127.0.0.1:{{port}};\n{location}\n}}")
    try:
        created = deploy(service, job_id=trained)
        through_nginx = {
            **created,
            "base_url": f"http://127.0.0.1:{port}/deployments/{created['deployment_id']}/v1",
        }
        key = {"Authorization": f"Bearer {created['api_key']}"}
        early = requests.get(f"{through_nginx['base_url']}/models", headers=key, timeout=10)
        assert early.status_code in (200, 503)  # 503 (JSON) while it starts
        until(service, created["deployment_id"], "ready")
        assert chat(through_nginx).choices[0].message.content is not None
        assert len(list(chat(through_nginx, stream=True))) > 1
        refused = requests.get(f"{through_nginx['base_url']}/models", timeout=10)  # no key
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        unknown = requests.get(
            f"http://127.0.0.1:{port}/deployments/deploy_00000000/v1/models", headers=key, timeout=10
        )
        assert unknown.status_code == 401 and unknown.json() == refused.json()  # it tells nothing
        requests.delete(f"{service.base}/deployments/{created['deployment_id']}", timeout=60)
        gone = requests.get(f"{through_nginx['base_url']}/models", headers=key, timeout=10)
        assert gone.status_code == 503 and gone.json()["error"]["code"] == "deployment_unavailable"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
