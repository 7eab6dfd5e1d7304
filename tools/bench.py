"""Benchmark: what the service costs next to the training it wraps, and how it scales.

`make bench` (or `.venv/bin/python tools/bench.py [--smoke]`) starts gunicorn as deployed (4 workers),
measures each figure side by side in one run, prints a table and writes it to
bench-results/bench-<time>.md (and .json). Load comes from wrk (Debian's package), not from a loop
that times itself. --smoke uses small sizes and short runs and enforces nothing (CI runs it).
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_serving  # noqa: E402 (beside this file)
from bench_server import TINY, VENV_BIN, Server, _http  # noqa: E402, F401 (bench_compare runs them here)

from imts_flask.llamafactory.environment import free_port, trainer_env  # noqa: E402
from imts_flask.procs import start_ticks  # noqa: E402
from imts_flask.settings import load_settings  # noqa: E402

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run of about 30 s bare on 2 CPU cores, the length of the GPU measurement in GPU_NOTES.md.
OVERHEAD_EPOCHS = 20.0
REQUEST = {
    "model_name": "tiny-llama",
    "dataset": "demo_sft",
    "epochs": 1.0,
    "custom_config": {"cutoff_len": 128},
}


def wrk(url, seconds, connections=32, threads=2):
    """Run wrk against `url`; return requests/s and p50/p99 latency in ms."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def fake_running_job(home, job_id, log_lines, holder):
    """Write a job that reads as running (its monitor is `holder`, a live process) with a long log."""
    job_dir = os.path.join(home, "jobs", job_id)
    output = os.path.join(job_dir, "output")
    os.makedirs(output)
    with open(os.path.join(output, "trainer_log.jsonl"), "w") as handle:
        for step in range(1, log_lines + 1):
            handle.write(
                json.dumps(
                    {
                        "current_steps": step,
                        "total_steps": log_lines * 2,
                        "loss": 1.0 / step,
                        "lr": 1e-4,
                        "epoch": step / log_lines,
                        "remaining_time": "0:10:00",
                    }
                )
                + "\n"
            )
    ticks = start_ticks(holder.pid)
    state = {
        "job_id": job_id,
        "status": "running",
        "created_at": "2026-01-01T00:00:00",
        "created_ns": 1,
        "pid": holder.pid,
        "monitor": {"pid": holder.pid, "start_ticks": ticks},
        "trainer": {"pid": holder.pid, "start_ticks": ticks},
        "launch": {"id": "bench", "gpus": []},
        "paths": {
            "output_dir": output,
            "config": os.path.join(job_dir, "training_config.yaml"),
            "log": os.path.join(job_dir, "training.log"),
        },
        "history": [],
    }
    with open(os.path.join(job_dir, "state.json"), "w") as handle:
        json.dump(state, handle)
    open(os.path.join(job_dir, "monitor.heartbeat"), "w").close()


def finished_jobs(home, start, count):
    """Write `count` completed jobs straight to disk."""
    for i in range(start, start + count):
        job_id = f"train_{i:08x}"
        job_dir = os.path.join(home, "jobs", job_id)
        os.makedirs(job_dir)
        state = {
            "job_id": job_id,
            "status": "completed",
            "created_at": "2026-01-01T00:00:00",
            "created_ns": 10 + i,
            "started_at": "2026-01-01T00:00:01",
            "finished_at": "2026-01-01T00:01:00",
            "model_name": "tiny-llama",
            "dataset": "demo_sft",
            "disk_bytes": 4096,
            "paths": {"output_dir": os.path.join(job_dir, "output")},
            "final": {"progress": 1.0, "current_loss": 0.5, "current_step": 10, "total_steps": 10},
            "history": [{"status": "completed", "at": "2026-01-01T00:01:00"}],
        }
        with open(os.path.join(job_dir, "state.json"), "w") as handle:
            json.dump(state, handle)


def median_spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _train_runtime(output_dir):
    """LLaMA Factory's own figure for the training loop alone (start-up and saving excluded)."""
    with open(os.path.join(output_dir, "all_results.json")) as handle:
        return json.load(handle)["train_runtime"]


def overhead_pairs(server, request, pairs, work_root, warmup=True):
    """The same config through the API (POST -> completed in the record) and bare, in ABBA order.

    The bare run gets the environment the service builds for its trainer (the GPUs the API job
    was handed included) and writes its output to a file as the monitor does, so that only the
    wrapper differs. The order alternates (API first in even pairs, bare first in odd ones) and a
    warm-up job runs first, so that caches and GPU clocks favour neither side. Returns the runs.
    """
    runs = []
    config = None

    def api():
        start = time.perf_counter()
        job_id = _http("POST", f"{server.base}/jobs", request)[1]["job_id"]
        running = server.wait_record(job_id, done=("running", "completed", "failed"), interval=0.02)
        to_running = time.perf_counter() - start
        final = server.wait_record(job_id)
        wall = time.perf_counter() - start
        assert final["status"] == "completed", final
        return wall, _train_runtime(final["output_dir"]), to_running, final, running

    def bare(index, final):
        work = os.path.join(work_root, f"bare{index}")
        os.makedirs(work)
        with open(os.path.join(work, "cfg.yaml"), "w") as handle:
            yaml.safe_dump({**config, "output_dir": os.path.join(work, "output")}, handle)
        env = trainer_env(load_settings({"home": server.home}), final["gpu_ids"])
        start = time.perf_counter()
        with open(os.path.join(work, "training.log"), "ab") as out:
            subprocess.run(
                [os.path.join(VENV_BIN, "llamafactory-cli"), "train", "cfg.yaml"],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        return time.perf_counter() - start, _train_runtime(os.path.join(work, "output"))

    if warmup:
        api()
    for index in range(pairs):
        run = {"order": "api first" if index % 2 == 0 else "bare first"}
        if index % 2 == 0:
            run["api_s"], run["api_train_runtime"], run["to_running_s"], final, _ = api()
            config = config or yaml.safe_load(open(final["config_path"]))
            run["bare_s"], run["bare_train_runtime"] = bare(index, final)
        else:
            run["bare_s"], run["bare_train_runtime"] = bare(index, final)
            run["api_s"], run["api_train_runtime"], run["to_running_s"], final, _ = api()
        runs.append(run)
    return runs


def summarize_pairs(runs):
    median = statistics.median
    return {
        "pairs": runs,
        "bare_s": median_spread([r["bare_s"] for r in runs]),
        "api_s": median_spread([r["api_s"] for r in runs]),
        "to_running_s": median_spread([r["to_running_s"] for r in runs]),
        "ratio": median(r["api_s"] for r in runs) / median(r["bare_s"] for r in runs),
        "loop_ratio": median(r["api_train_runtime"] for r in runs)
        / median(r["bare_train_runtime"] for r in runs),
    }


def bench_overhead(root, pairs, smoke=False):
    """Wrapper overhead: API / bare wall time of the same ~30 s job, and of its training loop alone."""
    server = Server(os.path.join(root, "overhead"), max_concurrent_jobs=1)
    request = {**REQUEST, "epochs": 1.0 if smoke else OVERHEAD_EPOCHS}
    try:
        return summarize_pairs(overhead_pairs(server, request, pairs, root, warmup=not smoke))
    finally:
        server.stop()


def bench_reads(root, seconds, big_lines):
    """Status reads of a running job vs health, and the same read with a 100-line vs a long log."""
    home = os.path.join(root, "reads")
    holder = subprocess.Popen(["sleep", "100000"])
    try:
        os.makedirs(os.path.join(home, "jobs"))
        fake_running_job(home, "train_00000100", 100, holder)
        fake_running_job(home, "train_0000b16b", big_lines, holder)
        server = Server(home, heartbeat_timeout_s=10**9)
        try:
            health_url = f"{server.base}/health"
            small_url, big_url = f"{server.base}/jobs/train_00000100", f"{server.base}/jobs/train_0000b16b"
            wrk(small_url, 2)  # warm every worker
            runs = {"health": [], "status_100": [], "status_big": []}
            for _ in range(2):  # alternate, so drift hits all alike
                runs["health"].append(wrk(health_url, seconds))
                runs["status_100"].append(wrk(small_url, seconds))
                runs["status_big"].append(wrk(big_url, seconds))
            summary = {
                name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                for name, rs in runs.items()
            }
            summary["status_vs_health"] = summary["status_100"]["rps"] / summary["health"]["rps"]
            summary["big_vs_small_p50"] = summary["status_big"]["p50_ms"] / summary["status_100"]["p50_ms"]
            summary["big_log_lines"] = big_lines
            summary["big_log_mb"] = (
                os.path.getsize(os.path.join(home, "jobs", "train_0000b16b", "output", "trainer_log.jsonl"))
                / 1e6
            )
            return summary, server
        except BaseException:
            server.stop()
            raise
    finally:
        holder.kill()


def bench_listing(root, sizes, seconds):
    """GET /jobs?limit=50 and /metrics with `sizes` finished jobs on disk: the first listing after a
    restart, warm p50/p99 with 1 client and req/s with 8, a scrape's time and size, worker RSS. The
    jobs are written straight to disk and indexed once, as an upgrade from an index-less store is."""
    from imts_flask.jobs.store import JobStore

    home = os.path.join(root, "listing")
    os.makedirs(os.path.join(home, "jobs"))
    results, made = {}, 0
    for size in sizes:
        finished_jobs(home, made, size - made)
        made = size
        start = time.perf_counter()
        JobStore(os.path.join(home, "jobs")).index.rebuild("the benchmark wrote its jobs straight to disk")
        indexed_s = time.perf_counter() - start
        colds = []
        for _ in range(3):  # restarts: no worker has read anything yet
            server = Server(home)
            try:
                start = time.perf_counter()
                status, body = _http("GET", f"{server.base}/jobs?limit=50")
                colds.append((time.perf_counter() - start) * 1000)
                assert status == 200 and body["total"] == size, body.get("total")
            finally:
                server.stop()
        cold_ms = statistics.median(colds)
        server = Server(home)
        try:
            url = f"{server.base}/jobs?limit=50"
            one = wrk(url, seconds, connections=1, threads=1)  # latency, not saturation
            eight = wrk(url, seconds, connections=8, threads=2)
            metrics_url = server.base.replace("/api/v1/training", "/metrics")
            scrapes = []
            for _ in range(9):
                start = time.perf_counter()
                with urllib.request.urlopen(metrics_url, timeout=120) as response:
                    scraped = response.read()
                scrapes.append((time.perf_counter() - start) * 1000)
            results[size] = {
                **one,
                "rps_8": eight["rps"],
                "p50_8_ms": eight["p50_ms"],
                "cold_ms": cold_ms,
                "indexed_s": indexed_s,
                "metrics_ms": statistics.median(scrapes),
                "metrics_kb": len(scraped) / 1024,
                "worker_rss_mb": max(p.memory_info().rss for p in server.workers()) / 2**20,
            }
        finally:
            server.stop()
    return results


def bench_create_and_stop(root, creates, stops):
    """POST latency (the trainer is not waited for), then stop -> no process of the tree left."""
    server = Server(os.path.join(root, "create"), max_concurrent_jobs=1)
    try:
        latencies = []
        for _ in range(creates):
            start = time.perf_counter()
            status, body = _http("POST", f"{server.base}/jobs", {**REQUEST, "epochs": 500.0})
            latencies.append((time.perf_counter() - start) * 1000)
            assert status == 201
            _http("POST", f"{server.base}/jobs/{body['job_id']}/stop")  # keep the queue empty
            time.sleep(0.5)  # creates come one at a time: let the last one's monitor settle
        stop_times = []
        for _ in range(stops):
            job_id = _http("POST", f"{server.base}/jobs", {**REQUEST, "epochs": 500.0})[1]["job_id"]
            running = server.wait(job_id, done=("running",), interval=0.05)
            while not (server.wait(job_id, done=("running",))["current_step"] or 0):
                time.sleep(0.1)  # training proper, not start-up
            tree = [psutil.Process(running["pid"]), *psutil.Process(running["pid"]).children(recursive=True)]
            start = time.perf_counter()
            _http("POST", f"{server.base}/jobs/{job_id}/stop")
            while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree):
                time.sleep(0.02)
            stop_times.append(time.perf_counter() - start)
        rss = [p.memory_info().rss / 2**20 for p in server.workers()]
        return {
            "create_ms": median_spread(latencies),
            "stop_s": median_spread(stop_times),
            "worker_rss_mb": rss,
        }
    finally:
        server.stop()


def queued_jobs(home, count, tenants, running):
    """Write `count` pending jobs of `tenants` teams (random priorities) and `running` jobs holding
    every slot (normal priority: nothing may preempt them; their monitor is this live process)."""
    import random

    from imts_flask.executors import HOST
    from imts_flask.jobs import record
    from imts_flask.procs import boot_id

    rng = random.Random(18)
    me = {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid()), "host": HOST, "boot": boot_id()}
    jobs = os.path.join(home, "jobs")
    os.makedirs(os.path.join(jobs, ".active"), exist_ok=True)
    for i in range(count + running):
        job_id = f"train_{i:08x}"
        job_dir = os.path.join(jobs, job_id)
        os.makedirs(job_dir)
        values = {
            "job_id": job_id,
            "created_at": "2026-01-01T00:00:00",
            "created_ns": 10 + i,
            "tenant": f"team-{i % tenants:02d}",
            "priority": rng.choice(("low", "normal", "normal", "high")),
            "paths": {"output_dir": os.path.join(job_dir, "output")},
        }
        if i < running:
            values.update(status="running", priority="normal", monitor=me, launch={"id": "bench", "gpus": []})
            open(os.path.join(job_dir, "monitor.heartbeat"), "w").close()
        with open(os.path.join(job_dir, "state.json"), "w") as handle:
            json.dump(record.new_record(**values).to_json(), handle)
        open(os.path.join(jobs, ".active", job_id), "w").close()


def bench_scheduler(root, queued, tenants, slots=4):
    """A scheduling pass (every worker runs one on each create, stop and job end, and in housekeeping)
    and the queue position of the last job (GET /jobs/{id} of a queued job), with `queued` jobs of
    `tenants` teams waiting behind full slots; and the queue's order alone."""
    from imts_flask.jobs.scheduler import Scheduler
    from imts_flask.jobs.store import JobStore
    from imts_flask.runs import queue

    home = os.path.join(root, "scheduler")
    queued_jobs(home, queued, tenants, slots)
    settings = load_settings({"home": home, "max_concurrent_jobs": slots})
    store = JobStore(settings.path("jobs_dir"), settings.lock_timeout_s)
    scheduler = Scheduler(settings, store)
    passes, positions, orders = [], [], []
    last = f"train_{queued + slots - 1:08x}"
    for _ in range(5):
        start = time.perf_counter()
        assert scheduler.schedule() == []  # every slot is held: nothing starts, nothing is preempted
        passes.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        assert scheduler.queue_position(last)
        positions.append((time.perf_counter() - start) * 1000)
        states = [s for s in store.active_states() if queue.queued(s)]
        start = time.perf_counter()
        held = {}
        for state in queue.in_order(states, held):
            held[state.tenant] = held.get(state.tenant, 0) + 1
        orders.append((time.perf_counter() - start) * 1000)
    return {
        "queued": queued,
        "tenants": tenants,
        "pass_ms": median_spread(passes),
        "position_ms": median_spread(positions),
        "order_ms": median_spread(orders),
    }


def bench_tenants_create(root, creates, tenants=50):
    """POST /jobs p50 with a tenants file of `tenants` teams (quotas checked, the usage ledger read)
    against the same service open, each create followed by a stop (the queue stays short)."""
    import hashlib

    figures = {}
    for mode in ("off", "on"):
        home = os.path.join(root, f"tenants-{mode}")
        headers = {}
        if mode == "on":
            os.makedirs(os.path.join(home, "config"), exist_ok=True)
            teams = {
                f"team-{t:02d}": {
                    "max_priority": "high",
                    "quotas": {"max_running_gpus": 4, "max_queued_jobs": 1000, "max_gpu_hours": 1000},
                    "tokens": [
                        {
                            "name": f"ci-{t:02d}",
                            "role": "member",
                            "sha256": hashlib.sha256(f"t{t}".encode()).hexdigest(),
                        }
                    ],
                }
                for t in range(tenants)
            }
            with open(os.path.join(home, "config", "tenants.yaml"), "w") as handle:
                yaml.safe_dump({"tenants": teams}, handle)
            headers = {"Authorization": f"Bearer t{tenants - 1}"}  # the last token: every digest compared
        server = Server(home, max_concurrent_jobs=1)
        try:
            latencies = []
            for _ in range(creates):
                start = time.perf_counter()
                status, body = _http("POST", f"{server.base}/jobs", {**REQUEST, "epochs": 500.0}, headers)
                latencies.append((time.perf_counter() - start) * 1000)
                assert status == 201
                _http("POST", f"{server.base}/jobs/{body['job_id']}/stop", None, headers)
                time.sleep(0.5)
            figures[mode] = median_spread(latencies)
        finally:
            server.stop()
    figures["ratio"] = figures["on"]["median"] / figures["off"]["median"]
    return figures


def _alpaca_jsonl(path, megabytes=None, rows=None):
    """Write alpaca rows to `path` until it holds `megabytes` MB or `rows` rows; return the row count."""
    written = count = 0
    with open(path, "w") as handle:
        while (rows is None or count < rows) and (megabytes is None or written < megabytes * 2**20):
            line = json.dumps(
                {
                    "instruction": f"Add {count} and {count % 7}.",
                    "input": "",
                    "output": f"{count + count % 7}",
                }
            )
            handle.write(line + "\n")
            written += len(line) + 1
            count += 1
    return count


def bench_uploads(root, megabytes):
    """Upload a file of `megabytes` MB with curl (streamed from disk) while sampling every worker's RSS."""
    home = os.path.join(root, "uploads")
    os.makedirs(home)
    path = os.path.join(root, "upload.jsonl")
    rows = _alpaca_jsonl(path, megabytes=megabytes)
    server = Server(home, max_upload_mb=max(2048, megabytes * 2))
    try:
        workers = server.workers()
        before = {p.pid: p.memory_info().rss for p in workers}
        peak = dict(before)
        curl = subprocess.Popen(
            [
                "curl",
                "-sS",
                "-o",
                os.path.join(root, "upload.out"),
                "-w",
                "%{http_code}",
                "-F",
                "name=bench_upload",
                "-F",
                f"file=@{path}",
                f"{server.base}/datasets",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        start = time.perf_counter()
        checker_peak = 0
        while curl.poll() is None:
            for proc in workers:
                with contextlib.suppress(psutil.Error):
                    peak[proc.pid] = max(peak[proc.pid], proc.memory_info().rss)
                    for child in proc.children():  # the row checker
                        checker_peak = max(checker_peak, child.memory_info().rss)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        assert curl.stdout.read().strip() == "201", open(os.path.join(root, "upload.out")).read()
        size = os.path.getsize(path)
        return {
            "megabytes": size / 2**20,
            "rows": rows,
            "seconds": seconds,
            "mb_per_s": size / 2**20 / seconds,
            "worker_rss_before_mb": max(before.values()) / 2**20,
            "worker_rss_peak_mb": max(peak.values()) / 2**20,
            "worker_rss_growth_mb": max(peak[p] - before[p] for p in before) / 2**20,
            "checker_rss_peak_mb": checker_peak / 2**20,
        }
    finally:
        server.stop()
        os.remove(path)


def bench_validation(root, rows):
    """Seconds the row checker takes per 100,000 rows, for each file type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(root, "rows.jsonl")
    _alpaca_jsonl(path, rows=rows)
    records = [json.loads(line) for line in open(path)]
    files = {"jsonl": path, "json": os.path.join(root, "rows.json"), "csv": os.path.join(root, "rows.csv")}
    with open(files["json"], "w") as handle:
        json.dump(records, handle)
    with open(files["csv"], "w", newline="") as handle:
        writer = __import__("csv").DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    files["parquet"] = os.path.join(root, "rows.parquet")
    pq.write_table(pa.Table.from_pylist(records), files["parquet"])
    results = {}
    for kind, file in files.items():
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "imts_flask.datasets.rows", "check", file],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out)["rows"] == rows, out[:500]
        results[kind] = (time.perf_counter() - start) * 100_000 / rows
    return results


class RayHead:
    """A one-node Ray cluster (head with CPUs) for the executor figures, owned by this process."""

    def __init__(self, root):
        self.dashboard = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(
            [
                os.path.join(VENV_BIN, "ray"),
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                f"--port={free_port()}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard}",
                f"--object-store-memory={80 * 2**20}",
            ],
            env=env,
            stdout=open(os.path.join(root, "ray.log"), "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(600):
            try:
                if _http("GET", f"{self.address}/api/version")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Ray did not come up")

    def stop(self):
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)


def bench_executors(root, runs):
    """POST -> running and POST stop -> stopped under the local executor and under Ray, side by side."""
    results = {}
    ray = RayHead(root) if os.path.exists(os.path.join(VENV_BIN, "ray")) else None
    try:
        for name in ("local", "ray"):
            if name == "ray" and ray is None:
                continue
            extra = {"executor": "ray", "ray_address": ray.address} if name == "ray" else {}
            server = Server(os.path.join(root, f"executor-{name}"), max_concurrent_jobs=1, **extra)
            to_running, to_stopped = [], []
            try:
                for _ in range(runs):
                    start = time.perf_counter()
                    job_id = _http("POST", f"{server.base}/jobs", {**REQUEST, "epochs": 500.0})[1]["job_id"]
                    server.wait(job_id, done=("running",), interval=0.02)
                    to_running.append(time.perf_counter() - start)
                    while not (server.wait(job_id, done=("running",))["current_step"] or 0):
                        time.sleep(0.1)  # training proper, not start-up
                    start = time.perf_counter()
                    _http("POST", f"{server.base}/jobs/{job_id}/stop")
                    server.wait(job_id, done=("stopped",), interval=0.02)
                    to_stopped.append(time.perf_counter() - start)
            finally:
                server.stop()
            results[name] = {
                "to_running_s": median_spread(to_running),
                "to_stopped_s": median_spread(to_stopped),
            }
    finally:
        if ray is not None:
            ray.stop()
    return results


def _chat_tokens(base_url, key, model, count, max_tokens):
    """`count` chat completions one after another; (completion tokens per second, tokens, seconds)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Describe the object in one sentence."}],
            "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
    tokens = 0
    start = time.perf_counter()
    for _ in range(count):
        request = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            tokens += json.loads(response.read())["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    return tokens / seconds, tokens, seconds


def _answers(base_url, key):
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def bench_deployments(root, count, max_tokens):
    """A deployment next to bare `llamafactory-cli api` on the same config: POST -> ready against
    start -> /v1/models answering, and tokens/s of the same sequential chat completions."""
    server = Server(os.path.join(root, "deploy"), max_concurrent_jobs=1, deploy_ports="18700-18709")
    try:
        job_id = _http("POST", f"{server.base}/jobs", REQUEST)[1]["job_id"]
        assert server.wait_record(job_id)["status"] == "completed"
        start = time.perf_counter()
        created = _http("POST", f"{server.base}/deployments", {"job_id": job_id})[1]
        while _http("GET", f"{server.base}/deployments/{created['deployment_id']}")[1]["status"] != "ready":
            time.sleep(0.05)
        api_ready = time.perf_counter() - start
        _chat_tokens(created["base_url"], created["api_key"], created["model"], 1, max_tokens)  # warm
        api_rate, api_tokens, _ = _chat_tokens(
            created["base_url"], created["api_key"], created["model"], count, max_tokens
        )
        config = os.path.join(server.home, "deployments", created["deployment_id"], "server_config.yaml")
        _http("DELETE", f"{server.base}/deployments/{created['deployment_id']}")
        port = free_port()
        env = {
            **trainer_env(load_settings({"home": server.home}), []),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_KEY": "bare",
            "API_MODEL_NAME": "bare",
        }
        base = f"http://127.0.0.1:{port}/v1"
        start = time.perf_counter()
        with open(os.path.join(root, "bare-api.log"), "ab") as out:
            bare = subprocess.Popen(
                [os.path.join(VENV_BIN, "llamafactory-cli"), "api", config],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            while not _answers(base, "bare"):
                if bare.poll() is not None:
                    raise RuntimeError("bare llamafactory-cli api exited; see bare-api.log")
                time.sleep(0.05)
            bare_ready = time.perf_counter() - start
            _chat_tokens(base, "bare", "bare", 1, max_tokens)
            bare_rate, bare_tokens, _ = _chat_tokens(base, "bare", "bare", count, max_tokens)
        finally:
            os.killpg(bare.pid, signal.SIGTERM)
            bare.wait(timeout=60)
    finally:
        server.stop()
    return {
        "requests": count,
        "max_tokens": max_tokens,
        "api_ready_s": api_ready,
        "bare_ready_s": bare_ready,
        "api_tokens_per_s": api_rate,
        "bare_tokens_per_s": bare_rate,
        "api_tokens": api_tokens,
        "bare_tokens": bare_tokens,
        "rate_ratio": api_rate / bare_rate,
    }


def report(results, smoke):
    o, r, c, u = results["overhead"], results["reads"], results["create"], results["uploads"]
    listing = results["listing"]
    biggest = max(listing)

    def ok(flag):
        return "n/a (smoke)" if smoke else ("met" if flag else "NOT met")

    rows = [
        (
            "1. wrapper overhead: API / bare wall time",
            f"{o['ratio']:.3f} (API {o['api_s']['median']:.1f} s, "
            f"bare {o['bare_s']['median']:.1f} s, {o['api_s']['n']} pairs, ABBA)",
            "<= 1.02",
            ok(o["ratio"] <= 1.02),
        ),
        (
            "1. training loop alone: API / bare train_runtime",
            f"{o['loop_ratio']:.3f} (per pair, API/bare s: "
            + "; ".join(
                f"{p['api_s']:.1f}/{p['bare_s']:.1f} wall, "
                f"{p['api_train_runtime']:.1f}/{p['bare_train_runtime']:.1f} loop"
                for p in o["pairs"]
            )
            + ")",
            "",
            "",
        ),
        (
            "2. status vs health throughput (32 clients)",
            f"{r['status_vs_health']:.2f} (status "
            f"{r['status_100']['rps']:.0f} req/s p50 {r['status_100']['p50_ms']:.1f} ms p99 "
            f"{r['status_100']['p99_ms']:.1f} ms; health {r['health']['rps']:.0f} req/s "
            f"p50 {r['health']['p50_ms']:.1f} ms)",
            ">= 0.8",
            ok(r["status_vs_health"] >= 0.8),
        ),
        (
            f"3. status p50 with {r['big_log_lines']:,} vs 100 log lines",
            f"{r['big_vs_small_p50']:.2f} "
            f"({r['status_big']['p50_ms']:.1f} vs {r['status_100']['p50_ms']:.1f} ms; "
            f"log {r['big_log_mb']:.0f} MB)",
            "<= 1.1",
            ok(r["big_vs_small_p50"] <= 1.1),
        ),
        *[
            row
            for n, v in sorted(listing.items())
            for row in (
                (
                    f"4. GET /jobs?limit=50 with {n:,} jobs",
                    f"1 client p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms; 8 clients "
                    f"{v['rps_8']:.0f} req/s (p50 {v['p50_8_ms']:.1f} ms); first after a restart "
                    f"{v['cold_ms']:.0f} ms",
                    "<= 100 ms p50, >= 50 req/s, first <= 1 s" if n == biggest else "",
                    ok(v["p50_ms"] <= 100 and v["rps_8"] >= 50 and v["cold_ms"] <= 1000)
                    if n == biggest
                    else "",
                ),
                (
                    f"4. /metrics and worker RSS with {n:,} jobs",
                    f"scrape {v['metrics_ms']:.0f} ms, {v['metrics_kb']:.0f} KB; worker RSS "
                    f"{v['worker_rss_mb']:.0f} MB; index built once in {v['indexed_s']:.1f} s",
                    "<= 1 s, < 100 KB, <= 80 MB" if n == biggest else "",
                    ok(v["metrics_ms"] <= 1000 and v["metrics_kb"] < 100 and v["worker_rss_mb"] <= 80)
                    if n == biggest
                    else "",
                ),
            )
        ],
        (
            "5. POST /jobs latency",
            f"p50 {c['create_ms']['median']:.1f} ms (min {c['create_ms']['min']:.1f}, max "
            f"{c['create_ms']['max']:.1f}, n={c['create_ms']['n']})",
            "<= 30 ms",
            ok(c["create_ms"]["median"] <= 30),
        ),
        ("5. POST -> running with a pid", f"{o['to_running_s']['median'] * 1000:.0f} ms", "", ""),
        (
            "6. POST stop -> no process left",
            f"{c['stop_s']['median']:.2f} s (min {c['stop_s']['min']:.2f}, "
            f"max {c['stop_s']['max']:.2f}; includes the JIT checkpoint save)",
            "",
            "",
        ),
        (
            "7. worker RSS after the run",
            ", ".join(f"{m:.0f}" for m in c["worker_rss_mb"]) + " MB",
            "<= 80 MB each",
            ok(max(c["worker_rss_mb"]) <= 80),
        ),
        (
            f"8. upload of {u['megabytes']:,.0f} MB ({u['rows']:,} rows), checked",
            f"{u['mb_per_s']:.1f} MB/s ({u['seconds']:.1f} s, curl -F, every row checked)",
            "",
            "",
        ),
        (
            "8. worker RSS during that upload",
            f"{u['worker_rss_before_mb']:.0f} MB before, {u['worker_rss_peak_mb']:.0f} MB at most "
            f"(+{u['worker_rss_growth_mb']:.1f} MB); row checker {u['checker_rss_peak_mb']:.0f} MB",
            "flat",
            ok(u["worker_rss_growth_mb"] <= 10),
        ),
        *[
            (
                f"10. executor {name}: POST -> running, POST stop -> stopped",
                f"{v['to_running_s']['median']:.2f} s, {v['to_stopped_s']['median']:.2f} s "
                f"(median of {v['to_running_s']['n']})",
                "",
                "",
            )
            for name, v in results.get("executors", {}).items()
        ],
        *(
            [
                (
                    "11. deployment: POST -> ready vs bare `llamafactory-cli api` start -> answering",
                    f"{d['api_ready_s']:.1f} s vs {d['bare_ready_s']:.1f} s",
                    "",
                    "",
                ),
                (
                    "11. deployment tokens/s / bare (same config, sequential chats)",
                    f"{d['rate_ratio']:.3f} ({d['api_tokens_per_s']:.1f} vs "
                    f"{d['bare_tokens_per_s']:.1f} tokens/s; "
                    f"{d['requests']} chats of <= {d['max_tokens']} tokens each)",
                    ">= 0.95",
                    ok(d["rate_ratio"] >= 0.95),
                ),
            ]
            if (d := results.get("deployments"))
            else []
        ),
        *(
            [
                (
                    f"12. scheduling pass, {sc['queued']:,} queued jobs of {sc['tenants']} teams, slots full",
                    f"{sc['pass_ms']['median']:.0f} ms (queue order alone {sc['order_ms']['median']:.0f} ms; "
                    f"queue_position of the last {sc['position_ms']['median']:.0f} ms)",
                    "",
                    "",
                ),
                (
                    "12. POST /jobs p50, 50 teams' tenants file on / off",
                    f"{t['ratio']:.2f} ({t['on']['median']:.1f} vs {t['off']['median']:.1f} ms, "
                    f"n={t['on']['n']})",
                    "",
                    "",
                ),
            ]
            if (sc := results.get("scheduler")) and (t := results.get("tenants"))
            else []
        ),
        (
            "9. row check per 100,000 rows",
            ", ".join(f"{k} {v:.2f} s" for k, v in results["validation"].items()),
            "",
            "",
        ),
    ]
    serving = results.get("serving")
    if isinstance(serving, dict):
        rows += [(f"13. {figure}", value, "", "") for figure, value in bench_serving.report_rows(serving)]
    elif serving:
        rows.append(("13. shared serving", serving, "", ""))
    lines = ["| figure | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {t} | {m} |" for a, b, t, m in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, short runs, no targets (CI)")
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench-results"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    smoke = args.smoke
    root = tempfile.mkdtemp(prefix="imts-bench-")
    started = time.strftime("%Y%m%d-%H%M%S")
    results = {"smoke": smoke, "started": started, "cpus": os.cpu_count()}
    try:
        print("overhead ...", flush=True)
        results["overhead"] = bench_overhead(root, 1 if smoke else 5, smoke)
        print("status reads ...", flush=True)
        reads, server = bench_reads(root, 2 if smoke else 10, 10_000 if smoke else 1_000_000)
        server.stop()
        results["reads"] = reads
        print("listing ...", flush=True)
        results["listing"] = bench_listing(
            root, [10, 100] if smoke else [100, 10_000, 100_000], 2 if smoke else 10
        )
        print("create and stop ...", flush=True)
        results["create"] = bench_create_and_stop(root, 5 if smoke else 30, 1 if smoke else 3)
        print("uploads ...", flush=True)
        results["uploads"] = bench_uploads(root, 16 if smoke else 1024)
        results["validation"] = bench_validation(root, 10_000 if smoke else 100_000)
        print("executors ...", flush=True)
        results["executors"] = bench_executors(root, 1 if smoke else 3)
        print("deployments ...", flush=True)
        results["deployments"] = bench_deployments(root, 3 if smoke else 20, 16 if smoke else 64)
        print("sharing ...", flush=True)
        results["scheduler"] = bench_scheduler(root, 500 if smoke else 10_000, 10 if smoke else 50)
        results["tenants"] = bench_tenants_create(root, 5 if smoke else 30)
        if os.path.exists(os.path.join(PROJECT, ".venv-vllm", "bin", "python")):
            print("shared serving ...", flush=True)
            results["serving"] = bench_serving.bench_serving(
                root,
                (1, 2) if smoke else (1, 8, 32),
                4 if smoke else 64,
                2 if smoke else 8,
                8 if smoke else 32,
            )
        else:
            results["serving"] = "skipped: no vLLM venv (make vllm)"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = report(results, smoke)
    os.makedirs(args.out, exist_ok=True)
    name = os.path.join(args.out, f"bench-{started}{'-smoke' if smoke else ''}")
    note = ", smoke: small sizes, no targets" if smoke else ""
    header = f"# IMTS benchmark {started} ({os.cpu_count()} CPUs{note})\n\n"
    with open(name + ".md", "w") as handle:
        handle.write(header + table + "\n")
    with open(name + ".json", "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    print(header + table)
    print(f"\nwritten to {name}.md and .json")


if __name__ == "__main__":
    main()
