"""Fuzzing: schemathesis, driven by the service's own OpenAPI document, against gunicorn with tenants
(FAKE trainer, FAKE deployment server), on a store seeded with every kind of resource: jobs that
completed (with checkpoints and a best one), stopped and another team's, an evaluation, uploads,
a registered model with aliases, a ready deployment. Every check and every phase (examples,
coverage, fuzzing, stateful), once with a member's token and once with an admin's. It fails on any
5xx, any status the document does not give, any body or header unlike the document, a schema-valid
request refused for a rule the document does not write (tests/fuzz_hooks.py says which rules no
schema can state), a schema-violating one accepted, and a token ignored. Bounded: a fixed seed and
a fixed number of examples."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import requests
import yaml

from conftest import FAKE_SERVER, PROJECT, fake_cli, make_home, wait_for
from harness import Service

TOKENS = {"member": "fuzz-member", "other": "fuzz-other-team", "admin": "fuzz-admin"}
ROWS = {
    "alpaca": [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(4)],
    "sharegpt": [
        {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]}
        for i in range(4)
    ],
    "pairwise": [{"instruction": "Greet", "input": "", "chosen": "Hello", "rejected": "Go"}] * 4,
    "kto": [{"instruction": f"Say {i}", "output": f"{i}", "label": i % 2 == 0} for i in range(4)],
    "text": [{"text": f"plain text {i}"} for i in range(4)],
}


def _sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _tenants(home):
    teams = {
        "team-a": {"tokens": [{"name": "a-ci", "role": "member", "sha256": _sha(TOKENS["member"])}]},
        "team-b": {"tokens": [{"name": "b-ci", "role": "member", "sha256": _sha(TOKENS["other"])}]},
    }
    data = {"tenants": teams, "admins": [{"name": "ops", "sha256": _sha(TOKENS["admin"])}]}
    with open(os.path.join(home, "config", "tenants.yaml"), "w") as handle:
        yaml.safe_dump(data, handle)


class _As:
    def __init__(self, svc, token):
        self.svc, self.headers = svc, {"Authorization": f"Bearer {token}"}

    def __call__(self, method, path, expect=(200, 201, 202, 204), **kwargs):
        response = requests.request(method, self.svc.base + path, headers=self.headers, timeout=60, **kwargs)
        assert response.status_code in expect, (method, path, response.status_code, response.text[:500])
        return response.json() if response.content else None

    def done(self, job_id):
        return wait_for(
            lambda: (
                (s := self("GET", f"/jobs/{job_id}"))["status"] in ("completed", "failed", "stopped") and s
            )
        )


def _seed(svc, tmp_path):
    """Every kind of resource, made through the API as team-a's member (another team's job too)."""
    member, other = _As(svc, TOKENS["member"]), _As(svc, TOKENS["other"])
    body = {"model_name": "tiny-llama", "dataset": "demo_sft"}
    completed = member("POST", "/jobs", json={**body, "validation": {"val_size": 0.2, "eval_steps": 5}})[
        "job_id"
    ]
    assert member.done(completed)["status"] == "completed"
    checkpoints = member("GET", f"/jobs/{completed}/checkpoints")["checkpoints"]
    evaluation = member("POST", f"/jobs/{completed}/evaluations", json={"dataset": "demo_sft"})[
        "evaluation_id"
    ]
    wait_for(lambda: member("GET", f"/jobs/{completed}/evaluations/{evaluation}")["status"] == "completed")
    stopped = []
    for _ in range(5):
        job_id = member("POST", "/jobs", json=body)["job_id"]
        member("POST", f"/jobs/{job_id}/stop", expect=(200, 202, 409))
        member.done(job_id)
        stopped.append(job_id)
    theirs = other("POST", "/jobs", json=body)["job_id"]
    uploads = []
    for number in range(4):
        rows = "".join(json.dumps(r) + "\n" for r in ROWS["alpaca"]).encode()
        made = member(
            "POST", "/datasets", files={"file": ("d.jsonl", rows)}, data={"name": f"fuzz_data_{number}"}
        )
        uploads.append(made["name"])
    member("POST", "/models", json={"name": "fuzz-bot", "job_id": completed})
    member("POST", "/models", json={"name": "fuzz-bot", "job_id": completed})  # a spare version 2
    member("PUT", "/models/fuzz-bot/aliases/production", json={"version": 1})
    for alias in ("staging", "canary", "old"):
        member("PUT", f"/models/fuzz-bot/aliases/{alias}", json={"version": 1})
    # Two ready deployments: of the job, and of version 1 (which no DELETE can then take away).
    deployed = member("POST", "/deployments", json={"job_id": completed})
    version = member("POST", "/deployments", json={"model": "fuzz-bot:1"})["deployment_id"]
    deployment = deployed["deployment_id"]
    for each in (deployment, version):
        wait_for(lambda d=each: member("GET", f"/deployments/{d}")["status"] == "ready")
    by_stage = {}  # the operator's: no DELETE of the run takes them away
    for dataset in member("GET", "/datasets")["datasets"]:
        for stage in dataset["stages"]:
            if dataset["source"] == "operator":
                by_stage.setdefault(stage, []).append(dataset["name"])
    seeds = {
        "base_model": "tiny-llama",
        "jobs": [completed, stopped[0], theirs],
        "completed_job": completed,
        "checkpoint": next(c["name"] for c in checkpoints if c["complete"]),
        "evaluated_job": completed,
        "evaluation": evaluation,
        "deployment": deployment,
        "deployment_key": deployed["api_key"],
        "model": "fuzz-bot",
        "datasets": [uploads[0], "demo_sft"],
        "datasets_by_stage": by_stage,
        "spare_jobs": stopped[1:],
        "spare_datasets": uploads[1:],
        "spare_aliases": ["staging", "canary", "old"],
        "spare_versions": [2],
        "upload_rows": ROWS,
    }
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(seeds))
    return path


@pytest.mark.parametrize("who", ["member", "admin"])
def test_schemathesis_every_check_on_a_seeded_store(tmp_path, who):
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    if not os.path.exists(schemathesis):
        pytest.skip("schemathesis is not installed (make setup installs it)")
    home = make_home(tmp_path / "home")
    _tenants(home)
    trainer = fake_cli(
        home, "--steps", "20", "--interval", "0.01", "--save-every", "5", "--eval-losses", "2,1.5,1.8"
    )
    svc = Service(
        home,
        workers=2,
        llamafactory_cli=trainer,
        max_concurrent_jobs=6,
        deploy_command=f"{sys.executable} {FAKE_SERVER}",
        deploy_ports="18760-18789",
    ).start()
    token = {"Authorization": f"Bearer {TOKENS[who]}"}
    try:
        seeds = _seed(svc, tmp_path)
        spec = requests.get(f"{svc.base}/openapi.json", headers=token, timeout=30)
        (tmp_path / "openapi.json").write_bytes(spec.content)
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": os.path.join(PROJECT, "tests"),
            "IMTS_FUZZ_SEEDS": str(seeds),
        }
        result = subprocess.run(
            [
                schemathesis,
                "run",
                str(tmp_path / "openapi.json"),
                "--url",
                svc.root,
                "-H",
                f"Authorization: Bearer {TOKENS[who]}",
                "--checks",
                "all",
                "--max-examples",
                "15",
                "--seed",
                "20261204",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--suppress-health-check",
                "all",
                "--workers",
                "1",
                "--continue-on-failure",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        print(result.stdout[-12000:])
        if os.environ.get("IMTS_FUZZ_OUT"):  # the whole report, for a person reading a failure
            with open(os.environ["IMTS_FUZZ_OUT"], "w") as handle:
                handle.write(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
        assert "passed" in result.stdout or "No issues found" in result.stdout
    finally:
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        listed = requests.get(f"{svc.base}/deployments?limit=1000", headers=admin, timeout=30).json()
        for deployment in listed.get("deployments", []):
            requests.delete(
                f"{svc.base}/deployments/{deployment['deployment_id']}", headers=admin, timeout=60
            )
        for job in (
            requests.get(f"{svc.base}/jobs?limit=1000", headers=admin, timeout=30).json().get("jobs", [])
        ):
            if job["status"] in ("pending", "running"):
                requests.post(f"{svc.base}/jobs/{job['job_id']}/stop", headers=admin, timeout=60)
        svc.stop()
        shutil.rmtree(tmp_path / ".hypothesis", ignore_errors=True)
