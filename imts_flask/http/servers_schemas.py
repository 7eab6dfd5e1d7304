"""The shared servers' shapes (GET /servers): what an operator reads of each."""

from marshmallow import fields

from .wire import PageQuerySchema, ResponseSchema


class ServerSchema(ResponseSchema):
    server_id = fields.String()
    status = fields.String(metadata={"description": "pending, starting, ready, stopped or failed"})
    base_model = fields.String(metadata={"description": "the base model's name, as a job names it"})
    base_model_path = fields.String()
    engine = fields.String(metadata={"description": "vllm"})
    host = fields.String()
    port = fields.Integer(metadata={"description": "the service alone calls it: clients call /v1"})
    max_loras = fields.Integer(metadata={"description": "adapters in one batch"})
    max_cpu_loras = fields.Integer(metadata={"description": "adapters kept in memory (least recent evicted)"})
    adapters = fields.Dict(
        allow_none=True,
        metadata={"description": "what its running process has loaded: model -> {path, loaded_at, load_ms}"},
    )
    adapter_loads = fields.Integer()
    requests_served = fields.Integer()
    last_request_at = fields.String(allow_none=True)
    restarts = fields.Integer()
    attempt = fields.Integer()
    gpu_ids = fields.List(fields.String())
    error = fields.String(allow_none=True)
    log_tail = fields.List(fields.String())
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    ready_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    stop_reason = fields.String(allow_none=True)
    tenant = fields.String(allow_none=True)
    created_by = fields.String(allow_none=True)
    gpu_seconds = fields.Float()
    cpu_seconds = fields.Float()


class ServerListSchema(ResponseSchema):
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
    servers = fields.List(fields.Nested(ServerSchema))


ServerQuerySchema = PageQuerySchema
