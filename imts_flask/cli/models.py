"""The CLI's commands for what a job made and what it trains on: datasets, evaluations, the
registry's versions and deployments."""

import json
import os
import sys
import time

from .client import TERMINAL, Multipart


def cmd_datasets(client, args):
    if args.action == "upload":
        from tqdm import tqdm

        fields = {"name": args.name, **({"format": args.format} if args.format else {})}
        query = "?overwrite=true" if args.overwrite else ""
        with tqdm(total=os.path.getsize(args.file), unit="B", unit_scale=True, desc=args.name) as bar:
            body = Multipart(fields, args.file, bar)
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
