"""The queue: capacity, FIFO order, GPU ids per job, stopping queued jobs, the housekeeper.

Real monitor processes drive the FAKE trainer (tests/fake_trainer.py).
"""

import json
import os
import signal
import time

from imts_flask.errors import InsufficientStorage

from conftest import max_overlap, wait_for

BASE = "/api/v1/training"
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


def _create(client, **extra):
    response = client.post(f"{BASE}/jobs", json={**BODY, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["job_id"]


def _status(client, job_id):
    return client.get(f"{BASE}/jobs/{job_id}").get_json()


def _done(client, job_id, timeout=60):
    return wait_for(
        lambda: (s := _status(client, job_id))["status"] in ("completed", "failed", "stopped") and s,
        timeout=timeout,
    )


def _fake_env(status):
    """The GPU environment the fake trainer recorded (it writes it just after it starts)."""
    path = os.path.join(os.path.dirname(status["config_path"]), "fake_env.json")
    return json.loads(wait_for(lambda: os.path.exists(path) and open(path).read()))


def test_jobs_beyond_capacity_wait_in_order(make_app, home):
    client = make_app("--steps", "40", "--interval", "0.05", max_concurrent_jobs=1).test_client()
    ids = [_create(client) for _ in range(3)]
    # Jobs start just after the POST answers: wait for the first to leave the queue.
    first = wait_for(lambda: (s := _status(client, ids[0]))["queue_position"] is None and s)
    assert first["status"] in ("pending", "running")
    assert [_status(client, j)["queue_position"] for j in ids[1:]] == [1, 2]
    assert [_status(client, j)["status"] for j in ids[1:]] == ["pending", "pending"]
    finals = [_done(client, j) for j in ids]
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert [f["started_at"] for f in finals] == sorted(f["started_at"] for f in finals)
    assert max_overlap(home) == 1


def test_stopping_a_queued_job_never_starts_it(make_app):
    client = make_app("--steps", "40", "--interval", "0.05", max_concurrent_jobs=1).test_client()
    running, queued, after = (_create(client) for _ in range(3))
    response = client.post(f"{BASE}/jobs/{queued}/stop")
    assert response.status_code == 200 and response.get_json()["status"] == "stopped"
    stopped = _status(client, queued)
    assert stopped["status"] == "stopped" and stopped["started_at"] is None and stopped["pid"] is None
    assert _status(client, after)["queue_position"] == 1
    assert _done(client, running)["status"] == "completed"
    assert _done(client, after)["status"] == "completed"
    assert _status(client, queued)["status"] == "stopped"
    assert not os.path.exists(os.path.join(os.path.dirname(stopped["config_path"]), "fake_env.json"))


def test_each_job_gets_its_own_gpus(make_app):
    client = make_app("--steps", "60", "--interval", "0.05", gpus="0,1,2,3").test_client()
    a, b = _create(client, gpus=2), _create(client, gpus=2)
    c = _create(client, gpus=1)
    sa = wait_for(lambda: (s := _status(client, a))["status"] == "running" and s)
    sb = wait_for(lambda: (s := _status(client, b))["status"] == "running" and s)
    assert set(sa["gpu_ids"]).isdisjoint(sb["gpu_ids"]) and len(sa["gpu_ids"]) == len(sb["gpu_ids"]) == 2
    waiting = _status(client, c)
    assert waiting["status"] == "pending" and waiting["queue_position"] == 1  # no GPU left for it
    env = _fake_env(sa)
    assert env == {
        "CUDA_VISIBLE_DEVICES": ",".join(sa["gpu_ids"]),
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": "2",
        "USE_RAY": "0",
        "OMP_NUM_THREADS": env["OMP_NUM_THREADS"],  # the service's own, if any: GPUs here
    }
    sc = _done(client, c)
    assert sc["status"] == "completed" and len(sc["gpu_ids"]) == 1
    env_c = _fake_env(sc)
    assert env_c["CUDA_VISIBLE_DEVICES"] == sc["gpu_ids"][0] and env_c["FORCE_TORCHRUN"] is None


def test_a_request_that_can_never_fit_is_refused(make_app):
    gpu_client = make_app(gpus="0,1").test_client()
    response = gpu_client.post(f"{BASE}/jobs", json={**BODY, "gpus": 3})
    assert response.status_code == 400 and response.get_json()["errors"][0]["field"] == "gpus"
    cpu_client = make_app().test_client()
    response = cpu_client.post(f"{BASE}/jobs", json={**BODY, "gpus": 1})
    assert response.status_code == 400 and "no GPUs" in response.get_json()["message"]


def test_a_launch_whose_monitor_never_appeared_is_queued_again(make_app, monkeypatch):
    client = make_app("--steps", "3", launch_timeout_s=1).test_client()
    service = client.application.extensions["imts"]
    # The worker handing out the slot dies before it can spawn the monitor.
    dropped = []
    monkeypatch.setattr(service.launcher.scheduler, "_start", lambda job_id, launch: dropped.append(launch))
    job_id = _create(client)
    first_launch = wait_for(lambda: service.store.read(job_id).launch)
    wait_for(lambda: dropped)  # the pass (a background thread) got as far as not starting it
    assert service.store.read(job_id).monitor is None
    monkeypatch.undo()
    time.sleep(1.5)
    service.housekeeper.run()
    final = _done(client, job_id)
    assert final["status"] == "completed"
    assert service.store.read(job_id).launch["id"] != first_launch["id"]


def test_the_housekeeper_settles_lost_jobs_and_starts_the_next_without_requests(make_app):
    client = make_app(
        "--steps",
        "1000",
        "--interval",
        "0.05",
        max_concurrent_jobs=1,
        housekeeping_s=0.3,
        heartbeat_s=0.2,
        max_attempts=1,
    ).test_client()
    service = client.application.extensions["imts"]
    first, second = _create(client), _create(client)
    wait_for(lambda: service.store.read(first).status == "running")
    os.kill(service.store.read(first).monitor["pid"], signal.SIGKILL)
    # No API call from here on: only the housekeeping thread can notice.
    wait_for(lambda: service.store.read(first).status == "failed", timeout=30)
    assert service.store.read(first).reason == "lost"
    wait_for(lambda: service.store.read(second).status == "running", timeout=30)
    client.post(f"{BASE}/jobs/{second}/stop")


def test_cpu_jobs_share_the_cores_instead_of_each_taking_all(home, monkeypatch):
    from imts_flask.llamafactory.environment import trainer_env
    from imts_flask.settings import load_settings

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    env = trainer_env(load_settings({"home": home, "max_concurrent_jobs": 2, "gpus": ""}, environ={}))
    assert env["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the operator's choice wins
    assert (
        trainer_env(load_settings({"home": home, "max_concurrent_jobs": 2}, environ={}))["OMP_NUM_THREADS"]
        == "3"
    )
    gpu = trainer_env(load_settings({"home": home, "gpus": "0,1"}, environ={}), gpu_ids=["0"])
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0" and gpu["OMP_NUM_THREADS"] == "3"


def test_a_stop_answers_about_its_own_job_when_scheduling_others_fails(make_app, monkeypatch):
    """Found by the chaos soak: with the disk full, a write to another job in the scheduling pass
    that follows a stop failed, and its 507 (naming the other job) became the answer to the stop,
    which had worked. Scheduling after a stop now runs in the background, as after a create."""
    client = make_app("--steps", "400", "--interval", "0.05").test_client()
    service = client.application.extensions["imts"]
    job_id = _create(client)
    wait_for(lambda: _status(client, job_id)["status"] == "running")
    other = "train_00000000"

    def full_disk_elsewhere():
        raise InsufficientStorage(f"no space left on the device while updating job {other}")

    monkeypatch.setattr(service.launcher, "schedule", full_disk_elsewhere)
    response = client.post(f"{BASE}/jobs/{job_id}/stop")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["job_id"] == job_id and response.get_json()["status"] == "stopped"
