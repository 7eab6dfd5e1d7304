"""The wire formats of datasets: an upload's form, a dataset's description, the listing."""

from marshmallow import RAISE, Schema, fields, validate

from ..datasets.rows import FORMATS as DATASET_FORMATS
from ..datasets.uploads import NAME as DATASET_NAME
from ..datasets.uploads import NAME_RULE as DATASET_NAME_RULE
from .wire import REQUIRED, QueryBoolean, RequestSchema, ResponseSchema, Whole


class DatasetUploadSchema(RequestSchema):
    """POST /datasets form fields (the file itself is the part named `file`)."""

    name = fields.String(
        required=True,
        error_messages=REQUIRED,
        validate=Whole(f"^{DATASET_NAME.pattern}$", error=f"must be {DATASET_NAME_RULE}"),
        metadata={"example": "my_sft_data"},
    )
    format = fields.String(
        allow_none=True,
        validate=validate.OneOf(DATASET_FORMATS, error="must be one of {choices}"),
        metadata={"description": "detected from the rows when left out"},
    )


class OverwriteQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    overwrite = QueryBoolean(load_default=False)


class PreviewQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    preview = fields.Integer(load_default=0, validate=validate.Range(0, 20))


class DatasetSchema(ResponseSchema):
    name = fields.String()
    source = fields.String(metadata={"description": "operator (a data directory) or upload"})
    format = fields.String(metadata={"description": "alpaca, sharegpt, pairwise, kto or text"})
    stages = fields.List(fields.String(), metadata={"description": "the stages it can train"})
    rows = fields.Integer(allow_none=True)
    bytes = fields.Integer(allow_none=True)
    sha256 = fields.String(allow_none=True)
    columns = fields.List(fields.String())
    created_at = fields.String(allow_none=True)
    tenant = fields.String(allow_none=True, metadata={"description": "an upload's team (none: everyone's)"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that uploaded it"})
    file = fields.String(metadata={"description": "the file jobs read, on the server"})
    preview = fields.List(fields.Dict(), metadata={"description": "with ?preview=N: the first N rows"})
    preview_truncated = fields.Boolean(
        metadata={"description": "a preview value was cut (texts past 1000 characters, deep or long lists)"}
    )


class DatasetListSchema(ResponseSchema):
    datasets = fields.List(fields.Nested(DatasetSchema))
