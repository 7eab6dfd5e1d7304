"""Fuzzing: schemathesis, driven by the service's own OpenAPI document, against gunicorn (auth on,
FAKE trainer). Passes when no request gets a 5xx and every response conforms to the document:
status code, content type and body schema. Bounded: a fixed seed and a fixed number of examples."""

import os
import shutil
import subprocess
import sys

import pytest
import requests

from conftest import fake_cli, make_home
from harness import Service

TOKEN = "fuzz-token"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.parametrize("authorized", [True, False])
def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(tmp_path, authorized):
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    if not os.path.exists(schemathesis):
        pytest.skip("schemathesis is not installed (make setup installs it)")
    home = make_home(tmp_path / "home")
    svc = Service(home, workers=2, llamafactory_cli=fake_cli(home, "--steps", "2"), auth_tokens=TOKEN).start()
    try:
        spec = requests.get(
            f"{svc.base}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        (tmp_path / "openapi.json").write_bytes(spec.content)
        headers = ["-H", f"Authorization: Bearer {TOKEN}"] if authorized else []
        result = subprocess.run(
            [
                schemathesis,
                "run",
                str(tmp_path / "openapi.json"),
                "--url",
                svc.root,
                *headers,
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--seed",
                "20261126",
                "--phases",
                "examples,coverage,fuzzing",
                "--suppress-health-check",
                "all",
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(result.stdout[-6000:])
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "passed" in result.stdout
    finally:
        for job in (
            requests.get(
                f"{svc.base}/jobs?status=running", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            .json()
            .get("jobs", [])
        ):
            requests.post(
                f"{svc.base}/jobs/{job['job_id']}/stop",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
            )
        svc.stop()
        shutil.rmtree(tmp_path / ".hypothesis", ignore_errors=True)
