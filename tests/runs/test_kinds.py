"""A kind of run is a package and one line of runs.KINDS: a FAKE kind (tests/runs/probe_kind/) is
created, listed, queued, claimed, run by the supervisor, settled and cleaned up by the core alone."""

import os
import signal

import pytest

from imts_flask.executors.local import LocalExecutor
from imts_flask.fsio import TMP_PREFIX
from imts_flask.jobs.scheduler import Scheduler
from imts_flask.jobs.store import JobStore
from imts_flask.monitor import train
from imts_flask.monitor.supervisor import Supervisor
from imts_flask.runs import KINDS, Kind, Kinds
from imts_flask.runs.record import queued_now
from imts_flask.settings import load_settings

PROBE = Kind("probe", "probe_kind", "probe_", folder="probes")


class Recorder(LocalExecutor):
    """The local executor, but a launch is recorded here instead of starting a monitor process
    (a monitor process would not know a kind registered in this one)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.started = []

    def start(self, args, launch, job_dir, log_path):
        self.started.append(args)
        return "recorded"


@pytest.fixture
def probe_kind(monkeypatch):
    monkeypatch.setattr(Kinds, "TABLE", (*Kinds.TABLE, PROBE))  # the one line
    from probe_kind import record

    return record


@pytest.fixture
def signals():
    """The supervisor takes SIGTERM, SIGINT and SIGHUP, as a monitor does: give them back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_new_kind_runs_on_the_core_alone(tmp_path, probe_kind, signals):
    settings = load_settings({"home": str(tmp_path), "max_concurrent_jobs": 1})
    store = JobStore(settings.path("jobs_dir"), settings.lock_timeout_s, folders=KINDS.folders(settings))

    def make_files(run_id, run_dir):
        state = probe_kind.RECORD.new(
            probe_id=run_id,
            job_id=run_id,
            message="hello from a probe",
            paths={"log": os.path.join(run_dir, probe_kind.LOG)},
            **queued_now(1),
        )
        return {JobStore.STATE: state}

    run_id = store.create_run("probe", make_files)
    assert run_id.startswith("probe_") and os.path.isdir(tmp_path / "probes" / run_id)
    assert store.run_ids("probe") == [run_id]
    assert type(store.read(run_id)).__name__ == "ProbeRecord"
    assert [s.job_id for s in store.active_states()] == [run_id]  # queued like every run

    executor = Recorder(settings)
    assert Scheduler(settings, store, executor=executor).schedule() == [run_id]
    assert executor.started == [["train", run_id, store.read(run_id).launch["id"]]]

    sup = Supervisor(settings, run_id, store)  # what `python -m imts_flask.monitor train` does
    train(sup, store.read(run_id).launch["id"])

    state = store.read(run_id)
    assert (state.status, state.exit_code, state.finished_at is not None) == ("completed", 0, True)
    assert [h["status"] for h in state.history] == ["pending", "running", "completed"]
    assert "hello from a probe" in open(tmp_path / "probes" / run_id / probe_kind.LOG).read()
    assert store.active_states() == []
    assert KINDS.next_attempt(state) == "prints its message again"

    leftover = tmp_path / "probes" / run_id / f"{TMP_PREFIX}state.json"
    leftover.write_text("{")
    os.utime(leftover, (0, 0))
    store.clean_temp_files([])
    assert not leftover.exists()


def test_a_kind_unknown_to_the_table_is_no_run(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    with pytest.raises(ValueError):
        store.run_ids("probe")
    assert not KINDS.of_id("probe_0000abcd")
