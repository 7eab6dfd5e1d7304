"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium through Debian's
chromium-driver, against gunicorn running the real llamafactory-cli (and a FAKE trainer where the
test is about the page, not the training). Screenshots of both pages land in docs/screenshots/."""

import json
import os
import shutil
import sys
import time

import pytest
import requests

from conftest import (
    FAKE_SERVER,
    PROJECT,
    SCREENSHOTS,
    TINY_MODEL,
    fake_cli,
    find_element,
    make_home,
    no_console_errors,
    require,
    text_of,
    wait_for,
)
from harness import Service, start_nginx

pytestmark = pytest.mark.e2e

REAL = {
    "model_name": "tiny-llama",
    "dataset": "demo_sft",
    "epochs": 40.0,
    "learning_rate": 1e-3,  # the loss visibly falls in the screenshot
    "custom_config": {"template": "default", "cutoff_len": 64, "logging_steps": 2},
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
        pytest.skip("the demo model is not built: run `make setup`")
    home = make_home(tmp_path_factory.mktemp("dashboard") / "home")
    access = os.path.join(home, "access.log")
    svc = Service(home, argv_extra=["--access-logfile", access]).start()
    yield svc
    svc.stop()


def test_the_list_shows_a_real_job_and_its_page_follows_it_live(browser, service):
    browser.get_log("browser")
    job_id = service.create(REAL)
    wait_for(lambda: (service.status(job_id)["current_step"] or 0) > 10, timeout=180, interval=0.3)
    browser.get(service.root + "/")  # redirected to the list
    assert browser.current_url.endswith("/dashboard")
    row = find_element(browser, f'tr[data-job="{job_id}"]')
    assert row.get_attribute("data-status") == "running" and "running" in row.text
    os.makedirs(SCREENSHOTS, exist_ok=True)
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-jobs.png"))

    browser.get(f"{service.root}/dashboard/jobs/{job_id}")
    find_element(browser, "#chart[data-points]")
    bar = find_element(browser, "#progress")
    first = (
        float(bar.get_attribute("aria-valuenow")),
        int(find_element(browser, "#chart").get_attribute("data-points")),
    )
    log_before = len(text_of(browser, "#log"))
    # The progress bar, the loss curve and the log all move while it trains, without a reload.
    wait_for(
        lambda: (
            float(bar.get_attribute("aria-valuenow")) > first[0]
            and int(find_element(browser, "#chart").get_attribute("data-points")) > first[1]
            and len(text_of(browser, "#log")) > log_before
        ),
        timeout=60,
        interval=0.5,
    )
    log_text = text_of(browser, "#log")
    with open(os.path.join(service.home, "jobs", job_id, "training.log"), errors="replace") as handle:
        written = handle.read()
    assert "imts monitor" in log_text and log_text.splitlines()[0] in written
    assert text_of(browser, "#job-status") == "running" and "tiny-llama" in text_of(browser, "#facts")
    wait_for(
        lambda: int(find_element(browser, "#chart").get_attribute("data-points")) >= 60,
        timeout=120,
        interval=0.5,
    )
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-job.png"))
    no_console_errors(browser)

    # Stop asks first: cancelled, nothing happens; accepted, the job stops and the API's answer shows.
    stop = find_element(browser, "#stop")
    stop.click()
    wait_for(lambda: browser.switch_to.alert).dismiss()
    time.sleep(1)
    assert service.status(job_id)["status"] == "running"
    stop.click()
    wait_for(lambda: browser.switch_to.alert).accept()
    wait_for(lambda: text_of(browser, "#job-status") == "stopped", timeout=60, interval=0.5)
    assert service.status(job_id)["status"] == "stopped"
    assert f"任务 {job_id} 已停止" in text_of(browser, "#notice")
    # Refused actions show the API's message: a stopped job cannot be exported.
    browser.execute_script("document.getElementById('export').disabled = false")
    find_element(browser, "#export").click()
    wait_for(lambda: browser.switch_to.alert).accept()
    wait_for(lambda: "only completed jobs can be exported" in text_of(browser, "#notice"), timeout=30)


def test_markup_in_a_log_or_an_error_is_shown_as_text_and_runs_nothing(browser, service):
    job_id = service.create({**REAL, "epochs": 1.0})
    service.wait_done(job_id)
    job_dir = os.path.join(service.home, "jobs", job_id)
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>'
    with open(os.path.join(job_dir, "training.log"), "a") as handle:
        handle.write(hostile + "\n")
    state = json.load(open(os.path.join(job_dir, "state.json")))
    state.update(status="failed", error=hostile, log_tail=[hostile])
    open(os.path.join(job_dir, "state.json"), "w").write(json.dumps(state))
    browser.get(f"{service.root}/dashboard/jobs/{job_id}")
    wait_for(lambda: hostile in text_of(browser, "#log"), timeout=30)
    wait_for(lambda: hostile in text_of(browser, "#failure"), timeout=30)
    assert browser.execute_script("return window.__pwned") is None
    assert (
        browser.execute_script("return document.querySelectorAll('#log *, #failure img, #failure b').length")
        == 0
    )
    browser.get(service.root + "/dashboard")
    find_element(browser, f'tr[data-job="{job_id}"]')
    assert browser.execute_script("return window.__pwned") is None


def test_an_idle_page_costs_304s(browser, service):
    browser.get(service.root + "/dashboard?status=stopped")
    find_element(browser, "#jobs tbody tr")
    access = os.path.join(service.home, "access.log")
    start = os.path.getsize(access)
    time.sleep(10)  # a few polls of an unchanged listing
    with open(access) as handle:
        handle.seek(start)
        polls = [line for line in handle if "GET /api/v1/training/jobs?" in line]
    assert len(polls) >= 2 and all('" 304 ' in line for line in polls), polls


def test_a_phone_width_screen_does_not_break(browser, service):
    job_id = service.create({**REAL, "epochs": 1.0})
    service.wait_done(job_id)
    browser.set_window_size(390, 844)
    try:
        for path in ("/dashboard", f"/dashboard/jobs/{job_id}"):
            browser.get(service.root + path)
            find_element(browser, "#jobs tbody tr, #chart[data-points]")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, (path, overflow)  # wide tables scroll inside their box
    finally:
        browser.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("dashboard-auth") / "home")
    svc = Service(home, llamafactory_cli=fake_cli(home, "--steps", "3"), auth_tokens="s3cret-token").start()
    yield svc
    svc.stop()


def test_with_auth_the_page_asks_for_the_token_and_data_needs_it(browser, secured):
    headers = {"Authorization": "Bearer s3cret-token"}
    job_id = requests.post(
        f"{secured.base}/jobs",
        json={"model_name": "tiny-llama", "dataset": "demo_sft"},
        headers=headers,
        timeout=30,
    ).json()["job_id"]
    page = requests.get(f"{secured.root}/dashboard", timeout=30)  # the page and its files: no token, no data
    assert page.status_code == 200 and job_id not in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]
    assert requests.get(f"{secured.root}/dashboard/static/api.js", timeout=30).status_code == 200
    browser.get(secured.root + "/dashboard")
    form = find_element(browser, "#token-form:not([hidden])")
    refused = browser.execute_async_script(
        "const done = arguments[0]; fetch('/api/v1/training/jobs').then((r) => done(r.status));"
    )
    assert refused == 401 and not browser.find_elements("css selector", f'tr[data-job="{job_id}"]')
    form.find_element("css selector", "#token").send_keys("s3cret-token")
    form.find_element("css selector", "button").click()
    find_element(browser, f'tr[data-job="{job_id}"]')
    assert browser.execute_script("return sessionStorage.getItem('imts-token')") == "s3cret-token"
    assert browser.find_element("css selector", "#token-form").get_attribute("hidden") is not None


def test_the_page_works_behind_nginx(browser, service, tmp_path):
    require(shutil.which("nginx"), "nginx")
    job_id = service.create({**REAL, "epochs": 1.0})
    location = open(os.path.join(PROJECT, "deploy", "nginx.conf")).read()
    location = location.replace("127.0.0.1:8000", f"127.0.0.1:{service.port}")
    proc, port = start_nginx(tmp_path, f"server {{ listen 127.0.0.1:{{port}};\n{location}\n}}")
    try:
        browser.get_log("browser")  # what earlier tests' refusals left there
        browser.get(f"http://127.0.0.1:{port}/")
        find_element(browser, f'#jobs tbody tr[data-job="{job_id}"]')
        no_console_errors(browser)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_job_page_shows_eval_loss_and_evaluations_side_by_side_with_samples(browser, service):
    body = {**REAL, "epochs": 2.0, "validation": {"val_size": 0.2, "eval_steps": 16}}
    job_id = service.create(body)
    assert service.wait_done(job_id)["status"] == "completed"
    browser.get_log("browser")
    browser.get(f"{service.root}/dashboard/jobs/{job_id}")
    chart = find_element(browser, "#chart[data-eval-points]")
    wait_for(lambda: int(chart.get_attribute("data-eval-points")) >= 5, timeout=30)  # steps 16..80 and 96
    wait_for(lambda: "★ best" in text_of(browser, "#checkpoints"), timeout=30)

    form = find_element(browser, "#evaluate")
    form.find_element("css selector", "[name=dataset]").send_keys("demo_sft")
    samples = form.find_element("css selector", "[name=max_samples]")
    samples.clear()
    samples.send_keys("4")
    form.find_element("css selector", "button[type=submit]").click()
    wait_for(lambda: "queued" in text_of(browser, "#notice"), timeout=30)
    done = '#evaluations [data-status="completed"]'
    card = wait_for(lambda: (c := browser.find_elements("css selector", done)) and c[0], timeout=240)
    rows = [r.text.split() for r in card.find_elements("css selector", ".figures tbody tr")]
    assert [r[0] for r in rows] == ["bleu_4", "rouge_1", "rouge_2", "rouge_l", "loss", "perplexity"]
    assert all(len(r) == 4 for r in rows)  # tuned, base and the difference for each

    # Whatever a model generates is text on the page, never markup.
    evaluation_id = card.get_attribute("data-evaluation")
    predictions = os.path.join(
        service.home, "jobs", job_id, "evaluations", evaluation_id, "output", "base-predict",
        "generated_predictions.jsonl",
    )  # fmt: skip
    lines = open(predictions).read().splitlines()
    hostile = '<img src=x onerror="window.__pwned = 1">'
    lines[0] = json.dumps({**json.loads(lines[0]), "predict": hostile})
    open(predictions, "w").write("\n".join(lines) + "\n")
    card.find_element("css selector", "button.samples").click()
    first = find_element(browser, '#samples .sample[data-index="0"]')
    assert hostile in first.find_element("css selector", ".base dd").text
    assert first.find_element("css selector", ".label dd").text.strip()
    assert browser.execute_script("return window.__pwned") is None
    assert len(browser.find_elements("css selector", "#samples .sample")) == 4
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-evaluations.png"))
    no_console_errors(browser)


def test_the_deployments_page_lists_chats_streamed_as_text_and_stops(browser, tmp_path):
    """The page with a FAKE trainer and a FAKE server (tests/fake_server.py, whose streamed answer
    holds markup): the real server is in test_e2e_deployments.py."""
    home = make_home(tmp_path / "home")
    fake_server = f"{__import__('sys').executable} {FAKE_SERVER}"
    svc = Service(
        home, llamafactory_cli=fake_cli(str(tmp_path)), deploy_command=fake_server, deploy_ports="18640-18649"
    ).start()
    try:
        job_id = svc.create({"model_name": "tiny-llama", "dataset": "demo_sft"})
        assert svc.wait_done(job_id)["status"] == "completed"
        created = requests.post(
            f"{svc.base}/deployments", json={"job_id": job_id, "name": "fake-bot"}, timeout=30
        )
        deployment_id = created.json()["deployment_id"]
        browser.get_log("browser")
        browser.get(f"{svc.root}/dashboard/deployments")
        row = find_element(browser, f'tr[data-deployment="{deployment_id}"][data-status="ready"]', timeout=60)
        assert "fake-bot" in row.text and created.json()["base_url"] in row.text
        row.find_element("css selector", "button.chat-open").click()
        find_element(browser, "#chat-input").send_keys("Add three and three.")
        find_element(browser, "#chat-form button").click()
        answer = find_element(browser, '.turn[data-role="assistant"][data-streaming="false"]')
        assert answer.text == "assistant: <b>six</b> and <img src=x onerror=alert(1)>"  # as text
        assert not browser.find_elements("css selector", "#chat-log b, #chat-log img")
        browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-deployments.png"))
        row.find_element("css selector", "button.stop").click()
        find_element(browser, f'tr[data-deployment="{deployment_id}"][data-status="stopped"]', timeout=60)
        no_console_errors(browser)
    finally:
        svc.stop()


def test_a_chat_answer_that_breaks_off_shows_why_on_the_page(browser, tmp_path):
    """The server's stream stops after a piece (the FAKE server's --break-stream, as LLaMA Factory's
    does when it fails once its answer has started): the page says so instead of a silent answer."""
    home = make_home(tmp_path / "home")
    fake_server = f"{__import__('sys').executable} {FAKE_SERVER} --break-stream"
    svc = Service(
        home, llamafactory_cli=fake_cli(str(tmp_path)), deploy_command=fake_server, deploy_ports="18650-18659"
    ).start()
    try:
        job_id = svc.create({"model_name": "tiny-llama", "dataset": "demo_sft"})
        assert svc.wait_done(job_id)["status"] == "completed"
        created = requests.post(f"{svc.base}/deployments", json={"job_id": job_id}, timeout=30).json()
        browser.get(f"{svc.root}/dashboard/deployments")
        row = find_element(
            browser, f'tr[data-deployment="{created["deployment_id"]}"][data-status="ready"]', timeout=60
        )
        row.find_element("css selector", "button.chat-open").click()
        find_element(browser, "#chat-input").send_keys("Add three and three.")
        find_element(browser, "#chat-form button").click()
        find_element(browser, '.turn[data-role="assistant"][data-streaming="false"]')
        shown = find_element(browser, "#notice.error:not([hidden])")
        assert "without finishing" in shown.text, shown.text
        requests.delete(f"{svc.base}/deployments/{created['deployment_id']}", timeout=60)
    finally:
        svc.stop()


def test_with_tenants_the_page_shows_the_tokens_team_only_and_hides_a_viewers_buttons(browser, tmp_path):
    import hashlib

    import yaml

    def sha(token):
        return hashlib.sha256(token.encode()).hexdigest()

    home = make_home(tmp_path / "home")
    tenants = {
        "tenants": {
            "team-a": {"tokens": [{"name": "a-ci", "role": "member", "sha256": sha("tok-a")}]},
            "team-b": {
                "tokens": [
                    {"name": "b-ci", "role": "member", "sha256": sha("tok-b")},
                    {"name": "b-dash", "role": "viewer", "sha256": sha("tok-b-view")},
                ]
            },
        }
    }
    with open(os.path.join(home, "config", "tenants.yaml"), "w") as handle:
        yaml.safe_dump(tenants, handle)
    svc = Service(home, llamafactory_cli=fake_cli(str(tmp_path), "--steps", "3")).start()
    try:
        body = {"model_name": "tiny-llama", "dataset": "demo_sft"}
        theirs = requests.post(
            f"{svc.base}/jobs", json=body, headers={"Authorization": "Bearer tok-a"}, timeout=30
        )
        ours = requests.post(
            f"{svc.base}/jobs", json=body, headers={"Authorization": "Bearer tok-b"}, timeout=30
        )
        browser.get(svc.root + "/dashboard")
        form = find_element(browser, "#token-form:not([hidden])")  # asked once, as a person would answer it
        form.find_element("css selector", "#token").send_keys("tok-b-view")
        form.find_element("css selector", "button").click()
        find_element(browser, f'tr[data-job="{ours.json()["job_id"]}"]')
        assert not browser.find_elements("css selector", f'tr[data-job="{theirs.json()["job_id"]}"]')
        browser.get(f"{svc.root}/dashboard/jobs/{ours.json()['job_id']}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.role") == "viewer")
        assert not browser.find_element("css selector", "#stop").is_displayed()
        browser.execute_script("sessionStorage.setItem('imts-token', 'tok-b')")
        browser.get(f"{svc.root}/dashboard/jobs/{ours.json()['job_id']}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.role") == "member")
        assert browser.find_element("css selector", "#stop").is_displayed()
    finally:
        browser.execute_script("sessionStorage.clear()")
        svc.stop()


def test_the_serving_page_shows_the_servers_adapters_and_chats_with_any_model_name(browser, tmp_path):
    """The page with a FAKE trainer and a FAKE vLLM (tests/fake_vllm.py): the real vLLM is in
    tests/e2e/test_e2e_serving.py."""
    home = make_home(tmp_path / "home")
    wrapper = os.path.join(str(tmp_path), "fake-vllm-python")
    with open(wrapper, "w") as handle:
        handle.write(
            f'#!/bin/sh\nexec {sys.executable} {os.path.join(PROJECT, "tests", "fake_vllm.py")} "$@"\n'
        )
    os.chmod(wrapper, 0o755)
    svc = Service(
        home, llamafactory_cli=fake_cli(str(tmp_path)), vllm_python=wrapper, deploy_ports="18650-18659"
    ).start()
    try:
        job_id = svc.create({"model_name": "tiny-llama", "dataset": "demo_sft"})
        assert svc.wait_done(job_id)["status"] == "completed"
        browser.get_log("browser")
        browser.get(f"{svc.root}/dashboard/serving")
        find_element(browser, "#servers tbody td.muted")  # no server yet
        wait_for(lambda: browser.find_elements("css selector", f'#model-names option[value="{job_id}"]'))
        find_element(browser, "#chat-model").send_keys(job_id)
        find_element(browser, "#chat-input").send_keys("Add three and three.")
        find_element(browser, "#chat-form button").click()
        answer = find_element(browser, '.turn[data-role="assistant"][data-streaming="false"]', timeout=60)
        assert answer.text.startswith("assistant:") and "w0 w1 w2" in answer.text, answer.text
        row = find_element(browser, '#servers tr[data-status="ready"]', timeout=30)
        assert "tiny-llama" in row.text and job_id in row.find_element("css selector", "td.adapters").text
        browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-serving.png"))
        no_console_errors(browser)  # before the refusal below, which the browser logs as an error
        # A name nobody has: the page says so.
        model = find_element(browser, "#chat-model")
        model.clear()
        model.send_keys("train_00000000")
        find_element(browser, "#chat-input").send_keys("hi")
        find_element(browser, "#chat-form button").click()
        find_element(browser, '.turn[data-failed="true"]')
        assert "does not exist" in text_of(browser, "#notice")
    finally:
        for server in requests.get(f"{svc.base}/servers", timeout=30).json()["servers"]:
            requests.delete(f"{svc.base}/servers/{server['server_id']}", timeout=60)
        svc.stop()
