"""The dashboard as an operator's console, in headless Chromium against gunicorn and the real
llamafactory-cli: a job made from the form runs (a double click makes one), a refused field shows
the API's reason beside it, Clone fills the form, an upload shows its progress and its preview,
delete asks first, two finished runs compare on one chart with the settings that differ, and the
models page lists what exists. Hostile values are shown as text. Screenshots go to docs/screenshots/."""

import json
import os

import pytest
import requests

from conftest import SCREENSHOTS, find_element, make_home, no_console_errors, text_of, wait_for
from harness import Service

pytestmark = pytest.mark.e2e

FAST = {"template": "default", "cutoff_len": 64, "logging_steps": 1}
HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("console") / "home")
    svc = Service(home, max_upload_mb=8).start()
    yield svc
    for job in requests.get(f"{svc.base}/jobs?status=running", timeout=30).json()["jobs"]:
        requests.post(f"{svc.base}/jobs/{job['job_id']}/stop", timeout=60)
    svc.stop()


def _set(driver, name, value):
    """Set a form control by its API field path, as typing or choosing would."""
    driver.execute_script(
        "const input = document.getElementById('f-' + arguments[0]);"
        "input.value = arguments[1]; input.dispatchEvent(new Event('change'));",
        name,
        str(value),
    )


def _open_form(driver, url):
    driver.get(url)
    find_element(driver, "#f-model_name option")  # the choices came from the API
    find_element(driver, "#f-custom_config\\.cutoff_len")


def _job_ids(svc):
    return {j["job_id"] for j in requests.get(f"{svc.base}/jobs?limit=1000", timeout=30).json()["jobs"]}


@pytest.fixture(scope="module")
def formed(browser, console):
    """A job made from the form by a double click, followed to its end."""
    browser.get_log("browser")
    before = _job_ids(console)
    _open_form(browser, f"{console.root}/dashboard/new")
    chosen = {
        "model_name": "tiny-llama",
        "dataset": "demo_sft",
        "stage": "sft",
        "epochs": 1,
        "learning_rate": 0.001,
    }
    chosen["custom_config.cutoff_len"] = 64
    chosen.update({"custom_config.logging_steps": 1, "custom_config.template": "default"})
    for name, value in chosen.items():
        _set(browser, name, value)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-new.png"))
    browser.execute_script(
        "const b = document.getElementById('submit'); b.click(); b.click();"
    )  # a double click
    wait_for(lambda: "/dashboard/jobs/train_" in browser.current_url, timeout=30)
    job_id = browser.current_url.rsplit("/", 1)[1]
    made = _job_ids(console) - before
    final = console.wait_done(job_id, timeout=300)
    return job_id, made, final


def test_a_job_made_in_the_form_runs_and_a_double_click_makes_one(browser, console, formed):
    job_id, made, final = formed
    assert made == {job_id}  # one job for two clicks: one Idempotency-Key per filled form
    assert final["status"] == "completed", final.get("error")
    request = requests.get(f"{console.base}/jobs/{job_id}/request", timeout=30).json()
    assert request["epochs"] == 1 and request["custom_config"]["cutoff_len"] == 64
    assert request["priority"] == "normal" and "preemptible" not in request  # the defaults, not sent
    no_console_errors(browser)


def test_a_refused_field_shows_the_apis_reason_beside_it(browser, console):
    before = _job_ids(console)
    _open_form(browser, f"{console.root}/dashboard/new")
    _set(browser, "dataset", "demo_sft")
    _set(browser, "epochs", 0)
    _set(browser, "custom_config.cutoff_len", 0)
    browser.find_element("css selector", "#submit").click()
    reason = wait_for(lambda: text_of(browser, '[data-error-for="epochs"]'))
    body = {"model_name": "tiny-llama", "dataset": "demo_sft", "epochs": 0}
    api = requests.post(f"{console.base}/jobs", json=body, timeout=30).json()
    assert reason == api["errors"][0]["reason"]
    assert "invalid" in browser.find_element("css selector", "#f-epochs").get_attribute("class")
    assert "epochs" in text_of(browser, "#notice")
    _set(browser, "epochs", 1)
    browser.find_element("css selector", "#submit").click()
    cut = wait_for(lambda: text_of(browser, '[data-error-for="custom_config.cutoff_len"]'))
    assert cut == "must be between 1 and 1048576"
    assert text_of(browser, '[data-error-for="epochs"]') == ""  # cleared once it was right
    assert _job_ids(console) == before  # nothing was made


def test_clone_fills_the_form_with_the_jobs_request(browser, console, formed):
    job_id, _, _ = formed
    browser.get(f"{console.root}/dashboard/jobs/{job_id}")
    clone = find_element(browser, "#clone")
    wait_for(lambda: job_id in clone.get_attribute("href"))
    clone.click()
    wait_for(lambda: text_of(browser, "#clone-of") == f"from {job_id}")
    values = browser.execute_script(
        "return ['epochs', 'learning_rate', 'custom_config.cutoff_len', 'dataset', 'model_name']"
        ".map((n) => document.getElementById('f-' + n).value)"
    )
    assert values == ["1", "0.001", "64", "demo_sft", "tiny-llama"]


def test_upload_with_progress_preview_as_text_then_delete(browser, console, tmp_path):
    browser.get_log("browser")
    path = tmp_path / "hostile.jsonl"
    with open(path, "w") as handle:  # about 3 MB: the progress bar has bytes to count
        handle.write(json.dumps({"instruction": HOSTILE, "input": "", "output": "x" * 500}) + "\n")
        for i in range(6000):
            handle.write(json.dumps({"instruction": f"row {i}", "input": "", "output": "y" * 500}) + "\n")
    browser.get(f"{console.root}/dashboard/datasets")
    find_element(browser, 'tr[data-name="demo_sft"]')
    browser.find_element("css selector", "#upload-file").send_keys(str(path))
    browser.find_element("css selector", "#upload-name").send_keys("console_sft")
    browser.find_element("css selector", "#upload-send").click()
    wait_for(lambda: "uploaded console_sft" in text_of(browser, "#upload-state"), timeout=120)
    bar = browser.find_element("css selector", "#upload-progress")
    assert int(bar.get_attribute("data-sent")) >= os.path.getsize(path)  # every byte was counted
    assert "6001 rows checked" in bar.text
    row = find_element(browser, 'tr[data-name="console_sft"]')
    assert "upload" in row.text and "6001" in row.text
    row.find_element("css selector", ".preview-button").click()
    cell = wait_for(
        lambda: [td for td in browser.find_elements("css selector", "#preview td") if "img" in td.text]
    )
    assert cell[0].text == HOSTILE  # the markup is text on the page
    assert browser.execute_script("return window.pwned") is None
    long_value = [
        td.text for td in browser.find_elements("css selector", "#preview td") if td.text.startswith("xxx")
    ]
    assert long_value and len(long_value[0]) == 121 and long_value[0].endswith("…")  # cut at 120
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-datasets.png"))
    # The operator's dataset cannot be deleted from here; the upload can, after a confirmation.
    assert not find_element(browser, 'tr[data-name="demo_sft"] .delete-button').is_enabled()
    row.find_element("css selector", ".delete-button").click()
    browser.switch_to.alert.dismiss()  # "cancel": nothing happens
    assert requests.get(f"{console.base}/datasets/console_sft", timeout=30).status_code == 200
    find_element(browser, 'tr[data-name="console_sft"] .delete-button').click()
    browser.switch_to.alert.accept()
    wait_for(lambda: not browser.find_elements("css selector", 'tr[data-name="console_sft"]'))
    assert requests.get(f"{console.base}/datasets/console_sft", timeout=30).status_code == 404
    assert "deleted console_sft" in text_of(browser, "#notice")
    no_console_errors(browser)


def test_an_upload_the_api_refuses_shows_its_reason(browser, console, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "output": "ok"}\nnot json at all\n')
    browser.get(f"{console.root}/dashboard/datasets")
    browser.find_element("css selector", "#upload-file").send_keys(str(path))
    browser.find_element("css selector", "#upload-name").send_keys("../../jobs")  # a hostile name
    browser.find_element("css selector", "#upload-send").click()
    message = wait_for(lambda: text_of(browser, "#notice.error"))
    assert "name" in message
    browser.find_element("css selector", "#upload-name").clear()
    browser.find_element("css selector", "#upload-name").send_keys("bad_rows")
    browser.find_element("css selector", "#upload-send").click()
    wait_for(
        lambda: "line 2" in text_of(browser, "#notice.error") or "row 2" in text_of(browser, "#notice.error")
    )
    assert requests.get(f"{console.base}/datasets/bad_rows", timeout=30).status_code == 404


def test_two_finished_runs_compare_on_one_chart_with_the_settings_that_differ(browser, console, formed):
    browser.get_log("browser")
    first, _, _ = formed
    body = {"model_name": "tiny-llama", "dataset": "demo_sft", "epochs": 2.0, "learning_rate": 0.0005,
            "custom_config": {**FAST, "default_system": HOSTILE}}  # fmt: skip
    second = console.create(body)
    assert console.wait_done(second, timeout=300)["status"] == "completed"
    browser.get(f"{console.root}/dashboard")
    for job_id in (first, second):
        find_element(browser, f'tr[data-job="{job_id}"] input.pick').click()
    find_element(browser, "#compare").click()
    chart = find_element(browser, "#compare-chart[data-curves]")
    assert chart.get_attribute("data-curves") == "2"  # a loss curve for each run
    assert len(browser.find_elements("css selector", "#compare-chart .u-series")) >= 3  # step + 2 runs
    differ = {
        tr.get_attribute("data-key"): tr.text
        for tr in browser.find_elements("css selector", "#differ tbody tr")
    }
    assert set(differ) == {"epochs", "learning_rate", "custom_config.default_system"}
    assert (
        HOSTILE in differ["custom_config.default_system"]
        and browser.execute_script("return window.pwned") is None
    )
    finals = text_of(browser, "#finals")
    assert first in finals and second in finals and "completed" in finals
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-compare.png"))
    # Cloned, the hostile run's form shows its values as values, and runs nothing.
    _open_form(browser, f"{console.root}/dashboard/new?clone={second}")
    wait_for(lambda: text_of(browser, "#clone-of") == f"from {second}")
    assert browser.execute_script("return document.getElementById('f-epochs').value") == "2"
    assert browser.execute_script("return window.pwned") is None
    no_console_errors(browser)


def test_the_list_searches_and_sorts_and_the_models_page_lists_what_exists(browser, console, formed):
    job_id, _, _ = formed
    browser.get(f"{console.root}/dashboard")
    find_element(browser, f'tr[data-job="{job_id}"]')
    browser.find_element("css selector", "#search").send_keys("no-such-model")
    wait_for(lambda: "no jobs" in text_of(browser, "#jobs tbody"))
    assert "q=no-such-model" in browser.current_url
    browser.find_element("css selector", "#search").clear()
    browser.find_element("css selector", "#search").send_keys("DEMO_SFT")  # any case
    find_element(browser, f'tr[data-job="{job_id}"]')
    browser.execute_script(
        "const s = document.getElementById('sort'); s.value = 'loss'; s.dispatchEvent(new Event('change'));"
    )
    wait_for(lambda: "sort=loss" in browser.current_url)
    listed = requests.get(f"{console.base}/jobs?sort=loss&q=demo_sft", timeout=30).json()["jobs"]
    losses = [j["current_loss"] for j in listed if j["status"] == "completed"]
    assert losses == sorted(losses)
    rows = wait_for(
        lambda: [
            tr.get_attribute("data-job") for tr in browser.find_elements("css selector", "#jobs tbody tr")
        ]
    )
    assert rows[: len(listed)] == [j["job_id"] for j in listed]
    registered = requests.post(
        f"{console.base}/models",
        json={"name": "console-bot", "job_id": job_id, "description": HOSTILE},
        timeout=60,
    )
    assert registered.status_code == 201, registered.text
    browser.get(f"{console.root}/dashboard/models")
    row = find_element(browser, 'tr[data-model="tiny-llama"]')
    assert "LlamaForCausalLM" in row.text
    version = find_element(browser, 'tr[data-version="console-bot:1"]')
    assert job_id in version.text and "demo_sft" in version.text and "tiny-llama" in version.text
    assert (
        version.find_element("css selector", "a").get_attribute("href").endswith(f"/dashboard/jobs/{job_id}")
    )
    assert "no deployments" in text_of(browser, "#model-deployments")
    browser.save_screenshot(os.path.join(SCREENSHOTS, "dashboard-models.png"))
    no_console_errors(browser)


def test_the_new_pages_fit_a_phone_width_screen(browser, console, formed):
    job_id, _, _ = formed
    browser.set_window_size(390, 844)
    try:
        pages = {
            "/dashboard/new": "#f-model_name option",
            "/dashboard/datasets": "#datasets tbody tr",
            "/dashboard/models": "#base-models tbody tr",
            f"/dashboard/compare?jobs={job_id}": "#compared",
        }
        for path, ready in pages.items():
            browser.get(console.root + path)
            find_element(browser, ready)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, (path, overflow)  # wide tables scroll inside their box
    finally:
        browser.set_window_size(1280, 900)
