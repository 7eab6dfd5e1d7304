"""The guide's Spring client (RestTemplate + Jackson, compiled here) and Nginx in front of gunicorn,
both against the real llamafactory-cli. They need Debian's libspring-web-java,
libjackson2-databind-java and nginx (.ci/run installs them); without them the tests skip, unless
IMTS_REQUIRE_INTEGRATIONS=1 (set by CI) makes that a failure."""

import hashlib
import json
import os
import shutil
import time

import pytest
import requests

from conftest import PROJECT, make_home, require
from harness import Service, java_flow_available, run_java_flow, start_nginx

pytestmark = pytest.mark.e2e

FAST = {"template": "default", "cutoff_len": 128, "logging_steps": 1}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # A small upload limit, so that Nginx's own limit (1100m, well above) is shown to let the API's
    # JSON 413 through.
    svc = Service(make_home(tmp_path_factory.mktemp("integrations") / "home"), max_upload_mb=3).start()
    yield svc
    svc.stop()


def test_the_guides_java_client_flow_with_resttemplate(service, tmp_path):
    require(java_flow_available(), "javac with Spring and Jackson")
    result = run_java_flow(service.root, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "JAVA FLOW OK" in result.stdout
    assert os.path.isdir(os.path.join(service.home, "models", "exports", "java_model"))


def test_two_teams_with_resttemplate_see_only_their_own(tmp_path):
    require(java_flow_available(), "javac with Spring and Jackson")
    home = make_home(tmp_path / "home")
    tokens = {"team-a": "spring-team-a", "team-b": "spring-team-b"}
    tenants = {
        team: {
            "max_priority": "high" if team == "team-a" else "normal",
            "quotas": {"max_non_preemptible": 1},
            "tokens": [
                {"name": f"{team[-1]}-ci", "role": "member", "sha256": hashlib.sha256(t.encode()).hexdigest()}
            ],
        }
        for team, t in tokens.items()
    }
    with open(os.path.join(home, "config", "tenants.yaml"), "w") as handle:
        json.dump({"tenants": tenants}, handle)  # JSON is YAML too
    svc = Service(home, workers=2).start()
    try:
        result = run_java_flow(
            svc.root, tmp_path, flow="SpringTenantsFlow", args=(tokens["team-a"], tokens["team-b"])
        )
    finally:
        svc.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TENANTS FLOW OK" in result.stdout


@pytest.fixture
def nginx(service, tmp_path):
    require(shutil.which("nginx"), "nginx")
    location = open(os.path.join(PROJECT, "deploy", "nginx.conf")).read()
    location = location.replace("127.0.0.1:8000", f"127.0.0.1:{service.port}")
    proc, port = start_nginx(tmp_path, f"server {{ listen 127.0.0.1:{{port}};\n{location}\n}}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_the_flow_through_nginx(nginx):
    api = f"{nginx}/api/v1/training"
    response = requests.post(
        f"{api}/jobs",
        json={"model_name": "tiny-llama", "dataset": "demo_sft", "epochs": 2.0, "custom_config": FAST},
        timeout=30,
    )
    assert response.status_code == 201
    job_id = response.json()["job_id"]
    offset, log = 0, ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        page = requests.get(f"{api}/jobs/{job_id}/logs", params={"offset": offset}, timeout=30).json()
        log += page["data"]
        offset = page["next_offset"]
        status = requests.get(f"{api}/jobs/{job_id}", timeout=30).json()
        if status["status"] in ("completed", "failed", "stopped") and page["eof"]:
            break
        time.sleep(0.5)
    assert status["status"] == "completed" and "imts monitor" in log and offset > 0
    first = requests.get(f"{api}/jobs/{job_id}", timeout=30)
    assert (
        requests.get(
            f"{api}/jobs/{job_id}", headers={"If-None-Match": first.headers["ETag"]}, timeout=30
        ).status_code
        == 304
    )
    series = requests.get(f"{api}/jobs/{job_id}/metrics", timeout=30).json()["points"]
    assert series and series[-1]["step"] == status["total_steps"]
    plot = requests.get(f"{api}/jobs/{job_id}/artifacts/training_loss.png", timeout=30)
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    too_big = requests.post(
        f"{api}/jobs", data=b"x" * (1536 * 1024), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "request_entity_too_large"
    missing = requests.post(f"{api}/jobs/train_00000000/stop", timeout=30)
    assert missing.status_code == 404 and missing.json()["status"] == 404
    assert "imts_http_requests_total" in requests.get(f"{nginx}/metrics", timeout=30).text
    # Uploads: bigger than the 2m of other routes, streamed through; over the API's limit, its JSON 413.
    rows = b"".join(b'{"text": "%d %s"}\n' % (i, b"x" * 100) for i in range(20_000))  # 2.2 MB
    uploaded = requests.post(
        f"{api}/datasets", files={"file": ("big.jsonl", rows)}, data={"name": "via_nginx"}, timeout=120
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["rows"] == 20_000 and uploaded.json()["bytes"] == len(rows)
    too_big = requests.post(
        f"{api}/datasets", files={"file": ("big.jsonl", rows * 2)}, data={"name": "too_big"}, timeout=120
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "request_entity_too_large"
    head = requests.head(f"{api}/jobs/{job_id}", timeout=30)
    assert head.status_code == 200 and head.headers["ETag"] == first.headers["ETag"]
    guide_log = os.path.join(os.path.dirname(status["config_path"]), "..", "..", "logs", "training_jobs")
    assert os.path.exists(os.path.join(guide_log, job_id, "training.log"))
    assert requests.delete(f"{api}/jobs/{job_id}", timeout=30).status_code == 204
    assert requests.get(f"{api}/jobs/{job_id}", timeout=30).status_code == 404
    assert not os.path.lexists(os.path.join(guide_log, job_id))
