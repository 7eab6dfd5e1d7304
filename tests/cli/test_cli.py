"""The command-line client against gunicorn with the FAKE trainer: submit, watch, logs, stop, export."""

import json
import os
import subprocess
import sys

import pytest

from conftest import FAKE_SERVER, PROJECT, fake_cli, make_home, wait_for
from harness import Service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("cli") / "home")
    svc = Service(
        home,
        llamafactory_cli=fake_cli(home, "--steps", "30", "--interval", "0.05", "--save-every", "10"),
        max_concurrent_jobs=2,
        deploy_command=f"{sys.executable} {FAKE_SERVER}",
        deploy_ports="18680-18689",
    ).start()
    yield svc
    svc.stop()


def cli(service, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "imts_flask.cli", "--url", f"http://127.0.0.1:{service.port}", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_submit_and_watch_to_completion(service):
    result = cli(
        service,
        "submit",
        "--model",
        "tiny-llama",
        "--dataset",
        "demo_sft",
        "--epochs",
        "1",
        "--set",
        "cutoff_len=64",
        "--watch",
        "--interval",
        "0.2",
    )
    job_id = result.stdout.splitlines()[0]
    assert result.stdout.strip().endswith(f"{job_id}: completed")
    assert "30/30" in result.stderr and "loss=" in result.stderr  # tqdm draws the bar on stderr
    config = open(service.status(job_id)["config_path"]).read()
    assert "cutoff_len: 64" in config and "num_train_epochs: 1.0" in config


def test_submit_from_a_yaml_file_then_logs_list_status(service, tmp_path):
    request = tmp_path / "job.yaml"
    request.write_text("model_name: tiny-llama\ndataset: demo_sft\ncustom_config:\n  cutoff_len: 32\n")
    job_id = cli(service, "submit", "-f", str(request), "--idempotency-key", "cli-1").stdout.strip()
    assert cli(service, "submit", "-f", str(request), "--idempotency-key", "cli-1").stdout.strip() == job_id
    assert cli(service, "watch", job_id, "--interval", "0.2").returncode == 0
    logs = cli(service, "logs", job_id, "--follow", "--interval", "0.2").stdout
    assert "fake trainer: train" in logs
    assert cli(service, "logs", job_id, "--tail", "1").stdout.strip() == logs.strip().splitlines()[-1]
    assert job_id in cli(service, "list").stdout
    assert json.loads(cli(service, "status", job_id).stdout)["status"] == "completed"
    path = cli(service, "export", job_id, "--dir", "cli_export").stdout.strip()
    assert os.path.isdir(path) and path.endswith("cli_export")


def test_stop_and_errors(service):
    job_id = cli(
        service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft", "--epochs", "50"
    ).stdout.strip()
    assert cli(service, "stop", job_id).stdout.strip() == f"任务 {job_id} 已停止"
    watched = cli(service, "watch", job_id, check=False)
    assert watched.returncode == 1 and watched.stdout.strip().endswith("stopped")
    missing = cli(service, "status", "train_00000000", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = cli(service, "submit", "--model", "tiny-llama", "--dataset", "nope", check=False)
    assert bad.returncode == 2 and "dataset: unknown dataset 'nope'" in bad.stderr


def test_resume_with_watch_then_delete(service):
    job_id = cli(service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft").stdout.strip()
    output = service.status(job_id)["output_dir"]
    wait_for(lambda: os.path.isdir(os.path.join(output, "checkpoint-10")))
    cli(service, "stop", job_id)
    resumed = cli(service, "resume", job_id, "--checkpoint", "checkpoint-10", "--watch", "--interval", "0.2")
    new_id = resumed.stdout.splitlines()[0]
    assert new_id != job_id and resumed.stdout.strip().endswith(f"{new_id}: completed")
    assert f"resumes {job_id} from checkpoint-10 (step 10)" in resumed.stderr
    assert cli(service, "delete", new_id).stdout.strip() == f"deleted {new_id}"
    gone = cli(service, "status", new_id, check=False)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    again = cli(service, "resume", new_id, check=False)
    assert again.returncode == 2 and "does not exist" in again.stderr


def test_datasets_upload_with_progress_list_show_delete(service, tmp_path):
    rows = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(300)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    uploaded = cli(service, "datasets", "upload", str(path), "--name", "cli_data")
    described = json.loads(uploaded.stdout)
    assert described["rows"] == 300 and described["format"] == "alpaca"
    assert "100%" in uploaded.stderr  # the progress bar reached the end of the file
    assert "cli_data" in cli(service, "datasets", "list").stdout
    shown = json.loads(cli(service, "datasets", "show", "cli_data", "--preview", "2").stdout)
    assert shown["preview"] == rows[:2]
    again = cli(service, "datasets", "upload", str(path), "--name", "cli_data", check=False)
    assert again.returncode == 2 and "overwrite" in again.stderr
    assert cli(service, "datasets", "upload", str(path), "--name", "cli_data", "--overwrite").returncode == 0
    assert cli(service, "datasets", "delete", "cli_data").stdout.strip() == "deleted cli_data"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    refused = cli(service, "datasets", "upload", str(bad), "--name", "bad", check=False)
    assert refused.returncode == 2 and "file: row 2: output is missing" in refused.stderr


def test_validation_flags_evaluate_with_watch_and_the_comparison_table(service):
    result = cli(
        service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft", "--val-size", "0.2",
        "--eval-steps", "10", "--patience", "3", "--watch", "--interval", "0.2",
    )  # fmt: skip
    job_id = result.stdout.splitlines()[0]
    status = service.status(job_id)
    assert status["validation"] == {"val_size": 0.2, "dataset": None, "eval_steps": 10}
    assert status["early_stopping"] == {"patience": 3, "min_delta": 0.0}

    result = cli(service, "evaluate", job_id, "--dataset", "demo_sft", "--baseline", "--max-samples", "4",
                 "--watch", "--interval", "0.2")  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].endswith(": completed") and "final on demo_sft, at most 4 rows" in lines[0]
    assert lines[1].split() == ["METRIC", "TUNED", "BASE", "DIFFERENCE"]
    assert lines[2].split() == ["bleu_4", "60.0000", "5.0000", "+55.0000"]  # the FAKE trainer's figures
    assert [line.split()[0] for line in lines[2:]] == [
        "bleu_4",
        "rouge_1",
        "rouge_2",
        "rouge_l",
        "loss",
        "perplexity",
    ]

    evaluation_id = lines[0].split()[0]
    result = cli(service, "evaluation", job_id, evaluation_id, "--samples", "1")
    assert "#0 " in result.stdout and "label:" in result.stdout and "base: 'I do not know.'" in result.stdout

    result = cli(service, "evaluate", job_id, "--dataset", "nope", check=False)
    assert result.returncode == 2 and "dataset: unknown dataset 'nope'" in result.stderr


def test_register_with_an_alias_deploy_it_list_and_stop(service):
    job_id = cli(
        service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft", "--watch"
    ).stdout.split()[0]
    assert (
        cli(service, "register", job_id, "--name", "cli-bot", "--alias", "prod").stdout.strip() == "cli-bot:1"
    )
    assert "cli-bot  versions [1]  prod->1" in cli(service, "models").stdout
    assert cli(service, "models", "cli-bot").stdout.startswith(f"cli-bot:1 (prod)  {job_id} final")
    deployed = json.loads(cli(service, "deploy", "--model", "cli-bot@prod", "--wait", "--json").stdout)
    assert deployed["status"] == "ready" and deployed["api_key"].startswith("sk-imts-")
    assert deployed["deployment_id"] in cli(service, "deployments").stdout
    stopped = cli(service, "deployments", "--stop", deployed["deployment_id"]).stdout
    assert stopped.strip() == f"{deployed['deployment_id']} stopped"
    refused = cli(service, "deploy", "--model", "cli-bot@nope", check=False)
    assert refused.returncode == 2 and "model: model 'cli-bot' has no alias 'nope'" in refused.stderr


def test_priority_and_usage(service):
    job_id = cli(service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft", "--priority", "low",
                 "--not-preemptible").stdout.strip()  # fmt: skip
    status = service.status(job_id)
    assert (status["priority"], status["preemptible"]) == ("low", False)
    changed = cli(service, "priority", job_id, "high").stdout
    assert f"{job_id}: " in changed and "priority high" in changed
    assert service.status(job_id)["priority"] == "high"
    refused = cli(service, "priority", "train_00000000", "low", check=False)
    assert refused.returncode == 2 and "job_id" in refused.stderr
    service.wait_done(job_id)
    usage = json.loads(cli(service, "usage", "--json").stdout)  # no tenants: every run, as the admins'
    assert usage["tenants"] and usage["tenants"][0]["tenant"] is None and usage["tenants"][0]["runs"] >= 1
    table = cli(service, "usage", "--days").stdout
    assert "(admins)" in table and usage["to"] in table


def test_a_waiting_job_says_what_holds_the_slots(service):
    """Two slots, both held by deployments: a submitted job waits, and the CLI names them."""
    job_id = cli(
        service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft", "--watch"
    ).stdout.split()[0]
    held = [json.loads(cli(service, "deploy", job_id, "--wait", "--json").stdout) for _ in range(2)]
    waiting = cli(service, "submit", "--model", "tiny-llama", "--dataset", "demo_sft").stdout.strip()
    changed = cli(service, "priority", waiting, "low").stdout
    names = sorted(d["deployment_id"] for d in held)
    assert "waiting for capacity held by " in changed and all(n in changed for n in names), changed
    for d in held:
        cli(service, "deployments", "--stop", d["deployment_id"])
    assert service.wait_done(waiting)["status"] == "completed"
