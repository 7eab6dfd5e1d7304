"""OpenAI's fine-tuning API (/v1/files, /v1/fine_tuning/jobs, DELETE /v1/models/{name}) over the same
store as /api/v1/training: finetuning/ maps one to the other; errors are OpenAI's shape (errors.py)."""

from flask import Blueprint, request, send_file

from ..errors import ValidationFailed
from ..serving.names import FT_MODEL, JOB_MODEL
from .jobs_schemas import TrainingJobRequestSchema
from .requests import idempotency_key, json_body, load, schema

bp = Blueprint("openai_finetuning", __name__, url_prefix="/v1")
MAX_LIMIT = 100


def _service():
    from . import get_service

    return get_service()


def _limit(default):
    text = request.args.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be a whole number from 1 to {MAX_LIMIT}", field="limit")
    return int(text)


# -- files ---------------------------------------------------------------------------------------


@bp.post("/files")
def create_file():
    service = _service()
    if request.mimetype != "multipart/form-data":
        raise ValidationFailed("send multipart/form-data with a file and its purpose", field="file")
    with service.datasets.receiving() as (staging, most):
        request.upload_dir, request.max_content_length = staging, most
        form, files = request.form.to_dict(), request.files
        upload = files.get("file")
        if upload is None or not upload.filename:
            raise ValidationFailed("a file part named 'file' (with a file name) is required", field="file")
        upload.stream.close()
        return service.finetuning.create_file(upload.stream.name, upload.filename, form.get("purpose")), 200


@bp.get("/files")
def list_files():
    return _service().finetuning.files()


@bp.get("/files/<file_id>")
def get_file(file_id):
    return _service().finetuning.file(file_id)


@bp.get("/files/<file_id>/content")
def file_content(file_id):
    path, name = _service().finetuning.file_content(file_id)
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name)


@bp.delete("/files/<file_id>")
def delete_file(file_id):
    return _service().finetuning.delete_file(file_id)


# -- fine-tuning jobs ------------------------------------------------------------------------------


@bp.post("/fine_tuning/jobs")
def create_job():
    from ..finetuning.mapping import job_request
    from ..finetuning.service import openai_params

    body = json_body()
    ours, kept = job_request(body)
    try:
        loaded = load(schema(TrainingJobRequestSchema), ours)
    except ValidationFailed as exc:
        raise openai_params(exc) from None
    return _service().finetuning.create_job(loaded, ours, kept, idempotency_key()), 200


@bp.get("/fine_tuning/jobs")
def list_jobs():
    metadata = {}
    for key, value in request.args.items():
        if key.startswith("metadata[") and key.endswith("]"):
            metadata[key[len("metadata[") : -1]] = value
        elif key not in ("after", "limit"):
            raise ValidationFailed(f"{key} is not a parameter of the list", field=key)
    return _service().finetuning.list_jobs(request.args.get("after"), _limit(20), metadata)


@bp.get("/fine_tuning/jobs/<job_id>")
def get_job(job_id):
    return _service().finetuning.job(job_id)


@bp.post("/fine_tuning/jobs/<job_id>/cancel")
def cancel_job(job_id):
    return _service().finetuning.cancel(job_id)


@bp.post("/fine_tuning/jobs/<job_id>/pause")
def pause_job(job_id):
    return _service().finetuning.pause(job_id)


@bp.post("/fine_tuning/jobs/<job_id>/resume")
def resume_job(job_id):
    return _service().finetuning.resume(job_id)


@bp.get("/fine_tuning/jobs/<job_id>/events")
def job_events(job_id):
    return _service().finetuning.events(job_id, request.args.get("after"), _limit(20))


@bp.get("/fine_tuning/jobs/<job_id>/checkpoints")
def job_checkpoints(job_id):
    return _service().finetuning.checkpoints(job_id, request.args.get("after"), _limit(10))


@bp.delete("/models/<path:model>")
def delete_model(model):
    match = FT_MODEL.fullmatch(model) or JOB_MODEL.fullmatch(model)
    if not match or match.group(2):  # a checkpoint is deleted with its job, not alone
        raise ValidationFailed(
            "only a fine-tuned model (ft:...:train_x, or its job id) is deleted", field="model"
        )
    return _service().finetuning.delete_model(model, match.group(1))
