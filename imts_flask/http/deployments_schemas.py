"""The wire formats of deployments: what to serve, a deployment's record, the chat box's turns."""

from marshmallow import ValidationError, fields, validate, validates_schema

from .wire import (
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
