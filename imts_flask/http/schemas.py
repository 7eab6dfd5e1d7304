"""Marshmallow wire formats: requests in (snake_case or the guide's camelCase), responses out."""

import re

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    post_load,
    pre_load,
    validate,
    validates,
    validates_schema,
)

from ..datasets.rows import FORMATS as DATASET_FORMATS
from ..datasets.uploads import NAME as DATASET_NAME
from ..datasets.uploads import NAME_RULE as DATASET_NAME_RULE
from ..jobs import record
from ..llamafactory.allowlist import FINETUNING_TYPES, PPO_REASON, STAGES
from ..queue import PRIORITIES
from ..state import JobStatus

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
MAX_DATASETS = 8
# The bounds of numbers no request may pass: every integer of a request or a query has both ends.
MAX_OFFSET = 10**9  # items of a listing skipped
MAX_BYTE_OFFSET = 2**53 - 1  # a file's bytes (JSON's largest exact integer)
MAX_STEP = 10**12  # a training step


class Whole(validate.Regexp):
    """A value that the pattern matches whole (re.fullmatch): marshmallow's Regexp uses re.match, whose
    `$` matches before a final newline too ("name\\n" would pass). Every pattern of a request uses it."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# A job's id where a body names one, the weights of a job a request names, and the names of
# registered models, deployments and aliases.
WEIGHTS = Whole(
    r"^(final|best|checkpoint-[0-9]{1,12})$", error="must be final, best or a name like checkpoint-500"
)
JOB_ID = Whole(
    r"^train_[0-9a-z]{8}$", error="must look like train_ followed by 8 lowercase letters or digits"
)
REFERENCE = Whole(
    r"^[a-z0-9][a-z0-9_-]{0,62}(:[0-9]{1,9}|@[a-z0-9][a-z0-9_-]{0,62})$",
    error="must look like name:3 or name@alias",
)
NAME = Whole(
    r"^[a-z0-9][a-z0-9_-]{0,62}$",
    error="must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
)


def _snake(name):
    return _CAMEL.sub("_", name).lower()


class RequestSchema(Schema):
    """Accept snake_case and camelCase field names (Jackson's default), and null as "not given"."""

    class Meta:
        unknown = RAISE

    NOT_AN_OBJECT = "the request body must be a JSON object"

    @pre_load
    def _normalise(self, data, **kwargs):
        if not isinstance(data, dict):
            raise ValidationError(self.NOT_AN_OBJECT)
        out = {}
        for key, value in data.items():
            name = _snake(key) if isinstance(key, str) else key
            if name in out and out[name] != value:
                raise ValidationError(
                    f"given twice with different values (as '{key}' and another spelling)", name
                )
            if value is not None or name not in out:
                out[name] = value
        return out

    @post_load
    def _defaults(self, data, **kwargs):
        for name, field in self.fields.items():
            default = field.load_default
            if data.get(name) is None and default is not missing:
                data[name] = default() if callable(default) else default
        return data


_REQUIRED = {"required": "is required", "null": "is required and may not be null"}


class JsonBoolean(fields.Boolean):
    """true or false, nothing else (marshmallow's Boolean also takes 1, 0, "yes", "on", ...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class QueryBoolean(fields.Boolean):
    """true or false in a query string (as the OpenAPI document says: nothing else)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value not in ("true", "false"):
            raise ValidationError("must be true or false")
        return value == "true"


def given(name):
    """JSON Schema of "the field is there and not null" (for a schema's openapi_rules)."""
    return {"required": [name], "properties": {name: {"not": {"enum": [None]}}}}


_DATASET = DATASET_NAME.pattern
_NAMES_TEXT = f"^ *{_DATASET} *(, *{_DATASET} *){{0,{MAX_DATASETS - 1}}}$"


class DatasetField(fields.Field):
    """A dataset name, several names separated by commas (spaces around them are dropped), or a list
    of names; at most MAX_DATASETS, none twice."""

    OPENAPI = {
        "oneOf": [
            {"type": "string", "pattern": _NAMES_TEXT},
            {
                "type": "array",
                "items": {"type": "string", "pattern": f"^{_DATASET}$"},
                "minItems": 1,
                "maxItems": MAX_DATASETS,
                "uniqueItems": True,
            },
        ],
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            names = [n.strip(" ") for n in value.split(",")]
        elif isinstance(value, list) and all(isinstance(n, str) for n in value):
            names = list(value)
        else:
            raise ValidationError("must be a dataset name, names separated by commas, or a list of names")
        if not names or any(not n for n in names):
            raise ValidationError("must name at least one dataset, with no empty names")
        if len(names) > MAX_DATASETS:
            raise ValidationError(f"may name at most {MAX_DATASETS} datasets")
        bad = [n for n in names if not DATASET_NAME.fullmatch(n)]
        if bad:
            raise ValidationError(f"{bad[0][:80]!r} is no dataset name: each is {DATASET_NAME_RULE}")
        if len(set(names)) != len(names):
            raise ValidationError("names a dataset twice")
        return names


class NestedRequestSchema(RequestSchema):
    NOT_AN_OBJECT = "must be a JSON object"


class ValidationSchema(NestedRequestSchema):
    """`validation`: evaluate on held-out data during training (a share of the data, or a dataset)."""

    openapi_rules = {"oneOf": [given("val_size"), given("dataset")]}

    val_size = fields.Float(
        allow_none=True,
        validate=validate.Range(0, 1, min_inclusive=False, max_inclusive=False),
        metadata={"description": "the share of the training rows held out, 0..1", "example": 0.1},
    )
    dataset = DatasetField(
        allow_none=True, metadata={"description": "a dataset (or names) to evaluate on, checked like dataset"}
    )
    eval_steps = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, 10**9),
        metadata={"description": "evaluate every N steps (default: the job's save_steps)"},
    )

    @validates_schema
    def _one_source(self, data, **kwargs):
        given = [name for name in ("val_size", "dataset") if data.get(name) is not None]
        if len(given) != 1:
            raise ValidationError("give either val_size or dataset (one of them)")


class EarlyStoppingSchema(NestedRequestSchema):
    """`early_stopping`: end after `patience` evaluations without improvement, on the best weights."""

    patience = fields.Integer(
        strict=True,
        required=True,
        error_messages=_REQUIRED,
        validate=validate.Range(1, 1000),
        metadata={"description": "evaluations in a row without a better eval_loss", "example": 2},
    )
    min_delta = fields.Float(
        load_default=0.0,
        allow_none=True,
        validate=validate.Range(0, 10**6),
        metadata={"description": "how much lower eval_loss must be to count as better (default 0)"},
    )


# What a stage's trainer cannot do at the end of an early-stopped run (LLaMA Factory's parser).
EARLY_STOPPING_REFUSED = {
    "rm": "LLaMA Factory's rm stage cannot end on its best checkpoint (load_best_model_at_end): "
    "early stopping works with sft, pt, dpo and kto; rm jobs can still use validation",
}


_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
WEBHOOK_URL = rf"^https?://[A-Za-z0-9][A-Za-z0-9.-]{{0,252}}(:{_PORT})?(/[!-~]*)?$"


class TrainingJobRequestSchema(RequestSchema):
    """POST /jobs: what to train (the guide's TrainingJobRequest). model_name and dataset name what
    this service has (GET /models, GET /datasets; a dataset fit for the stage): others are a 400."""

    # early_stopping needs validation, works with every stage but rm, and saves a checkpoint at each
    # evaluation (so custom_config sets neither save_steps nor another save_strategy).
    openapi_rules = {
        "anyOf": [
            {"not": given("early_stopping")},
            {
                "allOf": [given("validation")],
                "properties": {
                    "stage": {"not": {"enum": ["rm"]}},
                    "custom_config": {
                        "anyOf": [
                            {"enum": [None]},
                            {
                                "not": {"required": ["save_steps"]},
                                "properties": {"save_strategy": {"enum": ["steps"]}},
                            },
                        ]
                    },
                },
            },
        ]
    }

    model_name = fields.String(
        required=True,
        validate=validate.Length(1, 256),
        error_messages=_REQUIRED,
        metadata={"example": "tiny-llama"},
    )
    dataset = DatasetField(
        required=True,
        error_messages=_REQUIRED,
        metadata={
            "description": "a name, names separated by commas, or a list of names",
            "example": "demo_sft",
        },
    )
    stage = fields.String(
        load_default="sft", allow_none=True, metadata={"openapi": {"enum": [*STAGES, None]}}
    )
    finetuning_type = fields.String(
        load_default="lora",
        allow_none=True,
        validate=validate.OneOf(FINETUNING_TYPES, error="must be one of {choices}"),
    )
    batch_size = fields.Integer(
        strict=True, load_default=2, allow_none=True, validate=validate.Range(1, 1024)
    )
    learning_rate = fields.Float(
        load_default=5e-5, allow_none=True, validate=validate.Range(0, 1, min_inclusive=False)
    )
    epochs = fields.Float(
        load_default=3.0, allow_none=True, validate=validate.Range(0, 10_000, min_inclusive=False)
    )
    lora_rank = fields.Integer(strict=True, load_default=8, allow_none=True, validate=validate.Range(1, 1024))
    lora_alpha = fields.Integer(
        strict=True, load_default=16, allow_none=True, validate=validate.Range(1, 4096)
    )
    custom_config = fields.Dict(
        keys=fields.String(), load_default=dict, allow_none=True, metadata={"example": {"cutoff_len": 64}}
    )
    # Not in the guide: GPUs for this job (default 1 where the service has GPUs, else 0).
    gpus = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 64))
    # Not in the guide: where to POST each state change of this job.
    webhook_url = fields.String(
        allow_none=True,
        validate=[validate.Length(max=2048), Whole(WEBHOOK_URL, error="must be an http or https URL")],
        metadata={
            "description": "an http(s) URL each state change is POSTed to",
            "example": "https://ci.example/hook",
        },
    )
    # Not in the guide: evaluation on held-out data while training, and stopping when it stalls.
    validation = fields.Nested(ValidationSchema, allow_none=True, metadata={"example": {"val_size": 0.1}})
    early_stopping = fields.Nested(
        EarlyStoppingSchema, allow_none=True, metadata={"example": {"patience": 3}}
    )
    tensorboard = JsonBoolean(
        load_default=False,
        allow_none=True,
        metadata={"description": "write TensorBoard event files into the job's directory (tensorboard_dir)"},
    )
    # Not in the guide: the queue's order and preemption (see the README's "Sharing the service").
    priority = fields.String(
        load_default="normal",
        allow_none=True,
        validate=validate.OneOf(PRIORITIES, error="must be one of {choices}"),
        metadata={"description": "high, normal or low (at most the team's max_priority)"},
    )
    preemptible = JsonBoolean(
        load_default=True,
        allow_none=True,
        metadata={"description": "false: no high job may stop it (up to the team's max_non_preemptible)"},
    )

    @validates("stage")
    def _stage(self, value, **kwargs):
        if value == "ppo":
            raise ValidationError(PPO_REASON)
        if value is not None and value not in STAGES:
            raise ValidationError(f"must be one of {', '.join(STAGES)}")

    @validates_schema
    def _early_stopping(self, data, **kwargs):
        if not data.get("early_stopping"):
            return
        if not data.get("validation"):
            raise ValidationError(
                "needs validation: it stops on the held-out eval_loss (give validation: {val_size: 0.1})",
                field_name="early_stopping",
            )
        refused = EARLY_STOPPING_REFUSED.get(data.get("stage") or "sft")
        if refused:
            raise ValidationError(refused, field_name="early_stopping")
        custom = data.get("custom_config") or {}
        if custom.get("save_strategy") not in (None, "steps") or "save_steps" in custom:
            raise ValidationError(
                "with early_stopping a checkpoint is saved at each evaluation (its best is kept): "
                "set validation.eval_steps instead of save_strategy/save_steps",
                field_name="custom_config",
            )


class ExportRequestSchema(RequestSchema):
    """POST /jobs/{id}/export: where to put the model and whether to merge the LoRA adapter."""

    job_id = fields.String(
        allow_none=True,
        validate=JOB_ID,
        metadata={"description": "the path's job_id again (the guide sends it), or left out"},
    )
    export_dir = fields.String(
        required=True,
        validate=validate.Length(1, 1024),
        error_messages=_REQUIRED,
        metadata={
            "example": "my_model",
            "description": "a relative path inside the exports root (no '..'): my_model, or "
            "./models/exports/my_model as the guide writes it",
        },
    )
    merge_lora = JsonBoolean(load_default=True, allow_none=True)
    checkpoint = fields.String(
        allow_none=True,
        validate=WEIGHTS,
        metadata={"description": "the weights to export: final (default), best, or a checkpoint's name"},
    )


class ResumeRequestSchema(RequestSchema):
    """POST /jobs/{id}/resume: which checkpoint to continue from (default: the newest complete one)."""

    checkpoint = fields.String(
        allow_none=True,
        validate=Whole(r"^checkpoint-[0-9]{1,12}$", error="must be a name like checkpoint-500"),
        metadata={"example": "checkpoint-500"},
    )


class GenerationSchema(NestedRequestSchema):
    """`generation` of an evaluation: how the predictions of an sft model are generated."""

    max_new_tokens = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, 4096),
        metadata={"description": "default 128"},
    )
    temperature = fields.Float(
        allow_none=True,
        validate=validate.Range(0, 2),
        metadata={"description": "0 (default): greedy, the same output every time"},
    )
    top_p = fields.Float(allow_none=True, validate=validate.Range(0, 1, min_inclusive=False))
    top_k = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 1000))
    repetition_penalty = fields.Float(allow_none=True, validate=validate.Range(0, 10, min_inclusive=False))


class EvaluationRequestSchema(RequestSchema):
    """POST /jobs/{id}/evaluations: judge a job's weights (and its base model) on a dataset."""

    dataset = DatasetField(required=True, error_messages=_REQUIRED, metadata={"example": "demo_sft"})
    checkpoint = fields.String(
        load_default="final",
        allow_none=True,
        validate=WEIGHTS,
        metadata={"description": "the weights judged: final (default), best, or a checkpoint's name"},
    )
    max_samples = fields.Integer(
        strict=True, load_default=200, allow_none=True, validate=validate.Range(1, 10_000),
        metadata={"description": "rows of the dataset used, at most (default 200)"},
    )  # fmt: skip
    baseline = JsonBoolean(
        load_default=False, allow_none=True,
        metadata={"description": "judge the base model too, on the same rows, for the comparison"},
    )  # fmt: skip
    generation = fields.Nested(
        GenerationSchema, allow_none=True, metadata={"example": {"max_new_tokens": 64}}
    )


class SamplesQuerySchema(Schema):
    """GET .../evaluations/{id}/samples query: a page of rows."""

    class Meta:
        unknown = RAISE

    offset = fields.Integer(load_default=0, validate=validate.Range(0, 10**6))
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class DatasetUploadSchema(RequestSchema):
    """POST /datasets form fields (the file itself is the part named `file`)."""

    name = fields.String(
        required=True,
        error_messages=_REQUIRED,
        validate=Whole(f"^{DATASET_NAME.pattern}$", error=f"must be {DATASET_NAME_RULE}"),
        metadata={"example": "my_sft_data"},
    )
    format = fields.String(
        allow_none=True,
        validate=validate.OneOf(DATASET_FORMATS, error="must be one of {choices}"),
        metadata={"description": "detected from the rows when left out"},
    )


class OverwriteQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    overwrite = QueryBoolean(load_default=False)


class PreviewQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    preview = fields.Integer(load_default=0, validate=validate.Range(0, 20))


class PageQuerySchema(Schema):
    """A page of a listing: at most `limit` items after the first `offset`."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


class ListQuerySchema(PageQuerySchema):
    """GET /jobs query: optional status filter and search, an order, and paging."""

    status = fields.String(
        validate=validate.OneOf([s.value for s in JobStatus], error="must be one of {choices}")
    )
    q = fields.String(
        validate=validate.Length(1, 200),
        metadata={"description": "jobs whose model_name or dataset contains this (any case)"},
    )
    sort = fields.String(
        load_default="created",
        validate=validate.OneOf(("created", "finished", "loss"), error="must be one of {choices}"),
        metadata={
            "description": "created (default), finished or loss (the final loss; unfinished jobs last)"
        },
    )
    order = fields.String(
        load_default=None,
        validate=validate.OneOf(("asc", "desc"), error="must be one of {choices}"),
        metadata={"description": "desc (default; loss: asc, the lowest first)"},
    )


class LogQuerySchema(Schema):
    """GET /jobs/{id}/logs query: a byte range, or the last lines."""

    class Meta:
        unknown = RAISE

    offset = fields.Integer(
        load_default=0,
        validate=validate.Range(0, MAX_BYTE_OFFSET),
        metadata={"description": "a byte offset into training.log (next_offset of the previous read)"},
    )
    limit = fields.Integer(load_default=64 * 1024, validate=validate.Range(1, 1024 * 1024))
    tail = fields.Integer(validate=validate.Range(1, 10_000))


class MetricsQuerySchema(Schema):
    """GET /jobs/{id}/metrics query: points after a step, at most `limit` of them."""

    class Meta:
        unknown = RAISE

    since_step = fields.Integer(load_default=0, validate=validate.Range(0, MAX_STEP))
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 10_000))


# -- responses ---------------------------------------------------------------------------------


class ResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE
        ordered = True


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


class FiguresSchema(ResponseSchema):
    bleu_4 = fields.Float(
        allow_none=True, metadata={"description": "BLEU-4 of the generated answers, 0..100"}
    )
    rouge_1 = fields.Float(allow_none=True, metadata={"description": "ROUGE-1 F, 0..100"})
    rouge_2 = fields.Float(allow_none=True, metadata={"description": "ROUGE-2 F, 0..100"})
    rouge_l = fields.Float(allow_none=True, metadata={"description": "ROUGE-L F, 0..100"})
    loss = fields.Float(allow_none=True, metadata={"description": "the mean loss on the rows' answers"})
    perplexity = fields.Float(allow_none=True, metadata={"description": "exp(loss)"})
    accuracy = fields.Float(
        allow_none=True, metadata={"description": "rm: chosen scored above rejected, 0..1"}
    )


class ComparisonSchema(ResponseSchema):
    tuned = fields.Nested(FiguresSchema, allow_none=True)
    base = fields.Nested(FiguresSchema, allow_none=True, metadata={"description": "with baseline"})
    difference = fields.Nested(FiguresSchema, allow_none=True, metadata={"description": "tuned minus base"})


class EvaluationSchema(ResponseSchema):
    evaluation_id = fields.String()
    job_id = fields.String()
    status = fields.String(metadata={"description": "pending, running, completed, failed or stopped"})
    stage = fields.String()
    dataset = fields.String()
    checkpoint = fields.String(metadata={"description": "final, or the checkpoint judged"})
    max_samples = fields.Integer()
    baseline = JsonBoolean()
    generation = fields.Dict(allow_none=True)
    phases = fields.List(fields.String(), metadata={"description": "each llamafactory-cli run, in order"})
    phase = fields.String(allow_none=True, metadata={"description": "the one running now"})
    phases_done = fields.List(fields.String())
    results = fields.Nested(ComparisonSchema)
    samples = fields.Integer(allow_none=True, metadata={"description": "predictions to page through"})
    tenant = fields.String(allow_none=True, metadata={"description": "the team it belongs to (its job's)"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that created it"})
    queue_position = fields.Integer(allow_none=True)
    waiting_for = fields.String(metadata={"description": "pending: capacity, quota or preemption"})
    held_by = fields.List(fields.String(), metadata={"description": "pending: the runs holding the slots"})
    held_by_others = fields.Integer(metadata={"description": "pending: how many more are other teams'"})
    attempt = fields.Integer()
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    log_path = fields.String()
    output_dir = fields.String()
    log_tail = fields.List(fields.String())


class EvaluationListSchema(ResponseSchema):
    job_id = fields.String()
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
    evaluations = fields.List(fields.Nested(EvaluationSchema))


class SampleSchema(ResponseSchema):
    index = fields.Integer()
    prompt = fields.String(allow_none=True)
    label = fields.String(allow_none=True, metadata={"description": "the dataset's answer"})
    tuned = fields.String(allow_none=True, metadata={"description": "the tuned model's answer"})
    base = fields.String(allow_none=True, metadata={"description": "the base model's answer (baseline)"})


class SampleListSchema(ResponseSchema):
    evaluation_id = fields.String()
    job_id = fields.String()
    total = fields.Integer(allow_none=True)
    offset = fields.Integer()
    limit = fields.Integer()
    samples = fields.List(fields.Nested(SampleSchema))


class DatasetSchema(ResponseSchema):
    name = fields.String()
    source = fields.String(metadata={"description": "operator (a data directory) or upload"})
    format = fields.String(metadata={"description": "alpaca, sharegpt, pairwise, kto or text"})
    stages = fields.List(fields.String(), metadata={"description": "the stages it can train"})
    rows = fields.Integer(allow_none=True)
    bytes = fields.Integer(allow_none=True)
    sha256 = fields.String(allow_none=True)
    columns = fields.List(fields.String())
    created_at = fields.String(allow_none=True)
    tenant = fields.String(allow_none=True, metadata={"description": "an upload's team (none: everyone's)"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that uploaded it"})
    file = fields.String(metadata={"description": "the file jobs read, on the server"})
    preview = fields.List(fields.Dict(), metadata={"description": "with ?preview=N: the first N rows"})
    preview_truncated = fields.Boolean(
        metadata={"description": "a preview value was cut (texts past 1000 characters, deep or long lists)"}
    )


class RawRequestSchema(ResponseSchema):
    """A job's request.json: the body as its client sent it (snake_case or camelCase)."""

    class Meta:
        unknown = INCLUDE


class RequestQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    defaults = QueryBoolean(load_default=False)


class CustomConfigKeySchema(ResponseSchema):
    key = fields.String()
    type = fields.String(metadata={"description": "int, number, bool, choice, names or text"})
    min = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)
    choices = fields.List(fields.Raw(), allow_none=True)


class CustomConfigSchema(ResponseSchema):
    keys = fields.List(fields.Nested(CustomConfigKeySchema))


class DatasetListSchema(ResponseSchema):
    datasets = fields.List(fields.Nested(DatasetSchema))


class ModelSchema(ResponseSchema):
    name = fields.String()
    source = fields.String(metadata={"description": "registry (config/models.yaml), models_dir or hub_cache"})
    path = fields.String()
    template = fields.String(allow_none=True, metadata={"description": "the template a job gets by default"})
    architecture = fields.String(allow_none=True)
    model_type = fields.String(allow_none=True)
    parameters = fields.Integer(
        allow_none=True, metadata={"description": "counted from the weights' headers"}
    )
    bytes = fields.Integer(allow_none=True, metadata={"description": "size on disk"})


class ModelListSchema(ResponseSchema):
    models = fields.List(fields.Nested(ModelSchema))
    registered = fields.List(
        fields.Dict(),
        metadata={"description": "registered names: versions, aliases (GET /models/{model} for one)"},
    )


class TemplateListSchema(ResponseSchema):
    templates = fields.List(fields.String())


class GpuSchema(ResponseSchema):
    id = fields.String(metadata={"description": "the id jobs see (gpu_ids): NVML's index, or a UUID"})
    uuid = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    utilization = fields.Float(allow_none=True, metadata={"description": "busy time, 0..1"})
    memory_used_bytes = fields.Integer(allow_none=True)
    memory_total_bytes = fields.Integer(allow_none=True)
    temperature_celsius = fields.Float(allow_none=True)
    power_watts = fields.Float(allow_none=True)
    lost = fields.Boolean()
    error = fields.String(allow_none=True)
    job_ids = fields.List(fields.String(), metadata={"description": "unfinished jobs handed this GPU"})


class GpuListSchema(ResponseSchema):
    available = fields.Boolean(metadata={"description": "NVML could be read"})
    detail = fields.String(allow_none=True)
    driver = fields.String(allow_none=True)
    gpus = fields.List(fields.Nested(GpuSchema))


class HealthSchema(ResponseSchema):
    status = fields.String()
    service = fields.String()
    adapter_initialized = fields.Boolean()
    checks = fields.Dict(keys=fields.String(), values=fields.Dict())
    degraded = fields.List(
        fields.String(),
        metadata={"description": "failing checks; shared ones (executor, uploads_registry) give no 503"},
    )


class FieldErrorSchema(ResponseSchema):
    field = fields.String()
    reason = fields.String()


class ErrorSchema(ResponseSchema):
    status = fields.Integer()
    error = fields.String()
    message = fields.String()
    errors = fields.List(fields.Nested(FieldErrorSchema))
    path = fields.String()


def flatten_errors(messages, prefix=""):
    """Turn marshmallow's nested error dict into [{field, reason}, ...]."""
    out = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = (prefix or "body") if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            out.extend(flatten_errors(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend({"field": prefix or "body", "reason": m} for m in messages)
    elif isinstance(messages, list):
        for item in messages:
            out.extend(flatten_errors(item, prefix))
    else:
        out.append({"field": prefix or "body", "reason": str(messages)})
    return out
