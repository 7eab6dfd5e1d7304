"""The blueprint: thin views over TrainingService, under /api/v1/training."""

import functools
import json
import re
import tempfile

from flask import Blueprint, Request, current_app, request, send_file
from marshmallow import ValidationError

from ..errors import ApiError, UnsupportedMediaType, ValidationFailed
from ..llamafactory.allowlist import allowed_keys
from . import get_service
from .openapi import doc
from .schemas import (
    CheckpointListSchema,
    CustomConfigSchema,
    DatasetListSchema,
    DatasetSchema,
    DatasetUploadSchema,
    EvaluationListSchema,
    EvaluationRequestSchema,
    EvaluationSchema,
    EventListSchema,
    ExportRequestSchema,
    ExportResponseSchema,
    GpuListSchema,
    HealthSchema,
    JobCreatedSchema,
    JobListSchema,
    JobResumedSchema,
    JobStatusSchema,
    ListQuerySchema,
    LogQuerySchema,
    LogSliceSchema,
    MessageSchema,
    MetricsQuerySchema,
    MetricsSeriesSchema,
    ModelListSchema,
    OverwriteQuerySchema,
    PageQuerySchema,
    PreviewQuerySchema,
    RawRequestSchema,
    RequestQuerySchema,
    ResumeRequestSchema,
    SampleListSchema,
    SamplesQuerySchema,
    TemplateListSchema,
    TrainingJobRequestSchema,
    flatten_errors,
)

bp = Blueprint("training", __name__, url_prefix="/api/v1/training")


class UploadRequest(Request):
    """A request whose file parts stream into `upload_dir` when a view sets it (uploads stay off the
    heap and off /tmp: they land on the filesystem where the dataset will live)."""

    upload_dir = None

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        if self.upload_dir is None:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        return tempfile.NamedTemporaryFile(dir=self.upload_dir, prefix="part-", delete=False)


CREATED_MESSAGE = "训练任务已创建，正在启动..."  # the guide's wording
MAX_IDEMPOTENCY_KEY = 255
_IDEMPOTENCY_KEY = re.compile(f"[ -~]{{1,{MAX_IDEMPOTENCY_KEY}}}")  # as the OpenAPI document says
MAX_DEPTH = 8  # a request body is an object of fields whose values nest at most a few levels


@functools.cache
def _schema(cls):
    """One instance per schema: building one deep-copies its fields, and they hold no request state."""
    return cls()


def _load(schema, data):
    try:
        return schema.load(data)
    except ValidationError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationFailed(
            "; ".join(f"{e['field']}: {e['reason']}" for e in errors), errors=errors
        ) from None


def _json_body():
    """The request's JSON body: application/json only, at most MAX_DEPTH deep, text without surrogates."""
    raw = _body()
    if not raw:
        raise ValidationFailed("the request body is empty; send a JSON object", field="body")
    if not request.is_json:
        raise UnsupportedMediaType(
            f"send the body as Content-Type: application/json (not {request.mimetype or 'none'})",
            field="Content-Type",
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        data = _TOO_DEEP
    except ValueError:
        raise ValidationFailed("the request body is not valid JSON", field="body") from None
    if data is _TOO_DEEP or _depth(data) > MAX_DEPTH:
        raise ValidationFailed(f"the request body is nested more than {MAX_DEPTH} levels deep", field="body")
    return data


_TOO_DEEP = object()
# A lone UTF-16 surrogate ("\ud800" in JSON) is valid JSON but no valid text: no file could hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _depth(value):
    """Nesting depth of a parsed JSON value, without recursion; refuse text no file can hold."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((k, level) for k in item)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise ValidationFailed("the request body holds a lone UTF-16 surrogate: not text", field="body")
    return deepest


def _optional_json_body():
    """The JSON body of a request whose body may be left out (no body, or an empty one, is {})."""
    return _json_body() if _body() else {}


def _body():
    """The request body; past max_content_length a 413, chunked bodies (no Content-Length) too."""
    raw = request.get_data()  # a declared Content-Length over the limit is a 413 here
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        request.stream.read(1)  # werkzeug's capped stream gave exactly `limit` bytes: more is a 413
    return raw


def _idempotency_key():
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


@bp.after_request
def _conditional(response):
    """Give JSON GET (and HEAD) answers an ETag; If-None-Match with the same tag gets 304 and no body."""
    if request.method in ("GET", "HEAD") and response.status_code == 200 and response.is_json:
        response.add_etag()
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)
    return response


@bp.post("/jobs")
@doc(
    "Create a training job",
    body=TrainingJobRequestSchema,
    responses={201: JobCreatedSchema, 200: JobCreatedSchema},
    headers=["Idempotency-Key"],
    errors=(400, 409, 413, 503, 507),
)
def create_job():
    body = _json_body()
    key = _idempotency_key()
    job_request = _load(_schema(TrainingJobRequestSchema), body)
    state, replayed = get_service().create_job(job_request, body, idempotency_key=key)
    return _created(JobCreatedSchema, state, replayed)


def _created(schema, state, replayed):
    """201 with the new job and its Location, or 200 with Idempotent-Replayed for a retry."""
    payload = _schema(schema).dump({**state, "message": CREATED_MESSAGE})
    headers = {"Location": f"{bp.url_prefix}/jobs/{state['job_id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return payload, 200 if replayed else 201, headers


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
    body = _load(_schema(ResumeRequestSchema), _optional_json_body())
    key = _idempotency_key()
    state, replayed = get_service().resume_job(job_id, body.get("checkpoint"), idempotency_key=key)
    return _created(JobResumedSchema, state, replayed)


@bp.delete("/jobs/<job_id>")
@doc(
    "Delete a finished job and its files (its exports stay)",
    responses={204: None},
    errors=(400, 404, 409, 503),
)
def delete_job(job_id):
    get_service().delete_job(job_id)
    return "", 204


@bp.get("/jobs")
@doc("List jobs, newest first", query=ListQuerySchema, responses={200: JobListSchema}, errors=(400,))
def list_jobs():
    query = _load(_schema(ListQuerySchema), request.args.to_dict())
    total, jobs = get_service().list_jobs(**query)
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
    defaults = _load(_schema(RequestQuerySchema), request.args.to_dict())["defaults"]
    received = get_service().job_request(job_id)
    if not defaults:
        return received
    try:
        loaded = _schema(TrainingJobRequestSchema).load(received)
    except ValidationError:
        return received  # a request of an older format: as it was received
    return {**loaded, "dataset": ",".join(loaded["dataset"])}


@bp.get("/custom-config")
@doc(
    "The custom_config keys a request may set, each with its type and bounds or choices",
    responses={200: CustomConfigSchema},
)
def custom_config_keys():
    return _schema(CustomConfigSchema).dump({"keys": allowed_keys()})


@bp.get("/jobs/<job_id>")
@doc("Status, progress and loss of a job", responses={200: JobStatusSchema}, errors=(400, 404))
def get_job(job_id):
    # The hottest read (every client polls it): the view is built field for field as JobStatusSchema
    # documents it, so it goes out as it is; tests/test_fuzz.py checks it against the document.
    return get_service().job(job_id)


@bp.post("/jobs/<job_id>/stop")
@doc(
    "Stop a job (no body needed)", responses={200: MessageSchema, 202: MessageSchema}, errors=(400, 404, 409)
)
def stop_job(job_id):
    view, done = get_service().stop_job(job_id)
    if done:
        message = (
            f"任务 {job_id} 已停止"
            if view["status"] == "stopped"
            else f"任务 {job_id} 已结束 ({view['status']})"
        )
        return _schema(MessageSchema).dump({"message": message, "job_id": job_id, "status": view["status"]})
    message = f"任务 {job_id} 正在停止; poll GET {bp.url_prefix}/jobs/{job_id}"
    return _schema(MessageSchema).dump({"message": message, "job_id": job_id, "status": view["status"]}), 202


@bp.post("/jobs/<job_id>/export")
@doc(
    "Export the trained model",
    body=ExportRequestSchema,
    responses={200: ExportResponseSchema, 202: ExportResponseSchema},
    errors=(400, 404, 409, 500),
)
def export_model(job_id):
    body = _load(_schema(ExportRequestSchema), _json_body())
    if body.get("job_id") not in (None, job_id):
        raise ValidationFailed(
            f"job_id in the body ({body['job_id']}) differs from the path ({job_id})", field="job_id"
        )
    export, done = get_service().export_model(
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
        message = f"模型导出中; poll GET {bp.url_prefix}/jobs/{job_id} until export.status is completed"
        return _schema(ExportResponseSchema).dump({**payload, "message": message}), 202
    if export["status"] == "failed":
        raise ApiError(
            f"export failed: {export.get('error')}", code="export_failed", extra={"export": export}
        )
    return _schema(ExportResponseSchema).dump({**payload, "message": "模型导出成功"})


@bp.post("/datasets")
@doc(
    "Upload a dataset (multipart/form-data: file, name, format); every row is checked first",
    body=DatasetUploadSchema,
    body_content="multipart/form-data",
    query=OverwriteQuerySchema,
    responses={201: DatasetSchema},
    errors=(400, 409, 413, 503, 507),
)
def upload_dataset():
    service = get_service()
    overwrite = _load(_schema(OverwriteQuerySchema), request.args.to_dict())["overwrite"]
    if request.mimetype != "multipart/form-data":
        raise ValidationFailed(
            "send multipart/form-data with a file part named 'file' and a name", field="body"
        )
    with service.receiving_upload() as (staging, most):
        request.upload_dir, request.max_content_length = staging, most
        form, files = request.form.to_dict(), request.files  # a full disk here is the service's 507
        fields = _load(_schema(DatasetUploadSchema), form)
        upload = files.get("file")
        if upload is None or not upload.filename:
            raise ValidationFailed("a file part named 'file' (with a file name) is required", field="file")
        upload.stream.close()  # written: the checker reads it from disk
        described = service.add_dataset(
            fields["name"], upload.stream.name, upload.filename, fields.get("format"), overwrite
        )
    return (
        _schema(DatasetSchema).dump(described),
        201,
        {"Location": f"{bp.url_prefix}/datasets/{fields['name']}"},
    )


@bp.get("/datasets")
@doc("Every dataset a job may name: the operator's and uploads", responses={200: DatasetListSchema})
def list_datasets():
    return _schema(DatasetListSchema).dump({"datasets": get_service().datasets()})


@bp.get("/datasets/<name>")
@doc(
    "One dataset, with ?preview=N of its first rows (N <= 20)",
    query=PreviewQuerySchema,
    responses={200: DatasetSchema},
    errors=(400, 404),
)
def get_dataset(name):
    preview = _load(_schema(PreviewQuerySchema), request.args.to_dict())["preview"]
    return _schema(DatasetSchema).dump(get_service().dataset(name, preview))


@bp.delete("/datasets/<name>")
@doc("Delete an uploaded dataset", responses={204: None}, errors=(400, 403, 404, 409, 503))
def delete_dataset(name):
    get_service().delete_dataset(name)
    return "", 204


@bp.get("/models")
@doc(
    "Every model a job may name, with its template, architecture, parameters and size; registered names",
    responses={200: ModelListSchema},
)
def list_models():
    service = get_service()
    registered = [
        {"name": m["name"], "latest": m["latest"], "aliases": m["aliases"],
         "versions": [v["version"] for v in m["versions"]]}
        for m in service.registry.versions.models()
    ]  # fmt: skip
    return _schema(ModelListSchema).dump({"models": service.models(), "registered": registered})


@bp.get("/templates")
@doc("The chat templates a job may name (custom_config.template)", responses={200: TemplateListSchema})
def list_templates():
    return _schema(TemplateListSchema).dump({"templates": get_service().templates()})


@bp.get("/gpus")
@doc(
    "The GPUs this service hands out: NVML figures and the jobs that hold each",
    responses={200: GpuListSchema},
)
def list_gpus():
    return _schema(GpuListSchema).dump(get_service().gpu_figures())


@bp.get("/jobs/<job_id>/logs")
@doc(
    "Read training.log: bytes from an offset (tail by polling next_offset), or the last N lines",
    query=LogQuerySchema,
    responses={200: LogSliceSchema},
    errors=(400, 404),
)
def job_logs(job_id):
    query = _load(_schema(LogQuerySchema), request.args.to_dict())
    return _schema(LogSliceSchema).dump(get_service().job_log(job_id, **query))


@bp.get("/jobs/<job_id>/metrics")
@doc(
    "The loss, learning-rate and epoch series",
    query=MetricsQuerySchema,
    responses={200: MetricsSeriesSchema},
    errors=(400, 404),
)
def job_metrics(job_id):
    query = _load(_schema(MetricsQuerySchema), request.args.to_dict())
    return _schema(MetricsSeriesSchema).dump(get_service().job_metrics(job_id, **query))


@bp.get("/jobs/<job_id>/events")
@doc("The job's state transitions with their times", responses={200: EventListSchema}, errors=(400, 404))
def job_events(job_id):
    return _schema(EventListSchema).dump(get_service().job_events(job_id))


@bp.get("/jobs/<job_id>/checkpoints")
@doc("Checkpoints saved so far", responses={200: CheckpointListSchema}, errors=(400, 404))
def job_checkpoints(job_id):
    return _schema(CheckpointListSchema).dump(get_service().job_checkpoints(job_id))


@bp.post("/jobs/<job_id>/evaluations")
@doc(
    "Evaluate a job's weights on a dataset (with baseline: its base model too), queued like a job",
    body=EvaluationRequestSchema,
    responses={202: EvaluationSchema, 200: EvaluationSchema},
    headers=["Idempotency-Key"],
    errors=(400, 404, 409, 503, 507),
)
def create_evaluation(job_id):
    body = _load(_schema(EvaluationRequestSchema), _json_body())
    key = _idempotency_key()
    view, replayed = get_service().evaluations.create(job_id, body, idempotency_key=key)
    headers = {"Location": f"{bp.url_prefix}/jobs/{job_id}/evaluations/{view['evaluation_id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _schema(EvaluationSchema).dump(view), 200 if replayed else 202, headers


@bp.get("/jobs/<job_id>/evaluations")
@doc(
    "A job's evaluations, newest first",
    query=PageQuerySchema,
    responses={200: EvaluationListSchema},
    errors=(400, 404),
)
def list_evaluations(job_id):
    query = _load(_schema(PageQuerySchema), request.args.to_dict())
    total, evaluations = get_service().evaluations.list(job_id, query["limit"], query["offset"])
    page = {"job_id": job_id, "total": total, "limit": query["limit"], "offset": query["offset"]}
    return _schema(EvaluationListSchema).dump({**page, "evaluations": evaluations})


@bp.get("/jobs/<job_id>/evaluations/<evaluation_id>")
@doc(
    "An evaluation: its status and the figures of the tuned and the base model side by side",
    responses={200: EvaluationSchema},
    errors=(400, 404),
)
def get_evaluation(job_id, evaluation_id):
    return _schema(EvaluationSchema).dump(get_service().evaluations.get(job_id, evaluation_id))


@bp.get("/jobs/<job_id>/evaluations/<evaluation_id>/samples")
@doc(
    "Page through an evaluation's rows: prompt, label, the tuned and the base model's answers",
    query=SamplesQuerySchema,
    responses={200: SampleListSchema},
    errors=(400, 404),
)
def evaluation_samples(job_id, evaluation_id):
    query = _load(_schema(SamplesQuerySchema), request.args.to_dict())
    return _schema(SampleListSchema).dump(get_service().evaluations.samples(job_id, evaluation_id, **query))


@bp.post("/jobs/<job_id>/evaluations/<evaluation_id>/stop")
@doc(
    "Stop an evaluation (no body needed)",
    responses={200: EvaluationSchema, 202: EvaluationSchema},
    errors=(400, 404, 409),
)
def stop_evaluation(job_id, evaluation_id):
    view, done = get_service().evaluations.stop(job_id, evaluation_id)
    return _schema(EvaluationSchema).dump(view), 200 if done else 202


@bp.get("/jobs/<job_id>/artifacts/training_loss.png")
@doc(
    "The loss plot LLaMA Factory draws at the end of training (409 before then)",
    responses={200: "image/png"},
    errors=(400, 404, 409),
)
def loss_plot(job_id):
    return send_file(
        get_service().artifact_path(job_id, "training_loss.png"),
        mimetype="image/png",
        etag=True,
        conditional=True,
    )


@bp.get("/health")
@doc(
    "Health for load balancers: 503 when the trainer, the jobs directory or the disk is not usable",
    responses={200: HealthSchema, 503: HealthSchema},
)
def health():
    healthy, checks = get_service().health()
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "training-api",
        "adapter_initialized": checks["llamafactory_cli"]["ok"],
        "checks": checks,
        "degraded": [name for name, check in checks.items() if not check["ok"]],
    }
    return _schema(HealthSchema).dump(body), 200 if healthy else 503


@bp.get("/openapi.json")
@doc("This OpenAPI 3 document", responses={200: "application/json"})
def openapi():
    from .openapi import build_spec

    return build_spec(current_app)
