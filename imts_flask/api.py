"""The blueprint: thin views over TrainingService, under /api/v1/training."""

from flask import Blueprint, current_app, request
from marshmallow import ValidationError

from .errors import ApiError, ValidationFailed
from .schemas import (
    ExportRequestSchema,
    ExportResponseSchema,
    HealthSchema,
    JobCreatedSchema,
    JobListSchema,
    JobStatusSchema,
    ListQuerySchema,
    MessageSchema,
    TrainingJobRequestSchema,
    flatten_errors,
)

bp = Blueprint("training", __name__, url_prefix="/api/v1/training")

CREATED_MESSAGE = "训练任务已创建，正在启动..."  # the guide's wording


def _service():
    return current_app.extensions["imts"]


def _load(schema, data):
    try:
        return schema.load(data)
    except ValidationError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationFailed(
            "; ".join(f"{e['field']}: {e['reason']}" for e in errors), errors=errors
        ) from None


def _json_body():
    data = request.get_json(force=True, silent=True)
    if data is None:
        if not request.get_data():
            raise ValidationFailed("the request body is empty; send a JSON object", field="body")
        raise ValidationFailed("the request body is not valid JSON", field="body")
    return data


@bp.post("/jobs")
def create_job():
    body = _json_body()
    job_request = _load(TrainingJobRequestSchema(), body)
    state = _service().create_job(job_request, body)
    payload = {**state, "message": CREATED_MESSAGE}
    return JobCreatedSchema().dump(payload), 201, {"Location": f"{bp.url_prefix}/jobs/{state['job_id']}"}


@bp.get("/jobs")
def list_jobs():
    query = _load(ListQuerySchema(), request.args.to_dict())
    total, jobs = _service().list_jobs(**query)
    return JobListSchema().dump(
        {"total": total, "jobs": jobs, "limit": query["limit"], "offset": query["offset"]}
    )


@bp.get("/jobs/<job_id>")
def get_job(job_id):
    return JobStatusSchema().dump(_service().job(job_id))


@bp.post("/jobs/<job_id>/stop")
def stop_job(job_id):
    view, done = _service().stop_job(job_id)
    if done:
        message = (
            f"任务 {job_id} 已停止"
            if view["status"] == "stopped"
            else f"任务 {job_id} 已结束 ({view['status']})"
        )
        return MessageSchema().dump({"message": message, "job_id": job_id, "status": view["status"]})
    message = f"任务 {job_id} 正在停止; poll GET {bp.url_prefix}/jobs/{job_id}"
    return MessageSchema().dump({"message": message, "job_id": job_id, "status": view["status"]}), 202


@bp.post("/jobs/<job_id>/export")
def export_model(job_id):
    body = _load(ExportRequestSchema(), _json_body())
    if body.get("job_id") not in (None, job_id):
        raise ValidationFailed(
            f"job_id in the body ({body['job_id']}) differs from the path ({job_id})", field="job_id"
        )
    export, done = _service().export_model(job_id, body["export_dir"], body["merge_lora"])
    payload = {
        "job_id": job_id,
        "model_path": export["export_dir"],
        "export_status": export["status"],
        "merge_lora": export["merge_lora"],
    }
    if not done:
        message = f"模型导出中; poll GET {bp.url_prefix}/jobs/{job_id} until export.status is completed"
        return ExportResponseSchema().dump({**payload, "message": message}), 202
    if export["status"] == "failed":
        raise ApiError(
            f"export failed: {export.get('error')}", code="export_failed", extra={"export": export}
        )
    return ExportResponseSchema().dump({**payload, "message": "模型导出成功"})


@bp.get("/health")
def health():
    healthy, checks = _service().health()
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "training-api",
        "adapter_initialized": checks["llamafactory_cli"]["ok"],
        "checks": checks,
    }
    return HealthSchema().dump(body), 200 if healthy else 503
