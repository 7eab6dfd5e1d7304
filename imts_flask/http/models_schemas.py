"""The wire formats of models: the base models, the templates, and the registry's versions."""

from marshmallow import fields, validate

from .wire import JOB_ID, NAME, WEIGHTS, RequestSchema, ResponseSchema


class ModelSchema(ResponseSchema):
    name = fields.String()
    source = fields.String(metadata={"description": "registry (config/models.yaml), models_dir or hub_cache"})
    path = fields.String()
    template = fields.String(allow_none=True, metadata={"description": "the template a job gets by default"})
    architecture = fields.String(allow_none=True)
    model_type = fields.String(allow_none=True)
    parameters = fields.Integer(
        allow_none=True, metadata={"description": "counted from the weights' headers"}
    )
    bytes = fields.Integer(allow_none=True, metadata={"description": "size on disk"})


class ModelListSchema(ResponseSchema):
    models = fields.List(fields.Nested(ModelSchema))
    registered = fields.List(
        fields.Dict(),
        metadata={"description": "registered names: versions, aliases (GET /models/{model} for one)"},
    )


class TemplateListSchema(ResponseSchema):
    templates = fields.List(fields.String())


class RegisterRequestSchema(RequestSchema):
    """POST /models: a job's weights as the next version of a name."""

    name = fields.String(required=True, validate=NAME, metadata={"example": "support-bot"})
    job_id = fields.String(required=True, validate=JOB_ID, metadata={"example": "train_a1b2c3d4"})
    checkpoint = fields.String(load_default="final", allow_none=True, validate=WEIGHTS)
    description = fields.String(allow_none=True, validate=validate.Length(0, 2000))


class AliasRequestSchema(RequestSchema):
    version = fields.Integer(strict=True, required=True, validate=validate.Range(1, 10**9))


class VersionSchema(ResponseSchema):
    name = fields.String()
    version = fields.Integer()
    reference = fields.String(
        metadata={"description": "name:version, for model_name or a deployment's model"}
    )
    aliases = fields.List(fields.String())
    description = fields.String(allow_none=True)
    job_id = fields.String()
    checkpoint = fields.String()
    base_model = fields.String(allow_none=True)
    base_model_path = fields.String()
    stage = fields.String(allow_none=True)
    finetuning_type = fields.String()
    template = fields.String(allow_none=True)
    dataset = fields.String(allow_none=True)
    dataset_sha256 = fields.Dict()
    figures = fields.Dict()
    weights = fields.String()
    weights_kind = fields.String(metadata={"description": "adapter (LoRA, on base_model_path) or model"})
    created_at = fields.String()
    tenant = fields.String(allow_none=True, metadata={"description": "the team it belongs to"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that registered it"})


class RegisteredModelSchema(ResponseSchema):
    name = fields.String()
    latest = fields.Integer()
    aliases = fields.Dict(keys=fields.String(), values=fields.Integer())
    versions = fields.List(fields.Nested(VersionSchema))
