"""The wire formats of a shared service: a job's place in the queue, what each team used."""

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..runs.queue import PRIORITIES
from .wire import JsonBoolean, RequestSchema, ResponseSchema, given


class JobChangeSchema(RequestSchema):
    """PATCH /jobs/{id}: a new priority, or (admins) a move to the head of the queue: one at least."""

    openapi_rules = {"anyOf": [given("priority"), given("queue_head")]}

    priority = fields.String(
        allow_none=True,
        validate=validate.OneOf(PRIORITIES, error="must be one of {choices}"),
        metadata={"example": "high"},
    )
    queue_head = JsonBoolean(
        allow_none=True,
        metadata={"description": "admins: true moves a waiting job to the head of the queue, false back"},
    )

    @validates_schema
    def _something(self, data, **kwargs):
        if data.get("priority") is None and data.get("queue_head") is None:
            raise ValidationError("give priority or queue_head", "priority")


class UsageQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    tenant = fields.String(validate=validate.Length(1, 63))
    # `from` is a Python keyword: the field is named by data_key.
    start = fields.Date(
        data_key="from", metadata={"description": "first day (UTC), default the 1st of this month"}
    )
    end = fields.Date(
        data_key="to",
        metadata={
            "description": "last day (UTC), default today; at most 366 days after from, never before it"
        },
    )


class UsageRowSchema(ResponseSchema):
    tenant = fields.String(allow_none=True, metadata={"description": "null: admins' runs"})
    day = fields.String(metadata={"description": "only in `days`"})
    gpu_hours = fields.Float()
    cpu_hours = fields.Float()
    runs = fields.Integer(metadata={"description": "jobs, evaluations and deployments that used them"})


class TokensRowSchema(ResponseSchema):
    tenant = fields.String(allow_none=True, metadata={"description": "null: admins' requests"})
    model = fields.String(
        metadata={"description": "the model's canonical name (train_x, name:3, a base model)"}
    )
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()
    requests = fields.Integer(metadata={"description": "completions answered through /v1"})


class UsageSchema(ResponseSchema):
    start = fields.String(data_key="from")
    end = fields.String(data_key="to")
    tenants = fields.List(fields.Nested(UsageRowSchema))
    days = fields.List(fields.Nested(UsageRowSchema))
    tokens = fields.List(
        fields.Nested(TokensRowSchema),
        metadata={"description": "tokens of the completions served through /v1, per team and model"},
    )
