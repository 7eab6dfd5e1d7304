"""End to end: validation, early stopping and evaluations through HTTP to gunicorn, with the real
llamafactory-cli on the demo model (tiny-llama, the demo sft rows)."""

import json
import os
import signal

import pytest
import requests

from conftest import TINY_MODEL, make_home, wait_for
from harness import Service

pytestmark = pytest.mark.e2e

FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 1}
TERMINAL = ("completed", "failed", "stopped")

if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
    pytest.skip("the demo model is not built: run `make setup`", allow_module_level=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("e2e-eval") / "home")
    svc = Service(home, housekeeping_s=1).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def validated_job(service):
    """A real sft job that evaluates 20% of the demo rows held out, every 30 steps (144 steps)."""
    body = {
        "model_name": "tiny-llama",
        "dataset": "demo_sft",
        "epochs": 3.0,
        "learning_rate": 1e-3,
        "custom_config": FAST,
        "validation": {"val_size": 0.2, "eval_steps": 30},
    }
    job_id = service.create(body)
    return job_id, service.wait_done(job_id)


def _evaluate(service, job_id, body):
    response = requests.post(f"{service.base}/jobs/{job_id}/evaluations", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["evaluation_id"]


def _evaluation(service, job_id, evaluation_id):
    response = requests.get(f"{service.base}/jobs/{job_id}/evaluations/{evaluation_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _evaluation_done(service, job_id, evaluation_id, timeout=300):
    return wait_for(
        lambda: (e := _evaluation(service, job_id, evaluation_id))["status"] in TERMINAL and e,
        timeout=timeout,
        interval=0.5,
    )


def test_validation_gives_eval_loss_points_and_a_figure_per_checkpoint(service, validated_job):
    job_id, final = validated_job
    assert final["status"] == "completed", final.get("error")
    assert (final["current_step"], final["total_steps"], final["stopped_early"]) == (144, 144, False)
    points = requests.get(f"{service.base}/jobs/{job_id}/metrics", timeout=30).json()["points"]
    evaluated = [(p["step"], p["eval_loss"]) for p in points if p["eval_loss"] is not None]
    assert [step for step, _ in evaluated] == [30, 60, 90, 120, 144]
    assert all(isinstance(loss, float) and loss > 0 for _, loss in evaluated)
    assert final["eval_loss"] == pytest.approx(evaluated[-1][1])
    assert final["best_eval_loss"] == pytest.approx(min(loss for _, loss in evaluated))
    checkpoints = requests.get(f"{service.base}/jobs/{job_id}/checkpoints", timeout=30).json()["checkpoints"]
    at_evaluations = [c for c in checkpoints if c["step"] in dict(evaluated)]
    assert at_evaluations and all(isinstance(c["eval_loss"], float) for c in at_evaluations)
    assert [c["name"] for c in checkpoints if c["best"]] == [final["best_checkpoint"]]


def test_early_stopping_ends_an_overfitting_job_completed_before_its_last_step(service):
    # A high learning rate on 96 training rows: eval_loss turns up within a few evaluations.
    body = {
        "model_name": "tiny-llama",
        "dataset": "demo_sft",
        "epochs": 20.0,
        "learning_rate": 2e-2,
        "lora_rank": 32,
        "lora_alpha": 64,
        "custom_config": {"template": "default", "cutoff_len": 128, "logging_steps": 5},
        "validation": {"val_size": 0.2, "eval_steps": 10},
        "early_stopping": {"patience": 2},
    }
    final = service.wait_done(service.create(body))
    assert final["status"] == "completed", final.get("error")
    assert final["stopped_early"] is True
    assert final["current_step"] < final["total_steps"] == 960
    best_step = int(final["best_checkpoint"].split("-")[1])
    assert final["current_step"] == best_step + 2 * 10  # two evaluations without improvement


def test_an_evaluation_with_baseline_compares_both_models_and_shows_samples(service, validated_job):
    job_id, _ = validated_job
    evaluation_id = _evaluate(
        service,
        job_id,
        {"dataset": "demo_sft", "checkpoint": "best", "baseline": True, "max_samples": 20,
         "generation": {"max_new_tokens": 16}},
    )  # fmt: skip
    done = _evaluation_done(service, job_id, evaluation_id)
    assert done["status"] == "completed", done.get("error")
    tuned, base = done["results"]["tuned"], done["results"]["base"]
    for figures in (tuned, base):
        assert set(figures) == {"bleu_4", "rouge_1", "rouge_2", "rouge_l", "loss", "perplexity"}
    assert tuned["loss"] < base["loss"]  # the tuned model fits the demo answers better than its base
    assert done["results"]["difference"]["loss"] == pytest.approx(tuned["loss"] - base["loss"], abs=1e-5)
    page = requests.get(
        f"{service.base}/jobs/{job_id}/evaluations/{evaluation_id}/samples?limit=5", timeout=30
    ).json()
    assert page["total"] == 20 and len(page["samples"]) == 5
    for sample in page["samples"]:
        assert sample["prompt"].strip() and sample["label"].strip()
        assert isinstance(sample["tuned"], str) and isinstance(sample["base"], str)


def test_killing_the_service_and_the_evaluations_processes_does_not_lose_it(service, validated_job):
    job_id, _ = validated_job
    evaluation_id = _evaluate(service, job_id, {"dataset": "demo_sft", "baseline": True, "max_samples": 10})
    wait_for(lambda: _evaluation(service, job_id, evaluation_id)["phase"] == "tuned-predict", timeout=120)
    run_dir = os.path.join(service.home, "jobs", job_id, "evaluations", evaluation_id)
    state = json.load(open(os.path.join(run_dir, "state.json")))
    service.kill_hard()  # the service dies, and with it (as on a host's crash) the evaluation's processes
    os.kill(state["monitor"]["pid"], signal.SIGKILL)
    os.killpg(state["trainer"]["pgid"], signal.SIGKILL)
    service.start()
    done = _evaluation_done(service, job_id, evaluation_id)
    assert done["status"] == "completed", done.get("error")
    assert done["attempt"] == 2 and done["results"]["base"]["bleu_4"] is not None
    runs = [line for line in open(os.path.join(run_dir, "evaluation.log")) if "imts monitor" in line]
    assert sum("tuned-eval.yaml" in line for line in runs) == 1  # finished before: not run again
    assert sum("tuned-predict.yaml" in line for line in runs) == 2  # cut short: run again


def test_tensorboard_writes_event_files_into_the_jobs_directory(service):
    body = {
        "model_name": "tiny-llama",
        "dataset": "demo_sft",
        "epochs": 1.0,
        "custom_config": FAST,
        "tensorboard": True,
    }
    final = service.wait_done(service.create(body))
    assert final["status"] == "completed", final.get("error")
    assert final["tensorboard"] is True
    assert final["tensorboard_dir"] == os.path.join(os.path.dirname(final["config_path"]), "tensorboard")
    events = [name for _, _, names in os.walk(final["tensorboard_dir"]) for name in names]
    assert any(name.startswith("events.out.tfevents.") for name in events), events
