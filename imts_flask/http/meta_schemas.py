"""The wire formats of the service itself: health, the GPUs, who a token is."""

from marshmallow import fields

from .wire import ResponseSchema


class GpuSchema(ResponseSchema):
    id = fields.String(metadata={"description": "the id jobs see (gpu_ids): NVML's index, or a UUID"})
    uuid = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    utilization = fields.Float(allow_none=True, metadata={"description": "busy time, 0..1"})
    memory_used_bytes = fields.Integer(allow_none=True)
    memory_total_bytes = fields.Integer(allow_none=True)
    temperature_celsius = fields.Float(allow_none=True)
    power_watts = fields.Float(allow_none=True)
    lost = fields.Boolean()
    error = fields.String(allow_none=True)
    job_ids = fields.List(fields.String(), metadata={"description": "unfinished jobs handed this GPU"})


class GpuListSchema(ResponseSchema):
    available = fields.Boolean(metadata={"description": "NVML could be read"})
    detail = fields.String(allow_none=True)
    driver = fields.String(allow_none=True)
    gpus = fields.List(fields.Nested(GpuSchema))


class HealthSchema(ResponseSchema):
    status = fields.String()
    service = fields.String()
    adapter_initialized = fields.Boolean()
    checks = fields.Dict(keys=fields.String(), values=fields.Dict())
    degraded = fields.List(
        fields.String(),
        metadata={"description": "failing checks; shared ones (executor, uploads_registry) give no 503"},
    )


class CallerSchema(ResponseSchema):
    tenant = fields.String(allow_none=True, metadata={"description": "the token's team (none: an admin)"})
    token = fields.String(allow_none=True, metadata={"description": "the token's name"})
    role = fields.String(allow_none=True, metadata={"description": "admin, member or viewer; none: auth off"})
