"""The CLI's job commands: submit, list, status, watch, logs, stop, resume, delete, export,
priority, and the teams' usage."""

import argparse
import json
import sys
import time

import yaml

from .client import TERMINAL


def _request_body(args):
    body = {}
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)  # YAML is a superset of JSON
        if not isinstance(loaded, dict):
            raise SystemExit(f"{args.file}: expected a mapping of request fields")
        body.update(loaded)
    flags = {
        "model_name": args.model,
        "dataset": args.dataset,
        "stage": args.stage,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "finetuning_type": args.finetuning_type,
        "gpus": args.gpus,
        "webhook_url": args.webhook_url,
        "priority": args.priority,
        "preemptible": False if args.not_preemptible else None,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    if args.val_size is not None or args.val_dataset:
        validation = (
            {"val_size": args.val_size} if args.val_size is not None else {"dataset": args.val_dataset}
        )
        body["validation"] = {**validation, **({"eval_steps": args.eval_steps} if args.eval_steps else {})}
    if args.patience:
        body["early_stopping"] = {"patience": args.patience, "min_delta": args.min_delta}
    for item in args.set or []:
        key, _, value = item.partition("=")
        body.setdefault("custom_config", {})[key] = yaml.safe_load(value)
    return body


def cmd_submit(client, args):
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    _, job, _ = client.call("POST", "/jobs", _request_body(args), headers)
    print(json.dumps(job, ensure_ascii=False) if args.json else job["job_id"])
    return (
        cmd_watch(client, argparse.Namespace(job_id=job["job_id"], interval=args.interval))
        if args.watch
        else 0
    )


def cmd_list(client, args):
    query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
    _, listing, _ = client.call("GET", "/jobs" + query)
    if args.json:
        print(json.dumps(listing, ensure_ascii=False, indent=2))
        return 0
    print(f"{'JOB':16} {'STATUS':10} {'PROGRESS':>8} {'LOSS':>10}  {'CREATED':20} MODEL / DATASET")
    for job in listing["jobs"]:
        loss = f"{job['current_loss']:.4f}" if job.get("current_loss") is not None else "-"
        print(
            f"{job['job_id']:16} {job['status']:10} {job['progress']:>8.0%} {loss:>10}  "
            f"{job.get('created_at') or '-':20} {job.get('model_name')} / {job.get('dataset')}"
        )
    print(f"{listing['total']} job(s)")
    return 0


def waiting(job):
    """What a waiting job waits for, in words ("capacity held by deploy_ab12cd34")."""
    named = list(job.get("held_by") or [])
    others = job.get("held_by_others") or 0
    if others:
        named.append(f"{others} run{'s' if others > 1 else ''} of another team")
    return f"{job.get('waiting_for') or 'capacity'}" + (f" held by {' and '.join(named)}" if named else "")


def cmd_status(client, args):
    _, job, _ = client.call("GET", f"/jobs/{args.job_id}")
    print(json.dumps(job, ensure_ascii=False, indent=2))
    return 0


def cmd_watch(client, args):
    """Follow a job with a progress bar until it ends; exit 0 only if it completed."""
    from tqdm import tqdm

    etag, job = None, None
    bar = tqdm(total=1, unit="step", dynamic_ncols=True, desc=args.job_id)
    try:
        while True:
            status, fresh, headers = client.call(
                "GET", f"/jobs/{args.job_id}", headers={"If-None-Match": etag} if etag else None
            )
            if status == 200:
                job, etag = fresh, headers.get("ETag")
                total = job.get("total_steps") or 1
                bar.total = total
                bar.n = job.get("current_step") or (total if job["status"] == "completed" else 0)
                postfix = {"status": job["status"]}
                if job.get("current_loss") is not None:
                    postfix["loss"] = f"{job['current_loss']:.4f}"
                if job.get("eta_seconds") is not None:
                    postfix["eta"] = f"{job['eta_seconds']}s"
                if job.get("queue_position"):
                    postfix["queue"] = job["queue_position"]
                    postfix["waiting for"] = waiting(job)
                bar.set_postfix(postfix)
                bar.refresh()
            if job["status"] in TERMINAL:
                break
            time.sleep(args.interval)
    finally:
        bar.close()
    print(f"{args.job_id}: {job['status']}" + (f" ({job['error']})" if job.get("error") else ""))
    return 0 if job["status"] == "completed" else 1


def cmd_logs(client, args):
    if args.tail and not args.follow:
        _, page, _ = client.call("GET", f"/jobs/{args.job_id}/logs?tail={args.tail}")
        print("\n".join(page["lines"]))
        return 0
    offset, finished = 0, False
    while True:
        _, page, _ = client.call("GET", f"/jobs/{args.job_id}/logs?offset={offset}")
        sys.stdout.write(page["data"])
        sys.stdout.flush()
        offset = page["next_offset"]
        if page["eof"]:
            if not args.follow or finished:
                return 0
            # Once the job has ended, one more read picks up whatever it wrote last.
            finished = client.call("GET", f"/jobs/{args.job_id}")[1]["status"] in TERMINAL
            if not finished:
                time.sleep(args.interval)


def cmd_stop(client, args):
    status, body, _ = client.call("POST", f"/jobs/{args.job_id}/stop")
    print(body["message"])
    return 0 if status == 200 else 3


def cmd_resume(client, args):
    """Resume a stopped or failed job as a new job; print the new id (and follow it with --watch)."""
    body = {"checkpoint": args.checkpoint} if args.checkpoint else None
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    _, job, _ = client.call("POST", f"/jobs/{args.job_id}/resume", body, headers)
    origin = job["resumed_from"]
    if args.json:
        print(json.dumps(job, ensure_ascii=False))
    else:
        print(job["job_id"])
        print(
            f"resumes {origin['job_id']} from {origin['checkpoint']} (step {origin['step']})", file=sys.stderr
        )
    if args.watch:
        return cmd_watch(client, argparse.Namespace(job_id=job["job_id"], interval=args.interval))
    return 0


def cmd_delete(client, args):
    client.call("DELETE", f"/jobs/{args.job_id}")
    print(f"deleted {args.job_id}")
    return 0


def cmd_export(client, args):
    body = {"export_dir": args.dir, "merge_lora": not args.no_merge}
    if args.checkpoint:
        body["checkpoint"] = args.checkpoint
    status, result, _ = client.call("POST", f"/jobs/{args.job_id}/export", body)
    while status == 202:
        time.sleep(args.interval)
        _, job, _ = client.call("GET", f"/jobs/{args.job_id}")
        status = 202 if job["export"]["status"] == "running" else 200
        result = {"model_path": job["export"]["model_path"], "export_status": job["export"]["status"]}
    print(result["model_path"])
    return 0 if result.get("export_status") == "completed" else 1


def cmd_priority(client, args):
    """Change a job's priority, or (admins) move it to the head of the queue; print its place."""
    body = {"priority": args.priority} if args.priority else {}
    if args.head:
        body["queue_head"] = True
    _, job, _ = client.call("PATCH", f"/jobs/{args.job_id}", body)
    place = (
        f", queue position {job['queue_position']}, waiting for {waiting(job)}"
        if job.get("queue_position")
        else ""
    )
    print(f"{job['job_id']}: {job['status']}, priority {job['priority']}{place}")
    return 0


def cmd_usage(client, args):
    """GPU-hours and CPU-hours per team (and --days, per day)."""
    query = "&".join(
        f"{k}={v}" for k, v in (("tenant", args.tenant), ("from", args.since), ("to", args.until)) if v
    )
    _, usage, _ = client.call("GET", "/usage" + (f"?{query}" if query else ""))
    if args.json:
        print(json.dumps(usage, ensure_ascii=False, indent=2))
        return 0
    print(f"{usage['from']} .. {usage['to']}")
    print(f"{'TEAM':24} {'DAY':10} {'GPU-HOURS':>10} {'CPU-HOURS':>10} {'RUNS':>5}")
    for row in usage["days"] if args.days else usage["tenants"]:
        team = row["tenant"] or "(admins)"
        hours = f"{row['gpu_hours']:>10.3f} {row['cpu_hours']:>10.3f}"
        print(f"{team:24} {row.get('day', ''):10} {hours} {row['runs']:>5}")
    return 0
