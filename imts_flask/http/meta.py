"""The service's own routes: health for load balancers, the OpenAPI document, who a token is, and
the GPUs it hands out."""

from flask import Blueprint, current_app

from ..tenancy import principals
from . import get_service
from .meta_schemas import CallerSchema, GpuListSchema, HealthSchema
from .openapi import doc
from .requests import PREFIX, schema

bp = Blueprint("meta", __name__, url_prefix=PREFIX)


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
    return schema(HealthSchema).dump(body), 200 if healthy else 503


@bp.get("/openapi.json")
@doc("This OpenAPI 3 document", responses={200: "application/json"})
def openapi():
    from .openapi import build_spec

    return build_spec(current_app)


@bp.get("/me")
@doc(
    "Who the token is: its tenant, name and role (all null while the service is open)",
    responses={200: CallerSchema},
)
def whoami():
    caller = principals.current()
    body = {"tenant": caller.tenant, "token": caller.name, "role": caller.role} if caller else {}
    return schema(CallerSchema).dump({"tenant": None, "token": None, "role": None, **body})


@bp.get("/gpus")
@doc(
    "The GPUs this service hands out: NVML figures and the jobs that hold each",
    responses={200: GpuListSchema},
)
def list_gpus():
    return schema(GpuListSchema).dump(get_service().gpu_figures())
