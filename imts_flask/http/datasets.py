"""The datasets' routes: upload (every row checked first, the file streamed to disk), list, show
with a preview, delete."""

from flask import Blueprint, request

from ..errors import ValidationFailed
from . import get_service
from .datasets_schemas import (
    DatasetListSchema,
    DatasetSchema,
    DatasetUploadSchema,
    OverwriteQuerySchema,
    PreviewQuerySchema,
)
from .openapi import doc
from .requests import PREFIX, created, load, schema

bp = Blueprint("datasets", __name__, url_prefix=PREFIX)


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
    overwrite = load(schema(OverwriteQuerySchema), request.args.to_dict())["overwrite"]
    if request.mimetype != "multipart/form-data":
        raise ValidationFailed(
            "send multipart/form-data with a file part named 'file' and a name", field="body"
        )
    with service.datasets.receiving() as (staging, most):
        request.upload_dir, request.max_content_length = staging, most
        form, files = request.form.to_dict(), request.files  # a full disk here is the service's 507
        fields = load(schema(DatasetUploadSchema), form)
        upload = files.get("file")
        if upload is None or not upload.filename:
            raise ValidationFailed("a file part named 'file' (with a file name) is required", field="file")
        upload.stream.close()  # written: the checker reads it from disk
        described = service.datasets.add(
            fields["name"], upload.stream.name, upload.filename, fields.get("format"), overwrite
        )
    return created(schema(DatasetSchema).dump(described), f"{PREFIX}/datasets/{fields['name']}")


@bp.get("/datasets")
@doc("Every dataset a job may name: the operator's and uploads", responses={200: DatasetListSchema})
def list_datasets():
    return schema(DatasetListSchema).dump({"datasets": get_service().datasets.list()})


@bp.get("/datasets/<name>")
@doc(
    "One dataset, with ?preview=N of its first rows (N <= 20)",
    query=PreviewQuerySchema,
    responses={200: DatasetSchema},
    errors=(400, 404),
)
def get_dataset(name):
    preview = load(schema(PreviewQuerySchema), request.args.to_dict())["preview"]
    return schema(DatasetSchema).dump(get_service().datasets.get(name, preview))


@bp.delete("/datasets/<name>")
@doc("Delete an uploaded dataset", responses={204: None}, errors=(400, 403, 404, 409, 503))
def delete_dataset(name):
    get_service().datasets.delete(name)
    return "", 204
