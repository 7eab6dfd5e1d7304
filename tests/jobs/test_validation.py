"""Validation during training, early stopping, the best checkpoint and exporting it.

These run the FAKE trainer (tests/fake_trainer.py --eval-losses), which logs evaluations and
writes trainer_state.json as LLaMA Factory and transformers do; tests/e2e/test_e2e.py runs the real
llamafactory-cli on the demo model.
"""

import json
import os

import yaml

from conftest import API, api_create, api_done, api_status

JOB = {"model_name": "tiny-llama", "dataset": "demo_sft"}


def _config(home, job_id):
    with open(os.path.join(home, "jobs", job_id, "training_config.yaml")) as handle:
        return yaml.safe_load(handle)


def test_validation_sets_the_trainers_evaluation_and_the_record_shows_the_figures(make_app, home):
    client = make_app(
        "--steps", "12", "--interval", "0.02", "--save-every", "4", "--eval-losses", "3.0,2.0,2.5"
    ).test_client()
    job_id = api_create(client, {**JOB, "validation": {"valSize": 0.2, "evalSteps": 4}})
    config = _config(home, job_id)
    assert (config["val_size"], config["eval_strategy"], config["eval_steps"]) == (0.2, "steps", 4)
    assert (config["metric_for_best_model"], config["greater_is_better"]) == ("eval_loss", False)
    assert "early_stopping_steps" not in config and "load_best_model_at_end" not in config
    status = api_done(client, job_id)
    assert status["status"] == "completed" and status["stopped_early"] is False
    assert status["validation"] == {"val_size": 0.2, "dataset": None, "eval_steps": 4}
    assert (status["eval_loss"], status["best_eval_loss"], status["best_checkpoint"]) == (
        2.5,
        2.0,
        "checkpoint-8",
    )

    points = client.get(f"{API}/jobs/{job_id}/metrics").get_json()["points"]
    evaluated = {p["step"]: p["eval_loss"] for p in points if p["eval_loss"] is not None}
    assert evaluated == {4: 3.0, 8: 2.0, 12: 2.5}
    assert all(p["loss"] is not None for p in points)  # each evaluation step also has its training loss

    checkpoints = client.get(f"{API}/jobs/{job_id}/checkpoints").get_json()["checkpoints"]
    assert [(c["name"], c["eval_loss"], c["best"]) for c in checkpoints] == [
        ("checkpoint-4", 3.0, False),
        ("checkpoint-8", 2.0, True),
        ("checkpoint-12", 2.5, False),
    ]
    assert checkpoints[1]["eval_metrics"]["eval_runtime"] == 0.01


def test_validation_on_a_named_dataset_goes_into_the_jobs_dataset_info(make_app, home):
    client = make_app("--steps", "4", "--interval", "0.01").test_client()
    job_id = api_create(client, {**JOB, "validation": {"dataset": "demo_sft"}})
    config = _config(home, job_id)
    assert config["eval_dataset"] == "demo_sft" and "val_size" not in config
    assert config["eval_steps"] == config["save_steps"]  # default: a figure for every checkpoint
    info = json.load(open(os.path.join(home, "jobs", job_id, "dataset", "dataset_info.json")))
    assert "demo_sft" in info
    assert api_status(client, job_id)["validation"]["dataset"] == "demo_sft"


def test_early_stopping_ends_completed_before_the_last_step_on_the_best_weights(make_app, home):
    client = make_app(
        "--steps", "100", "--interval", "0.01", "--save-every", "5", "--eval-losses", "3,2,2.2,2.4,2.6"
    ).test_client()
    body = {**JOB, "validation": {"val_size": 0.1, "eval_steps": 5}, "early_stopping": {"patience": 2}}
    job_id = api_create(client, body)
    config = _config(home, job_id)
    assert config["early_stopping_steps"] == 2 and config["load_best_model_at_end"] is True
    assert (config["save_strategy"], config["save_steps"]) == ("steps", 5)  # a save at each evaluation
    status = api_done(client, job_id)
    assert status["status"] == "completed", status
    assert status["stopped_early"] is True and status["progress"] == 1.0
    assert (status["current_step"], status["total_steps"]) == (20, 100)  # the step it stopped at
    assert status["best_checkpoint"] == "checkpoint-10" and status["best_eval_loss"] == 2.0
    assert status["early_stopping"] == {"patience": 2, "min_delta": 0.0}


def test_min_delta_ends_the_run_when_improvements_stay_under_it(make_app, home):
    # Each evaluation is better, by 0.01: LLaMA Factory's own early stopping would never end it.
    losses = ",".join(str(round(3 - i / 100, 2)) for i in range(100))
    client = make_app(
        "--steps",
        "400",
        "--interval",
        "0.02",
        "--save-every",
        "5",
        "--eval-losses",
        losses,
        "--graceful-term",
        heartbeat_s=0.2,
    ).test_client()
    body = {
        **JOB,
        "validation": {"val_size": 0.1, "eval_steps": 5},
        "early_stopping": {"patience": 2, "min_delta": 0.05},
    }
    job_id = api_create(client, body)
    assert _config(home, job_id)["enable_jit_checkpoint"] is True  # the monitor's graceful end
    status = api_done(client, job_id)
    assert status["status"] == "completed", status
    assert status["stopped_early"] is True
    assert 15 <= status["current_step"] < 400
    assert status["best_eval_loss"] < 3


def test_a_stop_of_a_job_with_early_stopping_is_still_a_stop(make_app):
    client = make_app("--steps", "1000", "--interval", "0.02", "--eval-losses", "3,2").test_client()
    body = {**JOB, "validation": {"val_size": 0.1, "eval_steps": 5}, "early_stopping": {"patience": 2}}
    job_id = api_create(client, body)
    api_done_running = lambda: api_status(client, job_id)["status"] == "running"  # noqa: E731
    from conftest import wait_for

    wait_for(api_done_running)
    client.post(f"{API}/jobs/{job_id}/stop")
    status = api_done(client, job_id)
    assert status["status"] == "stopped" and status["stopped_early"] is False


def test_bad_validation_requests_are_400s_that_name_the_field_and_write_nothing(make_app, home):
    client = make_app().test_client()
    cases = [
        ({"validation": {"val_size": 0.2, "dataset": "demo_sft"}}, "validation"),
        ({"validation": {}}, "validation"),
        ({"validation": {"val_size": 1}}, "validation.val_size"),
        ({"validation": {"dataset": "nope"}}, "validation.dataset"),
        ({"validation": {"val_size": 0.1, "eval_steps": 0}}, "validation.eval_steps"),
        ({"validation": "0.1"}, "validation"),
        ({"early_stopping": {"patience": 2}}, "early_stopping"),
        ({"validation": {"val_size": 0.1}, "early_stopping": {}}, "early_stopping.patience"),
        ({"validation": {"val_size": 0.1}, "early_stopping": {"patience": 2, "min_delta": -1}},
         "early_stopping.min_delta"),
        ({"stage": "rm", "dataset": "demo_pref", "validation": {"val_size": 0.1},
          "early_stopping": {"patience": 2}}, "early_stopping"),
        ({"validation": {"val_size": 0.1}, "early_stopping": {"patience": 2},
          "custom_config": {"save_steps": 7}}, "custom_config"),
        ({"custom_config": {"eval_steps": 7}}, "custom_config.eval_steps"),
        ({"custom_config": {"load_best_model_at_end": True}}, "custom_config.load_best_model_at_end"),
        ({"custom_config": {"do_predict": True}}, "custom_config.do_predict"),
    ]  # fmt: skip
    for extra, field in cases:
        response = client.post(f"{API}/jobs", json={**JOB, **extra})
        body = response.get_json()
        assert response.status_code == 400, (extra, body)
        assert field in [e["field"] for e in body["errors"]], (extra, body)
    assert [n for n in os.listdir(os.path.join(home, "jobs")) if n.startswith("train_")] == []


def test_rm_jobs_may_use_validation_without_early_stopping(make_app, home):
    client = make_app("--steps", "2", "--interval", "0.01").test_client()
    job_id = api_create(
        client,
        {"model_name": "tiny-llama", "dataset": "demo_pref", "stage": "rm", "validation": {"val_size": 0.2}},
    )
    assert _config(home, job_id)["val_size"] == 0.2


def test_export_takes_the_best_checkpoint_or_one_by_name(make_app, home, tmp_path):
    client = make_app(
        "--steps", "12", "--interval", "0.01", "--save-every", "4", "--eval-losses", "3.0,2.0,2.5"
    ).test_client()
    job_id = api_create(client, {**JOB, "validation": {"val_size": 0.2, "eval_steps": 4}})
    assert api_done(client, job_id)["status"] == "completed"
    job_dir = os.path.join(home, "jobs", job_id)

    response = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "best", "checkpoint": "best"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checkpoint"] == "checkpoint-8"
    exported = yaml.safe_load(open(os.path.join(job_dir, "export_config.yaml")))
    assert exported["adapter_name_or_path"] == os.path.join(job_dir, "output", "checkpoint-8")
    assert api_status(client, job_id)["export"]["checkpoint"] == "checkpoint-8"

    # The adapter alone, from a checkpoint: its weights, never the optimizer's state.
    response = client.post(
        f"{API}/jobs/{job_id}/export",
        json={"export_dir": "adapter4", "checkpoint": "checkpoint-4", "merge_lora": False},
    )
    assert response.status_code == 200, response.get_json()
    files = sorted(os.listdir(os.path.join(home, "models", "exports", "adapter4")))
    assert "adapter_model.safetensors" in files and "optimizer.pt" not in files
    assert "trainer_state.json" not in files

    for checkpoint, status in (("checkpoint-5", 400), ("checkpoint-x", 400), ("../output", 400)):
        response = client.post(
            f"{API}/jobs/{job_id}/export", json={"export_dir": "x", "checkpoint": checkpoint}
        )
        assert response.status_code == status and response.get_json()["errors"][0]["field"] == "checkpoint"
    assert not os.path.exists(os.path.join(home, "models", "exports", "x"))


def test_best_is_refused_for_a_job_that_ran_without_validation(make_app, home):
    client = make_app("--steps", "3", "--interval", "0.01").test_client()
    job_id = api_create(client)
    assert api_done(client, job_id)["status"] == "completed"
    response = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "b", "checkpoint": "best"})
    assert response.status_code == 400
    assert "without validation" in response.get_json()["errors"][0]["reason"]


def test_pruning_keeps_the_best_checkpoint(make_app):
    client = make_app(
        "--steps",
        "20",
        "--interval",
        "0.01",
        "--save-every",
        "4",
        "--eval-losses",
        "3,1,2,2.5,2.6",
        keep_checkpoints=1,
    ).test_client()
    job_id = api_create(client, {**JOB, "validation": {"val_size": 0.2, "eval_steps": 4}})
    assert api_done(client, job_id)["best_checkpoint"] == "checkpoint-8"
    done = client.application.extensions["imts"].lifecycle.run()
    assert done["pruned"] == {job_id: ["checkpoint-4", "checkpoint-12", "checkpoint-16"]}
    names = [c["name"] for c in client.get(f"{API}/jobs/{job_id}/checkpoints").get_json()["checkpoints"]]
    assert names == ["checkpoint-8", "checkpoint-20"]
    response = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "kept", "checkpoint": "best"})
    assert response.status_code == 200, response.get_json()
