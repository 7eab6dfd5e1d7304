"""Command-line client for the IMTS training API: `python -m imts_flask.cli --help`.

Talks HTTP only (the server may be another machine); IMTS_URL or --url says where.
"""

import argparse
import os
import sys
import urllib.error
import urllib.request

from . import jobs, models, serving
from .client import ApiError, Client

# Each subcommand is a cmd_<name>(client, args) of jobs.py, models.py or serving.py.
COMMANDS = {
    name[len("cmd_") :]: function
    for module in (jobs, models, serving)
    for name, function in vars(module).items()
    if name.startswith("cmd_")
}


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
    chat = sub.add_parser("chat", help="chat with any model name through /v1 (a job, name:3, a base model)")
    chat.add_argument("model")
    chat.add_argument("message", nargs="?", help="the message (default: read stdin)")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--usage", action="store_true", help="print the tokens used (to stderr)")
    servers = sub.add_parser("servers", help="shared base-model servers and their adapters, or --stop one")
    servers.add_argument("--stop", metavar="SERVER_ID")
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
    command = COMMANDS[args.command]
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
