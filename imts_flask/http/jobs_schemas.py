"""The wire formats of what is sent to the jobs endpoints: the guide's TrainingJobRequest and its
additions, the export and resume bodies, the queries of a listing, a log and a series. What they
answer is jobs_responses.py."""

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from ..llamafactory.allowlist import FINETUNING_TYPES, PPO_REASON, STAGES
from ..runs.queue import PRIORITIES
from ..state import JobStatus
from .wire import (
    JOB_ID,
    MAX_BYTE_OFFSET,
    MAX_STEP,
    REQUIRED,
    WEIGHTS,
    DatasetField,
    JsonBoolean,
    NestedRequestSchema,
    PageQuerySchema,
    QueryBoolean,
    RequestSchema,
    Whole,
    given,
)


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
        error_messages=REQUIRED,
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
        error_messages=REQUIRED,
        metadata={"example": "tiny-llama"},
    )
    dataset = DatasetField(
        required=True,
        error_messages=REQUIRED,
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
        error_messages=REQUIRED,
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


class RequestQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    defaults = QueryBoolean(load_default=False)
