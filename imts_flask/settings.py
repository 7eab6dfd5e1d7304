"""Every path and knob of the service: defaults, then config/imts.yaml, then IMTS_* variables."""

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass, field

import yaml

VERSION = "0.1.0"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_pythonpath(environ=None):
    """PYTHONPATH for a child `python -m imts_flask...` (a monitor, the row checker, a webhook sender)."""
    environ = os.environ if environ is None else environ
    return PROJECT_ROOT + os.pathsep + environ.get("PYTHONPATH", "")


def _default_cli():
    """Find llamafactory-cli beside this interpreter first (the venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "llamafactory-cli")
    if os.path.exists(beside):
        return beside
    return shutil.which("llamafactory-cli") or beside


@dataclass
class Settings:
    """Resolved configuration. Relative paths are taken from `home`."""

    home: str = PROJECT_ROOT
    jobs_dir: str = "jobs"
    config_dir: str = "config"
    logs_dir: str = "logs"
    models_dir: str = "models"
    exports_dir: str = "models/exports"
    cache_dir: str = "cache"
    # Dataset directories, searched in order; each holds a dataset_info.json.
    data_dirs: list = field(default_factory=lambda: ["data"])
    # Datasets uploaded through the API (a data directory the service alone writes), and their limit.
    uploads_dir: str = "data/uploads"
    max_upload_mb: int = 1024
    # The row checker (a child process per upload or preview): what the rows of one file may decode
    # to (a compressed parquet can hold far more than it weighs), its address space, its time.
    max_decoded_mb: int = 2048
    check_memory_mb: int = 2048
    check_timeout_s: float = 600.0
    llamafactory_cli: str = field(default_factory=_default_cli)
    python: str = sys.executable
    # Seconds between SIGTERM to the trainer and SIGKILL of whatever survives.
    stop_grace_s: float = 15.0
    # How long POST /stop and POST /export wait before answering "still working".
    stop_wait_s: float = 20.0
    export_wait_s: float = 20.0
    lock_timeout_s: float = 10.0
    heartbeat_s: float = 2.0
    min_free_disk_mb: int = 1024
    log_tail_lines: int = 20
    max_content_length: int = 1024 * 1024
    enable_jit_checkpoint: bool = True
    log_level: str = "INFO"
    # Capacity: at most this many jobs run at once (0: one per GPU, or 1 without GPUs).
    max_concurrent_jobs: int = 0
    # GPU ids this service may hand out, e.g. "0,1,2,3" ("": those the machine shows, none on a CPU box).
    gpus: str = ""
    # A running job whose monitor has not touched its heartbeat for this long is lost.
    heartbeat_timeout_s: float = 60.0
    # Every worker re-checks liveness and starts queued jobs this often (0: only on requests).
    housekeeping_s: float = 5.0
    # A job handed a slot whose monitor has not shown up after this long is queued again.
    launch_timeout_s: float = 30.0
    # Where monitors run: "local" (detached processes of this host) or "ray" (Ray jobs on a cluster,
    # submitted to the Ray job server at ray_address, e.g. http://head:8265). With ray, every node
    # mounts `home` at the same path and holds this installation at the same path.
    executor: str = "local"
    ray_address: str = ""
    # Per job: the CPUs its Ray job reserves, extra custom resources (JSON, e.g. {"imts": 1}), the
    # most GPUs a job may ask for (the cluster's), and a node's GPUs (a job asking for more trains
    # with LLaMA Factory's own Ray workers across nodes; 0: never).
    ray_cpus_per_job: float = 1.0
    ray_resources: str = ""
    ray_max_gpus: int = 0
    ray_gpus_per_node: int = 0
    # A job whose monitor vanished (host reboot, kill -9, OOM kill of the monitor) is queued again and
    # resumes from its last complete checkpoint, up to this many attempts in all; then it is failed "lost".
    max_attempts: int = 3
    # Checkpoints, unless a request's custom_config sets save_steps / save_total_limit: a save every
    # this many steps, and the newest this many kept while training (0: keep every one).
    default_save_steps: int = 100
    default_save_total_limit: int = 3
    # End of life (both off by 0): remove finished jobs this many days after they ended; prune the
    # checkpoints of completed jobs down to the newest N. One worker checks every cleanup_interval_s.
    retention_days: float = 0.0
    keep_checkpoints: int = 0
    cleanup_interval_s: float = 300.0
    # Webhooks: a URL for every job that names none; attempts, first backoff (doubling), timeout.
    webhook_url: str = ""
    webhook_attempts: int = 6
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
    # Tracking (off when empty): each job logs its parameters and metrics as a run on this MLflow
    # tracking server, in this experiment; evaluations log their figures to the job's run.
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "imts"
    # Deployments (OpenAI-compatible servers of trained models): their directories, the address they
    # listen on (never 0.0.0.0 unless the operator says so), the ports they take ("first-last"), the
    # host name in their base_url (default: the listen address, or this host's name for 0.0.0.0), how
    # long a server may take to answer /v1/models, and an idle deployment's stop (0: never).
    deployments_dir: str = "deployments"
    deploy_host: str = "127.0.0.1"
    deploy_ports: str = "18100-18199"
    deploy_public_host: str = ""
    deploy_start_timeout_s: float = 600.0
    idle_stop_minutes: float = 0.0
    # The server command before its config file (default: LLaMA Factory's API app without its CORS "*",
    # deploy/llamafactory_server.py, under this interpreter); tests put a fake server here.
    deploy_command: str = ""
    # Shared base-model servers (imts_flask/serving/): one vLLM OpenAI server per base model, every
    # LoRA fine-tune of it an adapter loaded on its first request, behind the service's /v1. vLLM's
    # interpreter (its own venv: `make vllm`), the LoRA rank it accepts, the adapters in one batch
    # (max_loras) and in memory (max_cpu_loras, the least recently used evicted), the longest prompt
    # plus answer, its KV cache on CPU hosts (GB), an idle server's stop (0: never), how long a
    # request waits for a server that is starting, and more vLLM arguments.
    servers_dir: str = "servers"
    vllm_python: str = ".venv-vllm/bin/python"
    serve_max_lora_rank: int = 16
    serve_max_loras: int = 4
    serve_max_cpu_loras: int = 32
    serve_max_model_len: int = 512
    serve_kvcache_gb: int = 1
    serve_idle_stop_minutes: float = 30.0
    serve_start_wait_s: float = 240.0
    serve_retry_failed_s: float = 300.0  # after a server failed, no other is started this long
    # Whether a server gives way to training as a low job does (queued behind normal jobs, stopped for
    # a high one that cannot start) once no request came for serve_preempt_idle_s.
    serve_preemptible: bool = True
    serve_preempt_idle_s: float = 300.0
    serve_extra_args: str = ""
    # Registered model versions (name/version directories with their weights), beside the models.
    registry_dir: str = "models/registry"
    # Host names this service answers to, besides IP addresses, localhost and this machine's name
    # (comma-separated; ".example.com" takes its subdomains; "*" any). Others get 421: a DNS-rebinding
    # page names its own domain. Behind Nginx, list the public names it passes on.
    allowed_hosts: str = ""
    # Browser origins besides the service's own that may change things (e.g. https://ops.example.com).
    allowed_origins: str = ""
    # Tenants, their tokens and roles (config/tenants.yaml; see tenancy/config.py), read again when it
    # changes; the audit log; the proxies whose X-Forwarded-For names the client (comma-separated).
    tenants_file: str = "config/tenants.yaml"
    audit_log: str = "logs/audit.log"
    # Priorities: a `high` job that cannot start stops a running `low` one (also `normal` ones with
    # preempt_normal) with a checkpoint and takes its place; the victim waits and resumes from it.
    # Never a job without a checkpoint that has run longer than preempt_grace_s, never one job more
    # than max_preemptions times.
    preempt_normal: bool = False
    preempt_grace_s: float = 120.0
    max_preemptions: int = 3
    # GPU and CPU seconds of every run's attempts, one JSON line each, by month (GET /usage).
    usage_dir: str = "logs/usage"
    trusted_proxies: str = "127.0.0.1,::1"
    # Bearer-token auth, off when both are empty: tokens, or their SHA-256 hex digests, comma-separated.
    auth_tokens: str = ""
    auth_token_sha256: str = ""
    # Let requests set custom_config.trust_remote_code (runs code shipped with a model: trust the models).
    allow_trust_remote_code: bool = False

    def path(self, name):
        """Return the absolute path of a directory setting (e.g. "jobs_dir")."""
        value = getattr(self, name)
        return value if os.path.isabs(value) else os.path.join(self.home, value)

    @property
    def vllm_python_path(self):
        """vllm_python, a path relative to the project (where `make vllm` puts its venv) if not absolute."""
        if os.path.isabs(self.vllm_python) or os.sep not in self.vllm_python:
            return self.vllm_python
        return os.path.join(PROJECT_ROOT, self.vllm_python)

    @property
    def data_paths(self):
        return [d if os.path.isabs(d) else os.path.join(self.home, d) for d in self.data_dirs]

    @property
    def gpu_ids(self):
        """The GPU ids to hand out: the `gpus` setting, else CUDA_VISIBLE_DEVICES, else all found."""
        if self.gpus.strip():
            return [g.strip() for g in self.gpus.split(",") if g.strip()]
        return detect_gpus()

    @property
    def capacity(self):
        """How many jobs may run at once."""
        return self.max_concurrent_jobs or max(1, len(self.gpu_ids))

    @property
    def log_links_dir(self):
        """Where logs/training_jobs/<job_id> links to each job's directory (the guide's log path)."""
        return os.path.join(self.path("logs_dir"), "training_jobs")

    @property
    def models_registry_path(self):
        return os.path.join(self.path("config_dir"), "models.yaml")


def detect_gpus(environ=None):
    """Find the GPUs without importing torch: CUDA_VISIBLE_DEVICES, else the NVIDIA driver's list."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return []
    return [str(i) for i in range(count)]


_ENV_PREFIX = "IMTS_"


def _coerce(name, value, current):
    if name == "data_dirs":
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p]
        return [str(p) for p in value]
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return str(value)


def load_settings(overrides=None, environ=None):
    """Build Settings from defaults, `<home>/config/imts.yaml`, IMTS_* variables and `overrides`."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    settings = Settings()
    names = {f.name for f in dataclasses.fields(Settings)}

    home = overrides.get("home") or environ.get("IMTS_HOME") or settings.home
    settings.home = os.path.abspath(home)

    layers = []
    config_file = environ.get("IMTS_CONFIG") or os.path.join(settings.path("config_dir"), "imts.yaml")
    if os.path.exists(config_file):
        with open(config_file, encoding="utf-8") as handle:
            from_file = yaml.safe_load(handle) or {}
        if not isinstance(from_file, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
        unknown = set(from_file) - names
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        layers.append(from_file)
    # IMTS_DATA_DIR is the documented name; IMTS_DATA_DIRS is accepted too.
    from_env = {}
    for name in names:
        key = _ENV_PREFIX + name.upper()
        if key in environ:
            from_env[name] = environ[key]
    if "IMTS_DATA_DIR" in environ:
        from_env["data_dirs"] = environ["IMTS_DATA_DIR"]
    layers.append(from_env)
    layers.append(overrides)

    for layer in layers:
        for name, value in layer.items():
            if name == "home":
                continue
            setattr(settings, name, _coerce(name, value, getattr(settings, name)))
    return settings
