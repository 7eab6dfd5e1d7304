"""The routes of a shared service: a job's place in the queue (PATCH /jobs/{id}) and what each team
used (GET /usage)."""

from flask import Blueprint, request

from . import get_service
from .jobs_responses import JobStatusSchema
from .openapi import doc
from .requests import PREFIX, json_body, load, schema
from .sharing_schemas import JobChangeSchema, UsageQuerySchema, UsageSchema

bp = Blueprint("sharing", __name__, url_prefix=PREFIX)


@bp.patch("/jobs/<job_id>")
@doc(
    "Change a pending or running job's priority; admins move a waiting job to the head of the queue",
    body=JobChangeSchema,
    responses={200: JobStatusSchema},
    errors=(400, 403, 404, 409),
)
def change_job(job_id):
    change = load(schema(JobChangeSchema), json_body())
    service = get_service()
    service.sharing.change_job(job_id, change.get("priority"), change.get("queue_head"))
    return service.jobs.get(job_id)


@bp.get("/usage")
@doc(
    "GPU-hours, CPU-hours and runs per team and per day (members: their own team's)",
    query=UsageQuerySchema,
    responses={200: UsageSchema},
    errors=(400, 403),
)
def usage():
    query = load(schema(UsageQuerySchema), request.args.to_dict())
    dates = {name: query[name].isoformat() for name in ("start", "end") if query.get(name)}
    report = get_service().sharing.usage(query.get("tenant"), **dates)
    return schema(UsageSchema).dump({**report, "start": report["from"], "end": report["to"]})
