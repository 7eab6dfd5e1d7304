"""OpenAI's fine-tuning API with the real `openai` Python client against gunicorn, a FAKE trainer and
a FAKE vLLM (tests/fake_vllm.py): files, jobs, events, checkpoints, the fine-tuned model answering by
name, cancel, the metadata filter, delete; the SDK's own errors naming the parameter; the same job
through /api/v1/training."""

import io
import json
import os
import shutil
import subprocess
import sys

import openai
import pytest
import requests

from conftest import (
    PROJECT,
    TENANT_TOKENS,
    fake_cli,
    make_home,
    require,
    tenants_file,
    wait_for,
    write_tenants,
)
from harness import Service, java_flow_available, run_java_flow

FAKE_VLLM = os.path.join(PROJECT, "tests", "fake_vllm.py")
CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Add {i} and {i}."},
            {"role": "assistant", "content": str(2 * i)},
        ]
    }
    for i in range(8)
]


def jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai-ft")
    home = make_home(root / "home")
    wrapper = os.path.join(str(root), "fake-vllm-python")
    with open(wrapper, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {sys.executable} {FAKE_VLLM} "$@"\n')
    os.chmod(wrapper, 0o755)
    trainer = fake_cli(str(root), "--steps", "12", "--interval", "0.3", "--save-every", "5")
    svc = Service(
        home, llamafactory_cli=trainer, vllm_python=wrapper, deploy_ports="18660-18669", max_concurrent_jobs=3
    ).start()
    yield svc
    for server in requests.get(f"{svc.base}/servers", timeout=30).json()["servers"]:
        requests.delete(f"{svc.base}/servers/{server['server_id']}", timeout=60)
    svc.stop()


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service.root}/v1", api_key="unused-without-tenants", max_retries=0)


def test_the_whole_flow_with_the_openai_client(service, client):
    training = client.files.create(file=("train.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
    validation = client.files.create(
        file=("valid.jsonl", io.BytesIO(jsonl(CHAT_ROWS[:4]))), purpose="fine-tune"
    )
    assert (
        training.id.startswith("file-")
        and training.status == "processed"
        and training.filename == "train.jsonl"
    )
    assert training.id in {f.id for f in client.files.list()}
    assert client.files.content(training.id).read() == jsonl(CHAT_ROWS)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        validation_file=validation.id,
        suffix="support",
        metadata={"team": "billing", "run": "1"},
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2},
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert job.hyperparameters.n_epochs == 2 and job.training_file == training.id
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=10)]
    done = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout=120,
        interval=0.5,
    )
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-llama:imts:support:{job.id}"
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message.startswith("Job succeeded") and any(e.type == "metrics" for e in events)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [10, 5]  # newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-10"
    # The fine-tuned model and a checkpoint answer by name, with no deployment step.
    for name in (done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        answer = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.choices[0].message.content == " w0 w1 w2"
    # The same job through the service's own API: the same state and loss, the request as mapped.
    ours = requests.get(f"{service.base}/jobs/{job.id}", timeout=30).json()
    assert ours["status"] == "completed" and ours["current_loss"] == done.current_loss is not None
    asked = requests.get(f"{service.base}/jobs/{job.id}/request", timeout=30).json()
    assert (
        asked["epochs"] == 2.0 and asked["batch_size"] == 4 and asked["learning_rate"] == pytest.approx(1e-4)
    )
    # The metadata filter, and cancel of another job.
    other = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        metadata={"team": "search"},
        hyperparameters={"n_epochs": 50},
    )
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "search"})] == [other.id]
    cancelled = client.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status == "cancelled"
    # A checkpoint is not deleted alone; the model is, and its job goes.
    with pytest.raises(openai.BadRequestError) as caught:
        client.models.delete(checkpoints[0].fine_tuned_model_checkpoint)
    assert caught.value.body["param"] == "model"
    deleted = client.models.delete(done.fine_tuned_model)
    assert deleted.deleted and deleted.id == done.fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve(job.id)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"hyperparameters": {"learning_rate_multiplier": "fast"}},
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"suffix": "Not Valid!"}, "suffix"),
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-000000000000000000000000"}, "training_file"),
        ({"training_file": "../etc/passwd"}, "training_file"),
        ({"seed": -1}, "seed"),
        ({"hyperparameters": {"beta": 0.2}}, "hyperparameters.beta"),  # beta is dpo's
    ],
)
def test_a_bad_request_raises_the_sdks_bad_request_error_naming_the_parameter(service, client, extra, param):
    training = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
    before = requests.get(f"{service.base}/jobs?limit=1000", timeout=30).json()["total"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(**{"model": "tiny-llama", "training_file": training.id, **extra})
    assert caught.value.body["param"] == param, caught.value.body
    assert (
        requests.get(f"{service.base}/jobs?limit=1000", timeout=30).json()["total"] == before
    )  # nothing made


def test_a_bad_file_raises_bad_request_naming_the_file_and_its_line(client):
    rows = jsonl(CHAT_ROWS[:2]) + b'{"messages": [{"role": "user"}]}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", io.BytesIO(rows)), purpose="fine-tune")
    assert caught.value.body["param"] == "file" and "3" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("t.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="assistants")
    assert caught.value.body["param"] == "purpose"


def test_another_teams_files_and_jobs_read_as_ones_that_do_not_exist(tmp_path):
    home = make_home(tmp_path / "home")
    write_tenants(home, tenants_file())
    svc = Service(home, llamafactory_cli=fake_cli(str(tmp_path), "--steps", "3")).start()
    try:
        a, b = (
            openai.OpenAI(base_url=f"{svc.root}/v1", api_key=TENANT_TOKENS[who], max_retries=0)
            for who in "ab"
        )
        training = a.files.create(file=("t.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
        job = a.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id)
        assert training.id not in {f.id for f in b.files.list()}
        assert job.id not in {j.id for j in b.fine_tuning.jobs.list()}
        for call in (
            lambda: b.files.retrieve(training.id),
            lambda: b.files.content(training.id),
            lambda: b.files.delete(training.id),
            lambda: b.fine_tuning.jobs.retrieve(job.id),
            lambda: b.fine_tuning.jobs.cancel(job.id),
            lambda: b.fine_tuning.jobs.list_events(job.id),
            lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        with pytest.raises(openai.BadRequestError) as caught:  # team b cannot train on team a's file
            b.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id)
        assert caught.value.body["param"] == "training_file"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{svc.root}/v1", api_key="nobody", max_retries=0).files.list()
        assert a.fine_tuning.jobs.retrieve(job.id).id == job.id
    finally:
        svc.stop()


NODE_FLOW = os.path.join(PROJECT, "tests", "node", "finetune_flow.mjs")


def test_the_whole_flow_with_the_openai_package_for_node(service, tmp_path):
    require(
        shutil.which("node")
        and os.path.isdir(os.path.join(PROJECT, "tests", "node", "node_modules", "openai")),
        "node and the openai package (cd tests/node && npm ci)",
    )
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_bytes(jsonl(CHAT_ROWS))
    valid.write_bytes(jsonl(CHAT_ROWS[:4]))
    run = subprocess.run(
        ["node", NODE_FLOW, f"{service.root}/v1", "unused", "tiny-llama", str(train), str(valid)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["created"] in ("queued", "running") and seen["checkpoints"] == [10, 5]
    assert seen["cancelled"] == "cancelled" and seen["deleted"] is True
    assert seen["paused"] == "paused" and seen["resumed"] in ("queued", "running")
    assert seen["bad_param"] == "hyperparameters.batch_size"
    assert seen["fine_tuned_model"].startswith("ft:tiny-llama:imts:node:train_")


def test_a_spring_resttemplate_flow_creates_watches_and_cancels(service, tmp_path):
    require(java_flow_available(), "javac with Spring and Jackson")
    result = run_java_flow(service.root, tmp_path, flow="SpringFineTuningFlow", args=("tiny-llama",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FINE-TUNING FLOW OK" in result.stdout


def test_a_paused_job_resumes_under_its_id_from_its_checkpoint(tmp_path):
    home = make_home(tmp_path / "home")
    trainer = fake_cli(str(tmp_path), "--steps", "200", "--interval", "0.05", "--save-every", "20")
    svc = Service(home, llamafactory_cli=trainer).start()
    try:
        client = openai.OpenAI(base_url=f"{svc.root}/v1", api_key="unused", max_retries=0)
        training = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, suffix="p")
        wait_for(lambda: (svc.status(job.id)["current_step"] or 0) >= 50, timeout=60, interval=0.2)
        paused = client.fine_tuning.jobs.pause(job.id)
        assert paused.status == "paused" and client.fine_tuning.jobs.retrieve(job.id).status == "paused"
        with pytest.raises(openai.ConflictError):
            client.fine_tuning.jobs.pause(job.id)
        resumed = client.fine_tuning.jobs.resume(job.id)
        assert resumed.id == job.id and resumed.status in ("queued", "running")
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            timeout=120,
            interval=0.5,
        )
        assert done.status == "succeeded" and done.id == job.id
        (follower,) = [
            j for j in requests.get(f"{svc.base}/jobs", timeout=30).json()["jobs"] if j["job_id"] != job.id
        ]
        assert follower["resumed_from"]["job_id"] == job.id and follower["status"] == "completed"
        assert done.fine_tuned_model == f"ft:tiny-llama:imts:p:{follower['job_id']}"
        assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]  # one job to OpenAI's eyes
        messages = [
            e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "message"
        ]
        assert messages[0] == "Job succeeded" and "Job paused" in messages
        assert requests.get(f"{svc.base}/jobs/{job.id}", timeout=30).json()["status"] == "stopped"
        with pytest.raises(openai.ConflictError):
            client.fine_tuning.jobs.resume(job.id)
    finally:
        svc.stop()


def test_the_openapi_document_maps_openais_face_route_by_route(make_app):
    """x-openai lists exactly the /v1 routes the service answers, and every parameter a fine-tuning
    job request may hold."""
    app = make_app()
    document = app.test_client().get("/api/v1/training/openapi.json").get_json()
    face = document["x-openai"]
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            path = rule.rule
            for name in rule.arguments:
                path = path.replace(f"<{name}>", "{id}").replace(f"<path:{name}>", "{model}")
            path = path.replace("/v1/models/{id}", "/v1/models/{model}")
            served |= {f"{method} {path}" for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert set(face["routes"]) == served
    assert set(face["fine_tuning_job_parameters"]) == {
        "model", "training_file", "validation_file", "method", "hyperparameters", "seed", "suffix",
        "metadata", "integrations",
    }  # fmt: skip
    assert face["statuses"]["completed"] == "succeeded" and face["error_shape"]["error"]


def test_a_preference_file_trains_a_dpo_job(service, client):
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Add {i} and {i}."}]},
            "preferred_output": [{"role": "assistant", "content": str(2 * i)}],
            "non_preferred_output": [{"role": "assistant", "content": str(2 * i + 1)}],
        }
        for i in range(6)
    ]
    uploaded = client.files.create(file=("prefs.jsonl", io.BytesIO(jsonl(rows))), purpose="fine-tune")
    assert uploaded.model_extra["format"] == "pairwise" and uploaded.model_extra["rows"] == 6
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
    )
    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=120,
        interval=0.5,
    )
    assert done.status == "succeeded" and done.method.type == "dpo"
    assert requests.get(f"{service.base}/jobs/{job.id}", timeout=30).json()["stage"] == "dpo"
    asked = requests.get(f"{service.base}/jobs/{job.id}/request", timeout=30).json()
    assert asked["custom_config"]["pref_beta"] == 0.1
    broken = jsonl(rows[:2]) + jsonl([{**rows[0], "preferred_output": []}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("prefs.jsonl", io.BytesIO(broken)), purpose="fine-tune")
    assert caught.value.body["param"] == "file" and "line 3" in caught.value.body["message"]
