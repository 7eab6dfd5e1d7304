"""GPU figures: NVML readings (a FAKE NVML, tests/fake_nvml.py, where there is no GPU) in health,
/metrics and job status; throughput from LLaMA Factory's log. `make gpu-check` reads a real GPU."""

import json
import os
import re

import pytest
from fake_nvml import FakeNvml
from prometheus_client.parser import text_string_to_metric_families

from imts_flask.llamafactory.trainer_log import read_progress
from imts_flask.observe import gpus as gpus_module
from imts_flask.observe.gpus import Gpus

from conftest import API, PROJECT, api_create, api_done, api_status, wait_for


def test_every_figure_is_read_and_kept_briefly():
    nvml = FakeNvml(count=2)
    gpus = Gpus(["0", "GPU-fake-0001"], nvml=nvml)
    reading = gpus.read()
    assert reading["available"] and reading["driver"] == "580.95.05"
    first, second = reading["gpus"]
    assert first == {
        "id": "0",
        "uuid": "GPU-fake-0000",
        "name": "FAKE H100 80GB HBM3",
        "lost": False,
        "error": None,
        "utilization": 0.40,
        "memory_used_bytes": 2**30,
        "memory_total_bytes": 80 * 2**30,
        "temperature_celsius": 50,
        "power_watts": 300.0,
        "processes": {},
    }
    assert second["uuid"] == "GPU-fake-0001" and second["utilization"] == 0.41  # named by UUID
    calls = nvml.calls
    gpus.read()
    assert nvml.calls == calls  # cached: a scrape and a status read do not each ask NVML


def test_health_lists_the_gpus_and_fails_on_a_lost_or_missing_one():
    nvml = FakeNvml(count=2)
    ok, check = Gpus(["0", "1"], nvml=nvml).health()
    assert ok and check["driver"] == "580.95.05"
    assert check["gpus"][0] == {"id": "0", "name": "FAKE H100 80GB HBM3", "memory_total_mb": 81920}
    nvml.devices[1]["lost"] = True
    ok, check = Gpus(["0", "1"], nvml=nvml).health()
    assert not ok and "GPU 1: GPU is lost" in check["detail"]
    ok, check = Gpus(["0", "7"], nvml=FakeNvml(count=2)).health()  # configured, not there
    assert not ok and "GPU 7" in check["detail"]


def test_without_nvml_or_without_gpus():
    ok, check = Gpus(["0"], nvml=FakeNvml(absent=True)).health()
    assert not ok and "NVML Shared Library Not Found" in check["detail"]
    ok, check = Gpus([], nvml=FakeNvml(absent=True)).health()
    assert ok and check == {"gpus": [], "detail": "no GPUs: jobs train on the CPU"}
    assert Gpus([], nvml=None).memory_of([1]) is None


@pytest.fixture
def gpu_app(make_app, monkeypatch):
    nvml = FakeNvml(count=2)
    monkeypatch.setattr(gpus_module, "_load_nvml", lambda: nvml)
    # A step each 0.2 s: the log's tail spans a few seconds, enough for rates of steps and tokens.
    return make_app("--steps", "1000", "--interval", "0.2", gpus="0,1").test_client(), nvml


def test_status_health_and_metrics_show_the_gpus_and_each_jobs_share(gpu_app):
    client, nvml = gpu_app
    job_id = api_create(client)
    running = wait_for(lambda: (s := api_status(client, job_id))["status"] == "running" and s)
    gpu = int(running["gpu_ids"][0])
    nvml.devices[gpu]["processes"] = [(running["pid"], 512 * 2**20), (99999999, 2**30)]  # and a stranger
    gpus_module.CACHE_S, cache = 0, gpus_module.CACHE_S
    try:
        status = wait_for(lambda: (s := api_status(client, job_id))["samples_per_second"] and s)
        assert status["gpu_memory_mb"] == 512  # its own tree's share, matched by pid
        assert status["tokens_per_second"] > 0 and status["samples_per_second"] > 0
        families = {
            f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        }
        utilization = {s.labels["gpu"]: s for s in families["imts_gpu_utilization_ratio"].samples}
        assert utilization["1"].value == 0.41 and utilization["1"].labels["uuid"] == "GPU-fake-0001"
        for name in (
            "imts_gpu_memory_used_bytes",
            "imts_gpu_memory_total_bytes",
            "imts_gpu_temperature_celsius",
        ):
            assert len(families[name].samples) == 2, name
        assert families["imts_gpu_power_watts"].samples[0].value == 300.0
        [memory] = families["imts_job_gpu_memory_bytes"].samples
        assert memory.labels == {"job_id": job_id, "gpu": str(gpu)} and memory.value == 512 * 2**20
        [loss] = families["imts_job_loss"].samples
        assert loss.labels == {"job_id": job_id} and loss.value > 0
        assert 0 < families["imts_job_progress_ratio"].samples[0].value < 1
        [tokens] = families["imts_job_tokens_per_second"].samples
        assert tokens.labels == {"job_id": job_id} and tokens.value > 0
        # The Grafana dashboard in deploy/ draws only series the service exports.
        samples = {s.name for f in families.values() for s in f.samples}
        dashboard = json.load(open(os.path.join(PROJECT, "deploy", "grafana-dashboard.json")))
        drawn = {
            m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"imts_\w+", t["expr"])
        }
        assert drawn and drawn <= samples, drawn - samples
        listed = client.get(f"{API}/gpus").get_json()  # the dashboard's GPU panel reads this
        assert listed["available"] and listed["driver"] == "580.95.05"
        holders = {g["id"]: g["job_ids"] for g in listed["gpus"]}
        assert holders[str(gpu)] == [job_id] and holders[str(1 - gpu)] == []
        assert listed["gpus"][1]["utilization"] == 0.41
        health = client.get(f"{API}/health")
        assert health.status_code == 200 and health.get_json()["checks"]["gpus"]["ok"]
        nvml.devices[1]["lost"] = True
        health = client.get(f"{API}/health")
        assert (
            health.status_code == 503
            and "GPU 1: GPU is lost" in health.get_json()["checks"]["gpus"]["detail"]
        )
        families = {
            f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        }
        assert {s.labels["gpu"]: s.value for s in families["imts_gpu_lost"].samples} == {"0": 0, "1": 1}
    finally:
        gpus_module.CACHE_S = cache
        client.post(f"{API}/jobs/{job_id}/stop")


def test_without_gpus_the_figures_are_null_and_the_service_healthy(make_app):
    client = make_app("--steps", "5").test_client()
    job_id = api_create(client)
    final = api_done(client, job_id)
    assert final["gpu_memory_mb"] is None
    health = client.get(f"{API}/health").get_json()
    assert health["checks"]["gpus"] == {"ok": True, "gpus": [], "detail": "no GPUs: jobs train on the CPU"}


def test_throughput_comes_from_the_log_and_ignores_tokens_before_a_resume(tmp_path):
    def entry(step, elapsed, tokens):
        return {
            "current_steps": step,
            "total_steps": 100,
            "loss": 1.0,
            "elapsed_time": f"0:00:{elapsed:02d}",
            "total_tokens": tokens,
            "throughput": tokens / max(elapsed, 1),
        }

    # A run resumed at step 50 with 50,000 tokens already seen: LLaMA Factory's throughput counts them.
    lines = [entry(s, 0 if s == 51 else (s - 50) // 5, 50_000 + (s - 50) * 200) for s in range(51, 81)]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    progress = read_progress(str(tmp_path))
    assert progress["tokens_per_second"] == pytest.approx(
        1000, rel=0.2
    )  # 200 tokens a step, 5 steps a second
    assert progress["steps_per_second"] == pytest.approx(5, rel=0.2)
    assert lines[-1]["throughput"] > 5 * progress["tokens_per_second"]  # what it would have said
