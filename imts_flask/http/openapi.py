"""The OpenAPI 3 document, generated from the marshmallow schemas and each view's @doc metadata.

It says what the service as configured answers, so that a client generated from it never meets a
status it was not told about:

- every operation lists the statuses the service gives by design: its own (`@doc(errors=...)`),
  and those of the layers every request crosses (gunicorn's 400/414/431, the Host check's 421, a
  browser guard's or a viewer's 403 on a change, the store's 503/507 on a write, a lock timeout,
  the unexpected 500);
- `bearerAuth` and 401 only where the service is configured with tokens;
- what a request may hold, as far as JSON Schema can say it: bounds (exclusive ones too), whole
  patterns, the custom_config keys this service allows with their types, the installed templates,
  the GPUs there are, and rules across fields (`openapi_rules` of a schema: "job_id or model, not
  both"). What no schema can state (that a named model, dataset or id exists; the order of a
  chat's turns; a file's rows) the descriptions say.
"""

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import class_registry, validate

from ..datasets.rows import FORMATS as DATASET_FORMATS
from ..datasets.uploads import NAME as DATASET_NAME
from ..deployments.service import backends
from ..finetuning.mapping import openapi_extension
from ..llamafactory.allowlist import CUSTOM_KEYS
from ..llamafactory.templates import installed_templates
from ..runs.ids import EVALUATION_ID_PATTERN, JOB_ID_PATTERN
from ..settings import VERSION
from . import RESOURCES
from .wire import ErrorSchema

_ERRORS = {
    400: "Bad input: the errors name each field and the reason (a query, a body, its framing)",
    401: "A valid bearer token is required",
    403: "Not allowed: another site's change, a viewer's change, an admin's operation, a team's "
    "limit (priority, GPU-hours, preemptible jobs), or the operator's dataset",
    404: "No such resource (another team's looks the same)",
    409: "Conflicts with the resource's state, or an Idempotency-Key reused with another body",
    413: "Request body too large",
    414: "Request URI too long (gunicorn's limit)",
    415: "The body is not application/json",
    421: "This service does not answer to the Host named (allowed_hosts)",
    429: "The team has max_queued_jobs runs waiting; retry after Retry-After seconds",
    431: "A request header is too large (gunicorn's limit)",
    500: "Unexpected error (with an incident id), or the export failed",
    503: "A lock or the store is unavailable; retry",
    507: "Disk full; nothing was written",
}
_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted, still working: poll the resource",
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
    "server_id": {"type": "string", "pattern": "^serve_[0-9a-z]{8}$", "example": "serve_a1b2c3d4"},
    "model": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "example": "support-bot"},
    "alias": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "example": "production"},
    "version": {"type": "integer", "minimum": 1, "maximum": 10**9, "example": 3},
}
_HEADERS = {
    "Idempotency-Key": (
        "A retry with the same key and body returns the original (200), never a second",
        {"type": "string", "pattern": "^[ -~]{1,255}$"},
    )
}
# What every operation may answer whatever it does, from the layers every request crosses.
_EVERYWHERE = (400, 414, 421, 431, 500)
# ... and every change: a browser's cross-site request or a viewer (403), a lock or the store (503), the disk.
_CHANGES = (403, 503, 507)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN = ("meta.health", "deployments.deployment_upstream")  # no service token (see auth.py)
_ADMINS = ("metrics.prometheus_metrics",)


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
        elif kind == "text/event-stream":  # each event: OpenAI's chunk as data, or an error event
            schema = {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string", "enum": ["message", "error"]},
                    "data": {"type": "string"},
                },
            }
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


def _statuses(rule, method, meta, auth):
    """Every status an operation answers by design, besides its successes."""
    codes = set(meta["errors"]) | set(_EVERYWHERE)
    if method not in _SAFE:
        codes |= set(_CHANGES)
    if meta["body"] is not None:
        codes.add(413)
        if meta["body_content"] == "application/json":
            codes.add(415)
    if rule.arguments:
        codes.add(404)
    if "Idempotency-Key" in meta["headers"]:  # a create: a reused key, a team's limits
        codes |= {403, 409, 429}
    if auth and rule.endpoint not in _OPEN:
        codes.add(401)
    if auth and rule.endpoint in _ADMINS:
        codes.add(403)
    return sorted(codes - {int(c) for c in meta["responses"]})


def _operation(rule, method, meta, auth):
    protected = auth and rule.endpoint not in _OPEN
    params = [
        {"in": "path", "name": arg, "required": True, "schema": dict(_PATH_PARAMS[arg])}
        for arg in rule.arguments
    ]
    if meta["query"] is not None:
        params.append({"in": "query", "schema": meta["query"]})
    for header in meta["headers"]:
        description, schema = _HEADERS[header]
        params.append(
            {"in": "header", "name": header, "required": False, "schema": schema, "description": description}
        )
    responses = {}
    for code, kind in meta["responses"].items():
        responses[str(code)] = {"description": _DESCRIPTIONS.get(code, "OK")}
        if kind is not None:
            responses[str(code)]["content"] = _content(kind)
    for code in _statuses(rule, method, meta, auth):
        responses[str(code)] = {"description": _ERRORS[code], "content": _content(ErrorSchema)}
    if "429" in responses:
        responses["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "required": True}}
    if method == "GET" and 200 in meta["responses"]:
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
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "rows of one format (.jsonl, .json, .csv or .parquet), each checked",
                    },
                    "name": {"type": "string", "pattern": _PATH_PARAMS["name"]["pattern"]},
                    "format": {"type": "string", "enum": list(DATASET_FORMATS)},
                },
                "additionalProperties": False,
            }
        media = {"schema": schema}
        if meta["body_content"] == "multipart/form-data":
            disposition = 'form-data; name="file"; filename="rows.jsonl"'
            media["encoding"] = {
                "file": {
                    "headers": {"Content-Disposition": {"schema": {"type": "string", "example": disposition}}}
                }
            }
        operation["requestBody"] = {
            "required": meta["body_required"],
            "content": {meta["body_content"]: media},
        }
    return operation


# The API's resources and /metrics; the dashboard's pages are not API.
DOCUMENTED_BLUEPRINTS = (*RESOURCES, "metrics")


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


# -- what a field and a schema say beyond apispec's reading -----------------------------------------


def _wire_rules(self, field, ret, **kwargs):
    """apispec attribute function: exclusive bounds, a nullable nested object that is null (not any
    object), and the `openapi` a field (or its class) declares."""
    extra = {}
    for validator in field.validators:
        if isinstance(validator, validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                extra["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                extra["exclusiveMaximum"] = True
    if "anyOf" in ret:
        extra["anyOf"] = [
            {**branch, "enum": [None]} if branch == {"type": "object", "nullable": True} else branch
            for branch in ret["anyOf"]
        ]
    extra.update(getattr(field, "OPENAPI", None) or {})
    extra.update(field.metadata.get("openapi") or {})
    return extra


def _custom_config(service):
    """custom_config as this service takes it: each allowed key with its type, nothing else."""
    allowed = {**CUSTOM_KEYS, **service.jobs.extra_custom_keys}
    properties = {key: _key_schema(rule) for key, rule in allowed.items()}
    templates = installed_templates()
    if templates:
        properties["template"] = {"type": "string", "enum": list(templates)}
    deepspeed = service.catalog.deepspeed_templates()
    if deepspeed:
        properties["deepspeed"] = {"type": "string", "enum": deepspeed}
    if service.settings.allow_trust_remote_code:
        properties["trust_remote_code"] = {"type": "boolean"}
    return {
        "type": "object",
        "nullable": True,
        "properties": properties,
        "additionalProperties": False,
        "description": "LLaMA Factory keys this service allows (GET /custom-config lists them)",
        "example": {"cutoff_len": 64},
    }


def _key_schema(rule):
    kind = rule[0]
    if kind == "bool":
        return {"type": "boolean"}
    if kind in ("int", "number"):
        return {"type": "integer" if kind == "int" else "number", "minimum": rule[1], "maximum": rule[2]}
    if kind == "choice":
        return {"enum": list(rule[1])}
    if kind == "names":
        return {"type": "string", "pattern": r"^[A-Za-z0-9_.,\-]{1,200}$"}
    return {"type": "string", "maxLength": 4000, "pattern": "^[^\\u0000]*$"}


def _component_rules():
    """{component name: extra JSON Schema} of the schemas that declare `openapi_rules`."""
    found = {}
    for entries in class_registry._registry.values():
        for cls in entries:
            rules = getattr(cls, "openapi_rules", None)
            if rules and cls.__module__.startswith("imts_flask"):
                found[cls.__name__.removesuffix("Schema")] = rules
    return found


def build_spec(app):
    """Return the OpenAPI document of the API's routes and /metrics, as this service is configured
    now (built once per configuration: tokens on or off)."""
    service = app.extensions["imts"]
    auth = service.tenants.enabled
    key = f"imts_openapi_{auth}"
    if key not in app.extensions:
        plugin = MarshmallowPlugin()
        spec = APISpec(
            title="IMTS training API",
            version=VERSION,
            openapi_version="3.0.3",
            info={"description": "Fine-tune LLMs with LLaMA Factory over HTTP (see README.md)."},
            plugins=[plugin],
        )
        plugin.converter.add_attribute_function(_wire_rules)
        spec.components.schema("Error", schema=ErrorSchema)
        if auth:
            spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
        for path, method, rule, meta in documented_rules(app):
            if meta is not None:
                spec.path(path=path, operations={method.lower(): _operation(rule, method, meta, auth)})
        document = spec.to_dict()
        document["x-openai"] = openapi_extension()  # OpenAI's face (/v1), mapped to this API
        schemas = document["components"]["schemas"]
        for name, rules in _component_rules().items():
            if name in schemas:
                schemas[name].update(rules)
        deployment = schemas.get("DeploymentRequest")
        if deployment:
            templates = installed_templates()
            if templates:
                deployment["properties"]["template"]["enum"] = [*templates, None]
            most = service.launcher.executor.capacity()[1]
            deployment["properties"]["backend"]["enum"] = [*backends(most), None]
            deployment["properties"]["gpus"]["maximum"] = most
        job = schemas.get("TrainingJobRequest")
        if job:
            job["properties"]["custom_config"] = _custom_config(service)
            most = service.launcher.executor.capacity()[1]
            job["properties"]["gpus"]["maximum"] = most
            job["properties"]["gpus"]["description"] = f"GPUs for the job, at most {most} here"
        app.extensions[key] = document
    return app.extensions[key]
