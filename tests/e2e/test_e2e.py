"""End to end: HTTP to gunicorn (3 workers) running the real llamafactory-cli on tiny-llama.

Every status read may land on any worker; jobs run in detached monitors, so the service can be
killed and restarted under them.
"""

import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from openapi_spec_validator import validate

from conftest import GUIDE_EXAMPLE, SHARED_DATA, TINY_MODEL, make_home, tree_digest, wait_for
from harness import GUNICORN, Service, alive, tree_pids

pytestmark = pytest.mark.e2e

FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 1}

if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
    pytest.skip("the demo model is not built: run `make setup`", allow_module_level=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("e2e") / "home")
    svc = Service(home).start()
    yield svc
    for job in requests.get(f"{svc.base}/jobs?status=running", timeout=30).json()["jobs"]:
        requests.post(f"{svc.base}/jobs/{job['job_id']}/stop", timeout=60)
    svc.stop()


@pytest.fixture(scope="module")
def completed_job(service):
    """A real sft job followed from creation: every status seen, and its final status."""
    job_id = service.create(
        {
            "model_name": "tiny-llama",
            "dataset": "demo_sft",
            "epochs": 3.0,
            "learning_rate": 1e-3,
            "custom_config": FAST,
        }
    )
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = service.status(job_id)
        seen.append(status)
        if status["status"] in ("completed", "failed", "stopped"):
            break
        time.sleep(0.1)
    return job_id, seen


def test_a_job_goes_pending_running_progress_completed(service, completed_job):
    job_id, seen = completed_job
    final = seen[-1]
    assert final["status"] == "completed", final.get("error")
    assert seen[0]["status"] in ("pending", "running")
    running = [s for s in seen if s["status"] == "running"]
    assert running and all(s["pid"] for s in running)
    assert any(0 < s["progress"] < 1 and s["current_loss"] is not None for s in running)
    assert final["progress"] == 1.0 and isinstance(final["current_loss"], float)
    assert final["current_step"] == final["total_steps"] == 180
    assert final["pid"] is None and final["exit_code"] == 0
    statuses = [s["status"] for s in seen]
    assert statuses == sorted(statuses, key=["pending", "running", "completed"].index)  # never goes back
    listing = requests.get(f"{service.base}/jobs", timeout=30).json()
    assert job_id in [j["job_id"] for j in listing["jobs"]]


def test_job_directory_is_what_the_operator_expects(service, completed_job):
    job_id, seen = completed_job
    job_dir = os.path.dirname(seen[-1]["config_path"])
    for name in (
        "state.json",
        "request.json",
        "training_config.yaml",
        "training.log",
        "monitor.log",
        "dataset/dataset_info.json",
        "output/trainer_log.jsonl",
        "output/adapter_model.safetensors",
    ):
        assert os.path.exists(os.path.join(job_dir, name)), name
    state = json.load(open(os.path.join(job_dir, "state.json")))
    assert state["status"] == "completed" and state["about"]
    assert [h["status"] for h in state["history"]] == ["pending", "running", "completed"]
    assert os.path.exists(os.path.join(service.home, "logs", "imts.log"))


def test_export_with_merge_gives_a_model_transformers_can_generate_with(service, completed_job):
    job_id, _ = completed_job
    response = requests.post(
        f"{service.base}/jobs/{job_id}/export",
        timeout=60,
        json={"job_id": job_id, "export_dir": "./models/exports/my_model", "merge_lora": True},
    )
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        wait_for(lambda: service.status(job_id)["export"]["status"] != "running", timeout=120, interval=0.5)
    export = service.status(job_id)["export"]
    assert export["status"] == "completed", export
    model_path = export["model_path"]
    assert model_path == os.path.join(service.home, "models", "exports", "my_model")
    check = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "ids = tok('Add two and three.', return_tensors='pt')\n"
        "out = model.generate(**ids, max_new_tokens=1, do_sample=False)\n"
        "assert out.shape[1] == ids['input_ids'].shape[1] + 1; print('generated', out[0, -1].item())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, model_path],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generated" in result.stdout


def test_adapter_export_without_merge(service, completed_job):
    job_id, _ = completed_job
    response = requests.post(
        f"{service.base}/jobs/{job_id}/export",
        timeout=60,
        json={"export_dir": "adapter_only", "merge_lora": False},
    )
    assert response.status_code == 200, response.text
    path = response.json()["model_path"]
    assert os.path.exists(os.path.join(path, "adapter_model.safetensors"))
    assert os.path.exists(os.path.join(path, "adapter_config.json"))


def test_preference_pretraining_and_kto_stages_complete(service):
    jobs = {
        stage: service.create(
            {
                "model_name": "tiny-llama",
                "dataset": dataset,
                "stage": stage,
                "epochs": 1.0,
                "batch_size": 4,
                "custom_config": FAST,
            }
        )
        for stage, dataset in [
            ("dpo", "demo_pref"),
            ("rm", "demo_pref"),
            ("pt", "demo_pt"),
            ("kto", "demo_kto"),
        ]
    }
    for stage, job_id in jobs.items():
        final = service.wait_done(job_id, timeout=600)
        assert final["status"] == "completed", (stage, final.get("error"), final.get("log_tail"))
        assert final["progress"] == 1.0 and final["stage"] == stage


def test_stopping_a_long_job_leaves_no_process_and_saves_a_checkpoint(service):
    job_id = service.create(
        {"model_name": "tiny-llama", "dataset": "demo_sft", "epochs": 500.0, "custom_config": FAST}
    )
    running = wait_for(
        lambda: (s := service.status(job_id))["status"] == "running" and s["current_step"] and s,
        timeout=120,
        interval=0.3,
    )
    pids = tree_pids(running["pid"])
    assert running["pid"] in pids
    response = requests.post(f"{service.base}/jobs/{job_id}/stop", timeout=60)  # no body, no content type
    assert response.status_code == 200, response.text
    assert response.json()["message"] == f"任务 {job_id} 已停止"
    final = service.status(job_id)
    assert final["status"] == "stopped" and final["pid"] is None
    assert final["current_step"] < final["total_steps"]
    assert not [pid for pid in pids if alive(pid)]
    checkpoints = [n for n in os.listdir(final["output_dir"]) if n.startswith("checkpoint-")]
    assert checkpoints, "the JIT checkpoint on SIGTERM should have saved one"
    listed = requests.get(f"{service.base}/jobs/{job_id}/checkpoints", timeout=30).json()["checkpoints"]
    assert sorted(c["name"] for c in listed) == sorted(checkpoints)
    events = requests.get(f"{service.base}/jobs/{job_id}/events", timeout=30).json()["events"]
    assert [e["status"] for e in events] == ["pending", "running", "stopped"]
    assert requests.post(f"{service.base}/jobs/{job_id}/stop", timeout=60).status_code == 200
    assert (
        requests.post(
            f"{service.base}/jobs/{job_id}/export", json={"export_dir": "x"}, timeout=60
        ).status_code
        == 409
    )


RESUMABLE = {
    "model_name": "tiny-llama",
    "dataset": "demo_sft",
    "epochs": 10.0,  # 600 steps: still running after a stop's checkpoint save (3 s) on a fast machine
    "learning_rate": 1e-3,
    "custom_config": {**FAST, "save_steps": 50},
}


def _interrupted(service, interrupt):
    """A job interrupted by `interrupt(status)` once checkpoint-100 is saved; its final status."""
    job_id = service.create(RESUMABLE)
    running = wait_for(
        lambda: (
            (s := service.status(job_id))["status"] == "running"
            and os.path.exists(os.path.join(s["output_dir"], "checkpoint-100", "trainer_state.json"))
            and s
        ),
        timeout=300,
        interval=0.1,
    )
    interrupt(running)
    return service.wait_done(job_id, timeout=120)


def _resume_and_finish(service, original, body=None):
    response = requests.post(f"{service.base}/jobs/{original['job_id']}/resume", json=body, timeout=30)
    assert response.status_code == 201, response.text
    created = response.json()
    final = service.wait_done(created["job_id"], timeout=600)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
    assert final["resumed_from"] == created["resumed_from"]
    assert final["total_steps"] == original["total_steps"] == 600 and final["current_step"] == 600
    steps = created["resumed_from"]["step"]
    points = requests.get(f"{service.base}/jobs/{final['job_id']}/metrics", timeout=30).json()["points"]
    assert [p["step"] for p in points] == list(range(1, 601))  # the history, then on from the checkpoint
    # transformers says so itself: the run went on from the checkpoint's step, not from 0.
    assert f"global step {steps}" in open(final["log_path"]).read()
    return final


def test_a_stopped_job_resumes_to_the_same_model_as_an_uninterrupted_run(service):
    stopped = _interrupted(
        service, lambda s: requests.post(f"{service.base}/jobs/{s['job_id']}/stop", timeout=60)
    )
    assert stopped["status"] == "stopped" and stopped["current_step"] < 600
    before = tree_digest(os.path.dirname(stopped["config_path"]))
    final = _resume_and_finish(service, stopped)
    assert final["resumed_from"]["checkpoint"] == f"checkpoint-{final['resumed_from']['step']}"
    assert final["resumed_from"]["step"] >= 100  # the checkpoint the stop saved, or a later one
    assert tree_digest(os.path.dirname(stopped["config_path"])) == before
    # transformers restores the optimizer, scheduler, RNG and data order: the same model as a run
    # that was never stopped, not a restart.
    uninterrupted = service.wait_done(service.create(RESUMABLE), timeout=600)
    assert final["current_loss"] == pytest.approx(uninterrupted["current_loss"], rel=1e-3)


def test_a_failed_job_with_a_checkpoint_resumes(service):
    failed = _interrupted(service, lambda s: os.kill(s["pid"], signal.SIGKILL))
    assert failed["status"] == "failed" and failed["signal"] == "SIGKILL" and failed["attempt"] == 1
    listed = requests.get(f"{service.base}/jobs/{failed['job_id']}/checkpoints", timeout=30).json()
    oldest = listed["checkpoints"][0]  # not the newest: a named one
    assert len(listed["checkpoints"]) >= 2 and oldest["complete"]
    final = _resume_and_finish(service, failed, body={"checkpoint": oldest["name"]})
    assert final["resumed_from"] == {
        "job_id": failed["job_id"],
        "checkpoint": oldest["name"],
        "step": oldest["step"],
    }
    assert requests.delete(f"{service.base}/jobs/{failed['job_id']}", timeout=30).status_code == 204
    assert requests.get(f"{service.base}/jobs/{failed['job_id']}", timeout=30).status_code == 404
    assert service.status(final["job_id"])["status"] == "completed"  # it had its own copy


@pytest.mark.parametrize(
    "body",
    [
        {"model_name": "meta-llama/Llama-3-8b", "dataset": "demo_sft"},
        {"model_name": "tiny-llama", "dataset": "no_such_dataset"},
        {"model_name": "tiny-llama", "dataset": "demo_sft", "stage": "dpo"},
        {"model_name": "tiny-llama", "dataset": "demo_sft", "stage": "ppo"},
        {
            "model_name": "tiny-llama",
            "dataset": "demo_sft",
            "custom_config": {"template": "no_such_template"},
        },
        {"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": {"trust_remote_code": True}},
        {"model_name": "tiny-llama", "dataset": "demo_sft", "lora_rank": 0},
    ],
)
def test_bad_inputs_are_400_and_create_nothing(service, body):
    jobs_dir = os.path.join(service.home, "jobs")
    before = sorted(os.listdir(jobs_dir))
    response = requests.post(f"{service.base}/jobs", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()
    assert (
        error["status"] == 400
        and error["errors"]
        and all(e["field"] and e["reason"] for e in error["errors"])
    )
    assert sorted(os.listdir(jobs_dir)) == before


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="LLaMA Factory's demo data (../shared) is absent")
def test_the_guides_example_request_completes(service):
    body = {**GUIDE_EXAMPLE, "model_name": "tiny-llama"}  # the only change: a model that is here
    job_id = service.create(body)
    # 1,500 steps: about 6 minutes on 2 idle cores; the bound only catches a job that never ends.
    final = service.wait_done(job_id, timeout=1800)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
    assert final["total_steps"] == 1500 and final["progress"] == 1.0


def test_entry_points_serve_the_api(tmp_path):
    home = make_home(tmp_path / "home")
    for argv in (
        [sys.executable, "main.py", "--mode", "api", "--port", "{port}"],
        [sys.executable, "app.py", "--mode", "api", "--port", "{port}"],
        [GUNICORN, "-c", "gunicorn.conf.py", "wsgi:app"],
    ):
        svc = Service(home)
        svc.env["IMTS_PORT"] = str(svc.port)
        try:
            svc.start([a.replace("{port}", str(svc.port)) for a in argv])
            body = requests.get(f"{svc.base}/health", timeout=5).json()
            assert body == {
                **body,
                "status": "healthy",
                "service": "training-api",
                "adapter_initialized": True,
            }
        finally:
            svc.stop()


def test_openapi_document_is_served_and_valid(service):
    spec = requests.get(f"{service.base}/openapi.json", timeout=30).json()
    validate(spec)
    assert "/api/v1/training/jobs/{job_id}/logs" in spec["paths"]


def test_concurrent_retries_with_one_idempotency_key_start_one_training(service):
    body = {"model_name": "tiny-llama", "dataset": "demo_sft", "epochs": 1.0, "custom_config": FAST}

    def post(_):
        response = requests.post(
            f"{service.base}/jobs", json=body, headers={"Idempotency-Key": "e2e-retry"}, timeout=60
        )
        return response.status_code, response.json()["job_id"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert len({job_id for _, job_id in results}) == 1
    assert sorted(code for code, _ in results) == [200] * 5 + [201]
    final = service.wait_done(results[0][1])
    assert final["status"] == "completed"


def test_a_webhook_hears_each_state_of_a_real_job(service):
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/imts-events"
        job_id = service.create(
            {
                "model_name": "tiny-llama",
                "dataset": "demo_sft",
                "epochs": 1.0,
                "custom_config": FAST,
                "webhook_url": url,
            }
        )
        service.wait_done(job_id)
        wait_for(lambda: len(received) == 3, timeout=60)
    finally:
        server.shutdown()
    assert [e["status"] for e in sorted(received, key=lambda e: e["sequence"])] == [
        "pending",
        "running",
        "completed",
    ]
    assert {e["job_id"] for e in received} == {job_id}


def test_a_high_job_preempts_a_low_one_which_resumes_and_completes(tmp_path):
    """Two teams on one slot, with the real trainer: team-b's low job is stopped with a checkpoint
    when team-a's high job arrives, waits, then resumes from that checkpoint and trains to its
    total_steps; the audit log names the preemption."""
    home = make_home(tmp_path / "home")
    tokens = {"a": "e2e-team-a", "b": "e2e-team-b"}
    team = {
        name: {
            "max_priority": "high",
            "tokens": [
                {"name": f"{name}-ci", "role": "member", "sha256": hashlib.sha256(t.encode()).hexdigest()}
            ],
        }
        for name, t in (("team-a", tokens["a"]), ("team-b", tokens["b"]))
    }
    with open(os.path.join(home, "config", "tenants.yaml"), "w") as handle:
        json.dump({"tenants": team}, handle)  # JSON is YAML too
    svc = Service(home, workers=2).start()
    a, b = ({"Authorization": f"Bearer {tokens[x]}"} for x in ("a", "b"))
    try:
        low_body = {**RESUMABLE, "priority": "low"}  # 600 steps, a checkpoint every 50
        low = requests.post(f"{svc.base}/jobs", json=low_body, headers=b, timeout=30).json()["job_id"]
        wait_for(
            lambda: (
                (s := requests.get(f"{svc.base}/jobs/{low}", headers=b, timeout=30).json())["status"]
                == "running"
                and os.path.exists(os.path.join(s["output_dir"], "checkpoint-50", "trainer_state.json"))
            ),
            timeout=300,
            interval=0.2,
        )
        high_body = {**RESUMABLE, "epochs": 1.0, "priority": "high"}
        high = requests.post(f"{svc.base}/jobs", json=high_body, headers=a, timeout=30).json()["job_id"]
        waiting = wait_for(
            lambda: (
                (s := requests.get(f"{svc.base}/jobs/{low}", headers=b, timeout=30).json())["status"]
                == "pending"
                and s
            ),
            timeout=120,
            interval=0.2,
        )
        assert waiting["preempted_by"] == high and waiting["preemptions"] == 1
        assert waiting["current_step"] < 600
        done = {}
        for job, who in ((high, a), (low, b)):
            done[job] = wait_for(
                lambda job=job, who=who: (
                    (s := requests.get(f"{svc.base}/jobs/{job}", headers=who, timeout=30).json())["status"]
                    in ("completed", "failed", "stopped")
                    and s
                ),
                timeout=600,
                interval=0.5,
            )
        assert done[high]["status"] == "completed" and done[high]["current_step"] == 60
        final = done[low]
        assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
        assert final["current_step"] == final["total_steps"] == 600 and final["attempt"] == 1
        assert final["cpu_seconds"] > 0  # measured from its processes; no GPU here, so no gpu_seconds
        events = requests.get(f"{svc.base}/jobs/{low}/events", headers=b, timeout=30).json()["events"]
        assert [e["status"] for e in events] == ["pending", "running", "pending", "running", "completed"]
        assert f"preempted by {high}" in events[2]["reason"]
        # The second attempt went on from the preemption's checkpoint, as transformers says itself.
        assert re.search(
            r"Resuming training from checkpoint with epoch \d+ and global step [1-9]",
            open(final["log_path"]).read(),
        )
        # The high job started once the low one had stopped: never two trainers on the one slot.
        high_events = requests.get(f"{svc.base}/jobs/{high}/events", headers=a, timeout=30).json()["events"]
        assert events[2]["at"] <= next(e["at"] for e in high_events if e["status"] == "running")
        audit = [json.loads(line) for line in open(os.path.join(home, "logs", "audit.log"))]
        assert {"job_id": low, "by": high} in [
            line["resource"] for line in audit if line["action"] == "preempt"
        ]
    finally:
        svc.stop()
