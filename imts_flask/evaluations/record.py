"""An evaluation's record (its state.json) and what GET .../evaluations/{id} shows of it.

The fields the scheduler, the liveness checks and the monitor read are a job's (status, launch,
monitor, trainer, attempt, history, ...), so an evaluation is queued, run, lost and settled as a
job is; `job_id` is the store's key of the run (<job>/<evaluation>), and `kind` says what it is.
"""

from ..runs.record import Field, record_class, run_fields
from ..state import JobStatus

KIND = "evaluation"
SCHEMA_VERSION = 1
# Each model judged, in the order the comparison shows them; `base` only with baseline.
MODELS = ("tuned", "base")

FIELDS = (
    Field("evaluation_id", "string", shown=True),
    Field("training_job_id", "string", "the job whose weights are judged"),
    Field(
        "status",
        "string",
        "pending, running, completed, failed or stopped",
        JobStatus.PENDING.value,
        shown=True,
    ),
    Field("stage", "string", "the job's stage: sft, rm or pt", shown=True),
    Field("dataset", "string", "names separated by commas", shown=True),
    Field("checkpoint", "string", "the weights judged: final or checkpoint-N", shown=True),
    Field("max_samples", "integer", "rows of the dataset used, at most", shown=True),
    Field("baseline", "boolean", "the base model is judged too, on the same rows", False, shown=True),
    Field("generation", "object", "how predictions are generated (sft)", shown=True),
    Field("phases", "strings", "each llamafactory-cli run, in order", default=(), shown=True),
    Field("phase", "string", "the phase running now", shown=True),
    Field("results", "object", "figures of each phase that finished, by phase", shown=True),
    Field("error", "string", shown=True),
    Field("created_at", "string", shown=True),
    Field("started_at", "string", shown=True),
    Field("finished_at", "string", shown=True),
    Field("log_tail", "strings", "the last lines of evaluation.log, when failed", optional=True),
    *run_fields(
        KIND,
        SCHEMA_VERSION,
        key="the store's key of this run: <job>/<evaluation>",
        paths="log, output_dir, request, dataset_info, configs (by phase)",
    ),
)
BY_NAME = {field.name: field for field in FIELDS}

ABOUT = (
    "An evaluation written by the IMTS training API: the weights of job training_job_id (checkpoint) "
    "judged on dataset, one llamafactory-cli run per phase (tuned-*, base-* with baseline); each "
    "phase's config is paths.configs[phase], its output output/<phase>/, all of them logged to "
    "evaluation.log. job_id is the store's key of this run. Times are UTC."
)


RECORD = record_class("EvaluationRecord", FIELDS, kind=KIND, schema_version=SCHEMA_VERSION)


def new_record(**values):
    return RECORD.new(**values)


def next_attempt(state):
    """What a lost evaluation's next attempt does: the phases it has not done."""
    done = [p for p in state.phases or [] if p in (state.results or {})]
    return "runs the phases not done yet" + (f" (done: {', '.join(done)})" if done else "")
