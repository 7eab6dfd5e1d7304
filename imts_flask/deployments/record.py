"""A deployment's record (its state.json) and what GET /deployments/{id} shows of it.

The machinery's fields are a job's (status pending/running/stopped/failed, launch, monitor, trainer
for the server process, attempt, history), so the scheduler, liveness and the monitor treat a
deployment as a run. What a client reads as `status` adds the server's own progress: a running
deployment is `starting` until its /v1/models answers, then `ready`.
"""

from ..runs.endpoints import READY, STARTING, server_view, shown_status  # noqa: F401 (READY, STARTING, shown_status: its readers)
from ..runs.record import Field, record_class, run_fields
from ..state import JobStatus

KIND = "deployment"
SCHEMA_VERSION = 1
API_KEY_FILE = "api_key"  # mode 0600: the key the server checks; the record keeps its digest
CONFIG = "server_config.yaml"
LOG = "deployment.log"

FIELDS = (
    Field("deployment_id", "string", shown=True),
    Field("name", "string", "the name given at create (default: the deployment id)", shown=True),
    Field(
        "status", "string", "pending, starting, ready, stopped or failed", JobStatus.PENDING.value, shown=True
    ),
    Field("model", "string", "the model id clients send (and /v1/models lists)", shown=True),
    Field(
        "source", "object", "what is served: job_id and checkpoint, or a registered model version", shown=True
    ),
    Field("base_model", "string", "the base model's path", shown=True),
    Field("adapter", "string", "the LoRA adapter's path, if any", shown=True),
    Field("template", "string", shown=True),
    Field("max_new_tokens", "integer", shown=True),
    Field("port", "integer", "the port its server listens on", shown=True),
    Field("host", "string", "the address its server listens on", shown=True),
    Field("base_url", "string", "what an OpenAI client takes as base_url", shown=True),
    Field("api_key_sha256", "string", "the digest of its API key (the key itself is shown once)"),
    Field("gpu_ids", "strings", "GPUs handed to it", shown=True),
    Field(
        "requests_served",
        "integer",
        "chat completions answered (from the server's access log)",
        0,
        shown=True,
    ),
    Field("last_request_at", "string", shown=True),
    Field("restarts", "integer", "times its server died and was started again", 0, shown=True),
    Field("error", "string", shown=True),
    Field("log_tail", "strings", "the last lines of deployment.log, when its server failed", optional=True),
    Field("created_at", "string", shown=True),
    Field("started_at", "string", shown=True),
    Field("ready_at", "string", "when its server first answered (this attempt)", shown=True),
    Field("finished_at", "string", shown=True),
    Field("stop_reason", "string", "why it was stopped: requested, or idle"),
    *run_fields(
        KIND,
        SCHEMA_VERSION,
        key="the store's key of this run (the deployment id)",
        paths="log, config, api_key, request",
    ),
)
BY_NAME = {field.name: field for field in FIELDS}
SHOWN = tuple(f.name for f in FIELDS if f.shown)

ABOUT = (
    "A deployment written by the IMTS training API: LLaMA Factory's OpenAI-compatible server of model "
    "(base_model with adapter) on host:port, started by its monitor with the config server_config.yaml, "
    "its output in deployment.log. status is the machinery's (running while its server lives); the "
    "API shows starting or ready for a running one. The API key is in api_key (mode 0600). Times are UTC."
)


RECORD = record_class("DeploymentRecord", FIELDS, kind=KIND, schema_version=SCHEMA_VERSION)


def new_record(**values):
    return RECORD.new(**values)


def view(state):
    return server_view(state, SHOWN)


def next_attempt(state):
    """What a lost deployment's next attempt does."""
    return "starts its server again"
