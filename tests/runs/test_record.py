"""The job record: one table of fields, a version on disk, records of the first format read unchanged."""

import json
import os

import pytest

from imts_flask.http.jobs_responses import JobStatusSchema
from imts_flask.jobs import record, views
from imts_flask.jobs.store import JobStore
from imts_flask.runs.record import setter

from conftest import PROJECT

RECORDS = os.path.join(PROJECT, "tests", "records", "v1.json")


def _first_format(tmp_path):
    """The records (and status views) that the code before the table wrote, moved under tmp_path."""
    text = open(RECORDS).read()
    fixtures = json.loads(text)
    home = str(tmp_path / "home")
    return json.loads(text.replace(fixtures["home"], home))["jobs"], home


@pytest.mark.parametrize("name", ["completed-exported", "failed-lost", "resumed"])
def test_a_record_of_the_first_format_reads_and_shows_as_it_did(tmp_path, name):
    jobs, home = _first_format(tmp_path)
    fixture = jobs[name]
    written = fixture["record"]
    assert "schema_version" not in written
    store = JobStore(os.path.join(home, "jobs"))
    job_dir = os.path.join(store.root, written["job_id"])
    os.makedirs(job_dir)
    with open(os.path.join(job_dir, "state.json"), "w") as handle:
        json.dump(written, handle)
    for relative, content in fixture["files"].items():
        os.makedirs(os.path.dirname(os.path.join(job_dir, relative)), exist_ok=True)
        with open(os.path.join(job_dir, relative), "w") as handle:
            handle.write(content)
    read = store.read(written["job_id"])
    assert read.schema_version == record.SCHEMA_VERSION
    assert {key: read.to_json()[key] for key in written} == written  # nothing it held changes
    view = views.job_view(read)
    expected = {k: v for k, v in fixture["view"].items() if k != "queue_position"}  # the service's to fill
    if expected.get("export"):  # the first format exported the final weights: the view now says so
        expected["export"] = {**expected["export"], "checkpoint": "final"}
        expected["export"] = {
            k: expected["export"][k] for k in views.EXPORT_FIELDS if k in expected["export"]
        }
    assert {k: view[k] for k in expected} == expected  # every field it showed, as it showed it
    # ... and the fields added since, as a job without them has them: no validation, not stopped early.
    added = {k: view[k] for k in view if k not in fixture["view"]}
    assert added == {
        "validation": None, "early_stopping": None, "eval_loss": None, "best_eval_loss": None,
        "best_checkpoint": None, "stopped_early": False, "tensorboard": False, "tensorboard_dir": None,
        "mlflow_run_id": None, "tenant": None, "created_by": None, "waiting_for": None, "held_by": None,
        "held_by_others": None,
        "priority": "normal", "preemptible": True, "preemptions": 0, "preempted_by": None,
        "gpu_seconds": 0.0, "cpu_seconds": 0.0,
    }  # fmt: skip
    store.update(written["job_id"], setter(disk_bytes=12345))  # the next write stores the new version
    on_disk = json.load(open(os.path.join(job_dir, "state.json")))
    assert on_disk["schema_version"] == record.SCHEMA_VERSION and on_disk["history"] == written["history"]


def test_an_older_record_without_attempts_gets_the_defaults_it_was_read_with(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    os.makedirs(os.path.join(store.root, "train_0000abcd"))
    minimal = {"job_id": "train_0000abcd", "status": "completed", "created_at": "2026-01-01T00:00:00"}
    with open(os.path.join(store.root, "train_0000abcd", "state.json"), "w") as handle:
        json.dump(minimal, handle)
    read = store.read("train_0000abcd")
    assert (read.attempt, read.max_attempts, read.history) == (1, 1, [])
    assert views.job_view(read)["attempt"] == 1


def test_what_derives_from_the_table_is_what_the_readme_documents():
    assert record.RESUMED == (
        "model_name", "dataset", "stage", "finetuning_type", "gpus", "validation", "early_stopping",
        "priority", "preemptible", "tensorboard", "tenant", "webhook_url", "samples_per_step",
    )  # fmt: skip
    assert record.WEBHOOK == (
        "model_name", "dataset", "stage", "priority", "exit_code", "reason", "error", "tenant",
    )  # fmt: skip
    assert list(JobStatusSchema().fields) == list(record.SHOWN)


def test_every_field_the_view_computes_has_its_function_and_the_rest_are_stored():
    computed = {f.name for f in record.FIELDS if f.shown and not f.stored}
    assert computed <= set(views._COMPUTED)
    assert set(views._COMPUTED) <= set(record.SHOWN)


def test_a_new_record_holds_every_stored_field_but_the_optional_ones():
    new = record.new_record(job_id="train_00000001", about="x")
    assert list(new.to_json()) == [f.name for f in record.STORED if not f.optional]
    assert new.status == "pending" and new.attempt == 1 and new.schema_version == record.SCHEMA_VERSION
    with pytest.raises(ValueError, match="not fields"):
        record.new_record(priorty="high")  # a misspelt field is refused, not stored
