"""Fixtures: a throw-away service home per test, apps built with create_app, a fake trainer."""

import contextlib
import hashlib
import http.server
import io
import json
import os
import stat
import sys
import threading
import time

import pytest
import yaml

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

TINY_MODEL = os.path.join(PROJECT, "models", "tiny-llama")
DEMO_DATA = os.path.join(PROJECT, "data")
SHARED_DATA = os.path.abspath(os.path.join(PROJECT, "..", "shared", "llamafactory-data"))
FAKE_TRAINER = os.path.join(PROJECT, "tests", "fake_trainer.py")
FAKE_SERVER = os.path.join(PROJECT, "tests", "fake_server.py")  # a FAKE deployment server

# The integration guide's example request body (section 2.1), verbatim.
GUIDE_EXAMPLE = {
    "model_name": "meta-llama/Llama-3-8b",
    "dataset": "alpaca_en_demo",
    "stage": "sft",
    "finetuning_type": "lora",
    "batch_size": 2,
    "learning_rate": 5e-5,
    "epochs": 3.0,
    "lora_rank": 8,
    "lora_alpha": 16,
    "custom_config": {"template": "llama3", "cutoff_len": 2048},
}


def make_home(root, data_dirs=None):
    """Lay out a service home: config/models.yaml naming the demo model, and a tiny data dir."""
    os.makedirs(os.path.join(root, "config"), exist_ok=True)
    registry = {"models": {"tiny-llama": {"path": TINY_MODEL, "template": "default"}}}
    with open(os.path.join(root, "config", "models.yaml"), "w") as handle:
        yaml.safe_dump(registry, handle)
    return str(root)


def fake_cli(directory, *options):
    """Write an executable that runs the fake trainer with `options`; return its path."""
    path = os.path.join(directory, "fake-llamafactory-cli")
    with open(path, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {sys.executable} {FAKE_TRAINER} {" ".join(options)} "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path / "home")


def stop_processes_under(root):
    """Kill what a test left running under `root`: monitors, fake trainers and fake servers outlive
    the app that started them (detached, as in service); a server nobody stops would run on for the
    rest of the suite."""
    import psutil

    root = os.path.realpath(root)
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            places = [proc.info["cwd"] or "", *(proc.info["cmdline"] or [])]
            if proc.pid != os.getpid() and any(
                os.path.realpath(p).startswith(root + os.sep) for p in places if p
            ):
                left.append(proc)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


@pytest.fixture
def make_app(home, tmp_path):
    """Build an app on the throw-away home with a fake trainer behaving as `options` say; what its
    runs left running is stopped when the test ends."""

    def build(*options, **overrides):
        from imts_flask import create_app

        settings = {
            "home": home,
            "data_dirs": [DEMO_DATA],
            "llamafactory_cli": fake_cli(str(tmp_path), *options),
            "stop_grace_s": 3.0,
            "stop_wait_s": 15.0,
            "export_wait_s": 15.0,
            "min_free_disk_mb": 1,
            "housekeeping_s": 0,  # tests that need the background thread turn it on
        }
        settings.update(overrides)
        app = create_app(settings)
        app.config["TESTING"] = True
        return app

    yield build
    stop_processes_under(str(tmp_path))


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def wait_for(predicate, timeout=60, interval=0.1):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def max_overlap(home):
    """Read the FAKE trainer's spans under `home` and return the most trainers that ran at once."""
    path = os.path.join(home, "fake_spans.log")
    if not os.path.exists(path):
        return 0
    events = []
    for line in open(path):
        _job, kind, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    running = peak = 0
    for _at, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


API = "/api/v1/training"
TERMINAL = ("completed", "failed", "stopped")


def api_create(client, body=None, **extra):
    """POST a job through a Flask test client; return its id."""
    response = client.post(
        f"{API}/jobs", json={**(body or {"model_name": "tiny-llama", "dataset": "demo_sft"}), **extra}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["job_id"]


def api_status(client, job_id):
    response = client.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def api_done(client, job_id, timeout=60):
    """Wait until a job reaches a terminal status; return its status."""
    return wait_for(lambda: (s := api_status(client, job_id))["status"] in TERMINAL and s, timeout=timeout)


def completed_job(client, **extra):
    """Create a job and wait for it to complete; return its id."""
    job_id = api_create(client, **extra)
    assert api_done(client, job_id)["status"] == "completed"
    return job_id


def tree_digest(path):
    """{relative path: (size, mtime_ns, sha256)} of every file under `path`: proof nothing changed."""
    digest = {}
    for directory, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            stat = os.stat(full)
            with open(full, "rb") as handle:
                digest[os.path.relpath(full, path)] = (
                    stat.st_size,
                    stat.st_mtime_ns,
                    hashlib.sha256(handle.read()).hexdigest(),
                )
    return digest


# -- uploads (the datasets endpoint) -----------------------------------------------------------------


ALPACA_ROWS = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(6)]


def jsonl_bytes(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client, name, content, filename="data.jsonl", query="", **fields):
    data = {"name": name, "file": (io.BytesIO(content), filename), **fields}
    return client.post(f"{API}/datasets{query}", data=data, content_type="multipart/form-data")


def uploads_root(client):
    return client.application.extensions["imts"].uploads.root


def uploads_registry(client):
    path = os.path.join(uploads_root(client), "dataset_info.json")
    return json.load(open(path)) if os.path.exists(path) else {}


# -- a webhook receiver ------------------------------------------------------------------------------


class Receiver:
    """A local HTTP endpoint recording what it is sent; answers the codes in `script` first."""

    def __init__(self, script=()):
        self.events, self.script = [], list(script)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.script.pop(0) if receiver.script else 200
                if code == 200:
                    receiver.events.append(json.loads(body))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


# -- tenants (three teams, an admin, a viewer) -------------------------------------------------------


TENANT_TOKENS = {"a": "tok-a", "a-view": "tok-a-view", "b": "tok-b", "c": "tok-c", "ops": "tok-ops"}


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def tenants_file(extra_c_token=None, quotas=None):
    c_tokens = [{"name": "c-ci", "role": "member", "sha256": sha(TENANT_TOKENS["c"])}]
    if extra_c_token:
        c_tokens.append({"name": "c-new", "role": "member", "sha256": sha(extra_c_token)})
    return {
        "tenants": {
            "team-a": {
                "max_priority": "high",
                "quotas": quotas or {},
                "tokens": [
                    {"name": "a-ci", "role": "member", "sha256": sha(TENANT_TOKENS["a"])},
                    {"name": "a-dash", "role": "viewer", "sha256": sha(TENANT_TOKENS["a-view"])},
                ],
            },
            "team-b": {"tokens": [{"name": "b-ci", "role": "member", "sha256": sha(TENANT_TOKENS["b"])}]},
            "team-c": {"tokens": c_tokens},
        },
        "admins": [{"name": "ops", "sha256": sha(TENANT_TOKENS["ops"])}],
    }


def write_tenants(home, data):
    path = os.path.join(home, "config", "tenants.yaml")
    with open(path + ".tmp", "w") as handle:
        yaml.safe_dump(data, handle)
    os.replace(path + ".tmp", path)


class As:
    """A test client speaking with one token."""

    def __init__(self, client, token):
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method):
        def call(path, headers=None, **kw):
            return getattr(self.client, method)(path, headers={**self.headers, **(headers or {})}, **kw)

        return call


def audit_lines(home):
    path = os.path.join(home, "logs", "audit.log")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


# -- the one error shape -----------------------------------------------------------------------------


def assert_error(response, status, field=None):
    """Assert an answer is the API's error: `status`, the one shape, a message, no traceback, and
    (with `field`) an error naming that field; return its body."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    body = response.get_json()
    assert set(body) >= {"status", "error", "message", "errors", "path"}, body
    assert body["status"] == status and body["message"], body
    assert "Traceback" not in text
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# -- outside parts: skipped where missing, unless CI demands them ------------------------------------


def require(available, what):
    """Skip a test whose outside part (nginx, a JDK, ray) is missing, unless CI demands it."""
    if not available:
        if os.environ.get("IMTS_REQUIRE_INTEGRATIONS") == "1":
            pytest.fail(f"{what} is missing (install it: see .ci/run)")
        pytest.skip(f"{what} is not installed")


# -- a headless Chromium (the dashboard's tests) -----------------------------------------------------


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


SCREENSHOTS = os.path.join(PROJECT, "docs", "screenshots")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        webdriver = None
    require(
        webdriver and os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER),
        "chromium, chromium-driver, selenium",
    )
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # the machine's network is closed: no calls home
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def find_element(driver, css, timeout=30):
    from selenium.webdriver.common.by import By

    return wait_for(
        lambda: (found := driver.find_elements(By.CSS_SELECTOR, css)) and found[0], timeout=timeout
    )


def text_of(driver, css):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def no_console_errors(driver):
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # a CSP violation or a script error shows here
