"""The registry of model versions, with the fake trainer: versions and their lineage, weights that
outlive the job, aliases, deletion rules, and a version used by name for training and deployment."""

import os
import sys

import pytest
import yaml

from conftest import API, FAKE_SERVER, api_create, api_done, completed_job, wait_for


@pytest.fixture
def client(make_app):
    app = make_app(
        deploy_command=f"{sys.executable} {FAKE_SERVER}", deploy_ports="18550-18559", max_concurrent_jobs=2
    )
    return app.test_client()


def register(client, **body):
    response = client.post(f"{API}/models", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_registering_gives_numbered_versions_with_their_lineage(client, home):
    job_id = completed_job(client)
    first = register(client, name="support-bot", job_id=job_id, description="first try")
    second = register(client, name="support-bot", job_id=job_id)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["reference"] == "support-bot:1" and first["description"] == "first try"
    assert first["job_id"] == job_id and first["checkpoint"] == "final"
    assert first["base_model"] == "tiny-llama" and first["base_model_path"].endswith("models/tiny-llama")
    assert first["weights_kind"] == "adapter" and first["stage"] == "sft"
    assert first["dataset"] == "demo_sft" and len(first["dataset_sha256"]["demo_sft"]) == 64
    assert "final_loss" in first["figures"]
    version_dir = os.path.join(home, "models", "registry", "support-bot", "versions", "1")
    assert sorted(os.listdir(version_dir)) == ["model.yaml", "state.json", "weights"]
    config = yaml.safe_load(open(os.path.join(version_dir, "model.yaml")))
    assert config["adapter_name_or_path"] == first["weights"]
    # The weights are the job's files, linked: no copy.
    job_weights = os.path.join(home, "jobs", job_id, "output", "adapter_model.safetensors")
    assert (
        os.stat(job_weights).st_ino
        == os.stat(os.path.join(first["weights"], "adapter_model.safetensors")).st_ino
    )
    assert "trainer_log.jsonl" not in os.listdir(first["weights"])
    listed = client.get(f"{API}/models").get_json()
    assert listed["registered"] == [{"name": "support-bot", "latest": 2, "aliases": {}, "versions": [1, 2]}]
    assert (
        "support-bot registered version 2"
        not in open(os.path.join(home, "models", "registry", "support-bot", "registry.log")).read()
    )
    assert (
        "registered version 2 from"
        in open(os.path.join(home, "models", "registry", "support-bot", "registry.log")).read()
    )


def test_a_version_outlives_its_job(client):
    job_id = completed_job(client)
    version = register(client, name="keeper", job_id=job_id)
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 204
    assert os.path.getsize(os.path.join(version["weights"], "adapter_model.safetensors")) > 0
    assert client.get(f"{API}/models/keeper/versions/1").get_json()["job_id"] == job_id


def test_aliases_move_and_name_a_version_for_deployments_and_training(client, home):
    job_id = completed_job(client)
    register(client, name="bot", job_id=job_id)
    register(client, name="bot", job_id=job_id)
    moved = client.put(f"{API}/models/bot/aliases/production", json={"version": 1})
    assert moved.status_code == 200 and moved.get_json()["aliases"] == {"production": 1}
    client.put(f"{API}/models/bot/aliases/production", json={"version": 2})
    model = client.get(f"{API}/models/bot").get_json()
    assert model["aliases"] == {"production": 2} and model["versions"][1]["aliases"] == ["production"]
    # A deployment of the alias serves version 2's adapter on its base model.
    created = client.post(f"{API}/deployments", json={"model": "bot@production"}).get_json()
    assert created["source"] == {"model": "bot:2", "job_id": job_id}
    assert created["adapter"] == model["versions"][1]["weights"]
    # Training on top of a version goes on training its adapter.
    on_top = api_create(client, model_name="bot:1")
    config = yaml.safe_load(open(os.path.join(home, "jobs", on_top, "training_config.yaml")))
    assert config["adapter_name_or_path"] == model["versions"][0]["weights"]
    assert config["model_name_or_path"] == model["versions"][0]["base_model_path"]
    assert api_done(client, on_top)["status"] == "completed"
    full = client.post(
        f"{API}/jobs", json={"model_name": "bot:1", "dataset": "demo_sft", "finetuning_type": "full"}
    )
    assert full.status_code == 400 and full.get_json()["errors"][0]["field"] == "finetuning_type"
    client.delete(f"{API}/deployments/{created['deployment_id']}")


def test_a_version_in_use_cannot_be_deleted_until_freed(client):
    job_id = completed_job(client)
    register(client, name="bot", job_id=job_id)
    client.put(f"{API}/models/bot/aliases/live", json={"version": 1})
    refused = client.delete(f"{API}/models/bot/versions/1")
    assert refused.status_code == 409 and "alias live" in refused.get_json()["message"]
    assert client.delete(f"{API}/models/bot/aliases/live").status_code == 204
    created = client.post(f"{API}/deployments", json={"model": "bot:1"}).get_json()
    served = client.delete(f"{API}/models/bot/versions/1")
    assert served.status_code == 409 and created["deployment_id"] in served.get_json()["message"]
    client.delete(f"{API}/deployments/{created['deployment_id']}")
    assert client.delete(f"{API}/models/bot/versions/1").status_code == 204
    assert client.get(f"{API}/models/bot").status_code == 404
    assert client.get(f"{API}/models").get_json()["registered"] == []


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"name": "Bad", "job_id": "train_00000000"}, 400, "name"),
        ({"name": ".staging", "job_id": "train_00000000"}, 400, "name"),
        ({"name": "a" * 64, "job_id": "train_00000000"}, 400, "name"),
        ({"name": "ok", "job_id": "train_00000000", "checkpoint": "../x"}, 400, "checkpoint"),
        ({"name": "ok"}, 400, "job_id"),
        ({"name": "ok", "job_id": "train_00000000"}, 404, "job_id"),
        ({"name": "ok", "job_id": "train_00000000", "extra": True}, 400, "extra"),
    ],
)
def test_bad_registrations_are_refused_with_the_field_and_nothing_written(client, home, body, status, field):
    response = client.post(f"{API}/models", json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["errors"][0]["field"] == field
    registry = os.path.join(home, "models", "registry")
    assert not os.path.isdir(registry) or not [n for n in os.listdir(registry) if not n.startswith(".")]


def test_unknown_names_versions_and_aliases(client):
    job_id = completed_job(client)
    register(client, name="bot", job_id=job_id)
    assert client.get(f"{API}/models/ghost").status_code == 404
    assert client.get(f"{API}/models/bot/versions/9").status_code == 404
    assert client.get(f"{API}/models/..%2Fjobs").status_code in (400, 404)
    assert client.put(f"{API}/models/bot/aliases/prod", json={"version": 9}).status_code == 404
    assert client.put(f"{API}/models/bot/aliases/Bad", json={"version": 1}).status_code == 400
    assert client.put(f"{API}/models/bot/aliases/prod", json={"version": "1"}).status_code == 400
    unknown = client.post(f"{API}/jobs", json={"model_name": "bot@nope", "dataset": "demo_sft"})
    assert unknown.status_code == 400 and "no alias 'nope'" in unknown.get_json()["message"]
    missing = client.post(f"{API}/deployments", json={"model": "bot:7"})
    assert missing.status_code == 400 and "versions: 1" in missing.get_json()["message"]


def test_only_completed_jobs_register(make_app):
    client = make_app("--steps", "300", "--sleep", "0.05").test_client()
    job_id = api_create(client)
    wait_for(lambda: client.get(f"{API}/jobs/{job_id}").get_json()["status"] == "running")
    response = client.post(f"{API}/models", json={"name": "bot", "job_id": job_id})
    assert response.status_code == 409
    client.post(f"{API}/jobs/{job_id}/stop")


def test_a_version_number_is_never_given_twice_under_a_name(client, home):
    """Delete version 2 and register again: the new one is 3, so whatever pinned race:2 (a lineage,
    a deployment, a client) never means other weights. Also for a name registered before the
    service kept its high-water mark: the registry's log remembers the numbers."""
    job_id = completed_job(client)
    for _ in range(2):
        register(client, name="race", job_id=job_id)
    assert client.delete(f"{API}/models/race/versions/2").status_code == 204
    assert register(client, name="race", job_id=job_id)["version"] == 3
    assert client.delete(f"{API}/models/race/versions/3").status_code == 204
    os.unlink(os.path.join(home, "models", "registry", "race", "last_version"))  # as an older release left it
    assert register(client, name="race", job_id=job_id)["version"] == 4
    assert client.get(f"{API}/models/race/versions/2").status_code == 404
    assert [v["version"] for v in client.get(f"{API}/models/race").get_json()["versions"]] == [1, 4]
