"""Command-line client for the IMTS training API: `python -m imts_flask.cli --help`.

Talks HTTP only (the server may be another machine); IMTS_URL or --url says where.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import yaml

API = "/api/v1/training"
TERMINAL = ("completed", "failed", "stopped")


class ApiError(Exception):
    def __init__(self, status, body):
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class Client:
    def __init__(self, url, token=None, timeout=60):
        self.base = url.rstrip("/") + API
        self.token = token
        self.timeout = timeout

    def call(self, method, path, body=None, headers=None, data=None):
        """Return (status, JSON body, response headers); 4xx/5xx raise ApiError.

        `body` goes as JSON; `data` (with its Content-Type in `headers`) as it is, a file-like
        object included.
        """
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers = {**(headers or {}), "Content-Type": "application/json"}
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=dict(headers or {})
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None, response.headers
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return 304, None, exc.headers
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            raise ApiError(exc.code, payload) from None


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


class _Multipart:
    """A multipart/form-data body streamed from a file, with a progress bar: never all in memory."""

    def __init__(self, fields, path, bar):
        self.boundary = "imts-" + os.urandom(12).hex()
        head = "".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{os.path.basename(path)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        self.parts = [head.encode(), None, f"\r\n--{self.boundary}--\r\n".encode()]
        self.file = open(path, "rb")  # closed once read to the end
        self.length = len(self.parts[0]) + os.path.getsize(path) + len(self.parts[2])
        self.bar = bar

    def read(self, size=-1):
        while self.parts:
            if self.parts[0] is None:
                chunk = self.file.read(size if size > 0 else 1024 * 1024)
                if chunk:
                    self.bar.update(len(chunk))
                    return chunk
                self.file.close()
                self.parts.pop(0)
                continue
            chunk = self.parts.pop(0)
            return chunk
        return b""


def cmd_datasets(client, args):
    if args.action == "upload":
        from tqdm import tqdm

        fields = {"name": args.name, **({"format": args.format} if args.format else {})}
        query = "?overwrite=true" if args.overwrite else ""
        with tqdm(total=os.path.getsize(args.file), unit="B", unit_scale=True, desc=args.name) as bar:
            body = _Multipart(fields, args.file, bar)
            headers = {
                "Content-Type": f"multipart/form-data; boundary={body.boundary}",
                "Content-Length": str(body.length),
            }
            _, described, _ = client.call("POST", "/datasets" + query, headers=headers, data=body)
        print(json.dumps(described, ensure_ascii=False, indent=2))
    elif args.action == "list":
        _, listing, _ = client.call("GET", "/datasets")
        print(f"{'NAME':24} {'SOURCE':9} {'FORMAT':9} {'ROWS':>8}  STAGES")
        for d in listing["datasets"]:
            rows = d["rows"] if d["rows"] is not None else "-"
            print(f"{d['name']:24} {d['source']:9} {d['format']:9} {rows:>8}  {','.join(d['stages'])}")
    elif args.action == "show":
        query = f"?preview={args.preview}" if args.preview else ""
        print(
            json.dumps(client.call("GET", f"/datasets/{args.name}{query}")[1], ensure_ascii=False, indent=2)
        )
    else:
        client.call("DELETE", f"/datasets/{args.name}")
        print(f"deleted {args.name}")
    return 0


def cmd_evaluate(client, args):
    """Queue an evaluation of a job; with --watch wait for it and print the comparison table."""
    body = {"dataset": args.dataset, "checkpoint": args.checkpoint, "baseline": args.baseline}
    if args.max_samples:
        body["max_samples"] = args.max_samples
    if args.max_new_tokens:
        body["generation"] = {"max_new_tokens": args.max_new_tokens}
    _, evaluation, _ = client.call("POST", f"/jobs/{args.job_id}/evaluations", body)
    if not args.watch:
        print(json.dumps(evaluation, ensure_ascii=False) if args.json else evaluation["evaluation_id"])
        return 0
    path = f"/jobs/{args.job_id}/evaluations/{evaluation['evaluation_id']}"
    while evaluation["status"] not in TERMINAL:
        time.sleep(args.interval)
        _, evaluation, _ = client.call("GET", path)
        phase = evaluation.get("phase") or evaluation["status"]
        print(f"\r{evaluation['evaluation_id']}: {phase:<16}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return _print_evaluation(evaluation, args.json)


def cmd_evaluation(client, args):
    """Show one evaluation's comparison table, and with --samples N its first N rows."""
    path = f"/jobs/{args.job_id}/evaluations/{args.evaluation_id}"
    _, evaluation, _ = client.call("GET", path)
    code = _print_evaluation(evaluation, args.json)
    if args.samples:
        _, page, _ = client.call("GET", f"{path}/samples?limit={args.samples}")
        for sample in page["samples"]:
            print(f"\n#{sample['index']} {sample['prompt']!r}")
            for who in ("label", "tuned", "base"):
                if sample.get(who) is not None:
                    print(f"  {who:>5}: {sample[who]!r}")
    return code


def _print_evaluation(evaluation, as_json):
    if as_json:
        print(json.dumps(evaluation, ensure_ascii=False, indent=2))
        return 0 if evaluation["status"] == "completed" else 1
    print(
        f"{evaluation['evaluation_id']} of {evaluation['job_id']} ({evaluation['checkpoint']} on "
        f"{evaluation['dataset']}, at most {evaluation['max_samples']} rows): {evaluation['status']}"
        + (f" ({evaluation['error']})" if evaluation.get("error") else "")
    )
    print(comparison_table(evaluation["results"]))
    return 0 if evaluation["status"] == "completed" else 1


def comparison_table(results):
    """The figures of the tuned model, its base and the difference, one metric a line."""
    tuned, base, difference = (results.get(k) or {} for k in ("tuned", "base", "difference"))
    lines = [f"{'METRIC':12} {'TUNED':>12} {'BASE':>12} {'DIFFERENCE':>12}"]
    for metric in tuned:
        cells = [
            _figure(tuned.get(metric)),
            _figure(base.get(metric)),
            _figure(difference.get(metric), sign=True),
        ]
        lines.append(f"{metric:12} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12}")
    return "\n".join(lines)


def _figure(value, sign=False):
    if value is None:
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def cmd_deploy(client, args):
    """Deploy a job's weights (or a registered version); print base_url, model and the key (shown once)."""
    body = {"model": args.model} if args.model else {"job_id": args.job_id, "checkpoint": args.checkpoint}
    body.update({k: v for k, v in (("name", args.name), ("max_new_tokens", args.max_new_tokens)) if v})
    _, deployment, _ = client.call("POST", "/deployments", body)
    key = deployment["api_key"]
    path = f"/deployments/{deployment['deployment_id']}"
    while args.wait and deployment["status"] not in ("ready", "failed", "stopped"):
        time.sleep(args.interval)
        _, deployment, _ = client.call("GET", path)
    if args.json:
        print(json.dumps({**deployment, "api_key": key}, ensure_ascii=False))
    else:
        print(f"{deployment['deployment_id']} {deployment['status']}")
        print(
            f"base_url {deployment['base_url']}\nmodel    {deployment['model']}\napi_key  {key}  (shown once)"
        )
    return 1 if deployment["status"] == "failed" else 0


def cmd_deployments(client, args):
    """List deployments, or stop one (--stop ID)."""
    if args.stop:
        _, deployment, _ = client.call("DELETE", f"/deployments/{args.stop}")
        print(f"{deployment['deployment_id']} {deployment['status']}")
        return 0
    _, listing, _ = client.call("GET", "/deployments?limit=1000")
    for d in listing["deployments"]:
        source = d["source"].get("model") or f"{d['source'].get('job_id')} {d['source'].get('checkpoint')}"
        print(f"{d['deployment_id']}  {d['status']:<8} {d['model']:<20} {d['base_url']}  {source}")
    return 0


def cmd_register(client, args):
    """Register a completed job's weights as the next version of a name; print name:version."""
    body = {"name": args.name, "job_id": args.job_id, "checkpoint": args.checkpoint}
    if args.description:
        body["description"] = args.description
    _, version, _ = client.call("POST", "/models", body)
    if args.alias:
        client.call("PUT", f"/models/{args.name}/aliases/{args.alias}", {"version": version["version"]})
    print(json.dumps(version, ensure_ascii=False) if args.json else version["reference"])
    return 0


def cmd_models(client, args):
    """Registered names with their versions and aliases (or one name's versions, with lineage)."""
    if args.name:
        _, model, _ = client.call("GET", f"/models/{args.name}")
        for v in model["versions"]:
            aliases = f" ({', '.join(v['aliases'])})" if v["aliases"] else ""
            lineage = f"{v['job_id']} {v['checkpoint']}  {v['base_model']} on {v['dataset']}"
            print(f"{v['reference']}{aliases}  {lineage}")
        return 0
    _, listing, _ = client.call("GET", "/models")
    for model in listing["registered"]:
        aliases = ", ".join(f"{a}->{n}" for a, n in sorted(model["aliases"].items()))
        print(f"{model['name']}  versions {model['versions']}  {aliases}")
    return 0


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


def parser():
    main = argparse.ArgumentParser(prog="python -m imts_flask.cli", description="IMTS training API client")
    main.add_argument(
        "--url",
        default=os.environ.get("IMTS_URL", "http://127.0.0.1:8000"),
        help="service base URL (env IMTS_URL)",
    )
    main.add_argument("--token", default=os.environ.get("IMTS_TOKEN"), help="bearer token (env IMTS_TOKEN)")
    sub = main.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="create a training job from flags and/or a YAML/JSON file")
    submit.add_argument("-f", "--file", help="request body as YAML or JSON; flags override it")
    submit.add_argument("--model", help="model_name")
    submit.add_argument("--dataset")
    submit.add_argument("--stage", choices=["sft", "pt", "rm", "dpo", "kto"])
    submit.add_argument("--finetuning-type", choices=["lora", "full", "freeze"])
    submit.add_argument("--epochs", type=float)
    submit.add_argument("--batch-size", type=int)
    submit.add_argument("--learning-rate", type=float)
    submit.add_argument("--lora-rank", type=int)
    submit.add_argument("--lora-alpha", type=int)
    submit.add_argument("--gpus", type=int)
    submit.add_argument("--webhook-url")
    submit.add_argument("--val-size", type=float, help="validation: hold out this share of the rows (0..1)")
    submit.add_argument("--val-dataset", help="validation: evaluate on this dataset")
    submit.add_argument("--eval-steps", type=int, help="validation: every N steps (default: save_steps)")
    submit.add_argument("--patience", type=int, help="early stopping after N evaluations without improvement")
    submit.add_argument("--min-delta", type=float, default=0.0, help="early stopping: the least improvement")
    submit.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a custom_config entry (repeatable)"
    )
    submit.add_argument(
        "--priority", choices=["high", "normal", "low"], help="the queue's order (default normal)"
    )
    submit.add_argument("--not-preemptible", action="store_true", help="no high job may stop it")
    submit.add_argument("--idempotency-key", help="makes a retried submit return the same job")
    submit.add_argument("--watch", action="store_true", help="then follow it with a progress bar")
    submit.add_argument("--json", action="store_true")
    submit.add_argument("--interval", type=float, default=2.0)

    listing = sub.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--status", choices=["pending", "running", "completed", "failed", "stopped"])
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")

    for name, text in (
        ("status", "a job's full status as JSON"),
        ("stop", "stop a job"),
        ("delete", "delete a finished job and its files (exports stay)"),
    ):
        sub.add_parser(name, help=text).add_argument("job_id")

    resume = sub.add_parser("resume", help="continue a stopped or failed job from a checkpoint, as a new job")
    resume.add_argument("job_id")
    resume.add_argument("--checkpoint", help="e.g. checkpoint-500 (default: the newest complete one)")
    resume.add_argument("--idempotency-key", help="makes a retried resume return the same new job")
    resume.add_argument("--watch", action="store_true", help="then follow the new job with a progress bar")
    resume.add_argument("--json", action="store_true")
    resume.add_argument("--interval", type=float, default=2.0)

    watch = sub.add_parser("watch", help="progress bar (step, loss, ETA) until the job ends")
    watch.add_argument("job_id")
    watch.add_argument("--interval", type=float, default=2.0)

    logs = sub.add_parser("logs", help="print training.log")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    logs.add_argument("--interval", type=float, default=2.0)

    datasets = sub.add_parser("datasets", help="upload, list, show or delete datasets")
    actions = datasets.add_subparsers(dest="action", required=True)
    upload = actions.add_parser("upload", help="upload a .json/.jsonl/.csv/.parquet file (progress bar)")
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    upload.add_argument("--format", choices=["alpaca", "sharegpt", "pairwise", "kto", "text"])
    upload.add_argument("--overwrite", action="store_true", help="replace a dataset of that name")
    actions.add_parser("list", help="every dataset a job may name")
    show = actions.add_parser("show", help="one dataset, with --preview N rows")
    show.add_argument("name")
    show.add_argument("--preview", type=int, default=0)
    actions.add_parser("delete", help="delete an uploaded dataset").add_argument("name")

    export = sub.add_parser("export", help="export the trained model; prints its path")
    export.add_argument("job_id")
    export.add_argument("--dir", required=True, help="export_dir, e.g. ./models/exports/my_model")
    export.add_argument("--no-merge", action="store_true", help="copy the LoRA adapter instead of merging")
    export.add_argument("--checkpoint", help="final (default), best, or a name like checkpoint-500")
    export.add_argument("--interval", type=float, default=2.0)

    evaluate = sub.add_parser("evaluate", help="judge a job's weights on a dataset; --watch prints the table")
    evaluate.add_argument("job_id")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--checkpoint", default="final", help="final (default), best, or checkpoint-N")
    evaluate.add_argument("--baseline", action="store_true", help="judge the base model too, side by side")
    evaluate.add_argument("--max-samples", type=int, help="rows used, at most (default 200)")
    evaluate.add_argument("--max-new-tokens", type=int, help="the longest generated answer (default 128)")
    evaluate.add_argument("--watch", action="store_true", help="wait for it, then print the comparison")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--interval", type=float, default=2.0)

    deploy = sub.add_parser(
        "deploy", help="serve a job's weights or a registered version (OpenAI-compatible)"
    )
    deploy.add_argument("job_id", nargs="?")
    deploy.add_argument("--model", help="a registered version instead of a job: name:3 or name@alias")
    deploy.add_argument("--checkpoint", default="final", help="final (default), best, or checkpoint-N")
    deploy.add_argument("--name", help="the model id clients send")
    deploy.add_argument("--max-new-tokens", type=int)
    deploy.add_argument("--wait", action="store_true", help="until it is ready (or failed)")
    deploy.add_argument("--json", action="store_true")
    deploy.add_argument("--interval", type=float, default=1.0)
    deployments = sub.add_parser("deployments", help="list deployments, or --stop one")
    deployments.add_argument("--stop", metavar="DEPLOYMENT_ID")
    register = sub.add_parser("register", help="register a completed job's weights as a model version")
    register.add_argument("job_id")
    register.add_argument("--name", required=True)
    register.add_argument("--checkpoint", default="final", help="final (default), best, or checkpoint-N")
    register.add_argument("--description")
    register.add_argument("--alias", help="point this alias at the new version")
    register.add_argument("--json", action="store_true")
    priority = sub.add_parser("priority", help="change a job's priority; --head (admins) moves it first")
    priority.add_argument("job_id")
    priority.add_argument("priority", nargs="?", choices=["high", "normal", "low"])
    priority.add_argument("--head", action="store_true")

    usage = sub.add_parser("usage", help="GPU-hours and CPU-hours per team, this month by default")
    usage.add_argument("--tenant")
    usage.add_argument("--from", dest="since", metavar="YYYY-MM-DD")
    usage.add_argument("--to", dest="until", metavar="YYYY-MM-DD")
    usage.add_argument("--days", action="store_true", help="a row per team and day")
    usage.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="registered models, or one name's versions")
    models.add_argument("name", nargs="?")

    evaluation = sub.add_parser("evaluation", help="an evaluation's comparison table (and --samples N rows)")
    evaluation.add_argument("job_id")
    evaluation.add_argument("evaluation_id")
    evaluation.add_argument("--samples", type=int, default=0)
    evaluation.add_argument("--json", action="store_true")
    return main


def main(argv=None):
    args = parser().parse_args(argv)
    client = Client(args.url, args.token)
    command = globals()["cmd_" + args.command]
    try:
        return command(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for error in (exc.body.get("errors") or []) if isinstance(exc.body, dict) else []:
            print(f"  {error['field']}: {error['reason']}", file=sys.stderr)
        return 2
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
