"""The models' routes: the base models a job may name, the templates, and the registry of trained
versions (register, read, aliases, delete)."""

from flask import Blueprint

from . import get_service
from .models_schemas import (
    AliasRequestSchema,
    ModelListSchema,
    RegisteredModelSchema,
    RegisterRequestSchema,
    TemplateListSchema,
    VersionSchema,
)
from .openapi import doc
from .requests import PREFIX, created, json_body, load, schema

bp = Blueprint("models", __name__, url_prefix=PREFIX)


@bp.get("/models")
@doc(
    "Every model a job may name, with its template, architecture, parameters and size; registered names",
    responses={200: ModelListSchema},
)
def list_models():
    service = get_service()
    listed = {"models": service.catalog.models(), "registered": service.registry.names()}
    return schema(ModelListSchema).dump(listed)


@bp.get("/templates")
@doc("The chat templates a job may name (custom_config.template)", responses={200: TemplateListSchema})
def list_templates():
    return schema(TemplateListSchema).dump({"templates": get_service().catalog.templates()})


@bp.post("/models")
@doc(
    "Register a completed job's weights (final, best or a checkpoint) as the next version of a name",
    body=RegisterRequestSchema,
    responses={201: VersionSchema},
    errors=(400, 404, 409, 503, 507),
)
def register_model():
    body = load(schema(RegisterRequestSchema), json_body())
    version = get_service().registry.register(body)
    location = f"{PREFIX}/models/{version['name']}/versions/{version['version']}"
    return created(schema(VersionSchema).dump(version), location)


@bp.get("/models/<model>")
@doc(
    "A registered name: its versions (lineage, figures) and aliases",
    responses={200: RegisteredModelSchema},
    errors=(400, 404),
)
def get_registered(model):
    return schema(RegisteredModelSchema).dump(get_service().registry.model(model))


@bp.get("/models/<model>/versions/<int:version>")
@doc("One registered version", responses={200: VersionSchema}, errors=(400, 404))
def get_version(model, version):
    return schema(VersionSchema).dump(get_service().registry.version(model, version))


@bp.delete("/models/<model>/versions/<int:version>")
@doc(
    "Delete a version no alias points to and no deployment serves",
    responses={204: None},
    errors=(400, 404, 409),
)
def delete_version(model, version):
    get_service().registry.delete_version(model, version)
    return "", 204


@bp.put("/models/<model>/aliases/<alias>")
@doc(
    "Point an alias (production, staging, ...) at a version",
    body=AliasRequestSchema,
    responses={200: RegisteredModelSchema},
    errors=(400, 404),
)
def set_alias(model, alias):
    body = load(schema(AliasRequestSchema), json_body())
    return schema(RegisteredModelSchema).dump(get_service().registry.set_alias(model, alias, body["version"]))


@bp.delete("/models/<model>/aliases/<alias>")
@doc("Remove an alias", responses={204: None}, errors=(400, 404))
def delete_alias(model, alias):
    get_service().registry.delete_alias(model, alias)
    return "", 204
