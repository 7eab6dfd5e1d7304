"""A probe's record: its own fields and those every run has."""

from imts_flask.runs.record import Field, record_class, run_fields
from imts_flask.state import JobStatus

KIND = "probe"
LOG = "probe.log"

FIELDS = (
    Field("probe_id", "string"),
    Field("status", "string", default=JobStatus.PENDING.value),
    Field("message", "string", "what its process prints"),
    Field("error", "string"),
    Field("created_at", "string"),
    Field("started_at", "string"),
    Field("finished_at", "string"),
    *run_fields(KIND, 1, key="the probe's id", paths="log"),
)

RECORD = record_class("ProbeRecord", FIELDS, kind=KIND, schema_version=1)


def next_attempt(state):
    return "prints its message again"
