"""Sharing one service among teams, with the FAKE trainer: the queue's order (priority, then fair
share, then first come), PATCH /jobs/{id}, preemption with a checkpoint and its rules, GPU and CPU
accounting, GET /usage and the monthly GPU-hours quota. The preemption of a real trainer that then
resumes to its total_steps is in tests/e2e/test_e2e.py."""

import json
import os
import time

import pytest

from imts_flask.runs.record import CHANGED

from conftest import API, TENANT_TOKENS, As, audit_lines, tenants_file, wait_for, write_tenants

BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}

LONG = ("--steps", "400", "--interval", "0.05")


def clients(client):
    return {name: As(client, token) for name, token in TENANT_TOKENS.items()}


def status(who, job_id):
    return who.get(f"{API}/jobs/{job_id}").get_json()


def create(who, **extra):
    response = who.post(f"{API}/jobs", json={**BODY, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["job_id"]


def running(who, job_id):
    return wait_for(lambda: status(who, job_id)["status"] == "running")


def stop_all(who, *job_ids):
    for job_id in job_ids:
        who.post(f"{API}/jobs/{job_id}/stop")


def test_the_queue_goes_by_priority_then_fair_share_then_first_come(make_app, home):
    write_tenants(home, tenants_file())
    they = clients(make_app(*LONG, max_concurrent_jobs=1).test_client())
    a, b, ops = they["a"], they["b"], they["ops"]
    blocker = create(ops)  # an admin's: no team holds anything
    running(ops, blocker)
    a1, a2, a3 = create(a), create(a), create(a)
    b1, b2 = create(b), create(b)
    low, high = create(a, priority="low"), create(a, priority="high")
    positions = {job: status(ops, job)["queue_position"] for job in (a1, a2, a3, b1, b2, low, high)}
    # high first; then the teams take turns (first come within a team, and a1 came before b1); low last.
    assert positions == {high: 1, b1: 2, a1: 3, b2: 4, a2: 5, a3: 6, low: 7}
    assert status(a, high)["priority"] == "high" and status(a, low)["priority"] == "low"
    listed = {j["job_id"]: j["priority"] for j in ops.get(f"{API}/jobs").get_json()["jobs"]}
    assert listed[high] == "high" and listed[a1] == "normal"
    stop_all(ops, a1, a2, a3, b1, b2, low, high, blocker)


def test_two_teams_share_the_slots_that_free_at_once(make_app, home):
    write_tenants(home, tenants_file())
    they = clients(make_app(*LONG, max_concurrent_jobs=2).test_client())
    a, b, ops = they["a"], they["b"], they["ops"]
    blockers = [create(ops), create(ops)]
    for job in blockers:
        running(ops, job)
    a1, a2 = create(a), create(a)
    b1 = create(b)
    stop_all(ops, *blockers)  # two slots free in one pass: one per team, not a1 and a2
    running(a, a1)
    running(b, b1)
    assert status(a, a2)["status"] == "pending" and status(a, a2)["queue_position"] == 1
    stop_all(ops, a1, a2, b1)


def test_patch_changes_a_jobs_priority_within_its_teams_limit(make_app, home):
    write_tenants(home, tenants_file())
    they = clients(make_app(*LONG, max_concurrent_jobs=1).test_client())
    a, b, viewer, ops = they["a"], they["b"], they["a-view"], they["ops"]
    blocker = create(ops)
    running(ops, blocker)
    first, second = create(a), create(a)
    theirs = create(b)
    assert status(a, second)["queue_position"] == 3
    changed = a.patch(f"{API}/jobs/{second}", json={"priority": "high"})
    assert changed.status_code == 200 and changed.get_json()["priority"] == "high"
    assert changed.get_json()["queue_position"] == 1
    # team-b's max_priority is normal (the default): high is refused with the reason and the limit.
    refused = b.patch(f"{API}/jobs/{theirs}", json={"priority": "high"})
    assert refused.status_code == 403
    assert (
        refused.get_json()["errors"][0]["field"] == "priority"
        and refused.get_json()["max_priority"] == "normal"
    )
    refused = b.post(f"{API}/jobs", json={**BODY, "priority": "high"})
    assert refused.status_code == 403 and refused.get_json()["errors"][0]["field"] == "priority"
    # Only an admin moves a job to the head; a viewer changes nothing; another team's job is a 404.
    assert a.patch(f"{API}/jobs/{first}", json={"queueHead": True}).status_code == 403
    assert viewer.patch(f"{API}/jobs/{first}", json={"priority": "low"}).status_code == 403
    assert b.patch(f"{API}/jobs/{first}", json={"priority": "low"}).status_code == 404
    moved = ops.patch(f"{API}/jobs/{theirs}", json={"queue_head": True})
    assert moved.status_code == 200 and moved.get_json()["queue_position"] == 1
    assert status(a, second)["queue_position"] == 2
    for body, field in (
        ({}, "priority"),
        ({"priority": "urgent"}, "priority"),
        ({"queue_head": "x"}, "queue_head"),
    ):
        bad = ops.patch(f"{API}/jobs/{first}", json=body)
        assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == field
    stop_all(ops, first, second, theirs, blocker)
    wait_for(lambda: status(ops, blocker)["status"] == "stopped")
    late = ops.patch(f"{API}/jobs/{blocker}", json={"priority": "low"})
    assert late.status_code == 409 and late.get_json()["job_status"] == "stopped"
    assert any(line["action"] == "PATCH /api/v1/training/jobs/<job_id>" for line in audit_lines(home))


PREEMPTIVE = ("--steps", "120", "--interval", "0.05", "--save-every", "5", "--graceful-term")


def test_a_high_job_preempts_a_low_one_which_resumes_from_its_checkpoint(make_app, home):
    write_tenants(home, tenants_file())
    they = clients(make_app(*PREEMPTIVE, max_concurrent_jobs=1).test_client())
    a, b = they["a"], they["b"]
    low = create(b, priority="low")
    running(b, low)
    wait_for(
        lambda: any(c["complete"] for c in b.get(f"{API}/jobs/{low}/checkpoints").get_json()["checkpoints"])
    )
    high = create(a, priority="high")
    preempted = wait_for(lambda: (s := status(b, low))["status"] == "pending" and s)
    assert (preempted["preempted_by"], preempted["preemptions"], preempted["attempt"]) == (high, 1, 1)
    running(a, high)
    events = b.get(f"{API}/jobs/{low}/events").get_json()["events"]
    assert events[-1]["status"] == "pending" and f"preempted by {high}" in events[-1]["reason"]
    # The high job runs to its end, then the low one resumes where its checkpoint left it and completes.
    wait_for(lambda: status(a, high)["status"] == "completed", timeout=90)
    done = wait_for(lambda: (s := status(b, low))["status"] == "completed" and s, timeout=90)
    assert done["current_step"] == done["total_steps"] == 120 and done["attempt"] == 1
    assert done["preemptions"] == 1
    statuses = [e["status"] for e in b.get(f"{API}/jobs/{low}/events").get_json()["events"]]
    assert statuses == ["pending", "running", "pending", "running", "completed"]
    preempt_lines = [line for line in audit_lines(home) if line["action"] == "preempt"]
    assert preempt_lines and preempt_lines[0]["resource"] == {"job_id": low, "by": high}
    assert preempt_lines[0]["tenant"] == "team-b"


@pytest.mark.parametrize("case", ["not preemptible", "no checkpoint past the grace", "normal"])
def test_a_job_that_may_not_be_preempted_keeps_its_slot(make_app, home, case):
    write_tenants(home, tenants_file())
    options = ("--steps", "400", "--interval", "0.05") + (
        () if case == "no checkpoint past the grace" else ("--save-every", "5")
    )
    they = clients(
        make_app(*options, "--graceful-term", max_concurrent_jobs=1, preempt_grace_s=0).test_client()
    )
    a, b = they["a"], they["b"]
    extra = {"not preemptible": {"priority": "low", "preemptible": False}, "normal": {}}.get(
        case, {"priority": "low"}
    )
    victim = create(b, **extra)
    running(b, victim)
    if case != "no checkpoint past the grace":
        wait_for(lambda: b.get(f"{API}/jobs/{victim}/checkpoints").get_json()["checkpoints"])
    high = create(a, priority="high")
    wait_for(lambda: status(a, high)["queue_position"] == 1)
    for _ in range(3):  # passes of the scheduler: none stops it
        a.post(f"{API}/jobs/{create(a, priority='low')}/stop")
    assert status(b, victim)["status"] == "running" and status(b, victim)["preemptions"] == 0
    assert status(a, high)["waiting_for"] == "capacity"
    stop_all(they["ops"], high, victim)


def test_a_teams_non_preemptible_jobs_are_limited(make_app, home):
    write_tenants(home, tenants_file(quotas={"max_non_preemptible": 1}))
    they = clients(make_app(*LONG, max_concurrent_jobs=2).test_client())
    a = they["a"]
    first = create(a, preemptible=False)
    refused = a.post(f"{API}/jobs", json={**BODY, "preemptible": False})
    assert refused.status_code == 403 and refused.get_json()["errors"][0]["field"] == "preemptible"
    assert refused.get_json()["max_non_preemptible"] == 1
    assert status(a, first)["preemptible"] is False
    stop_all(a, first, create(a))  # a preemptible one is still welcome


def test_a_user_stop_during_a_preemption_ends_the_job_stopped(make_app, home):
    write_tenants(home, tenants_file())
    # Trainers that ignore SIGTERM: a preemption takes the stop's grace period (3 s), and the victim's
    # team stops it meanwhile. Without a checkpoint it is preemptible only within preempt_grace_s.
    they = clients(make_app(*LONG, "--ignore-term", max_concurrent_jobs=1, preempt_grace_s=600).test_client())
    a, b = they["a"], they["b"]
    low = create(b, priority="low")
    running(b, low)
    high = create(a, priority="high")
    wait_for(lambda: status(b, low)["stop_requested"])  # the preemption's stop is under way
    assert status(a, high)["waiting_for"] == "preemption"
    assert b.post(f"{API}/jobs/{low}/stop").status_code in (200, 202)
    final = wait_for(lambda: (s := status(b, low))["status"] != "running" and s)
    assert (final["status"], final["preemptions"]) == ("stopped", 0)
    running(a, high)
    stop_all(a, high)


def test_usage_counts_gpu_seconds_by_team_and_day_and_the_monthly_quota(make_app, home):
    write_tenants(home, tenants_file(quotas={"max_gpu_hours": 0.0005}))  # 1.8 GPU-seconds
    they = clients(make_app("--steps", "50", "--interval", "0.05", gpus="0,1").test_client())
    a, b, ops = they["a"], they["b"], they["ops"]
    job = create(a, gpus=2)
    done = wait_for(lambda: (s := status(a, job))["status"] == "completed" and s)
    # Two GPUs for about 2.5 s of training: 5 GPU-seconds, give or take a beat.
    assert 3.0 <= done["gpu_seconds"] <= 60.0 and done["cpu_seconds"] > 0
    month = done["finished_at"][:7]
    ledger = [json.loads(line) for line in open(os.path.join(home, "logs", "usage", f"{month}.jsonl"))]
    assert [(line["tenant"], line["id"], line["kind"]) for line in ledger] == [("team-a", job, "job")]
    assert ledger[0]["gpu_seconds"] == pytest.approx(done["gpu_seconds"], abs=0.01)
    mine = a.get(f"{API}/usage").get_json()
    assert [t["tenant"] for t in mine["tenants"]] == ["team-a"]
    assert mine["tenants"][0]["gpu_hours"] == pytest.approx(done["gpu_seconds"] / 3600, abs=1e-3)
    assert mine["days"][0]["day"] == done["finished_at"][:10] and mine["days"][0]["runs"] == 1
    assert b.get(f"{API}/usage").get_json()["tenants"] == []  # nothing of team-a's
    assert b.get(f"{API}/usage?tenant=team-a").status_code == 403
    assert [t["tenant"] for t in ops.get(f"{API}/usage?tenant=team-a").get_json()["tenants"]] == ["team-a"]
    bad = ops.get(f"{API}/usage?from=2026-12-01&to=2026-11-01")
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == "from"
    assert ops.get(f"{API}/usage?from=yesterday").status_code == 400
    # team-a is past its 1.8 GPU-seconds this month: a new run is refused with the figure; team-b is not.
    refused = a.post(f"{API}/jobs", json=BODY)
    assert refused.status_code == 403 and refused.get_json()["errors"][0]["field"] == "max_gpu_hours"
    assert refused.get_json()["gpu_hours"] >= 0.0005
    stop_all(b, create(b))


def test_a_lost_attempt_is_accounted_once_and_only_for_its_own_monitor(tmp_path):
    """What the liveness check does for a monitor killed -9: the figures it last recorded go into
    the ledger once, however many workers see the loss; a newer attempt's monitor is left alone."""
    from imts_flask.jobs.liveness import account
    from imts_flask.jobs.store import JobStore
    from imts_flask.settings import Settings

    store = JobStore(str(tmp_path / "jobs"), lock_timeout=2)
    lost = {"pid": 1, "host": "h", "id": "m-1"}
    job_id = store.create(
        lambda job_id, job_dir: {
            JobStore.STATE: {
                "job_id": job_id, "status": "running", "history": [], "tenant": "team-a",
                "monitor": lost, "launch": {"id": "l-1"}, "gpu_seconds": 60.0, "cpu_seconds": 7.5,
            },
        }
    )  # fmt: skip
    settings = Settings(home=str(tmp_path))
    for _ in range(2):  # two workers, or one worker twice
        account(store, settings, store.read(job_id), lost)
    assert store.read(job_id).accounted == {"gpu_seconds": 60.0, "cpu_seconds": 7.5}

    def written():  # the file's own lines (GET /usage would also count a line written twice once)
        usage = tmp_path / "logs" / "usage"
        return [json.loads(line) for name in os.listdir(usage) for line in open(usage / name)]

    assert [(line["id"], line["tenant"], line["gpu_seconds"]) for line in written()] == [
        (job_id, "team-a", 60.0)
    ]
    # A newer attempt runs under another monitor: the old one's loss accounts nothing of it.
    store.update(job_id, lambda s: s.set(monitor={"pid": 2, "id": "m-2"}, gpu_seconds=90.0) or CHANGED)
    account(store, settings, store.read(job_id), lost)
    assert len(written()) == 1


def test_a_bad_quota_in_the_tenants_file_is_refused_with_its_reason(home):
    from imts_flask.tenancy.config import parse

    with pytest.raises(ValueError, match="quotas are"):
        parse({"tenants": {"t": {"quotas": {"max_gpus": 1}}}})
    with pytest.raises(ValueError, match="max_queued_jobs is a number >= 0"):
        parse({"tenants": {"t": {"quotas": {"max_queued_jobs": -1}}}})
    assert (
        parse({"tenants": {"t": {"quotas": {"max_gpu_hours": 12.5}}}})[1]["t"]["quotas"]["max_gpu_hours"]
        == 12.5
    )


def test_the_victims_are_the_fewest_lowest_and_newest_and_the_rules_spare_the_rest(tmp_path):
    """jobs/preemption.py's choice, on records alone (no checkpoint anywhere: the grace decides)."""
    from types import SimpleNamespace

    from imts_flask.jobs import preemption
    from imts_flask.jobs.record import new_record

    settings = SimpleNamespace(preempt_normal=False, preempt_grace_s=600, max_preemptions=2)
    now = 1_800_000_000.0

    def running(job_id, priority="low", started=now - 10, gpus=(), **extra):
        return new_record(
            job_id=job_id, status="running", priority=priority,
            paths={"output_dir": str(tmp_path)},
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
            launch={"gpus": list(gpus)}, **extra,
        )  # fmt: skip

    high = new_record(job_id="train_0000000h", priority="high", gpus=2)
    wider = new_record(**{**high.to_json(), "gpus": 3})
    older, newer = (
        running("train_0000000a", started=now - 300, gpus=["0"]),
        running("train_0000000b", gpus=["1"]),
    )
    spared = [
        running("train_0000000c", "normal", gpus=["2"]),  # normal: only with preempt_normal
        running("train_0000000d", gpus=["3"], preemptible=False),
        running("train_0000000e", gpus=["4"], preemptions=2),  # max_preemptions reached
        running("train_0000000f", gpus=["5"], stop_requested_at="2027-01-15T08:00:00"),  # stopping already
        running("train_0000000g", started=now - 700, gpus=["6"]),  # past the grace, no checkpoint
    ]
    holding = [older, *spared, newer]
    # One GPU free, the job needs two: one victim, the newest low one.
    assert [v.job_id for v in preemption.choose(settings, high, holding, 0, ["7"], now)] == ["train_0000000b"]
    # No GPU free: both low ones, newest first; three needed: more than may be taken, so none.
    assert [v.job_id for v in preemption.choose(settings, high, holding, 0, [], now)] == [
        "train_0000000b", "train_0000000a",
    ]  # fmt: skip
    assert preemption.choose(settings, wider, holding, 0, [], now) == []
    settings.preempt_normal = True  # then normal ones may go too, after the low ones
    assert [v.job_id for v in preemption.choose(settings, wider, holding, 0, [], now)] == [
        "train_0000000b", "train_0000000a", "train_0000000c",
    ]  # fmt: skip
    deployment = new_record(**{**high.to_json(), "kind": "deployment"})
    assert not preemption.preempts(new_record(priority="normal")) and not preemption.preempts(deployment)


def test_a_waiting_high_job_keeps_the_gpus_that_free_from_lower_jobs_behind_it(make_app, home):
    write_tenants(home, tenants_file())
    they = clients(make_app(*LONG, gpus="0,1").test_client())
    a, b = they["a"], they["b"]
    normal = create(b, gpus=1)  # normal: no high job may preempt it
    running(b, normal)
    high = create(a, priority="high", gpus=2)  # one GPU free, two needed: it waits
    behind = create(b, gpus=1)  # fits the free GPU, but waits behind the high job
    a.post(f"{API}/jobs/{create(a, priority='low')}/stop")  # another pass of the scheduler
    assert status(a, high)["status"] == "pending" and status(a, high)["queue_position"] == 1
    assert status(b, behind)["status"] == "pending" and status(b, behind)["queue_position"] == 2
    stop_all(b, normal)
    running(a, high)  # both GPUs to the high job, first
    assert status(b, behind)["status"] == "pending"
    stop_all(they["ops"], high, behind)
