"""The routes of a shared service, on the API's one blueprint: a job's place in the queue (PATCH
/jobs/{id}) and what each team used (GET /usage)."""

from flask import request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..queue import PRIORITIES
from . import get_service
from .api import _json_body, _load, _schema, bp
from .openapi import doc
from .schemas import JobStatusSchema, JsonBoolean, RequestSchema, ResponseSchema, given


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


class UsageSchema(ResponseSchema):
    start = fields.String(data_key="from")
    end = fields.String(data_key="to")
    tenants = fields.List(fields.Nested(UsageRowSchema))
    days = fields.List(fields.Nested(UsageRowSchema))


@bp.patch("/jobs/<job_id>")
@doc(
    "Change a pending or running job's priority; admins move a waiting job to the head of the queue",
    body=JobChangeSchema,
    responses={200: JobStatusSchema},
    errors=(400, 403, 404, 409),
)
def change_job(job_id):
    change = _load(_schema(JobChangeSchema), _json_body())
    service = get_service()
    service.sharing.change_job(job_id, change.get("priority"), change.get("queue_head"))
    return service.job(job_id)


@bp.get("/usage")
@doc(
    "GPU-hours, CPU-hours and runs per team and per day (members: their own team's)",
    query=UsageQuerySchema,
    responses={200: UsageSchema},
    errors=(400, 403),
)
def usage():
    query = _load(_schema(UsageQuerySchema), request.args.to_dict())
    dates = {name: query[name].isoformat() for name in ("start", "end") if query.get(name)}
    report = get_service().sharing.usage(query.get("tenant"), **dates)
    return _schema(UsageSchema).dump({**report, "start": report["from"], "end": report["to"]})
