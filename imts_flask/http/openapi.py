"""The OpenAPI 3 document, generated from the marshmallow schemas and each view's @doc metadata."""

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from ..datasets.rows import FORMATS as DATASET_FORMATS
from ..datasets.uploads import NAME as DATASET_NAME
from ..jobs.store import EVALUATION_ID_PATTERN, JOB_ID_PATTERN
from ..settings import VERSION
from .schemas import ErrorSchema

_ERRORS = {
    400: "Bad input: the errors name each field and the reason",
    403: "Not the API's to change (an operator's dataset)",
    401: "A valid bearer token is required (when the service is configured with tokens)",
    404: "No such job (or evaluation)",
    409: "Conflicts with the job's state (or an Idempotency-Key reused with another body)",
    413: "Request body too large",
    500: "Unexpected error (with an incident id), or the export failed",
    503: "A lock or the store is unavailable; retry",
    507: "Disk full; nothing was written",
}
_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted, still working: poll the job (or evaluation)",
    204: "Done; no content",
    503: "Unhealthy",
}
_PATH_PARAMS = {
    "job_id": {"type": "string", "pattern": f"^{JOB_ID_PATTERN.pattern}$", "example": "train_a1b2c3d4"},
    "name": {"type": "string", "pattern": f"^{DATASET_NAME.pattern}$", "example": "my_sft_data"},
    "evaluation_id": {
        "type": "string",
        "pattern": f"^{EVALUATION_ID_PATTERN.pattern}$",
        "example": "eval_a1b2c3d4",
    },
    "deployment_id": {"type": "string", "pattern": "^deploy_[0-9a-z]{8}$", "example": "deploy_a1b2c3d4"},
    "model": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "example": "support-bot"},
    "alias": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "example": "production"},
    "version": {"type": "integer", "minimum": 1, "example": 3},
}
_HEADERS = {
    "Idempotency-Key": "A retry with the same key and body returns the original job (200), never a second"
}


def doc(
    summary,
    *,
    body=None,
    body_required=True,
    body_content="application/json",
    query=None,
    responses,
    errors=(),
    headers=(),
):
    """Attach OpenAPI metadata to a view: request body/query schemas, responses by status (None: no body)."""

    def attach(view):
        view.openapi = {
            "summary": summary,
            "body": body,
            "body_required": body_required,
            "body_content": body_content,
            "query": query,
            "responses": responses,
            "errors": errors,
            "headers": headers,
        }
        return view

    return attach


def _content(kind):
    if isinstance(kind, str):
        if kind.startswith("image/"):
            schema = {"type": "string", "format": "binary"}
        elif kind.startswith("text/"):
            schema = {"type": "string"}
        else:
            schema = {"type": "object"}
        return {kind: {"schema": schema}}
    return {"application/json": {"schema": kind}}


def _tag(path):
    """The resource an operation belongs to, so generated clients get JobsApi, HealthApi, ..."""
    for tag in ("evaluations", "deployments", "jobs", "datasets", "models", "gpus", "health", "metrics"):
        if f"/{tag}" in path:
            return tag
    return "models" if path.endswith("/templates") else "meta"


def _operation(rule, meta):
    protected = rule.endpoint != "training.health"
    params = [
        {"in": "path", "name": arg, "required": True, "schema": dict(_PATH_PARAMS[arg])}
        for arg in rule.arguments
    ]
    if meta["query"] is not None:
        params.append({"in": "query", "schema": meta["query"]})
    for header in meta["headers"]:
        params.append(
            {
                "in": "header",
                "name": header,
                "required": False,
                "schema": {"type": "string"},
                "description": _HEADERS.get(header, ""),
            }
        )
    responses = {}
    for code, kind in meta["responses"].items():
        responses[str(code)] = {"description": _DESCRIPTIONS.get(code, "OK")}
        if kind is not None:
            responses[str(code)]["content"] = _content(kind)
    for code in meta["errors"]:
        responses[str(code)] = {"description": _ERRORS[code], "content": _content(ErrorSchema)}
    if protected:
        responses["401"] = {"description": _ERRORS[401], "content": _content(ErrorSchema)}
    if "GET" in rule.methods and 200 in meta["responses"]:
        responses["304"] = {"description": "Not modified: If-None-Match matched the ETag"}
    operation = {
        "summary": meta["summary"],
        "operationId": rule.endpoint.split(".")[-1],
        "tags": [_tag(rule.rule)],
        "parameters": params,
        "responses": responses,
    }
    if protected:
        operation["security"] = [{"bearerAuth": []}]
    if meta["body"] is not None:
        schema = meta["body"]
        if meta["body_content"] == "multipart/form-data":  # the form fields, and the file part
            schema = {
                "type": "object",
                "required": ["file", "name"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "name": {"type": "string", "pattern": _PATH_PARAMS["name"]["pattern"]},
                    "format": {"type": "string", "enum": list(DATASET_FORMATS)},
                },
            }
        operation["requestBody"] = {
            "required": meta["body_required"],
            "content": {meta["body_content"]: {"schema": schema}},
        }
    return operation


DOCUMENTED_BLUEPRINTS = ("training", "metrics")  # the API and /metrics; the dashboard's pages are not API


def documented_rules(app):
    """Return (openapi path, method, rule, metadata or None) for every route of the API and /metrics."""
    found = []
    names = tuple(name + "." for name in DOCUMENTED_BLUEPRINTS)
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(names):
            continue
        meta = getattr(app.view_functions[rule.endpoint], "openapi", None)
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)  # <int:version> -> {version}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((path, method, rule, meta))
    return found


def build_spec(app):
    """Return the OpenAPI document of the API's routes and /metrics (built once per app)."""
    if "imts_openapi" not in app.extensions:
        spec = APISpec(
            title="IMTS training API",
            version=VERSION,
            openapi_version="3.0.3",
            info={"description": "Fine-tune LLMs with LLaMA Factory over HTTP (see README.md)."},
            plugins=[MarshmallowPlugin()],
        )
        spec.components.schema("Error", schema=ErrorSchema)
        spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
        for path, method, rule, meta in documented_rules(app):
            if meta is not None:
                spec.path(path=path, operations={method.lower(): _operation(rule, meta)})
        app.extensions["imts_openapi"] = spec.to_dict()
    return app.extensions["imts_openapi"]
