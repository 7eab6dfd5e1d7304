"""The routes of a trained model's use, on the API's one blueprint: deployments (OpenAI-compatible
servers of a job's weights or a registered version) and the registry of model versions."""

import re

from flask import Response, request, stream_with_context
from marshmallow import ValidationError, fields, validate, validates_schema

from ..tenancy import principals
from . import get_service
from .api import _idempotency_key, _json_body, _load, _schema, bp
from .openapi import doc
from .schemas import (
    JOB_ID,
    NAME,
    REFERENCE,
    WEIGHTS,
    PageQuerySchema,
    RequestSchema,
    ResponseSchema,
    Whole,
    given,
)

# -- schemas -------------------------------------------------------------------------------


class DeploymentRequestSchema(RequestSchema):
    """POST /deployments: serve a job's weights, or a registered version."""

    openapi_rules = {
        "oneOf": [given("job_id"), given("model")],
        "not": {"allOf": [given("model"), given("checkpoint")]},
    }

    job_id = fields.String(
        allow_none=True,
        validate=JOB_ID,
        metadata={"example": "train_a1b2c3d4", "description": "a completed or stopped job (or model)"},
    )
    checkpoint = fields.String(
        allow_none=True,
        validate=WEIGHTS,
        metadata={"description": "with job_id: final (default), best, or checkpoint-N"},
    )
    model = fields.String(
        allow_none=True,
        validate=REFERENCE,
        metadata={
            "description": "a registered version: name:3 or name@alias",
            "example": "support-bot@production",
        },
    )
    name = fields.String(
        allow_none=True,
        validate=NAME,
        metadata={"description": "the model id clients send (default: the deployment id)"},
    )
    gpus = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 64))
    max_new_tokens = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 32768))
    template = fields.String(
        allow_none=True,
        validate=Whole(r"^[A-Za-z0-9_.-]{1,64}$", error="must be 1 to 64 letters, digits, '_', '.' or '-'"),
    )
    backend = fields.String(
        allow_none=True,
        validate=validate.OneOf(["huggingface", "vllm"]),
        metadata={"description": "huggingface (default), or vllm where it is installed and a GPU is given"},
    )

    @validates_schema
    def _one_source(self, data, **kwargs):
        if bool(data.get("job_id")) == bool(data.get("model")):
            raise ValidationError(
                "give either job_id (with checkpoint) or model (name:3 or name@alias)", "job_id"
            )
        if data.get("model") and data.get("checkpoint"):
            raise ValidationError(
                "checkpoint goes with job_id; a registered version is its own weights", "checkpoint"
            )


class DeploymentSchema(ResponseSchema):
    deployment_id = fields.String()
    name = fields.String()
    status = fields.String(metadata={"description": "pending, starting, ready, stopped or failed"})
    model = fields.String(metadata={"description": "the model id to send (and /v1/models lists)"})
    base_url = fields.String(metadata={"description": "an OpenAI client's base_url"})
    api_key = fields.String(metadata={"description": "only in the answer to the create: keep it"})
    source = fields.Dict()
    base_model = fields.String(allow_none=True)
    adapter = fields.String(allow_none=True)
    template = fields.String(allow_none=True)
    max_new_tokens = fields.Integer(allow_none=True)
    host = fields.String()
    port = fields.Integer()
    gpu_ids = fields.List(fields.String())
    requests_served = fields.Integer()
    last_request_at = fields.String(allow_none=True)
    restarts = fields.Integer()
    attempt = fields.Integer()
    queue_position = fields.Integer(allow_none=True)
    waiting_for = fields.String(metadata={"description": "pending: capacity, quota or preemption"})
    held_by = fields.List(fields.String(), metadata={"description": "pending: the runs holding the slots"})
    held_by_others = fields.Integer(metadata={"description": "pending: how many more are other teams'"})
    error = fields.String(allow_none=True)
    log_tail = fields.List(fields.String())
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    ready_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    tenant = fields.String(allow_none=True, metadata={"description": "the team it belongs to"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that created it"})


class DeploymentQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(["pending", "starting", "ready", "stopped", "failed"]))


class DeploymentListSchema(ResponseSchema):
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
    deployments = fields.List(fields.Nested(DeploymentSchema))


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


# -- deployments ---------------------------------------------------------------------------


@bp.post("/deployments")
@doc(
    "Serve a job's weights or a registered version, OpenAI-compatible; the api_key is shown once",
    body=DeploymentRequestSchema,
    responses={201: DeploymentSchema, 200: DeploymentSchema},
    headers=["Idempotency-Key"],
    errors=(400, 404, 409, 503, 507),
)
def create_deployment():
    body = _load(_schema(DeploymentRequestSchema), _json_body())
    view, replayed = get_service().deployments.create(body, idempotency_key=_idempotency_key())
    headers = {"Location": f"{bp.url_prefix}/deployments/{view['deployment_id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _schema(DeploymentSchema).dump(view), 200 if replayed else 201, headers


@bp.get("/deployments")
@doc(
    "Deployments, newest first",
    query=DeploymentQuerySchema,
    responses={200: DeploymentListSchema},
    errors=(400,),
)
def list_deployments():
    query = _load(_schema(DeploymentQuerySchema), request.args.to_dict())
    total, page = get_service().deployments.list(query["limit"], query["offset"], query.get("status"))
    body = {"total": total, "limit": query["limit"], "offset": query["offset"], "deployments": page}
    return _schema(DeploymentListSchema).dump(body)


@bp.get("/deployments/<deployment_id>")
@doc(
    "A deployment: its status, base_url, model id, GPUs, requests served",
    responses={200: DeploymentSchema},
    errors=(400, 404),
)
def get_deployment(deployment_id):
    return _schema(DeploymentSchema).dump(get_service().deployments.get(deployment_id))


@bp.delete("/deployments/<deployment_id>")
@doc(
    "Stop a deployment: its server ends and its slot is free (202 while it is still stopping)",
    responses={200: DeploymentSchema, 202: DeploymentSchema},
    errors=(400, 404),
)
def delete_deployment(deployment_id):
    view, done = get_service().deployments.stop(deployment_id)
    return _schema(DeploymentSchema).dump(view), 200 if done else 202


@bp.get("/deployments/<deployment_id>/upstream")
@doc(
    "For Nginx's auth_request: 204 with X-IMTS-Upstream-Port to a request carrying the deployment's own "
    "api_key (Authorization: Bearer) while it is ready; 401 to any other, whatever the id names",
    responses={204: None},
    errors=(401, 409),
)
def deployment_upstream(deployment_id):
    match = re.fullmatch(r"Bearer ([!-~]{1,512})", request.headers.get("Authorization") or "")
    port = get_service().deployments.upstream(deployment_id, match.group(1) if match else None)
    return "", 204, {"X-IMTS-Upstream-Port": str(port), "Cache-Control": "no-store"}


class ChatMessageSchema(RequestSchema):
    role = fields.String(required=True, validate=validate.OneOf(["system", "user", "assistant"]))
    content = fields.String(required=True, validate=validate.Length(1, 8000))


MAX_CHAT_CHARACTERS = 32_000  # the whole conversation's text (a tiny model's context is far less)


class ChatRequestSchema(RequestSchema):
    """POST /deployments/{id}/chat: the dashboard's chat box (a few turns of text). What the server
    cannot answer is refused here, naming the field: an optional system message first, then turns
    of user and assistant in turn, ending with the user's, at most MAX_CHAT_CHARACTERS in all."""

    messages = fields.List(
        fields.Nested(ChatMessageSchema),
        required=True,
        validate=validate.Length(1, 32),
        metadata={
            "description": "an optional system message first, then user and assistant in turn, "
            f"ending with user; at most {MAX_CHAT_CHARACTERS} characters in all"
        },
    )
    max_tokens = fields.Integer(strict=True, load_default=256, validate=validate.Range(1, 2048))

    @validates_schema
    def _a_conversation(self, data, **kwargs):
        messages = data.get("messages") or []
        turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
        if not turns:
            raise ValidationError("holds no user message: the last message must be the user's", "messages")
        offset = len(messages) - len(turns)
        for number, message in enumerate(turns):
            expected = "user" if number % 2 == 0 else "assistant"
            if message["role"] != expected:
                where = f"messages.{number + offset}.role"
                if message["role"] == "system":
                    raise ValidationError("a system message may only come first", where)
                raise ValidationError(f"must be {expected}: user and assistant take turns", where)
        if turns[-1]["role"] != "user":
            raise ValidationError("the last message must be the user's (the model answers it)", "messages")
        total = sum(len(m["content"]) for m in messages)
        if total > MAX_CHAT_CHARACTERS:
            raise ValidationError(
                f"hold {total} characters in all; at most {MAX_CHAT_CHARACTERS}", "messages"
            )


@bp.post("/deployments/<deployment_id>/chat")
@doc(
    "Chat with a ready deployment through the service (the dashboard's box): server-sent events as "
    "OpenAI's; a failure once the answer has started is an event whose data is {error: {message}}",
    body=ChatRequestSchema,
    responses={200: "text/event-stream"},
    errors=(400, 404, 409),
)
def chat_with_deployment(deployment_id):
    body = _load(_schema(ChatRequestSchema), _json_body())
    events = get_service().deployments.chat(deployment_id, body["messages"], body["max_tokens"])
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(events), mimetype="text/event-stream", headers=headers)


class CallerSchema(ResponseSchema):
    tenant = fields.String(allow_none=True, metadata={"description": "the token's team (none: an admin)"})
    token = fields.String(allow_none=True, metadata={"description": "the token's name"})
    role = fields.String(allow_none=True, metadata={"description": "admin, member or viewer; none: auth off"})


@bp.get("/me")
@doc(
    "Who the token is: its tenant, name and role (all null while the service is open)",
    responses={200: CallerSchema},
)
def whoami():
    caller = principals.current()
    body = {"tenant": caller.tenant, "token": caller.name, "role": caller.role} if caller else {}
    return _schema(CallerSchema).dump({"tenant": None, "token": None, "role": None, **body})


# -- the registry ----------------------------------------------------------------------------


@bp.post("/models")
@doc(
    "Register a completed job's weights (final, best or a checkpoint) as the next version of a name",
    body=RegisterRequestSchema,
    responses={201: VersionSchema},
    errors=(400, 404, 409, 503, 507),
)
def register_model():
    body = _load(_schema(RegisterRequestSchema), _json_body())
    version = get_service().registry.register(body)
    headers = {"Location": f"{bp.url_prefix}/models/{version['name']}/versions/{version['version']}"}
    return _schema(VersionSchema).dump(version), 201, headers


@bp.get("/models/<model>")
@doc(
    "A registered name: its versions (lineage, figures) and aliases",
    responses={200: RegisteredModelSchema},
    errors=(400, 404),
)
def get_registered(model):
    return _schema(RegisteredModelSchema).dump(get_service().registry.versions.model(model))


@bp.get("/models/<model>/versions/<int:version>")
@doc("One registered version", responses={200: VersionSchema}, errors=(400, 404))
def get_version(model, version):
    return _schema(VersionSchema).dump(get_service().registry.versions.version(model, version))


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
    body = _load(_schema(AliasRequestSchema), _json_body())
    return _schema(RegisteredModelSchema).dump(
        get_service().registry.versions.set_alias(model, alias, body["version"])
    )


@bp.delete("/models/<model>/aliases/<alias>")
@doc("Remove an alias", responses={204: None}, errors=(400, 404))
def delete_alias(model, alias):
    get_service().registry.versions.delete_alias(model, alias)
    return "", 204
