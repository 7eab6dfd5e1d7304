"""The jobs' routes: create (the guide's TrainingJobRequest), list, status, stop, resume, export,
delete, and what a job wrote: its log, metrics series, events, checkpoints and loss plot."""

from flask import Blueprint, request, send_file
from marshmallow import ValidationError

from ..errors import ServiceError, ValidationFailed
from ..llamafactory.allowlist import allowed_keys
from . import get_service
from .jobs_responses import (
    CheckpointListSchema,
    CustomConfigSchema,
    EventListSchema,
    ExportResponseSchema,
    JobCreatedSchema,
    JobListSchema,
    JobResumedSchema,
    JobStatusSchema,
    LogSliceSchema,
    MessageSchema,
    MetricsSeriesSchema,
    RawRequestSchema,
)
from .jobs_schemas import (
    ExportRequestSchema,
    ListQuerySchema,
    LogQuerySchema,
    MetricsQuerySchema,
    RequestQuerySchema,
    ResumeRequestSchema,
    TrainingJobRequestSchema,
)
from .openapi import doc
from .requests import PREFIX, created, idempotency_key, json_body, load, optional_json_body, schema

bp = Blueprint("jobs", __name__, url_prefix=PREFIX)


CREATED_MESSAGE = "训练任务已创建，正在启动..."  # the guide's wording


@bp.post("/jobs")
@doc(
    "Create a training job",
    body=TrainingJobRequestSchema,
    responses={201: JobCreatedSchema, 200: JobCreatedSchema},
    headers=["Idempotency-Key"],
    errors=(400, 409, 413, 503, 507),
)
def create_job():
    body = json_body()
    key = idempotency_key()
    job_request = load(schema(TrainingJobRequestSchema), body)
    state, replayed = get_service().jobs.create(job_request, body, idempotency_key=key)
    return _job_created(JobCreatedSchema, state, replayed)


def _job_created(cls, state, replayed):
    payload = schema(cls).dump({**state.to_json(), "message": CREATED_MESSAGE})
    return created(payload, f"{PREFIX}/jobs/{state.job_id}", replayed)


@bp.post("/jobs/<job_id>/resume")
@doc(
    "Resume a stopped or failed job from a checkpoint, as a new job (no body needed)",
    body=ResumeRequestSchema,
    body_required=False,
    responses={201: JobResumedSchema, 200: JobResumedSchema},
    headers=["Idempotency-Key"],
    errors=(400, 404, 409, 503, 507),
)
def resume_job(job_id):
    body = load(schema(ResumeRequestSchema), optional_json_body())
    key = idempotency_key()
    state, replayed = get_service().jobs.resume(job_id, body.get("checkpoint"), idempotency_key=key)
    return _job_created(JobResumedSchema, state, replayed)


@bp.delete("/jobs/<job_id>")
@doc(
    "Delete a finished job and its files (its exports stay)",
    responses={204: None},
    errors=(400, 404, 409, 503),
)
def delete_job(job_id):
    get_service().jobs.delete(job_id)
    return "", 204


@bp.get("/jobs")
@doc("List jobs, newest first", query=ListQuerySchema, responses={200: JobListSchema}, errors=(400,))
def list_jobs():
    query = load(schema(ListQuerySchema), request.args.to_dict())
    total, jobs = get_service().jobs.list(**query)
    # The views are built field for field as JobListSchema documents them: no second pass through it.
    return {"total": total, "limit": query["limit"], "offset": query["offset"], "jobs": jobs}


@bp.get("/jobs/<job_id>/request")
@doc(
    "The request a job was created with, as received; with ?defaults=true as the service read it "
    "(snake_case, every default filled in: what Compare sets side by side)",
    query=RequestQuerySchema,
    responses={200: RawRequestSchema},
    errors=(400, 404),
)
def job_request(job_id):
    defaults = load(schema(RequestQuerySchema), request.args.to_dict())["defaults"]
    received = get_service().jobs.request(job_id)
    if not defaults:
        return received
    try:
        loaded = schema(TrainingJobRequestSchema).load(received)
    except ValidationError:
        return received  # a request of an older format: as it was received
    return {**loaded, "dataset": ",".join(loaded["dataset"])}


@bp.get("/custom-config")
@doc(
    "The custom_config keys a request may set, each with its type and bounds or choices",
    responses={200: CustomConfigSchema},
)
def custom_config_keys():
    return schema(CustomConfigSchema).dump({"keys": allowed_keys()})


@bp.get("/jobs/<job_id>")
@doc("Status, progress and loss of a job", responses={200: JobStatusSchema}, errors=(400, 404))
def get_job(job_id):
    # The hottest read (every client polls it): the view is built field for field as JobStatusSchema
    # documents it, so it goes out as it is; tests/http/test_fuzz.py checks it against the document.
    return get_service().jobs.get(job_id)


@bp.post("/jobs/<job_id>/stop")
@doc(
    "Stop a job (no body needed)", responses={200: MessageSchema, 202: MessageSchema}, errors=(400, 404, 409)
)
def stop_job(job_id):
    view, done = get_service().jobs.stop(job_id)
    if done:
        message = (
            f"任务 {job_id} 已停止"
            if view["status"] == "stopped"
            else f"任务 {job_id} 已结束 ({view['status']})"
        )
        return schema(MessageSchema).dump({"message": message, "job_id": job_id, "status": view["status"]})
    message = f"任务 {job_id} 正在停止; poll GET {PREFIX}/jobs/{job_id}"
    return schema(MessageSchema).dump({"message": message, "job_id": job_id, "status": view["status"]}), 202


@bp.post("/jobs/<job_id>/export")
@doc(
    "Export the trained model",
    body=ExportRequestSchema,
    responses={200: ExportResponseSchema, 202: ExportResponseSchema},
    errors=(400, 404, 409, 500),
)
def export_model(job_id):
    body = load(schema(ExportRequestSchema), json_body())
    if body.get("job_id") not in (None, job_id):
        raise ValidationFailed(
            f"job_id in the body ({body['job_id']}) differs from the path ({job_id})", field="job_id"
        )
    export, done = get_service().jobs.export(
        job_id, body["export_dir"], body["merge_lora"], body.get("checkpoint")
    )
    payload = {
        "job_id": job_id,
        "model_path": export["export_dir"],
        "export_status": export["status"],
        "merge_lora": export["merge_lora"],
        "checkpoint": export.get("checkpoint") or "final",
    }
    if not done:
        message = f"模型导出中; poll GET {PREFIX}/jobs/{job_id} until export.status is completed"
        return schema(ExportResponseSchema).dump({**payload, "message": message}), 202
    if export["status"] == "failed":
        raise ServiceError(
            f"export failed: {export.get('error')}", code="export_failed", extra={"export": export}
        )
    return schema(ExportResponseSchema).dump({**payload, "message": "模型导出成功"})


@bp.get("/jobs/<job_id>/logs")
@doc(
    "Read training.log: bytes from an offset (tail by polling next_offset), or the last N lines",
    query=LogQuerySchema,
    responses={200: LogSliceSchema},
    errors=(400, 404),
)
def job_logs(job_id):
    query = load(schema(LogQuerySchema), request.args.to_dict())
    return schema(LogSliceSchema).dump(get_service().job_files.log(job_id, **query))


@bp.get("/jobs/<job_id>/metrics")
@doc(
    "The loss, learning-rate and epoch series",
    query=MetricsQuerySchema,
    responses={200: MetricsSeriesSchema},
    errors=(400, 404),
)
def job_metrics(job_id):
    query = load(schema(MetricsQuerySchema), request.args.to_dict())
    return schema(MetricsSeriesSchema).dump(get_service().job_files.metrics(job_id, **query))


@bp.get("/jobs/<job_id>/events")
@doc("The job's state transitions with their times", responses={200: EventListSchema}, errors=(400, 404))
def job_events(job_id):
    return schema(EventListSchema).dump(get_service().job_files.events(job_id))


@bp.get("/jobs/<job_id>/checkpoints")
@doc("Checkpoints saved so far", responses={200: CheckpointListSchema}, errors=(400, 404))
def job_checkpoints(job_id):
    return schema(CheckpointListSchema).dump(get_service().job_files.checkpoints(job_id))


@bp.get("/jobs/<job_id>/artifacts/training_loss.png")
@doc(
    "The loss plot LLaMA Factory draws at the end of training (409 before then)",
    responses={200: "image/png"},
    errors=(400, 404, 409),
)
def loss_plot(job_id):
    return send_file(
        get_service().job_files.artifact_path(job_id, "training_loss.png"),
        mimetype="image/png",
        etag=True,
        conditional=True,
    )
