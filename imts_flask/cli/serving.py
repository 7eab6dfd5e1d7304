"""The CLI's shared-serving commands: chat with any model name through /v1, list or stop servers."""

import json
import sys
import urllib.error
import urllib.request

from .client import ApiError


def cmd_chat(client, args):
    """Stream one chat completion of MODEL (a job, name:3, name@alias or a base model) to stdout."""
    message = args.message if args.message is not None else sys.stdin.read()
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": message}],
        "max_tokens": args.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        client.root + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **client.auth()},
    )
    try:
        response = urllib.request.urlopen(request, timeout=max(client.timeout, 600))
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error") or {}
        except ValueError:
            error = {}
        raise ApiError(exc.code, {"message": error.get("message") or exc.reason}) from None
    usage = None
    with response:
        for line in response:
            if line.startswith(b"event: error"):
                print("\nerror: the answer broke off", file=sys.stderr)
                return 1
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("error"):
                print(f"\nerror: {event['error'].get('message')}", file=sys.stderr)
                return 1
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                sys.stdout.write(choice.get("delta", {}).get("content") or "")
                sys.stdout.flush()
    print()
    if usage and args.usage:
        print(
            f"({usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens)",
            file=sys.stderr,
        )
    return 0


def cmd_servers(client, args):
    """The shared base-model servers and their adapters, or stop one (--stop ID, admins)."""
    if args.stop:
        _, server, _ = client.call("DELETE", f"/servers/{args.stop}")
        print(f"{server['server_id']} {server['status']}")
        return 0
    _, listing, _ = client.call("GET", "/servers?limit=1000")
    for s in listing["servers"]:
        adapters = ", ".join(s.get("adapters") or {}) or "-"
        print(
            f"{s['server_id']}  {s['status']:<8} {s['base_model']:<20} requests {s['requests_served']:<6} "
            f"restarts {s['restarts']}  adapters: {adapters}"
        )
    return 0
