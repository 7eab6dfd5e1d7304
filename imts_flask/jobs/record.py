"""The job record (state.json): every field in one table, the record's version on disk, and the
class it reads as.

The status view (GET /jobs/{id}) and its schema, the listing summaries, what a resumed job takes
over and what a webhook event carries all derive from FIELDS: adding a field is a row here, plus
its tests. Fields the view computes (progress, gpu_ids, ...) are rows too, marked `stored=False`,
so the table is also the view's order.

Versions: a record without `schema_version` was written before this table (version 1, the same
layout); version 3 added the validation fields, 4 the tenant and the token that created it, 5 the
priority, preemption and accounting fields. Reading fills what an older record lacks with each
field's default, and the next write stores it as the current version.
"""

from ..runs.record import Field, record_class
from ..state import JobStatus
from .checkpoints import latest_resumable

SCHEMA_VERSION = 5


def _view(name, kind, about="", nullable=True):
    return Field(name, kind, about, stored=False, shown=True, nullable=nullable)


# In the order of the status view; the fields only state.json holds come last.
# fmt: off
FIELDS = (
    Field("job_id", "string", shown=True, nullable=False),
    Field("status", "string", "pending, running, completed, failed or stopped", JobStatus.PENDING.value,
          nullable=False, shown=True),
    Field("pid", "integer", "the trainer's process id while it runs", shown=True),
    _view("config_path", "string", "the file llamafactory-cli reads"),
    _view("progress", "number", "0..1; 1.0 when completed", nullable=False),
    _view("current_loss", "number"),
    _view("current_step", "integer"),
    _view("total_steps", "integer"),
    _view("epoch", "number"),
    _view("learning_rate", "number"),
    _view("eta_seconds", "integer"),
    Field("created_at", "string", shown=True),
    Field("started_at", "string", shown=True),
    Field("finished_at", "string", shown=True),
    Field("model_name", "string", shown=True, resumed=True, webhook=True),
    Field("dataset", "string", "names separated by commas", shown=True, resumed=True, webhook=True),
    Field("stage", "string", shown=True, resumed=True, webhook=True),
    Field("finetuning_type", "string", shown=True, resumed=True),
    Field("gpus", "integer", "GPUs the job asked for", shown=True, resumed=True),
    _view("gpu_ids", "strings", "the GPU ids handed out once it has a slot"),
    _view("queue_position", "integer", "a waiting job's place in the queue (1 = next)"),
    _view("waiting_for", "string", "why a queued job waits: capacity (slots, GPUs), quota (its team's) or "
          "preemption (the jobs making way for it are stopping)"),
    _view("held_by", "strings", "a waiting job: the runs holding what it waits for (jobs, evaluations, "
          "deployments) that the caller may see"),
    _view("held_by_others", "integer", "a waiting job: how many more such runs are other teams' (not named)"),
    _view("gpu_memory_mb", "integer", "GPU memory its processes hold (running; null without GPUs)"),
    _view("tokens_per_second", "number", "input tokens a second, lately"),
    _view("samples_per_second", "number", "training samples a second"),
    Field("validation", "object", "held-out data evaluated during training: val_size or dataset, eval_steps",
          shown=True, resumed=True),
    Field("early_stopping", "object", "patience and min_delta of the stop on a stalled eval_loss", shown=True,
          resumed=True),
    Field("eval_loss", "number", "the latest evaluation's loss on the held-out data", shown=True),
    Field("best_eval_loss", "number", "the lowest eval_loss so far", shown=True),
    Field("best_checkpoint", "string",
          "the checkpoint with the lowest eval_loss (export it by name, or 'best')", shown=True),
    Field("stopped_early", "boolean", "ended by early stopping before its last step (current_step: where)",
          False, shown=True, nullable=False),
    Field("priority", "string", "high, normal or low: the queue's order, and who may preempt whom", "normal",
          shown=True, resumed=True, webhook=True, nullable=False),
    Field("preemptible", "boolean", "a high job may stop it with a checkpoint and take its GPUs", True,
          shown=True, resumed=True, nullable=False),
    Field("preemptions", "integer", "times a higher-priority job stopped it to take its place", 0, shown=True,
          nullable=False),
    Field("preempted_by", "string", "the job that last preempted it", shown=True),
    Field("gpu_seconds", "number", "GPUs held x seconds running, every attempt (waiting time excluded)", 0.0,
          shown=True, nullable=False),
    Field("cpu_seconds", "number", "CPU seconds its processes used, every attempt", 0.0, shown=True,
          nullable=False),
    Field("attempt", "integer", "1, then 2, ... each time the job resumes after its host died", 1, shown=True,
          nullable=False),
    Field("max_attempts", "integer", "", 1, shown=True, nullable=False),
    Field("resumed_from", "object", "the job and checkpoint this job continues", shown=True),
    Field("disk_bytes", "integer", "bytes the job directory takes", shown=True),
    _view("stop_requested", "boolean", nullable=False),
    Field("exit_code", "integer", shown=True, webhook=True),
    Field("signal", "string", shown=True),
    Field("reason", "string", shown=True, webhook=True),
    Field("error", "string", shown=True, webhook=True),
    _view("output_dir", "string"),
    _view("log_path", "string"),
    Field("export", "object", "the job's last export", shown=True),
    Field("tensorboard", "boolean", "the trainer writes TensorBoard event files", False, shown=True,
          resumed=True, nullable=False),
    _view("tensorboard_dir", "string", "where they are (with tensorboard: true)"),
    Field("mlflow_run_id", "string", "the job's run on the MLflow tracking server (mlflow_tracking_uri)",
          shown=True),
    Field("log_tail", "strings", "the last lines of training.log, when failed", shown=True, optional=True,
          nullable=False),
    # state.json only
    Field("schema_version", "integer", default=SCHEMA_VERSION),
    Field("kind", "string", "what the run is: none for a job (evaluation, deployment)", optional=True),
    Field("created_ns", "integer", "orders jobs created within the same second"),
    Field("tenant", "string", "the team it belongs to (none: an admin's, or made before tenants)", shown=True,
          resumed=True, webhook=True),
    Field("created_by", "string", "the name of the token that created it", shown=True),
    Field("updated_at", "string"),
    Field("webhook_url", "string", resumed=True),
    Field("samples_per_step", "integer", "samples a step takes, all processes together", resumed=True),
    Field("launch", "object", "the slot handed out: its id, time and GPUs"),
    Field("stop_requested_at", "string"),
    Field("paths", "object", "config, output_dir, log, request, dataset_info"),
    Field("trainer", "object", "pid, start_ticks, pgid of the trainer while it runs"),
    Field("monitor", "object", "pid, start_ticks, host, boot of the job's monitor"),
    Field("final", "object", "progress when the trainer ended"),
    Field("history", "objects", "each status change: status, at, attempt, reason", default=()),
    Field("about", "string"),
    Field("seeded_at", "string", "when a resumed job copied its checkpoint", optional=True),
    Field("resumed_at_step", "integer", "the step this attempt resumed from", optional=True),
    Field("engine_launches", "integer", "submissions to an engine (Ray) so far", optional=True),
    Field("stop_forced_at", "string", "when a stop overdue was forced through the executor", optional=True),
    Field("lost", "object", "why its monitor is lost, written before it is killed", optional=True),
    Field("gpu_memory_bytes", "integer", "GPU memory as the monitor last read it", optional=True),
    Field("broken", "boolean", "the record could not be read", optional=True),
    Field("preempting", "object", "a preemption in flight: by (the job), at", optional=True),
    Field("queue_head_at", "string", "when an admin moved it to the head of the queue", optional=True),
    Field("accounted", "object", "gpu_seconds and cpu_seconds already in the usage ledger", optional=True),
)
# fmt: on
BY_NAME = {field.name: field for field in FIELDS}
STORED = tuple(f for f in FIELDS if f.stored)
SHOWN = tuple(f.name for f in FIELDS if f.shown)
RESUMED = tuple(f.name for f in FIELDS if f.resumed)
WEBHOOK = tuple(f.name for f in FIELDS if f.webhook)

# The record as a type: a dataclass of state.json's fields (runs/record.py).
RECORD = record_class("JobRecord", FIELDS, kind=None, schema_version=SCHEMA_VERSION)


def new_record(**values):
    """A new job's record: every stored field in the table's order, `values` over the defaults."""
    return RECORD.new(**values)


def next_attempt(state):
    """What a lost job's next attempt does, in the words of its history."""
    checkpoint = latest_resumable(state.path("output_dir") or "")
    if checkpoint is None:
        return "starts over: no complete checkpoint was saved yet"
    return f"resumes from {checkpoint['name']}"
