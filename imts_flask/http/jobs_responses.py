"""The wire formats of what the jobs endpoints answer: a job's status (one field for each shown
field of the record's table, jobs/record.py), its listing, log slices, series, events,
checkpoints, exports and the custom_config allowlist."""

from marshmallow import INCLUDE, fields

from ..jobs import record
from .wire import ResponseSchema


class JobCreatedSchema(ResponseSchema):
    job_id = fields.String()
    status = fields.String()
    message = fields.String()
    created_at = fields.String()


class ResumedFromSchema(ResponseSchema):
    job_id = fields.String()
    checkpoint = fields.String()
    step = fields.Integer()


class JobResumedSchema(JobCreatedSchema):
    resumed_from = fields.Nested(ResumedFromSchema)


class ExportStateSchema(ResponseSchema):
    status = fields.String()
    export_dir = fields.String()
    merge_lora = fields.Boolean()
    checkpoint = fields.String(allow_none=True, metadata={"description": "final, or the checkpoint exported"})
    model_path = fields.String(allow_none=True)
    requested_at = fields.String()
    finished_at = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    log_tail = fields.List(fields.String())


class ValidationStateSchema(ResponseSchema):
    val_size = fields.Float(allow_none=True)
    dataset = fields.String(allow_none=True, metadata={"description": "names separated by commas"})
    eval_steps = fields.Integer()


class EarlyStoppingStateSchema(ResponseSchema):
    patience = fields.Integer()
    min_delta = fields.Float()


_WIRE_TYPES = {
    "string": fields.String,
    "integer": fields.Integer,
    "number": fields.Float,
    "boolean": fields.Boolean,
}

# The status view's objects, by field name.
_NESTED = {
    "resumed_from": ResumedFromSchema,
    "export": ExportStateSchema,
    "validation": ValidationStateSchema,
    "early_stopping": EarlyStoppingStateSchema,
}


def _status_field(field):
    """The marshmallow field of a status field, from the record's table (jobs/record.py)."""
    options = {"allow_none": field.nullable}
    if field.about:
        options["metadata"] = {"description": field.about}
    if field.name in _NESTED:
        return fields.Nested(_NESTED[field.name], **options)
    if field.kind == "strings":
        return fields.List(fields.String(), **options)
    return _WIRE_TYPES[field.kind](**options)


# GET /jobs/{id}: one field for each of the record's shown fields, in the table's order.
JobStatusSchema = ResponseSchema.from_dict(
    {field.name: _status_field(field) for field in record.FIELDS if field.shown}, name="JobStatusSchema"
)


class JobListSchema(ResponseSchema):
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
    jobs = fields.List(fields.Nested(JobStatusSchema))


class LogSliceSchema(ResponseSchema):
    job_id = fields.String()
    size = fields.Integer(metadata={"description": "bytes in training.log now"})
    offset = fields.Integer()
    next_offset = fields.Integer(metadata={"description": "pass as offset to read on"})
    eof = fields.Boolean()
    data = fields.String()
    lines = fields.List(fields.String(), metadata={"description": "with ?tail=N: the last N lines"})


class MetricPointSchema(ResponseSchema):
    step = fields.Integer()
    loss = fields.Float(allow_none=True)
    learning_rate = fields.Float(allow_none=True)
    epoch = fields.Float(allow_none=True)
    eval_loss = fields.Float(allow_none=True)
    elapsed_seconds = fields.Integer(allow_none=True)


class MetricsSeriesSchema(ResponseSchema):
    job_id = fields.String()
    since_step = fields.Integer()
    next_since_step = fields.Integer()
    points = fields.List(fields.Nested(MetricPointSchema))


class EventSchema(ResponseSchema):
    status = fields.String()
    at = fields.String()
    attempt = fields.Integer(metadata={"description": "the attempt this change belongs to"})
    reason = fields.String(metadata={"description": "why, when the service knows (a lost monitor, say)"})
    resumed_from = fields.String(
        metadata={"description": "on running: the checkpoint this attempt resumed from"}
    )


class EventListSchema(ResponseSchema):
    job_id = fields.String()
    events = fields.List(fields.Nested(EventSchema))


class CheckpointSchema(ResponseSchema):
    name = fields.String()
    step = fields.Integer()
    path = fields.String()
    modified_at = fields.String()
    complete = fields.Boolean(metadata={"description": "the save finished: it can be resumed from"})
    max_steps = fields.Integer(
        allow_none=True,
        metadata={"description": "the run's planned last step; a checkpoint there is not resumed from"},
    )
    problem = fields.String(allow_none=True, metadata={"description": "why it is not complete"})
    eval_loss = fields.Float(allow_none=True, metadata={"description": "the held-out loss at its step"})
    eval_metrics = fields.Dict(
        allow_none=True, metadata={"description": "every eval_* figure the trainer logged at its step"}
    )
    best = fields.Boolean(metadata={"description": "the checkpoint with the lowest eval_loss"})


class CheckpointListSchema(ResponseSchema):
    job_id = fields.String()
    checkpoints = fields.List(fields.Nested(CheckpointSchema))


class MessageSchema(ResponseSchema):
    message = fields.String()
    job_id = fields.String()
    status = fields.String()


class ExportResponseSchema(ResponseSchema):
    message = fields.String()
    model_path = fields.String(allow_none=True)
    job_id = fields.String()
    export_status = fields.String()
    merge_lora = fields.Boolean()
    checkpoint = fields.String(allow_none=True)


class RawRequestSchema(ResponseSchema):
    """A job's request.json: the body as its client sent it (snake_case or camelCase)."""

    class Meta:
        unknown = INCLUDE


class CustomConfigKeySchema(ResponseSchema):
    key = fields.String()
    type = fields.String(metadata={"description": "int, number, bool, choice, names or text"})
    min = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)
    choices = fields.List(fields.Raw(), allow_none=True)


class CustomConfigSchema(ResponseSchema):
    keys = fields.List(fields.Nested(CustomConfigKeySchema))
