"""Tracking in a real MLflow server (`mlflow server`, from `make mlflow`'s venv, started here on a
free port), fed by the service over MLflow's REST API; jobs run the FAKE trainer, whose
trainer_log.jsonl is written as LLaMA Factory writes it. TensorBoard's event files are the real
trainer's: tests/e2e/test_e2e_evaluations.py."""

import os
import subprocess
import time

import pytest
import requests

from conftest import API, PROJECT, api_create, api_done, api_status, require, wait_for
from harness import free_port

pytestmark = pytest.mark.e2e

MLFLOW = os.environ.get("IMTS_MLFLOW_BIN") or os.path.join(PROJECT, ".venv-mlflow", "bin", "mlflow")
JOB = {"model_name": "tiny-llama", "dataset": "demo_sft"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    require(os.path.exists(MLFLOW), "an MLflow server (make mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "ab")
    store = ["--backend-store-uri", f"sqlite:///{root}/db", "--default-artifact-root", str(root / "art")]
    proc = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *store],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None and pytest.fail(open(root / "server.log").read()[-2000:])

    wait_for(up, timeout=180, interval=0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def _mlflow(uri, path, **query):
    response = requests.get(f"{uri}/api/2.0/mlflow/{path}", params=query, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _history(uri, run_id, key):
    found = _mlflow(uri, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    return sorted((m["step"], m["value"]) for m in found)


def test_a_job_is_an_mlflow_run_with_its_parameters_metrics_and_evaluations(make_app, mlflow_server):
    client = make_app(
        "--steps", "12", "--interval", "0.05", "--save-every", "4", "--eval-losses", "3,2,2.5",
        mlflow_tracking_uri=mlflow_server, mlflow_experiment="imts-test", heartbeat_s=0.2,
    ).test_client()  # fmt: skip
    job_id = api_create(
        client, {**JOB, "learning_rate": 1e-3, "validation": {"val_size": 0.2, "eval_steps": 4}}
    )
    status = api_done(client, job_id)
    assert status["status"] == "completed"
    run_id = status["mlflow_run_id"]
    assert run_id
    # A job that says completed has its metrics in MLflow already (the run's end may come just after).
    assert [step for step, _ in _history(mlflow_server, run_id, "loss")] == list(range(1, 13))
    assert _history(mlflow_server, run_id, "eval_loss") == [(4, 3.0), (8, 2.0), (12, 2.5)]

    run = _ended_run(mlflow_server, run_id)  # the monitor ends the run just after the record
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == job_id
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["learning_rate"] == "0.001" and params["val_size"] == "0.2" and params["stage"] == "sft"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["imts.job_id"] == job_id
    experiment = _mlflow(mlflow_server, "experiments/get", experiment_id=run["info"]["experiment_id"])
    assert experiment["experiment"]["name"] == "imts-test"

    response = client.post(f"{API}/jobs/{job_id}/evaluations", json={"dataset": "demo_sft", "baseline": True})
    evaluation_id = response.get_json()["evaluation_id"]
    path = f"{API}/jobs/{job_id}/evaluations/{evaluation_id}"
    wait_for(lambda: client.get(path).get_json()["status"] == "completed", timeout=60)
    # A completed evaluation's figures are in MLflow already.
    metrics = {
        m["key"]: m["value"]
        for m in _mlflow(mlflow_server, "runs/get", run_id=run_id)["run"]["data"]["metrics"]
    }
    assert metrics[f"evaluation/{evaluation_id}/tuned/bleu_4"] == 60.0
    assert metrics[f"evaluation/{evaluation_id}/base/bleu_4"] == 5.0
    assert metrics[f"evaluation/{evaluation_id}/difference/loss"] == -2.5


def test_a_failed_job_ends_its_run_failed(make_app, mlflow_server):
    client = make_app(
        "--steps", "3", "--interval", "0.05", "--exit", "2", mlflow_tracking_uri=mlflow_server
    ).test_client()
    job_id = api_create(client)
    status = api_done(client, job_id)
    assert status["status"] == "failed"
    run = _ended_run(mlflow_server, status["mlflow_run_id"])
    assert run["info"]["status"] == "FAILED"


def _ended_run(server, run_id):
    """The run once the monitor has ended it: it writes the job's outcome first, then the run's."""
    return wait_for(
        lambda: (
            (run := _mlflow(server, "runs/get", run_id=run_id)["run"])["info"]["status"] != "RUNNING" and run
        ),
        timeout=30,
        interval=0.2,
    )


def test_an_unreachable_tracking_server_never_fails_a_job(make_app, home):
    client = make_app(
        "--steps", "3", "--interval", "0.05", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}"
    ).test_client()
    started = time.monotonic()
    job_id = api_create(client)
    status = api_done(client, job_id)
    assert status["status"] == "completed" and status["mlflow_run_id"] is None
    assert time.monotonic() - started < 60
    log = open(os.path.join(home, "jobs", job_id, "monitor.log")).read()
    assert "tracking: MLflow at" in log and "cannot be reached" in log
    assert api_status(client, job_id)["exit_code"] == 0
