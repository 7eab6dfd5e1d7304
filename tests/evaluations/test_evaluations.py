"""Evaluations of a job's weights (and its base model) through the API.

These run the FAKE trainer (tests/fake_trainer.py: an evaluation run, do_train false, writes what
LLaMA Factory's do_eval and do_predict write, with made-up figures); tests/e2e/test_e2e_evaluations.py
runs the real llamafactory-cli on the demo model.
"""

import json
import os
import signal

import pytest

from conftest import API, DEMO_DATA, api_create, api_done, api_status, wait_for

JOB = {"model_name": "tiny-llama", "dataset": "demo_sft"}
TERMINAL = ("completed", "failed", "stopped")


def _evaluate(client, job_id, body, status=202, **headers):
    response = client.post(f"{API}/jobs/{job_id}/evaluations", json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response


def _evaluation(client, job_id, evaluation_id):
    response = client.get(f"{API}/jobs/{job_id}/evaluations/{evaluation_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _evaluation_done(client, job_id, evaluation_id, timeout=60):
    return wait_for(
        lambda: (e := _evaluation(client, job_id, evaluation_id))["status"] in TERMINAL and e, timeout=timeout
    )


def _phases(home, job_id, evaluation_id):
    path = os.path.join(home, "jobs", job_id, "evaluations", evaluation_id, "fake_phases.log")
    return [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for line in open(path)]


@pytest.fixture
def trained(make_app):
    """A service whose fake trainer saves a checkpoint every 4 steps, and a job it completed."""
    client = make_app(
        "--steps", "12", "--interval", "0.01", "--save-every", "4", "--eval-losses", "3,2,2.5",
        housekeeping_s=0.3, heartbeat_s=0.2, heartbeat_timeout_s=3,
    ).test_client()  # fmt: skip
    job_id = api_create(client, {**JOB, "validation": {"val_size": 0.2, "eval_steps": 4}})
    assert api_done(client, job_id)["status"] == "completed"
    return client, job_id


def test_an_evaluation_with_baseline_compares_the_tuned_model_with_its_base(trained, home):
    client, job_id = trained
    response = _evaluate(
        client,
        job_id,
        {"dataset": "demo_sft", "maxSamples": 5, "baseline": True, "generation": {"max_new_tokens": 32}},
    )
    created = response.get_json()
    evaluation_id = created["evaluation_id"]
    assert response.headers["Location"] == f"{API}/jobs/{job_id}/evaluations/{evaluation_id}"
    assert created["status"] in ("pending", "running") and created["job_id"] == job_id
    assert created["phases"] == ["tuned-eval", "tuned-predict", "base-eval", "base-predict"]

    done = _evaluation_done(client, job_id, evaluation_id)
    assert done["status"] == "completed", done
    assert done["phases_done"] == done["phases"] and done["checkpoint"] == "final"
    results = done["results"]
    assert results["tuned"] == {
        "bleu_4": 60.0, "rouge_1": 70.0, "rouge_2": 50.0, "rouge_l": 65.0, "loss": 1.5,
        "perplexity": pytest.approx(4.481689),
    }  # fmt: skip
    assert results["base"]["bleu_4"] == 5.0 and results["base"]["loss"] == 4.0
    assert results["difference"]["bleu_4"] == 55.0 and results["difference"]["loss"] == -2.5
    assert done["samples"] == 5 and done["generation"] == {"max_new_tokens": 32, "temperature": 0.0}

    # What each phase ran: the adapter for the tuned model, none for the base, greedy generation.
    phases = dict(_phases(home, job_id, evaluation_id))
    output_dir = api_status(client, job_id)["output_dir"]
    assert phases["tuned-eval"]["adapter_name_or_path"] == output_dir and phases["tuned-eval"]["do_eval"]
    assert "adapter_name_or_path" not in phases["base-predict"]
    assert phases["base-predict"]["model_name_or_path"] == phases["tuned-predict"]["model_name_or_path"]
    predict = phases["tuned-predict"]
    assert (predict["do_predict"], predict["predict_with_generate"], predict["do_sample"]) == (
        True,
        True,
        False,
    )
    assert (predict["max_new_tokens"], predict["max_samples"], predict["template"]) == (32, 5, "default")

    page = client.get(f"{API}/jobs/{job_id}/evaluations/{evaluation_id}/samples?offset=1&limit=2").get_json()
    assert page["total"] == 5 and [s["index"] for s in page["samples"]] == [1, 2]
    rows = json.load(open(os.path.join(DEMO_DATA, "demo_sft.json")))
    first = page["samples"][0]
    assert first["label"] == rows[1]["output"] == first["tuned"] and first["base"] == "I do not know."
    assert rows[1]["instruction"] in first["prompt"]

    listing = client.get(f"{API}/jobs/{job_id}/evaluations").get_json()
    assert listing["total"] == 1 and listing["evaluations"][0]["evaluation_id"] == evaluation_id

    # The operator finds it in the job's directory: its record, configs, log.
    run_dir = os.path.join(home, "jobs", job_id, "evaluations", evaluation_id)
    predictions = "output/tuned-predict/generated_predictions.jsonl"
    for name in ("state.json", "request.json", "tuned-eval.yaml", "base-predict.yaml", "evaluation.log",
                 "dataset/dataset_info.json", predictions):  # fmt: skip
        assert os.path.exists(os.path.join(run_dir, name)), name
    state = json.load(open(os.path.join(run_dir, "state.json")))
    assert state["kind"] == "evaluation" and state["about"]
    assert [h["status"] for h in state["history"]] == ["pending", "running", "completed"]


def test_the_best_checkpoint_or_one_by_name_is_judged(trained, home):
    client, job_id = trained
    output_dir = api_status(client, job_id)["output_dir"]
    for asked, judged in (("best", "checkpoint-8"), ("checkpoint-4", "checkpoint-4")):
        created = _evaluate(client, job_id, {"dataset": "demo_sft", "checkpoint": asked, "max_samples": 2})
        evaluation_id = created.get_json()["evaluation_id"]
        done = _evaluation_done(client, job_id, evaluation_id)
        assert done["status"] == "completed" and done["checkpoint"] == judged
        assert done["results"]["base"] is None and done["results"]["difference"] is None
        phases = dict(_phases(home, job_id, evaluation_id))
        assert list(phases) == ["tuned-eval", "tuned-predict"]
        assert phases["tuned-eval"]["adapter_name_or_path"] == os.path.join(output_dir, judged)


def test_bad_evaluations_are_refused_before_anything_is_queued(make_app, home):
    client = make_app(
        "--steps", "3", "--interval", "0.01", "--save-every", "5", max_concurrent_jobs=2
    ).test_client()
    done_id = api_create(client)
    dpo_id = api_create(client, {**JOB, "dataset": "demo_pref", "stage": "dpo"})
    api_done(client, done_id)
    api_done(client, dpo_id)
    slow = make_app("--steps", "3000", "--interval", "0.01", max_concurrent_jobs=2).test_client()
    running_id = api_create(slow)
    wait_for(lambda: api_status(client, running_id)["status"] == "running")
    cases = [
        (done_id, {"dataset": "nope"}, 400, "dataset"),
        (done_id, {"dataset": "demo_pref"}, 400, "dataset"),  # pairwise rows: not for an sft job
        (done_id, {}, 400, "dataset"),
        (done_id, {"dataset": "demo_sft", "checkpoint": "checkpoint-7"}, 400, "checkpoint"),
        (done_id, {"dataset": "demo_sft", "checkpoint": "best"}, 400, "checkpoint"),  # no validation
        (done_id, {"dataset": "demo_sft", "checkpoint": "../x"}, 400, "checkpoint"),
        (done_id, {"dataset": "demo_sft", "max_samples": 0}, 400, "max_samples"),
        (done_id, {"dataset": "demo_sft", "max_samples": 10_001}, 400, "max_samples"),
        (
            done_id,
            {"dataset": "demo_sft", "generation": {"max_new_tokens": 0}},
            400,
            "generation.max_new_tokens",
        ),
        (done_id, {"dataset": "demo_sft", "generation": {"temperature": 3}}, 400, "generation.temperature"),
        (done_id, {"dataset": "demo_sft", "generation": {"seed": 1}}, 400, "generation.seed"),
        (done_id, {"dataset": "demo_sft", "extra": 1}, 400, "extra"),
        (done_id, {"dataset": "demo_sft", "baseline": "maybe"}, 400, "baseline"),
        (running_id, {"dataset": "demo_sft"}, 409, None),
        (dpo_id, {"dataset": "demo_pref"}, 409, None),
        ("train_00000000", {"dataset": "demo_sft"}, 404, "job_id"),
        ("train_0000000X", {"dataset": "demo_sft"}, 400, "job_id"),
    ]
    for job_id, body, status, field in cases:
        response = client.post(f"{API}/jobs/{job_id}/evaluations", json=body)
        answer = response.get_json()
        assert response.status_code == status, (body, answer)
        assert set(answer) >= {"status", "error", "message", "errors"}
        if field:
            assert field in [e["field"] for e in answer["errors"]], (body, answer)
    for job_id in (done_id, running_id, dpo_id):
        assert not os.path.exists(os.path.join(home, "jobs", job_id, "evaluations"))
    client.post(f"{API}/jobs/{running_id}/stop")

    for path in (f"{done_id}/evaluations/eval_00000000", f"{done_id}/evaluations/x" + "y" * 300,
                 f"{done_id}/evaluations/..", f"{done_id}/evaluations/eval_00000000/samples"):  # fmt: skip
        response = client.get(f"{API}/jobs/{path}")
        assert response.status_code == 404, path
        assert response.get_json()["errors"][0]["field"] == "evaluation_id", path
    response = client.get(f"{API}/jobs/{done_id}/evaluations/..%2F..%2Fstate.json")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"  # no route: a slash
    response = client.get(f"{API}/jobs/{done_id}/evaluations?limit=0")
    assert response.status_code == 400


def test_a_stopped_job_without_final_weights_is_judged_by_a_checkpoint_only(make_app):
    client = make_app("--steps", "3000", "--interval", "0.01", "--save-every", "5").test_client()
    job_id = api_create(client)
    wait_for(lambda: len(client.get(f"{API}/jobs/{job_id}/checkpoints").get_json()["checkpoints"]) >= 2)
    client.post(f"{API}/jobs/{job_id}/stop")
    assert api_done(client, job_id)["status"] == "stopped"
    response = client.post(f"{API}/jobs/{job_id}/evaluations", json={"dataset": "demo_sft"})
    assert response.status_code == 409 and "no final weights" in response.get_json()["message"]
    response = client.post(
        f"{API}/jobs/{job_id}/evaluations", json={"dataset": "demo_sft", "checkpoint": "checkpoint-5"}
    )
    assert response.status_code == 202, response.get_json()


def test_rm_and_pt_jobs_get_their_own_figures(make_app):
    client = make_app("--steps", "3", "--interval", "0.01").test_client()
    rm_job = api_create(client, {**JOB, "dataset": "demo_pref", "stage": "rm"})
    pt_job = api_create(client, {**JOB, "dataset": "demo_pt", "stage": "pt"})
    for job_id, dataset, expected in (
        (rm_job, "demo_pref", {"loss": 1.5, "perplexity": pytest.approx(4.481689), "accuracy": 0.9}),
        (pt_job, "demo_pt", {"loss": 1.5, "perplexity": pytest.approx(4.481689)}),
    ):
        assert api_done(client, job_id)["status"] == "completed"
        evaluation_id = _evaluate(client, job_id, {"dataset": dataset, "baseline": True}).get_json()[
            "evaluation_id"
        ]
        done = _evaluation_done(client, job_id, evaluation_id)
        assert done["phases"] == ["tuned-eval", "base-eval"] and done["generation"] is None
        assert done["results"]["tuned"] == expected, done
        assert done["samples"] is None


def test_a_failed_phase_fails_the_evaluation_and_says_which(make_app):
    # The fake trainer fails training too with --exit: train with a working one first (each
    # make_app rewrites the one fake llamafactory-cli script).
    good = make_app("--steps", "3", "--interval", "0.01").test_client()
    job_id = api_create(good)
    assert api_done(good, job_id)["status"] == "completed"
    client = make_app(
        "--steps", "3", "--interval", "0.01", "--exit", "3", "--fail-phase", "tuned-predict",
        "--fail-message", "'ValueError: no good'",
    ).test_client()  # fmt: skip
    evaluation_id = _evaluate(client, job_id, {"dataset": "demo_sft"}).get_json()["evaluation_id"]
    done = _evaluation_done(client, job_id, evaluation_id)
    assert done["status"] == "failed"
    assert done["error"].startswith("phase tuned-predict: llamafactory-cli exited with code 3")
    assert "ValueError: no good" in done["error"] and done["log_tail"]
    assert done["phases_done"] == ["tuned-eval"] and done["results"]["tuned"]["loss"] == 1.5


def test_an_evaluation_is_stopped_and_a_job_under_evaluation_is_not_deleted(make_app, home):
    client = make_app("--steps", "3", "--interval", "0.01", "--eval-seconds", "60").test_client()
    job_id = api_create(client)
    assert api_done(client, job_id)["status"] == "completed"
    evaluation_id = _evaluate(client, job_id, {"dataset": "demo_sft"}).get_json()["evaluation_id"]
    wait_for(lambda: _evaluation(client, job_id, evaluation_id)["phase"] == "tuned-eval")
    response = client.delete(f"{API}/jobs/{job_id}")
    assert response.status_code == 409 and evaluation_id in response.get_json()["message"]

    response = client.post(f"{API}/jobs/{job_id}/evaluations/{evaluation_id}/stop")
    assert response.status_code == 200, response.get_json()
    stopped = response.get_json()
    assert stopped["status"] == "stopped" and stopped["phases_done"] == []
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 204
    assert not os.path.exists(os.path.join(home, "jobs", job_id))


def test_an_evaluation_waits_for_a_slot_like_a_job(make_app):
    client = make_app("--steps", "3", "--interval", "0.01", max_concurrent_jobs=1).test_client()
    job_id = api_create(client)
    assert api_done(client, job_id)["status"] == "completed"
    slow = make_app("--steps", "2000", "--interval", "0.01", max_concurrent_jobs=1).test_client()
    blocking = api_create(slow)
    wait_for(lambda: api_status(slow, blocking)["status"] == "running")
    client = make_app("--steps", "3", "--interval", "0.01", max_concurrent_jobs=1).test_client()
    evaluation_id = _evaluate(client, job_id, {"dataset": "demo_sft"}).get_json()["evaluation_id"]
    waiting = _evaluation(client, job_id, evaluation_id)
    assert waiting["status"] == "pending" and waiting["queue_position"] == 1
    slow.post(f"{API}/jobs/{blocking}/stop")
    assert _evaluation_done(client, job_id, evaluation_id)["status"] == "completed"


def test_a_retry_with_the_same_idempotency_key_gets_the_same_evaluation(trained):
    client, job_id = trained
    body = {"dataset": "demo_sft", "max_samples": 2}
    first = _evaluate(client, job_id, body, **{"Idempotency-Key": "k1"}).get_json()
    again = _evaluate(client, job_id, body, status=200, **{"Idempotency-Key": "k1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["evaluation_id"] == first["evaluation_id"]
    _evaluate(client, job_id, {**body, "max_samples": 3}, status=409, **{"Idempotency-Key": "k1"})
    assert client.get(f"{API}/jobs/{job_id}/evaluations").get_json()["total"] == 1


def test_an_evaluation_whose_monitor_dies_goes_on_with_the_phases_left(trained, make_app, home):
    client, job_id = trained
    client = make_app(
        "--eval-seconds", "1", housekeeping_s=0.3, heartbeat_s=0.2, heartbeat_timeout_s=3
    ).test_client()
    evaluation_id = _evaluate(client, job_id, {"dataset": "demo_sft", "baseline": True}).get_json()[
        "evaluation_id"
    ]
    run_dir = os.path.join(home, "jobs", job_id, "evaluations", evaluation_id)
    wait_for(lambda: _evaluation(client, job_id, evaluation_id)["phase"] == "base-eval", timeout=30)
    state = json.load(open(os.path.join(run_dir, "state.json")))
    os.kill(state["monitor"]["pid"], signal.SIGKILL)  # the host's OOM killer, say
    os.kill(state["trainer"]["pid"], signal.SIGKILL)
    done = _evaluation_done(client, job_id, evaluation_id)
    assert done["status"] == "completed" and done["attempt"] == 2, done
    ran = [name for name, _ in _phases(home, job_id, evaluation_id)]
    assert ran.count("tuned-eval") == 1 and ran.count("tuned-predict") == 1  # done before: not again
    history = json.load(open(os.path.join(run_dir, "state.json")))["history"]
    assert "lost" in history[2]["reason"] and "runs the phases not done yet" in history[2]["reason"]
    assert "tuned-eval" in history[2]["reason"] and "checkpoint" not in history[2]["reason"]
