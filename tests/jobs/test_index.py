"""The jobs index (imts_flask/jobs/index.py): every job on disk listed once, in creation order,
through crashes in the middle of its writes, another instance's creates and deletes, and damage."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

from imts_flask.jobs import record
from imts_flask.jobs.index import RECORD
from imts_flask.jobs.store import JobStore
from imts_flask.runs.record import setter

from conftest import PROJECT, wait_for


def _make(store, **values):
    def files(job_id, job_dir):
        state = record.new_record(
            job_id=job_id, created_at="2026-11-30T00:00:00", created_ns=time.time_ns(),
            model_name="tiny-llama", dataset="demo_sft",
            paths={"output_dir": os.path.join(job_dir, "output")}, **values,
        )  # fmt: skip
        return {JobStore.STATE: state}

    return store.create(files)


def _listed(store):
    return [line["job_id"] for line in store.listed()]


def test_jobs_are_listed_newest_first_with_their_counts(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    ids = [_make(store, tenant=team) for team in ("team-a", "team-b", "team-a")]
    assert _listed(store) == ids[::-1]
    store.update(ids[0], setter(status="completed", disk_bytes=10, finished_at="2026-11-30T00:00:09"))
    line = next(line for line in store.listed() if line["job_id"] == ids[0])
    assert (line["status"], line["disk_bytes"], line["tenant"], line["model_name"]) == (
        "completed", 10, "team-a", "tiny-llama",
    )  # fmt: skip
    assert store.index.counts()["jobs"] == {
        "team-a": {"pending": 1, "completed": 1},
        "team-b": {"pending": 1},
    }
    raw = open(store.index.path, "rb").read()
    assert len(raw) == RECORD * 4 and raw.count(b"\n") == 4  # a header and a line a job, readable text
    assert ids[0].encode() in raw and b"team-b" in raw


def test_another_instance_sees_a_create_and_a_delete_at_once(tmp_path):
    here, there = JobStore(str(tmp_path / "jobs")), JobStore(str(tmp_path / "jobs"))
    mine = _make(here)
    theirs = _make(there)
    assert _listed(here) == [theirs, mine]
    there.update(theirs, setter(status="failed"))
    there.delete(theirs)
    assert _listed(here) == [mine]
    assert here.index.counts()["jobs"] == {"": {"pending": 1}}


def test_a_line_cut_short_by_a_crash_is_dropped_and_no_job_is_listed_twice(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    first = _make(store)
    with open(store.index.path, "ab") as handle:  # a create killed in the middle of its append
        handle.write(b"train_deadbeef\tpend")
    assert _listed(store) == [first]
    second = _make(store)  # the next append takes the torn line's place
    assert _listed(store) == [second, first]
    assert os.path.getsize(store.index.path) == RECORD * 3


def test_a_create_killed_before_its_directory_appeared_is_never_shown_and_dropped_by_the_cleanup_round(
    make_app,
):
    client = make_app("--steps", "1").test_client()
    service = client.application.extensions["imts"]
    phantom = record.new_record(
        job_id="train_0000dead", created_ns=time.time_ns(), created_at="2026-11-30T00:00:00"
    )
    service.store.index.add(phantom)  # listed, but the process died before the rename
    for _ in range(2):  # a read changes nothing
        listing = client.get("/api/v1/training/jobs").get_json()
        assert listing["jobs"] == [] and listing["total"] == 1  # the count still has it ...
    assert service.lifecycle.run()["indexed"] == ([], ["train_0000dead"])
    assert client.get("/api/v1/training/jobs").get_json()["total"] == 0  # ... until the cleanup round
    assert _listed(service.store) == []


def test_kill_9_in_the_middle_of_creates_leaves_every_job_listed_once(tmp_path):
    root = str(tmp_path / "jobs")
    code = (
        "import sys, time; sys.path[:0] = sys.argv[2:5];"
        "from imts_flask.jobs.store import JobStore; from test_index import _make;"
        "store = JobStore(sys.argv[1]); print('ready', flush=True)\n"
        "while True: _make(store)"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            root,
            PROJECT,
            os.path.join(PROJECT, "tests"),
            os.path.dirname(__file__),
        ],
        stdout=subprocess.PIPE,
    )
    proc.stdout.readline()
    store = JobStore(root)
    wait_for(lambda: len(store.job_ids()) >= 30, timeout=60, interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    on_disk = set(store.job_ids())
    listed = _listed(store)
    assert len(listed) == len(set(listed))  # never twice
    assert on_disk <= set(listed)  # never a job on disk missing from the list
    assert len(set(listed) - on_disk) <= 1  # at most the create that was cut short, dropped when read


def test_a_damaged_or_missing_index_is_rebuilt_from_the_directories_and_the_log_says_so(tmp_path, caplog):
    store = JobStore(str(tmp_path / "jobs"))
    ids = [_make(store) for _ in range(3)]
    store.update(ids[1], setter(status="completed"))
    with open(store.index.path, "r+b") as handle:  # a line overwritten with garbage
        handle.seek(RECORD * 2)
        handle.write(b"\x07garbage" * 10)
    with caplog.at_level(logging.WARNING):
        assert _listed(store) == ids[::-1]
    assert "jobs index rebuilt from 3 job directories" in caplog.text
    assert store.index.counts()["jobs"] == {"": {"pending": 2, "completed": 1}}
    os.unlink(store.index.path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _listed(store) == ids[::-1]
    assert "it was missing" in caplog.text
    # Counts of another generation (a crash between the line and the counts) are counted again.
    counts = json.load(open(store.index.counts_path))
    counts["jobs"] = {"": {"pending": 99}}
    counts["seq"] -= 1
    json.dump(counts, open(store.index.counts_path, "w"))
    assert store.index.counts()["jobs"] == {"": {"pending": 2, "completed": 1}}


def test_a_status_line_left_behind_is_shown_as_its_record_says_and_put_right_by_the_cleanup_round(make_app):
    client = make_app("--steps", "1").test_client()
    service = client.application.extensions["imts"]
    store = service.store
    job_id = client.post(
        "/api/v1/training/jobs", json={"model_name": "tiny-llama", "dataset": "demo_sft"}
    ).get_json()
    job_id = job_id["job_id"]
    wait_for(lambda: store.read(job_id).status == "completed")
    stale = store.read(job_id)
    stale.status = "running"
    store.index.put(stale)  # as if the host lost power after the record was written, before its line
    before = open(store.index.path, "rb").read(), open(store.index.counts_path, "rb").read()
    # ?status=running reads the line, then the record: the job is completed, so it is not on the page.
    assert client.get("/api/v1/training/jobs?status=running").get_json()["jobs"] == []
    assert client.get("/api/v1/training/jobs").get_json()["jobs"][0]["status"] == "completed"
    # A read changes nothing (a full disk or a read-only store answers it the same).
    assert (open(store.index.path, "rb").read(), open(store.index.counts_path, "rb").read()) == before
    assert service.lifecycle.run()["relisted"] == [job_id]
    assert [line["status"] for line in store.listed()] == ["completed"]
    assert store.index.counts()["jobs"] == {"": {"completed": 1}}


def test_a_listing_answers_with_a_line_whose_create_died_and_an_index_it_cannot_write(tmp_path, monkeypatch):
    from imts_flask.service import TrainingService
    from imts_flask.settings import load_settings

    service = TrainingService(load_settings({"home": str(tmp_path)}, environ={}))
    store = service.store
    kept = _make(store)
    gone = _make(store)
    os.rename(store.path(gone), str(tmp_path / "elsewhere"))  # its line stays: a create that died

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", full_disk)
        total, page = service.jobs.list()
    assert [view["job_id"] for view in page] == [kept] and total == 2
    assert store.reconcile_index() == ([], [gone])
    assert service.jobs.list()[0] == 1


def test_a_change_to_an_old_job_finds_its_line_by_creation_time_not_by_reading_them_all(
    tmp_path, monkeypatch
):
    from imts_flask.jobs import index as index_module

    store = JobStore(str(tmp_path / "jobs"))
    ids = [_make(store) for _ in range(200)]
    read = []
    scan = index_module._backwards
    monkeypatch.setattr(index_module, "_backwards", lambda fd: (read.append(1) or pair for pair in scan(fd)))
    store.update(ids[0], setter(status="failed"))  # the oldest: a scan from the end would read 200 lines
    store.delete(ids[0])
    assert read == []  # found both times by the binary search
    assert _listed(store)[-1] == ids[1] and len(_listed(store)) == 199
    # A line a repair appended out of order (here: the second job's, again at the end) is found too.
    line = open(store.index.path, "rb").read()[RECORD * 2 : RECORD * 3]
    with open(store.index.path, "r+b") as handle:
        handle.seek(RECORD * 2)
        handle.write(line.replace(ids[1].encode(), b"train_zzzzzzzz"))  # its place taken by a stranger
        handle.seek(0, 2)
        handle.write(line)
    store.update(ids[1], setter(status="stopped"))
    assert next(x for x in store.listed() if x["job_id"] == ids[1])["status"] == "stopped"
