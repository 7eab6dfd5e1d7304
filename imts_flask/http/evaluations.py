"""The evaluations' routes: judge a job's weights (queued like a job), read the figures and the rows."""

from flask import Blueprint, request

from . import get_service
from .evaluations_schemas import (
    EvaluationListSchema,
    EvaluationRequestSchema,
    EvaluationSchema,
    SampleListSchema,
    SamplesQuerySchema,
)
from .openapi import doc
from .requests import PREFIX, created, idempotency_key, json_body, load, schema
from .wire import PageQuerySchema

bp = Blueprint("evaluations", __name__, url_prefix=PREFIX)


@bp.post("/jobs/<job_id>/evaluations")
@doc(
    "Evaluate a job's weights on a dataset (with baseline: its base model too), queued like a job",
    body=EvaluationRequestSchema,
    responses={202: EvaluationSchema, 200: EvaluationSchema},
    headers=["Idempotency-Key"],
    errors=(400, 404, 409, 503, 507),
)
def create_evaluation(job_id):
    body = load(schema(EvaluationRequestSchema), json_body())
    key = idempotency_key()
    view, replayed = get_service().evaluations.create(job_id, body, idempotency_key=key)
    location = f"{PREFIX}/jobs/{job_id}/evaluations/{view['evaluation_id']}"
    return created(schema(EvaluationSchema).dump(view), location, replayed, status=202)


@bp.get("/jobs/<job_id>/evaluations")
@doc(
    "A job's evaluations, newest first",
    query=PageQuerySchema,
    responses={200: EvaluationListSchema},
    errors=(400, 404),
)
def list_evaluations(job_id):
    query = load(schema(PageQuerySchema), request.args.to_dict())
    total, evaluations = get_service().evaluations.list(job_id, query["limit"], query["offset"])
    page = {"job_id": job_id, "total": total, "limit": query["limit"], "offset": query["offset"]}
    return schema(EvaluationListSchema).dump({**page, "evaluations": evaluations})


@bp.get("/jobs/<job_id>/evaluations/<evaluation_id>")
@doc(
    "An evaluation: its status and the figures of the tuned and the base model side by side",
    responses={200: EvaluationSchema},
    errors=(400, 404),
)
def get_evaluation(job_id, evaluation_id):
    return schema(EvaluationSchema).dump(get_service().evaluations.get(job_id, evaluation_id))


@bp.get("/jobs/<job_id>/evaluations/<evaluation_id>/samples")
@doc(
    "Page through an evaluation's rows: prompt, label, the tuned and the base model's answers",
    query=SamplesQuerySchema,
    responses={200: SampleListSchema},
    errors=(400, 404),
)
def evaluation_samples(job_id, evaluation_id):
    query = load(schema(SamplesQuerySchema), request.args.to_dict())
    return schema(SampleListSchema).dump(get_service().evaluations.samples(job_id, evaluation_id, **query))


@bp.post("/jobs/<job_id>/evaluations/<evaluation_id>/stop")
@doc(
    "Stop an evaluation (no body needed)",
    responses={200: EvaluationSchema, 202: EvaluationSchema},
    errors=(400, 404, 409),
)
def stop_evaluation(job_id, evaluation_id):
    view, done = get_service().evaluations.stop(job_id, evaluation_id)
    return schema(EvaluationSchema).dump(view), 200 if done else 202
