"""Benchmark two commits side by side: has a change moved the service's figures?

`make bench-compare BASE=<rev>` (or `.venv/bin/python tools/bench_compare.py <rev>`) checks BASE out
into a temporary git worktree (sharing this checkout's venv, demo model and data), then runs the
same figures of tools/bench.py, each tree's own copy of it against its own code, alternately
(BASE, HEAD, HEAD, BASE, ...: drift hits both alike), and prints the median of each figure for both
and the ratio HEAD / BASE. It times the API, not training: listing, status reads, create, stop, the
scheduler. No figure is a target; a ratio far from 1 is a place to look.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each figure: (name, the expression run in a tree's tools/bench.py, the path of the number in its result).
RUN = """
import json, os, sys, tempfile
sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import bench
root = tempfile.mkdtemp(prefix="imts-compare-")
out = {}
out["listing"] = bench.bench_listing(root, [1000], SECONDS)
reads, server = bench.bench_reads(root, SECONDS, 10_000)
server.stop()
out["reads"] = reads
out["create"] = bench.bench_create_and_stop(root, CREATES, 1)
out["scheduler"] = bench.bench_scheduler(root, QUEUED, 20)
print("RESULT " + json.dumps(out, default=str))
"""

FIGURES = [
    ("GET /jobs?limit=50 p50, 1,000 jobs (ms)", ("listing", "1000", "p50_ms")),
    ("GET /jobs?limit=50 req/s, 8 clients", ("listing", "1000", "rps_8")),
    ("first listing after a restart (ms)", ("listing", "1000", "cold_ms")),
    ("/metrics scrape (ms)", ("listing", "1000", "metrics_ms")),
    ("worker RSS (MB)", ("listing", "1000", "worker_rss_mb")),
    ("GET /jobs/{id} req/s, 32 clients", ("reads", "status_100", "rps")),
    ("GET /jobs/{id} p50 (ms)", ("reads", "status_100", "p50_ms")),
    ("POST /jobs p50 (ms)", ("create", "create_ms", "median")),
    ("stop -> no process left (s)", ("create", "stop_s", "median")),
    ("a scheduling pass, 2,000 queued (ms)", ("scheduler", "pass_ms", "median")),
]


def _worktree(rev):
    path = tempfile.mkdtemp(prefix="imts-base-")
    subprocess.run(["git", "-C", PROJECT, "worktree", "add", "--detach", path, rev], check=True)
    for shared in ("models", "data"):  # the demo model and datasets (built once by `make demo`)
        os.symlink(os.path.join(PROJECT, shared), os.path.join(path, shared))
    return path


def _run(tree, seconds, creates, queued):
    code = RUN
    for name, value in (("SECONDS", seconds), ("CREATES", creates), ("QUEUED", queued)):
        code = code.replace(name, str(value))
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"the benchmark failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _pick(result, path):
    for key in path:
        result = result[key]
    return max(result) if isinstance(result, list) else result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare HEAD (this checkout's working tree) with")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (BASE/HEAD, then HEAD/BASE)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of load per wrk measurement")
    parser.add_argument("--creates", type=int, default=15)
    parser.add_argument("--queued", type=int, default=2000, help="queued jobs behind full slots")
    args = parser.parse_args()
    base = _worktree(args.base)
    runs = {"base": [], "head": []}
    try:
        for i in range(args.rounds):
            order = [("base", base), ("head", PROJECT)]
            for name, tree in order if i % 2 == 0 else order[::-1]:
                print(f"round {i + 1}: {name} ...", flush=True)
                runs[name].append(_run(tree, args.seconds, args.creates, args.queued))
    finally:
        subprocess.run(["git", "-C", PROJECT, "worktree", "remove", "--force", base], check=False)
    head = subprocess.run(
        ["git", "-C", PROJECT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    head = head.stdout.strip()
    print(f"\n| figure (median of {args.rounds}) | {args.base} | HEAD {head} | HEAD / base |")
    print("|---|---|---|---|")
    for label, path in FIGURES:
        before = statistics.median(_pick(r, path) for r in runs["base"])
        after = statistics.median(_pick(r, path) for r in runs["head"])
        print(f"| {label} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
