"""JobStore: atomic creation, tolerant reads, terminal states, locks, storage errors. No Flask."""

import errno
import json
import os
import shutil
import threading

import pytest

from imts_flask import fsio
from imts_flask.errors import Conflict, InsufficientStorage, NotFound, Unavailable, ValidationFailed
from imts_flask.jobs.record import new_record
from imts_flask.jobs.store import JobStore
from imts_flask.runs.ids import JOB_ID_PATTERN
from imts_flask.runs.record import CHANGED, changed, setter
from imts_flask.state import creation_order


@pytest.fixture
def store(tmp_path):
    return JobStore(str(tmp_path / "jobs"), lock_timeout=2)


def _create(store, status="pending"):
    return store.create(
        lambda job_id, job_dir: {
            JobStore.STATE: {"job_id": job_id, "status": status, "history": []},
            JobStore.TRAIN_CONFIG: {"output_dir": os.path.join(job_dir, "output")},
            JobStore.DATASET_INFO: {"demo": {"file_name": "/x.json"}},
        }
    )


def test_create_writes_every_file_into_a_new_job_directory(store):
    job_id = _create(store)
    assert JOB_ID_PATTERN.fullmatch(job_id)
    job_dir = store.path(job_id)
    assert sorted(os.listdir(job_dir)) == ["dataset", "state.json", "training_config.yaml"]
    assert store.read(job_id).status == "pending"
    assert os.listdir(os.path.join(store.root, JobStore.STAGING)) == []


def test_ids_are_unique(store):
    ids = {_create(store) for _ in range(50)}
    assert len(ids) == 50
    assert sorted(store.job_ids()) == sorted(ids)


def test_a_failed_create_leaves_no_job_behind(store, monkeypatch):
    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imts_flask.runs.store.write_tree", full_disk)
    with pytest.raises(InsufficientStorage):
        _create(store)
    assert store.job_ids() == []
    assert os.listdir(os.path.join(store.root, JobStore.STAGING)) == []


@pytest.mark.parametrize("content", [b"", b'{"job_id": "train_', b"\x00\xff garbage", b"[1, 2]"])
def test_damaged_state_is_reported_not_raised(store, content):
    job_id = _create(store)
    with open(store.path(job_id, JobStore.STATE), "wb") as handle:
        handle.write(content)
    state = store.read(job_id)
    assert state.status == "failed" and state.broken is True
    assert "state.json" in state.error
    other = _create(store)
    assert {line["job_id"] for line in store.listed()} == {job_id, other}


def test_job_directory_without_state_is_reported(store):
    os.makedirs(os.path.join(store.root, "train_0000abcd"))
    assert "missing" in store.read("train_0000abcd").error


def test_unknown_and_malformed_ids(store):
    with pytest.raises(NotFound):
        store.read("train_00000000")
    for bad in ["../etc", "train_../..", "train_ABCDEFGH", "x" * 300, "train_1234567\n"]:
        with pytest.raises(ValidationFailed):
            store.read(bad)


def test_terminal_status_never_changes(store):
    job_id = _create(store)
    store.update(job_id, setter(status="running"))
    store.update(job_id, setter(status="stopped"))
    finished = store.read(job_id).finished_at
    state = store.update(job_id, setter(status="completed"))
    assert state.status == "stopped"
    assert store.read(job_id).status == "stopped"
    assert store.read(job_id).finished_at == finished
    assert [h["status"] for h in state.history] == ["running", "stopped"]


def _bump(state):
    state.preemptions += 1
    return CHANGED


def test_concurrent_updates_lose_nothing(store):
    job_id = _create(store)
    store.update(job_id, setter(preemptions=0))

    def bump():
        for _ in range(20):
            store.update(job_id, _bump)

    threads = [threading.Thread(target=bump) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read(job_id).preemptions == 100


def test_a_held_lock_times_out_as_503(store):
    job_id = _create(store)
    slow = JobStore(store.root, lock_timeout=0.2)
    with store.lock(job_id):
        with pytest.raises(Unavailable):
            slow.update(job_id, setter(x=1))


def test_enospc_during_update_keeps_the_old_state(store, monkeypatch):
    job_id = _create(store)
    before = open(store.path(job_id, JobStore.STATE), "rb").read()
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio.os, "replace", failing_replace)
    with pytest.raises(InsufficientStorage):
        store.update(job_id, setter(status="running"))
    monkeypatch.setattr(fsio.os, "replace", real_replace)
    assert open(store.path(job_id, JobStore.STATE), "rb").read() == before
    assert [n for n in os.listdir(store.path(job_id)) if n.startswith(fsio.TMP_PREFIX)] == []


def test_old_temp_files_are_cleaned_young_ones_kept(store):
    job_id = _create(store)
    old = store.path(job_id, fsio.TMP_PREFIX + "old")
    young = store.path(job_id, fsio.TMP_PREFIX + "young")
    for path in (old, young):
        open(path, "w").close()
    os.utime(old, (0, 0))
    assert store.clean_temp_files([job_id], min_age_s=60) == 1
    assert not os.path.exists(old) and os.path.exists(young)


def test_a_job_deleted_while_temp_files_are_looked_for_is_passed_over(store, monkeypatch):
    """A worker booting during a DELETE once died of this (and gunicorn stopped the service): the
    cleanup round, which now does it, passes over a directory that vanishes while it looks."""
    gone, kept = _create(store), _create(store)
    open(store.path(kept, fsio.TMP_PREFIX + "old"), "w").close()
    os.utime(store.path(kept, fsio.TMP_PREFIX + "old"), (0, 0))
    listdir = os.listdir

    def deleted_meanwhile(path):
        if os.path.basename(path) == gone:
            shutil.rmtree(path)  # another process's DELETE, between the listing and the look
        return listdir(path)

    monkeypatch.setattr(os, "listdir", deleted_meanwhile)
    assert store.clean_temp_files([gone, kept], min_age_s=60) == 1


def test_state_json_is_readable_by_hand(store):
    job_id = _create(store)
    text = open(store.path(job_id, JobStore.STATE), encoding="utf-8").read()
    assert text.startswith('{\n  "job_id"')
    assert json.loads(text)["job_id"] == job_id


def test_creation_order_is_finer_than_created_at():
    same_second = [
        new_record(job_id="train_ffffffff", created_at="2026-01-01T00:00:00", created_ns=1),
        new_record(job_id="train_00000000", created_at="2026-01-01T00:00:00", created_ns=2),
    ]
    assert [s.job_id for s in sorted(same_second, key=creation_order)] == [
        "train_ffffffff",
        "train_00000000",
    ]
    legacy = new_record(job_id="train_11111111", created_at="2026-01-01T00:00:01")  # before created_ns
    assert creation_order(legacy) > creation_order(same_second[1])


def test_a_status_change_keeps_its_details_in_history(store):
    job_id = _create(store)

    def requeue(state):
        state.set(status="running", attempt=2)
        return changed(reason="lost: the monitor died")

    state = store.update(job_id, requeue)
    assert state.history[-1] == {
        "status": "running",
        "at": state.history[-1]["at"],
        "attempt": 2,
        "reason": "lost: the monitor died",
    }


def test_delete_renames_out_then_removes_and_refuses_unfinished_jobs(tmp_path):
    links = tmp_path / "logs" / "training_jobs"
    store = JobStore(str(tmp_path / "jobs"), lock_timeout=2, links_dir=str(links))
    job_id = _create(store)
    assert os.readlink(links / job_id) == os.path.join("..", "..", "jobs", job_id)
    with pytest.raises(Conflict):
        store.delete(job_id)  # pending
    assert os.path.isdir(store.path(job_id))
    store.update(job_id, setter(status="stopped"))
    refusals = []

    def veto(state):
        refusals.append(state.status)
        raise Conflict("not now")

    with pytest.raises(Conflict):
        store.delete(job_id, veto)
    assert refusals == ["stopped"] and os.path.lexists(links / job_id)
    assert store.delete(job_id).status == "stopped"
    assert store.job_ids() == [] and not os.path.lexists(links / job_id)
    assert os.listdir(os.path.join(store.root, JobStore.TRASH)) == []
    with pytest.raises(NotFound):
        store.delete(job_id)


def test_a_crash_in_the_middle_of_a_delete_leaves_no_listed_half_job(store):
    job_id = _create(store)
    store.update(job_id, setter(status="failed"))
    # As if the process died after the rename, before the removal finished.
    half = os.path.join(store.root, JobStore.TRASH, job_id + "-dead")
    os.rename(store.path(job_id), half)
    assert store.job_ids() == []  # (its index line: dropped by the listing that finds no directory)
    os.utime(half, (0, 0))
    assert store.clean_temp_files([], min_age_s=60) == 1 and not os.path.exists(half)


def test_every_worker_sees_a_change_to_a_finished_job(store):
    job_id, other = _create(store), _create(store)
    for done in (job_id, other):
        store.update(done, setter(status="completed", disk_bytes=100))
    worker = JobStore(store.root, lock_timeout=2)  # another process: it keeps nothing of its own
    assert {line["disk_bytes"] for line in worker.listed()} == {100}
    store.update(job_id, setter(disk_bytes=40))  # a pruning, in the cleanup worker
    by_id = {line["job_id"]: line["disk_bytes"] for line in worker.listed()}
    assert by_id == {job_id: 40, other: 100}
    reads = []
    worker.read = lambda j: reads.append(j) or JobStore.read(worker, j)
    list(worker.listed())
    assert reads == []  # the index is read, no job's record
    assert (
        worker.index.counts()["jobs"] == {"": {"completed": 2}} and worker.index.counts()["disk_bytes"] == 140
    )


@pytest.mark.parametrize("answer", [None, False, {"reason": "x"}, True])
def test_a_change_must_say_what_it_did(store, answer):
    job_id = _create(store)
    before = store.read(job_id)
    with pytest.raises(TypeError, match="record.Change"):
        store.update(job_id, lambda state: answer)
    assert store.read(job_id) == before
