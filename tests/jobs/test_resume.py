"""Resuming: POST /jobs/{id}/resume makes a new job that goes on from a checkpoint, and a job whose
monitor vanished (host death) is queued again and resumes in its own directory, up to max_attempts.

Real monitor processes drive the FAKE trainer (tests/fake_trainer.py), which saves checkpoint-N
directories with --save-every and goes on after the step of a resume_from_checkpoint.
"""

import json
import os
import signal
import threading

import psutil

from conftest import API, api_create, api_done, api_status, tree_digest, wait_for

SAVING = ("--steps", "200", "--interval", "0.02", "--save-every", "10")


def _output(client, job_id):
    return api_status(client, job_id)["output_dir"]


def _stopped_with_checkpoints(client, at_least=20):
    """A job stopped once checkpoint-<at_least> was saved."""
    job_id = api_create(client)
    wait_for(lambda: os.path.isdir(os.path.join(_output(client, job_id), f"checkpoint-{at_least}")))
    assert client.post(f"{API}/jobs/{job_id}/stop").status_code == 200
    return job_id


def _resumes(client, job_id):
    """The checkpoints the FAKE trainer of a job was told to resume from, in order."""
    path = os.path.join(os.path.dirname(api_status(client, job_id)["config_path"]), "fake_resumes.log")
    return open(path).read().split() if os.path.exists(path) else []


def _steps(client, job_id):
    return [p["step"] for p in client.get(f"{API}/jobs/{job_id}/metrics?limit=10000").get_json()["points"]]


def test_a_stopped_job_resumes_as_a_new_job_from_its_newest_checkpoint(make_app):
    client = make_app(*SAVING).test_client()
    original = _stopped_with_checkpoints(client)
    stopped = api_status(client, original)
    newest = client.get(f"{API}/jobs/{original}/checkpoints").get_json()["checkpoints"][-1]
    before = tree_digest(os.path.dirname(stopped["config_path"]))

    response = client.post(f"{API}/jobs/{original}/resume")  # no body, no content type
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert list(body) == ["job_id", "status", "message", "created_at", "resumed_from"]
    assert body["resumed_from"] == {"job_id": original, "checkpoint": newest["name"], "step": newest["step"]}
    assert body["job_id"] != original and body["status"] == "pending"
    assert response.headers["Location"] == f"{API}/jobs/{body['job_id']}"

    final = api_done(client, body["job_id"])
    assert final["status"] == "completed" and final["resumed_from"] == body["resumed_from"]
    assert final["total_steps"] == 200 and final["current_step"] == 200
    assert final["model_name"] == stopped["model_name"] and final["dataset"] == stopped["dataset"]
    # It trained from its own copy of the checkpoint, and its series runs on from step 1 without a gap.
    assert _resumes(client, body["job_id"]) == [os.path.join(final["output_dir"], newest["name"])]
    assert _steps(client, body["job_id"]) == list(range(1, 201))
    request = json.load(open(os.path.join(os.path.dirname(final["config_path"]), "request.json")))
    assert request == json.load(open(os.path.join(os.path.dirname(stopped["config_path"]), "request.json")))
    assert tree_digest(os.path.dirname(stopped["config_path"])) == before, "the original was modified"
    assert api_status(client, original)["status"] == "stopped"


def test_a_failed_job_resumes_from_a_named_checkpoint(make_app):
    failing = make_app("--steps", "40", "--interval", "0.01", "--save-every", "10", "--exit", "1")
    client = failing.test_client()
    original = api_create(client)
    assert api_done(client, original)["status"] == "failed"
    assert [
        c["name"] for c in client.get(f"{API}/jobs/{original}/checkpoints").get_json()["checkpoints"]
    ] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
        "checkpoint-40",
    ]
    client = make_app("--steps", "40", "--interval", "0.01", "--save-every", "10").test_client()  # fixed
    response = client.post(f"{API}/jobs/{original}/resume", json={"checkpoint": "checkpoint-20"})
    assert response.status_code == 201, response.get_json()
    job_id = response.get_json()["job_id"]
    final = api_done(client, job_id)
    assert final["status"] == "completed" and final["resumed_from"]["step"] == 20
    assert _steps(client, job_id) == list(range(1, 41))
    assert _resumes(client, job_id)[0].endswith("/checkpoint-20")


def test_resume_refuses_what_cannot_be_resumed(make_app):
    client = make_app(*SAVING, max_concurrent_jobs=1).test_client()
    stopped = _stopped_with_checkpoints(client, at_least=10)
    running = api_create(client)
    queued = api_create(client)
    wait_for(lambda: api_status(client, running)["status"] == "running")
    for job_id, status in ((running, "running"), (queued, "pending")):
        refused = client.post(f"{API}/jobs/{job_id}/resume")
        assert refused.status_code == 409 and refused.get_json()["job_status"] == status
    unknown = client.post(f"{API}/jobs/{stopped}/resume", json={"checkpoint": "checkpoint-7"})
    assert unknown.status_code == 400 and unknown.get_json()["errors"][0]["field"] == "checkpoint"
    assert "checkpoint-10" in unknown.get_json()["available"]
    for bad in ("../../etc", "checkpoint-", 7, "checkpoint-10/..", ""):
        response = client.post(f"{API}/jobs/{stopped}/resume", json={"checkpoint": bad})
        assert response.status_code == 400, bad
    assert client.post(f"{API}/jobs/{stopped}/resume", json={"step": 10}).status_code == 400  # unknown field
    assert client.post(f"{API}/jobs/train_00000000/resume").status_code == 404
    assert client.post(f"{API}/jobs/not_a_job/resume").status_code == 400
    # A checkpoint cut short is listed, but not resumed from.
    torn = os.path.join(_output(client, stopped), "checkpoint-10", "trainer_state.json")
    os.remove(torn)
    listed = client.get(f"{API}/jobs/{stopped}/checkpoints").get_json()["checkpoints"]
    assert listed[0]["name"] == "checkpoint-10" and listed[0]["complete"] is False
    response = client.post(f"{API}/jobs/{stopped}/resume", json={"checkpoint": "checkpoint-10"})
    assert response.status_code == 409 and "incomplete" in response.get_json()["message"]
    for job_id in (running, queued):
        client.post(f"{API}/jobs/{job_id}/stop")
    jobs_before = sorted(client.application.extensions["imts"].store.job_ids())
    no_checkpoint = client.post(f"{API}/jobs/{queued}/resume")  # stopped while queued: never trained
    assert (
        no_checkpoint.status_code == 409 and "no complete checkpoint" in no_checkpoint.get_json()["message"]
    )
    assert sorted(client.application.extensions["imts"].store.job_ids()) == jobs_before  # nothing written


def test_a_completed_job_is_not_resumed(make_app):
    client = make_app("--steps", "3").test_client()
    job_id = api_create(client)
    api_done(client, job_id)
    response = client.post(f"{API}/jobs/{job_id}/resume")
    assert response.status_code == 409 and response.get_json()["job_status"] == "completed"


def test_idempotency_key_on_resume(make_app):
    client = make_app(*SAVING).test_client()
    original = _stopped_with_checkpoints(client, at_least=10)
    key = {"Idempotency-Key": "resume-1"}
    first = client.post(f"{API}/jobs/{original}/resume", headers=key)
    again = client.post(f"{API}/jobs/{original}/resume", headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    other = client.post(f"{API}/jobs/{original}/resume", headers=key, json={"checkpoint": "checkpoint-10"})
    assert other.status_code == 409 and other.get_json()["errors"][0]["field"] == "Idempotency-Key"
    client.post(f"{API}/jobs/{first.get_json()['job_id']}/stop")


# -- a job whose host died -----------------------------------------------------------------------


def _kill_monitor_and_trainer(client, job_id):
    """kill -9 of the job's monitor and trainer at once, as a host that loses power."""
    state = client.application.extensions["imts"].store.read(job_id)
    os.kill(state.monitor["pid"], signal.SIGKILL)
    os.kill(state.trainer["pid"], signal.SIGKILL)


def test_a_lost_job_is_queued_again_and_resumes_from_its_last_complete_checkpoint(make_app):
    client = make_app(*SAVING, housekeeping_s=0.3).test_client()
    job_id = api_create(client)
    output = _output(client, job_id)
    wait_for(lambda: os.path.isdir(os.path.join(output, "checkpoint-30")))
    _kill_monitor_and_trainer(client, job_id)
    # The host died while saving the next checkpoint: its trainer_state.json was never written.
    newest = max(int(n.split("-")[1]) for n in os.listdir(output) if n.startswith("checkpoint-"))
    torn = os.path.join(output, f"checkpoint-{newest + 10}")
    os.makedirs(torn)
    open(os.path.join(torn, "adapter_model.safetensors"), "wb").write(b"\x10\x00")

    final = api_done(client, job_id)  # housekeeping notices the dead monitor
    assert final["status"] == "completed" and final["attempt"] == 2 and final["max_attempts"] == 3
    assert final["current_step"] == final["total_steps"] == 200
    assert _resumes(client, job_id) == [os.path.join(output, f"checkpoint-{newest}")]
    # The torn one was removed before the trainer started; the trainer later saved that step anew.
    monitor_log = open(os.path.join(os.path.dirname(output), "monitor.log")).read()
    assert f"removed the incomplete checkpoint-{newest + 10}" in monitor_log
    assert os.path.getsize(os.path.join(torn, "adapter_model.safetensors")) > 2
    assert _steps(client, job_id) == list(range(1, 201))
    events = client.get(f"{API}/jobs/{job_id}/events").get_json()["events"]
    assert [(e["status"], e["attempt"]) for e in events] == [
        ("pending", 1),
        ("running", 1),
        ("pending", 2),
        ("running", 2),
        ("completed", 2),
    ]
    assert (
        "lost: the job's monitor process died" in events[2]["reason"]
        and f"attempt 2 of 3 resumes from checkpoint-{newest}" in events[2]["reason"]
    )
    assert events[3]["resumed_from"] == f"checkpoint-{newest}"
    log = open(final["log_path"]).read()
    assert log.count(" imts monitor (pid ") == 2  # one header per attempt


def test_a_lost_job_without_a_checkpoint_starts_over(make_app):
    client = make_app(
        "--steps", "100", "--interval", "0.02", housekeeping_s=0.3
    ).test_client()  # no checkpoint
    job_id = api_create(client)
    wait_for(lambda: (api_status(client, job_id)["current_step"] or 0) >= 20)
    _kill_monitor_and_trainer(client, job_id)
    final = api_done(client, job_id)
    assert final["status"] == "completed" and final["attempt"] == 2 and final["current_step"] == 100
    assert _resumes(client, job_id) == []
    assert _steps(client, job_id) == list(range(1, 101))  # the first attempt's log was started afresh
    events = client.get(f"{API}/jobs/{job_id}/events").get_json()["events"]
    assert "starts over: no complete checkpoint" in events[2]["reason"]


def test_the_last_attempt_ends_failed_lost(make_app):
    client = make_app(*SAVING, max_attempts=2, housekeeping_s=0.3).test_client()
    job_id = api_create(client)
    for attempt in (1, 2):
        wait_for(
            lambda a=attempt: (s := api_status(client, job_id))["status"] == "running" and s["attempt"] == a
        )
        _kill_monitor_and_trainer(client, job_id)
    final = api_done(client, job_id)
    assert final["status"] == "failed" and final["reason"] == "lost" and final["attempt"] == 2
    assert "attempt 2 of 2" in final["error"]


def test_a_trainer_that_fails_is_not_retried(make_app):
    client = make_app("--steps", "5", "--exit", "3").test_client()
    job_id = api_create(client)
    final = api_done(client, job_id)
    assert final["status"] == "failed" and final["exit_code"] == 3 and final["attempt"] == 1
    assert open(final["log_path"]).read().count(" imts monitor (pid ") == 1


def test_a_run_llamafactory_cannot_resume_is_not_offered(make_app):
    client = make_app(*SAVING).test_client()
    body = {"model_name": "tiny-llama", "dataset": "demo_pref", "stage": "rm", "finetuning_type": "full"}
    job_id = api_create(client, body)
    wait_for(lambda: os.path.isdir(os.path.join(_output(client, job_id), "checkpoint-10")))
    client.post(f"{API}/jobs/{job_id}/stop")
    response = client.post(f"{API}/jobs/{job_id}/resume")
    assert response.status_code == 409 and "cannot resume stage rm" in response.get_json()["message"]


# -- a run that reached its end is never trained past it (the chaos soak's finding) ----------------

END = ("--steps", "6", "--save-every", "3", "--overshoot-on-resume")


def test_a_run_that_finished_while_its_monitor_was_silent_completes_without_a_new_attempt(make_app):
    """The soak's case: the monitor froze (SIGSTOP) past the heartbeat timeout after its trainer
    ran to the end. One worker kills the frozen monitor while another reads the job: the job is
    completed at its planned last step, attempt 1, and the reason says the monitor went silent."""
    app = make_app(*END, "--interval", "0.2", heartbeat_s=0.2, heartbeat_timeout_s=2, housekeeping_s=0.3)
    client = app.test_client()
    service = app.extensions["imts"]
    job_id = api_create(client)
    state = wait_for(lambda: (s := service.store.read(job_id)).status == "running" and s)
    os.kill(state.monitor["pid"], signal.SIGSTOP)
    output = state.paths["output_dir"]
    wait_for(lambda: os.path.exists(os.path.join(output, "all_results.json")), timeout=30)
    liveness = service.launcher.liveness
    wait_for(lambda: liveness.loss(service.store.read(job_id)), timeout=30)  # silent now
    other_worker = threading.Thread(target=lambda: liveness.reconcile(service.store.read(job_id)))
    other_worker.start()
    final = api_done(client, job_id, timeout=60)
    other_worker.join()
    assert final["status"] == "completed" and final["attempt"] == 1, final
    assert final["current_step"] == final["total_steps"] == 6 and final["progress"] == 1.0
    assert _resumes(client, job_id) == []  # no attempt resumed from checkpoint-6 (it would end 7 of 6)
    events = client.get(f"{API}/jobs/{job_id}/events").get_json()["events"]
    assert [e["status"] for e in events] == ["pending", "running", "completed"]
    assert "has not heartbeaten" in events[-1]["reason"] and "trainer had finished" in events[-1]["reason"]
    assert (
        not psutil.pid_exists(state.monitor["pid"])
        or psutil.Process(state.monitor["pid"]).status() == psutil.STATUS_ZOMBIE
    )


def test_a_lost_attempt_never_resumes_from_the_checkpoint_at_the_end(make_app):
    """The host dies after the last checkpoint but before the final results: the next attempt goes
    on from the checkpoint before it (resuming at the end would train one step past the plan)."""
    client = make_app(*END, "--interval", "0.05", "--linger", "3", housekeeping_s=0.3).test_client()
    job_id = api_create(client)
    output = _output(client, job_id)
    wait_for(lambda: os.path.isdir(os.path.join(output, "checkpoint-6")))
    _kill_monitor_and_trainer(client, job_id)
    final = api_done(client, job_id, timeout=60)
    assert final["status"] == "completed" and final["attempt"] == 2
    assert final["current_step"] == final["total_steps"] == 6
    assert _resumes(client, job_id) == [os.path.join(output, "checkpoint-3")]


def test_resume_refuses_a_checkpoint_at_the_end_of_the_run(make_app):
    client = make_app(*END, "--exit", "1").test_client()  # fails after its last step and checkpoint
    job_id = api_create(client)
    assert api_done(client, job_id)["status"] == "failed"
    named = client.post(f"{API}/jobs/{job_id}/resume", json={"checkpoint": "checkpoint-6"})
    assert named.status_code == 409, named.get_json()
    assert "at the end of its run (step 6 of 6)" in named.get_json()["message"]
    default = client.post(f"{API}/jobs/{job_id}/resume")
    assert default.status_code == 201 and default.get_json()["resumed_from"]["checkpoint"] == "checkpoint-3"
    resumed = default.get_json()["job_id"]
    api_done(client, resumed)  # this FAKE fails after its last step again, wherever it starts
    assert _resumes(client, resumed) == [os.path.join(_output(client, resumed), "checkpoint-3")]
