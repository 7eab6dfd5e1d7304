"""Executors: the Ray executor against a FAKE Ray job server (tests/fake_ray.py) whose pretend nodes
run the real monitor and the FAKE trainer as another host would; the shared-filesystem check.
The real Ray cluster is in tests/executors/test_cluster.py."""

import json
import os
import shlex
import sys
import time

import pytest
import requests

from imts_flask.executors import make_executor
from imts_flask.fsio import filesystem_problems
from imts_flask.llamafactory.environment import trainer_env
from imts_flask.settings import load_settings

from conftest import API, FAKE_SERVER, api_create, api_done, api_status, fake_cli, make_home, wait_for
from fake_ray import FakeRay
from harness import Service

RUNS = ("--steps", "40", "--interval", "0.05", "--save-every", "10")


@pytest.fixture
def fake_ray():
    made = []

    def make(*nodes):
        made.append(FakeRay(nodes or ("fake-node-a",)))
        return made[-1]

    yield make
    for ray in made:
        ray.stop()


@pytest.fixture
def ray_app(make_app, fake_ray):
    def build(*options, nodes=("fake-node-a",), **settings):
        ray = fake_ray(*nodes)
        app = make_app(*options, executor="ray", ray_address=ray.address, **settings)
        return app.test_client(), ray

    return build


def _job_dir(client, job_id):
    return os.path.dirname(api_status(client, job_id)["config_path"])


def test_a_job_is_submitted_as_a_ray_job_running_its_monitor(ray_app):
    client, ray = ray_app(*RUNS, ray_resources='{"imts": 1}', max_concurrent_jobs=1)
    job_id = api_create(client)
    final = api_done(client, job_id)
    assert final["status"] == "completed" and final["current_step"] == 40
    [body] = ray.submissions
    assert body["submission_id"] == job_id  # `ray job status train_xxx` finds it
    argv = shlex.split(body["entrypoint"])
    assert argv[:3] == [sys.executable, "-m", "imts_flask.monitor"] and argv[3:5] == ["train", job_id]
    assert body["entrypoint_num_gpus"] == 0 and body["entrypoint_num_cpus"] == 1.0
    assert body["entrypoint_resources"] == {"imts": 1}
    env = body["runtime_env"]["env_vars"]
    assert json.loads(env["IMTS_MONITOR_SETTINGS"])["executor"] == "ray"
    assert env["IMTS_MONITOR_LOG"] == os.path.join(_job_dir(client, job_id), "monitor.log")
    assert body["metadata"]["imts_job_id"] == job_id
    state = json.load(open(os.path.join(_job_dir(client, job_id), "state.json")))
    assert state["monitor"]["host"] == "fake-node-a"  # the service sees another host's pid
    assert "trainer started" in open(os.path.join(_job_dir(client, job_id), "monitor.log")).read()


def test_every_queued_job_waits_in_rays_queue_with_its_position(ray_app):
    client, ray = ray_app("--steps", "1000", "--interval", "0.05", max_concurrent_jobs=1)
    jobs = [api_create(client) for _ in range(3)]
    wait_for(lambda: len(ray.submissions) == 3)  # all submitted: Ray, not our capacity, decides
    wait_for(lambda: api_status(client, jobs[0])["status"] == "running")
    waiting = [api_status(client, j) for j in jobs[1:]]
    assert [(s["status"], s["queue_position"]) for s in waiting] == [("pending", 1), ("pending", 2)]
    assert ray.jobs[jobs[1]]["status"] == "PENDING"
    stopped = client.post(f"{API}/jobs/{jobs[2]}/stop")  # withdrawn from Ray's queue too
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "stopped"
    wait_for(lambda: ray.jobs[jobs[2]]["status"] == "STOPPED")
    for job_id in jobs[:2]:
        client.post(f"{API}/jobs/{job_id}/stop")


def test_a_stop_reaches_a_monitor_on_another_host_through_the_record(ray_app):
    client, ray = ray_app("--steps", "1000", "--interval", "0.05")
    job_id = api_create(client)
    wait_for(lambda: (api_status(client, job_id)["current_step"] or 0) > 2)
    response = client.post(f"{API}/jobs/{job_id}/stop")  # no signal can cross hosts: the record does
    assert response.status_code == 200 and response.get_json()["status"] == "stopped"
    wait_for(lambda: ray.jobs[job_id]["status"] in ("SUCCEEDED", "STOPPED"))
    log = open(os.path.join(_job_dir(client, job_id), "monitor.log")).read()
    assert "a stop was requested in the run's record" in log


def test_a_dead_node_sends_the_job_to_another_attempt_on_another_node(ray_app):
    client, ray = ray_app(*RUNS, nodes=("fake-node-a", "fake-node-b"), heartbeat_s=0.5, housekeeping_s=0.3)
    job_id = api_create(client)
    output = api_status(client, job_id)["output_dir"]
    wait_for(lambda: os.path.isdir(os.path.join(output, "checkpoint-10")))
    first_node = ray.jobs[job_id]["driver_node_id"]
    ray.kill_node(first_node)
    final = api_done(client, job_id)
    assert final["status"] == "completed" and final["attempt"] == 2, final.get("error")
    [again] = [sid for sid in ray.jobs if sid != job_id]
    assert again.startswith(job_id + "-") and ray.jobs[again]["driver_node_id"] != first_node
    events = client.get(f"{API}/jobs/{job_id}/events").get_json()["events"]
    lost = [e for e in events if e["status"] == "pending" and e["attempt"] == 2]
    assert lost and f"its Ray job {job_id} ended FAILED" in lost[0]["reason"]


def test_an_unreachable_ray_leaves_jobs_pending_until_it_answers(ray_app):
    client, ray = ray_app("--steps", "3", launch_timeout_s=1)
    ray.down = True
    job_id = api_create(client)
    service = client.application.extensions["imts"]
    wait_for(lambda: service.store.read(job_id).launch)
    assert api_status(client, job_id)["status"] == "pending"
    health = client.get(f"{API}/health")
    assert health.status_code == 200 and health.get_json()["checks"]["executor"]["ok"] is False
    ray.down = False
    time.sleep(1.5)  # past launch_timeout_s
    service.housekeeper.run()  # the launch Ray never got is queued again and submitted
    assert api_done(client, job_id)["status"] == "completed"


def test_a_job_bigger_than_a_node_trains_with_llamafactorys_ray_workers(ray_app):
    client, ray = ray_app("--steps", "2", ray_max_gpus=8, ray_gpus_per_node=4)
    job_id = api_create(client, gpus=6)
    assert api_done(client, job_id)["status"] == "completed"
    [body] = ray.submissions
    assert body["entrypoint_num_gpus"] == 0  # the monitor holds none: LLaMA Factory's workers do
    config = open(api_status(client, job_id)["config_path"]).read()
    assert "ray_num_workers: 6" in config
    env = json.load(open(os.path.join(_job_dir(client, job_id), "fake_env.json")))
    assert env["USE_RAY"] == "1" and env["FORCE_TORCHRUN"] is None
    refused = client.post(f"{API}/jobs", json={"model_name": "tiny-llama", "dataset": "demo_sft", "gpus": 9})
    assert refused.status_code == 400 and "ray_max_gpus" in refused.get_json()["message"]


def test_an_export_runs_as_a_ray_job_too(ray_app):
    client, ray = ray_app("--steps", "2")
    job_id = api_create(client)
    api_done(client, job_id)
    response = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "on_ray"})
    assert response.status_code == 200, response.get_json()
    export_ids = [sid for sid in ray.jobs if sid.startswith(f"{job_id}-export-")]
    assert len(export_ids) == 1
    wait_for(lambda: ray.jobs[export_ids[0]]["status"] == "SUCCEEDED")  # it exits after recording


def test_ray_places_the_gpus_and_the_trainer_keeps_them(home, monkeypatch):
    settings = load_settings(
        {"home": home, "executor": "ray", "ray_address": "http://x", "gpus": ""}, environ={}
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    env = trainer_env(settings, None, engine=True)
    assert (
        env["CUDA_VISIBLE_DEVICES"] == "3,5" and env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "2"
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert trainer_env(settings, None, engine=True)["OMP_NUM_THREADS"] == "1"  # the CPUs Ray reserved


def test_the_executor_setting_is_checked_at_start(home):
    with pytest.raises(ValueError, match="ray_address"):
        make_executor(load_settings({"home": home, "executor": "ray"}, environ={}))
    with pytest.raises(ValueError, match="'local' or 'ray'"):
        make_executor(load_settings({"home": home, "executor": "slurm"}, environ={}))


def test_the_job_store_needs_locks_that_exclude(tmp_path, monkeypatch):
    assert filesystem_problems(str(tmp_path)) == []
    monkeypatch.setattr("imts_flask.fsio.fcntl.flock", lambda fd, op: None)  # a filesystem that never locks
    assert "do not exclude each other" in filesystem_problems(str(tmp_path))[0]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_is_no_filesystem_problem_so_a_worker_still_starts(tmp_path, monkeypatch):
    import errno

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imts_flask.fsio.atomic_write_bytes", full)
    assert filesystem_problems(str(tmp_path)) == []  # the soak's full disk made new workers fail to boot
    monkeypatch.setattr(
        "imts_flask.fsio.atomic_write_bytes", lambda p, d: (_ for _ in ()).throw(PermissionError(13, "no"))
    )
    assert "cannot be written" in filesystem_problems(str(tmp_path))[0]


def test_the_workers_metrics_live_off_the_data_disk(tmp_path):
    from imts_flask.http.server import metrics_dir

    shm = tmp_path / "shm"
    shm.mkdir()
    home = str(tmp_path / "home")
    assert metrics_dir(home, shm=str(shm)).startswith(str(shm) + "/imts-metrics-")
    assert metrics_dir(home, shm=str(shm)) != metrics_dir(home + "2", shm=str(shm))  # one per home
    assert metrics_dir(home, shm=str(tmp_path / "none")) == os.path.join(home, "cache", "metrics")


def test_two_local_instances_on_one_home_agree(tmp_path):
    """executor: local, two gunicorn instances on one host sharing IMTS_HOME (Nginx would spread
    requests over them): either answers for any job, and stops it."""
    home = make_home(tmp_path / "home")
    cli = fake_cli(home, "--steps", "1000", "--interval", "0.05")
    first, second = (Service(home, workers=2, llamafactory_cli=cli, stop_grace_s=3).start() for _ in range(2))
    try:
        job_id = first.create({"model_name": "tiny-llama", "dataset": "demo_sft"})
        wait_for(lambda: second.status(job_id)["status"] == "running")
        assert first.status(job_id)["pid"] == second.status(job_id)["pid"]
        assert requests.post(f"{second.base}/jobs/{job_id}/stop", timeout=60).status_code == 200
        assert first.status(job_id)["status"] == "stopped"
        queued = [first.create({"model_name": "tiny-llama", "dataset": "demo_sft"}) for _ in range(2)]
        wait_for(lambda: second.status(queued[0])["status"] == "running")
        assert second.status(queued[1])["queue_position"] == 1 == first.status(queued[1])["queue_position"]
        for job in queued:
            requests.post(f"{first.base}/jobs/{job}/stop", timeout=60)
    finally:
        first.stop()
        second.stop()


def test_a_deployment_runs_as_a_ray_job_and_its_base_url_names_the_node(ray_app):
    client, ray = ray_app(
        "--steps", "2", deploy_command=f"{sys.executable} {FAKE_SERVER}", deploy_ports="18660-18669"
    )
    job_id = api_create(client)
    api_done(client, job_id)
    created = client.post(f"{API}/deployments", json={"job_id": job_id}).get_json()
    deployment_id = created["deployment_id"]
    ready = wait_for(
        lambda: (d := client.get(f"{API}/deployments/{deployment_id}").get_json())["status"] == "ready" and d
    )
    assert ready["base_url"] == f"http://fake-node-a:{created['port']}/v1"
    assert any(body["submission_id"] == deployment_id for body in ray.submissions)
    # A stop reaches its monitor on the node through the record.
    stopped = client.delete(f"{API}/deployments/{deployment_id}").get_json()
    assert stopped["status"] == "stopped"
    wait_for(lambda: ray.jobs[deployment_id]["status"] == "SUCCEEDED")
