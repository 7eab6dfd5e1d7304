"""Benchmark of shared serving: one vLLM server of a base model with many LoRA adapters, called
through the service's /v1, against one dedicated deployment per adapter (LLaMA Factory's server, as
many as the slots allow), in one run.

    .venv/bin/python tools/bench_serving.py [--smoke] [--adapters 1 8 32] [--gpus]

(`make bench` runs it as one of its sections.) It trains one LoRA job of tiny-llama-hd64 and
registers it as N versions (bench-1:1 ... bench-N:1: N adapters to vLLM, each loaded on its own
first request), then measures
- the first request of a cold adapter (its load and its answer) next to the same request warm;
- tokens/s and p50/p99 time to first token of streamed requests spread over 1, 8 and 32 adapters,
  `--concurrency` at a time, on the one server;
- the server's memory (its API process and engine together) as adapters are added: per adapter;
- the same streamed requests straight to the server, bypassing /v1: what the relay costs;
- the same streamed requests over dedicated deployments, one per adapter, as many as the slots let
  run at once (the others would wait: today's design serves `slots` models, not N).
With --gpus it asks each server and deployment for a GPU (a lent GPU machine: vLLM's `vllm`
package, `make vllm VLLM_PACKAGE=vllm`). Figures are printed; nothing is asserted.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_server import PROJECT, Server, _http  # noqa: E402

SERVE_MODEL = os.path.join(PROJECT, "models", "tiny-llama-hd64")
JOB = {
    "model_name": "tiny-llama-hd64",
    "dataset": "demo_sft",
    "epochs": 1.0,
    "custom_config": {"cutoff_len": 128, "template": "default"},
}
PROMPT = [{"role": "user", "content": "Describe the object in one sentence."}]


def stream_once(base_url, key, model, max_tokens):
    """One streamed chat completion: (seconds to its first token, completion tokens, seconds)."""
    url = urllib.parse.urlsplit(base_url)
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    try:
        connection.request(
            "POST",
            f"{url.path}/chat/completions",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{model}: {response.status} {response.read(300)!r}")
        first = None
        pieces = 0
        usage = None
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                pieces += 1
                if first is None:
                    first = time.perf_counter() - started
        tokens = (usage or {}).get("completion_tokens") or pieces
        return (
            first if first is not None else time.perf_counter() - started,
            tokens,
            time.perf_counter() - started,
        )
    finally:
        connection.close()


def spread(targets, requests, concurrency, max_tokens):
    """`requests` streamed completions over `targets` [(base_url, key, model)], round robin,
    `concurrency` at a time: tokens/s over the whole, and p50/p99 time to first token."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda i: stream_once(*targets[i % len(targets)], max_tokens), range(requests)))
    wall = time.perf_counter() - started
    firsts = sorted(d[0] for d in done)
    return {
        "requests": requests,
        "tokens": sum(d[1] for d in done),
        "tokens_per_s": sum(d[1] for d in done) / wall,
        "ttft_p50_s": statistics.median(firsts),
        "ttft_p99_s": firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))],
    }


def tree_rss(pid):
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def server_pid(home):
    folder = os.path.join(home, "servers")
    (server_id,) = os.listdir(folder)
    with open(os.path.join(folder, server_id, "state.json")) as handle:
        return server_id, json.load(handle)["trainer"]["pid"]


def bench_serving(root, counts=(1, 8, 32), requests=64, concurrency=8, max_tokens=32, gpus=False):
    home = os.path.join(root, "serve")
    slots = 2
    settings = {
        "max_concurrent_jobs": slots,
        "deploy_ports": "18720-18759",
        "serve_max_loras": 8,
        "serve_max_cpu_loras": max(counts) + 8,
        "serve_max_model_len": 256,
        "serve_idle_stop_minutes": 0,
        "serve_start_wait_s": 600,
    }
    if not gpus:
        settings["gpus"] = ""
    server = Server(home, models={"tiny-llama-hd64": SERVE_MODEL}, **settings)
    root_url = server.base.split("/api/")[0]
    v1 = (f"{root_url}/v1", "none")
    try:
        job_id = _http("POST", f"{server.base}/jobs", JOB)[1]["job_id"]
        assert server.wait_record(job_id)["status"] == "completed"
        names = []
        for i in range(1, max(counts) + 1):
            _http("POST", f"{server.base}/models", {"name": f"bench-{i}", "job_id": job_id})
            names.append(f"bench-{i}:1")
        start = time.perf_counter()
        stream_once(*v1, "tiny-llama-hd64", 1)  # starts the server
        server_start_s = time.perf_counter() - start
        server_id, pid = server_pid(home)
        base_rss = tree_rss(pid)
        cold, warm, rss = [], [], {}
        loaded = 0
        figures = {}
        for count in counts:
            for name in names[loaded:count]:
                cold.append(stream_once(*v1, name, 1)[2])  # its load and its answer
                warm.append(stream_once(*v1, name, 1)[2])
            loaded = max(loaded, count)
            rss[count] = tree_rss(pid)
            stream_once(*v1, names[0], max_tokens)  # warm
            figures[count] = spread([(*v1, n) for n in names[:count]], requests, concurrency, max_tokens)
        # The same requests straight to the server (its key from its folder): what the relay costs.
        with open(os.path.join(home, "servers", server_id, "api_key")) as handle:
            key = handle.read().strip()
        with open(os.path.join(home, "servers", server_id, "state.json")) as handle:
            port = json.load(handle)["port"]
        direct = spread([(f"http://127.0.0.1:{port}/v1", key, names[0])], requests, concurrency, max_tokens)
        per_adapter = (rss[max(counts)] - base_rss) / max(counts)
        _http("DELETE", f"{server.base}/servers/{server_id}")
        # Today's design: a deployment per adapter, as many as the slots let run at once.
        deployments = []
        for i in range(slots):
            created = _http("POST", f"{server.base}/deployments", {"model": names[i]})[1]
            deployments.append(created)
        for created in deployments:
            while (
                _http("GET", f"{server.base}/deployments/{created['deployment_id']}")[1]["status"] != "ready"
            ):
                time.sleep(0.2)
        targets = [(d["base_url"], d["api_key"], d["model"]) for d in deployments]
        stream_once(*targets[0], max_tokens)
        dedicated = spread(targets, requests, concurrency, max_tokens)
        for created in deployments:
            _http("DELETE", f"{server.base}/deployments/{created['deployment_id']}")
    finally:
        server.stop()
    return {
        "counts": list(counts),
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "server_start_s": server_start_s,
        "cold_first_request_s": statistics.median(cold),
        "warm_request_s": statistics.median(warm),
        "rss_base_mb": base_rss / 2**20,
        "rss_per_adapter_mb": per_adapter / 2**20,
        "shared": figures,
        "direct": direct,
        "dedicated": {"deployments": slots, **dedicated},
    }


def report_rows(result):
    """(figure, measured) rows for bench.py's table."""
    rows = []
    for count, figures in result["shared"].items():
        rows.append(
            (
                f"shared server, {count} adapter(s): tokens/s, TTFT p50 / p99 "
                f"({result['requests']} streamed, {result['concurrency']} at a time)",
                f"{figures['tokens_per_s']:.0f} tokens/s, {figures['ttft_p50_s'] * 1000:.0f} / "
                f"{figures['ttft_p99_s'] * 1000:.0f} ms",
            )
        )
    direct = result["direct"]
    relayed = result["shared"][min(result["shared"], key=int)]["tokens_per_s"] / direct["tokens_per_s"]
    rows.append(
        (
            "the same server called directly, 1 adapter (no /v1 relay)",
            f"{direct['tokens_per_s']:.0f} tokens/s, {direct['ttft_p50_s'] * 1000:.0f} / "
            f"{direct['ttft_p99_s'] * 1000:.0f} ms; through /v1 "
            f"{relayed:.2f}x",
        )
    )
    dedicated = result["dedicated"]
    rows.append(
        (
            f"dedicated deployments ({dedicated['deployments']}, one a slot: more adapters wait)",
            f"{dedicated['tokens_per_s']:.0f} tokens/s, {dedicated['ttft_p50_s'] * 1000:.0f} / "
            f"{dedicated['ttft_p99_s'] * 1000:.0f} ms",
        )
    )
    most = max(result["shared"], key=int)
    rows.append(
        (
            f"shared at {most} adapters / dedicated, tokens/s",
            f"{result['shared'][most]['tokens_per_s'] / dedicated['tokens_per_s']:.2f}x",
        )
    )
    rows.append(
        (
            "a cold adapter's first request (load + 1 token) / warm",
            f"{result['cold_first_request_s'] * 1000:.0f} ms / {result['warm_request_s'] * 1000:.0f} ms",
        )
    )
    rows.append(
        (
            "server memory: base, per added adapter",
            f"{result['rss_base_mb']:.0f} MB, {result['rss_per_adapter_mb']:.1f} MB",
        )
    )
    rows.append(("server start to first answer", f"{result['server_start_s']:.0f} s"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--adapters", type=int, nargs="+", default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gpus", action="store_true", help="servers and deployments on GPUs")
    args = parser.parse_args()
    counts = tuple(args.adapters or ((1, 2) if args.smoke else (1, 8, 32)))
    with tempfile.TemporaryDirectory(prefix="imts-bench-serving-") as root:
        result = bench_serving(
            root,
            counts,
            args.requests or (4 if args.smoke else 64),
            2 if args.smoke else args.concurrency,
            8 if args.smoke else 32,
            args.gpus,
        )
    print(json.dumps(result, indent=2))
    for figure, measured in report_rows(result):
        print(f"| {figure} | {measured} |")


if __name__ == "__main__":
    main()
