"""A shared server's record (its state.json) and what GET /servers shows of it.

The machinery's fields are a job's (status pending/running/stopped/failed, launch, monitor, trainer
for the vLLM process, attempt, history), so the scheduler, liveness and the monitor treat a server
as a run. A running server is `starting` until its /v1/models answers, then `ready`.
"""

from ..runs.endpoints import READY, STARTING, server_view, shown_status  # noqa: F401 (READY, STARTING, shown_status: its readers)
from ..runs.record import Field, record_class, run_fields
from ..state import JobStatus

KIND = "server"
SCHEMA_VERSION = 1
API_KEY_FILE = "api_key"  # mode 0600: the key vLLM checks; only the service holds it
LOG = "server.log"
COMMAND = "server_command.json"  # the vLLM command line and environment, for an operator to read

FIELDS = (
    Field("server_id", "string", shown=True),
    Field(
        "status", "string", "pending, starting, ready, stopped or failed", JobStatus.PENDING.value, shown=True
    ),
    Field("base_model", "string", "the base model's name (as a job names it)", shown=True),
    Field("base_model_path", "string", "the directory vLLM loads", shown=True),
    Field("engine", "string", "vllm", "vllm", shown=True),
    Field("port", "integer", "the port its server listens on (the service alone calls it)", shown=True),
    Field("host", "string", "the address its server listens on", shown=True),
    Field("max_loras", "integer", "adapters in one batch (vLLM's --max-loras)", shown=True),
    Field(
        "max_cpu_loras",
        "integer",
        "adapters kept in memory (--max-cpu-loras; the least recent goes)",
        shown=True,
    ),
    Field(
        "adapters",
        "object",
        "the adapters its running process has loaded: model name -> {path, loaded_at, load_ms}",
        shown=True,
    ),
    Field("adapter_loads", "integer", "adapters loaded, every process", 0, shown=True),
    Field("requests_served", "integer", "completions answered (from the server's access log)", 0, shown=True),
    Field("last_request_at", "string", shown=True),
    Field("restarts", "integer", "times its server died and was started again", 0, shown=True),
    Field("error", "string", shown=True),
    Field("log_tail", "strings", "the last lines of server.log, when its server failed", optional=True),
    Field("created_at", "string", shown=True),
    Field("started_at", "string", shown=True),
    Field("ready_at", "string", "when its server first answered (this process)", shown=True),
    Field("finished_at", "string", shown=True),
    Field("stop_reason", "string", "why it was stopped: requested, or idle", shown=True),
    *run_fields(
        KIND,
        SCHEMA_VERSION,
        key="the store's key of this run (the server id)",
        paths="log, api_key, command",
    ),
)
SHOWN = tuple(f.name for f in FIELDS if f.shown)

ABOUT = (
    "A shared base-model server written by the IMTS training API: vLLM's OpenAI server of base_model "
    "on host:port with runtime LoRA loading, started by its monitor with the command in "
    "server_command.json, its output in server.log. adapters lists what its running process has "
    "loaded. status is the machinery's (running while its server lives); the API shows starting or "
    "ready for a running one. The API key is in api_key (mode 0600). Times are UTC."
)

RECORD = record_class("ServerRecord", FIELDS, kind=KIND, schema_version=SCHEMA_VERSION)


def new_record(**values):
    return RECORD.new(**values)


def view(state):
    return server_view(state, SHOWN)


def next_attempt(state):
    """What a lost server's next attempt does."""
    return "starts its server again (its adapters load again on their next request)"
