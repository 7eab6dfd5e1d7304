"""Prometheus metrics: request counts and latencies from every worker, job figures read at scrape time.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module,
so each worker writes its samples there and a scrape by any worker adds them all up.
"""

import logging
import os
import shutil

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from ..jobs.store import DURATION_BUCKETS
from ..runs import queue
from ..state import JobStatus
from ..tenancy.usage import Ledger

REQUESTS = Counter("imts_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "imts_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# The completions relayed through /v1 (serving/service.py reports each one as it ends).
SERVE_REQUESTS = Counter(
    "imts_serving_requests_total", "Completions relayed through /v1", ["model", "tenant", "stream", "status"]
)
SERVE_TOKENS = Counter(
    "imts_serving_tokens_total", "Tokens of the completions relayed", ["model", "tenant", "kind"]
)
SERVE_TTFT = Histogram(
    "imts_serving_time_to_first_token_seconds",
    "From a streamed request's arrival to its first token (a cold server's or adapter's start included)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
log = logging.getLogger(__name__)
GPU_LABELS = ["gpu", "uuid"]
CONTENT_TYPE = CONTENT_TYPE_LATEST


def observe_request(method, endpoint, status, seconds):
    """Count and time one answered request. A request is never failed by its own metrics: should the
    samples folder vanish (removed by hand, or by a tmp cleaner), it is made again and counting goes on."""
    try:
        REQUESTS.labels(method, endpoint, str(status)).inc()
        LATENCY.labels(method, endpoint).observe(seconds)
    except OSError as exc:
        if not _samples_folder_restored(exc):
            raise
        log.error("the metrics samples folder was gone (%s); made again, counts start over", exc)


def _samples_folder_restored(exc):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder or os.path.isdir(folder) or not isinstance(exc, FileNotFoundError):
        return False
    os.makedirs(folder, exist_ok=True)
    return True


class JobsCollector:
    """Job figures computed from the store at each scrape, so every worker reports the same."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        store = self.service.store
        index = store.index.counts()  # the jobs index's counts: a scrape reads no record of a finished job
        by_state = GaugeMetricFamily("imts_jobs", "Jobs by state", labels=["state"])
        for status in JobStatus:
            by_state.add_metric([status.value], sum(t.get(status.value, 0) for t in index["jobs"].values()))
        yield by_state
        finished = CounterMetricFamily(
            "imts_jobs_finished",
            "Jobs that reached each final state, ever (deletes take none off)",
            labels=["state"],
        )
        counts = store.finished_counts()
        for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED):
            finished.add_metric([status.value], counts.get(status.value, 0))
        yield finished
        active = self.service.store.active_states()
        yield from self._tenants(active)
        executor = self.service.launcher.executor
        waits = executor.waits  # with Ray, submitted jobs wait in Ray's queue
        holding = [s for s in active if not waits(s)]
        yield GaugeMetricFamily(
            "imts_queue_length", "Pending jobs waiting for capacity", value=sum(map(waits, active))
        )
        slots, gpus = executor.capacity()  # Ray: the cluster's to say (NaN), and the most a job may ask
        yield GaugeMetricFamily("imts_job_slots", "Jobs that may run at once", value=slots)
        yield GaugeMetricFamily(
            "imts_job_slots_total", "Deprecated: imts_job_slots (a gauge; removed in 0.3)", value=slots
        )
        yield GaugeMetricFamily("imts_job_slots_in_use", "Jobs running or starting", value=len(holding))
        executor_up, _ = self.service.launcher.executor.health()
        yield GaugeMetricFamily(
            "imts_executor_up",
            "1 while the executor can start jobs (Ray's job server answers)",
            value=executor_up,
        )
        yield GaugeMetricFamily("imts_gpus", "GPUs this service hands out", value=gpus)
        yield GaugeMetricFamily(
            "imts_gpus_total", "Deprecated: imts_gpus (a gauge; removed in 0.3)", value=gpus
        )
        yield GaugeMetricFamily(
            "imts_gpus_in_use",
            "GPUs handed to jobs",
            value=sum(len(queue.gpus_of(s)) or (s.launch or {}).get("num_gpus") or 0 for s in holding),
        )
        yield GaugeMetricFamily(
            "imts_disk_free_bytes",
            "Free bytes where jobs are written",
            value=shutil.disk_usage(self.service.store.root).free,
        )
        yield self._durations(counts.get("durations") or {})
        yield from self._gpus(active)
        per_job = GaugeMetricFamily(
            "imts_job_disk_bytes",
            "Bytes the directory of each pending or running job takes (measured, not walked per scrape)",
            labels=["job_id"],
        )
        for state in active:
            if state.disk_bytes is not None and not state.kind:
                per_job.add_metric([state.job_id], state.disk_bytes)
        yield per_job
        yield GaugeMetricFamily(
            "imts_jobs_disk_bytes",
            "Bytes all job directories take (as last measured)",
            value=index["disk_bytes"],
        )

    def _tenants(self, active):
        """Per team (label tenant; "" for admins' runs): GPU-seconds used ever, runs queued and running."""
        used = CounterMetricFamily(
            "imts_tenant_gpu_seconds",
            "GPU-seconds a team's runs used (GPUs held x time running)",
            labels=["tenant"],
        )
        for tenant, seconds in sorted(Ledger(self.service.settings).totals(active).items(), key=str):
            used.add_metric([tenant or ""], seconds)
        queued = GaugeMetricFamily(
            "imts_tenant_queued", "A team's runs waiting in the queue", labels=["tenant"]
        )
        running = GaugeMetricFamily("imts_tenant_running", "A team's runs holding a slot", labels=["tenant"])
        counts = {}
        for state in active:
            waiting = queue.queued(state)
            counts.setdefault(state.tenant or "", [0, 0])[0 if waiting else 1] += 1
        for tenant, (waiting, holding) in sorted(counts.items()):
            queued.add_metric([tenant], waiting)
            running.add_metric([tenant], holding)
        yield from (used, queued, running)

    def _gpus(self, active):
        """Per GPU handed out (labels gpu, the id jobs see, and uuid) and per running job, from NVML."""
        reading = self.service.gpus.read()
        families = {
            "utilization": GaugeMetricFamily(
                "imts_gpu_utilization_ratio", "GPU busy time, 0..1", labels=GPU_LABELS
            ),
            "memory_used_bytes": GaugeMetricFamily(
                "imts_gpu_memory_used_bytes", "GPU memory used", labels=GPU_LABELS
            ),
            "memory_total_bytes": GaugeMetricFamily(
                "imts_gpu_memory_total_bytes", "GPU memory", labels=GPU_LABELS
            ),
            "temperature_celsius": GaugeMetricFamily(
                "imts_gpu_temperature_celsius", "GPU temperature", labels=GPU_LABELS
            ),
            "power_watts": GaugeMetricFamily("imts_gpu_power_watts", "GPU power draw", labels=GPU_LABELS),
        }
        lost = GaugeMetricFamily(
            "imts_gpu_lost", "1 when NVML reports the GPU lost or gone", labels=GPU_LABELS
        )
        for gpu in reading["gpus"]:
            labels = [gpu["id"], gpu["uuid"] or ""]
            lost.add_metric(labels, 1 if gpu["error"] else 0)
            for key, family in families.items():
                if gpu.get(key) is not None:
                    family.add_metric(labels, gpu[key])
        yield from families.values()
        yield lost
        memory = GaugeMetricFamily(
            "imts_job_gpu_memory_bytes",
            "GPU memory of a running job's processes, per GPU",
            labels=["job_id", "gpu"],
        )
        tokens = GaugeMetricFamily(
            "imts_job_tokens_per_second", "Input tokens a second of a running job", labels=["job_id"]
        )
        loss = GaugeMetricFamily(
            "imts_job_loss", "The latest training loss of a running job", labels=["job_id"]
        )
        progress = GaugeMetricFamily(
            "imts_job_progress_ratio", "Progress of a running job, 0..1", labels=["job_id"]
        )
        for state in active:
            if state.status != JobStatus.RUNNING.value:
                continue
            job_id = state.job_id
            for gpu, used in (self.service.jobs.gpu_memory_by_gpu(state) or {}).items():
                memory.add_metric([job_id, gpu], used)
            if state.kind is not None:
                continue  # an evaluation or a deployment: no training series
            view = self.service.jobs.view(state, detail=False)
            if view["tokens_per_second"] is not None:
                tokens.add_metric([job_id], view["tokens_per_second"])
            if view["current_loss"] is not None:
                loss.add_metric([job_id], view["current_loss"])
            progress.add_metric([job_id], view["progress"])
        yield from (memory, tokens, loss, progress)
        yield from server_families(active)

    @staticmethod
    def _durations(durations):
        """Finished jobs' run times, as the store counted them when each ended (a DELETE takes none off)."""
        family = HistogramMetricFamily(
            "imts_job_duration_seconds", "Run time of finished jobs", labels=["state"]
        )
        for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED):
            histogram = durations.get(status.value) or {"buckets": [0] * len(DURATION_BUCKETS), "sum": 0.0}
            buckets = [
                (str(bound) if bound != float("inf") else "+Inf", count)
                for bound, count in zip(DURATION_BUCKETS, histogram["buckets"], strict=True)
            ]
            family.add_metric([status.value], buckets, histogram["sum"])
        return family


def observe_completion(model, tenant, stream, status, usage, first_token_s):
    """Count one relayed completion (never failing the request for its metrics)."""
    tenant = tenant or ""
    try:
        SERVE_REQUESTS.labels(model, tenant, "true" if stream else "false", str(status)).inc()
        for kind in ("prompt", "completion"):
            if usage and usage.get(f"{kind}_tokens"):
                SERVE_TOKENS.labels(model, tenant, kind).inc(usage[f"{kind}_tokens"])
        if first_token_s is not None:
            SERVE_TTFT.labels(model).observe(first_token_s)
    except OSError as exc:
        if not _samples_folder_restored(exc):
            log.warning("serving metrics not counted: %s", exc)


def server_families(active):
    """The shared servers' figures at scrape time, from their records."""
    labels = ["server_id", "base_model"]
    ready = GaugeMetricFamily("imts_server_ready", "1 while a shared server answers", labels=labels)
    loaded = GaugeMetricFamily(
        "imts_server_adapters_loaded", "Adapters its running process holds", labels=labels
    )
    loads = CounterMetricFamily("imts_server_adapter_loads", "Adapters loaded, every process", labels=labels)
    served = CounterMetricFamily("imts_server_requests", "Completions its server answered", labels=labels)
    restarts = CounterMetricFamily(
        "imts_server_restarts", "Times its server died and was started again", labels=labels
    )
    for state in active:
        if state.kind != "server":
            continue
        names = [state.job_id, state.base_model or ""]
        ready.add_metric(names, 1 if state.status == JobStatus.RUNNING.value and state.ready_at else 0)
        current = [a for a in (state.adapters or {}).values() if a.get("pid") == state.pid]
        loaded.add_metric(names, len(current))
        loads.add_metric(names, state.adapter_loads or 0)
        served.add_metric(names, state.requests_served or 0)
        restarts.add_metric(names, state.restarts or 0)
    return ready, loaded, loads, served, restarts


def render(service):
    """Return the text exposition of every metric: all workers' requests plus the job figures."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)  # removed by hand meanwhile: an empty scrape, not a 500
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_DefaultOnly())
    registry.register(JobsCollector(service))
    return generate_latest(registry)


class _DefaultOnly:
    """The process's own request metrics when not under gunicorn (python app.py, tests)."""

    def collect(self):
        for metric in DEFAULT_REGISTRY.collect():
            if metric.name.startswith("imts_"):
                yield metric
