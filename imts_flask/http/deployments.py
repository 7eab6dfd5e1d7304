"""The deployments' routes: serve a job's weights or a registered version as an OpenAI-compatible
server, read and stop it, Nginx's upstream question, and the dashboard's chat through the service."""

import re

from flask import Blueprint, Response, request, stream_with_context

from . import get_service
from .deployments_schemas import (
    ChatRequestSchema,
    DeploymentListSchema,
    DeploymentQuerySchema,
    DeploymentRequestSchema,
    DeploymentSchema,
)
from .openapi import doc
from .requests import PREFIX, created, idempotency_key, json_body, load, schema

bp = Blueprint("deployments", __name__, url_prefix=PREFIX)


@bp.post("/deployments")
@doc(
    "Serve a job's weights or a registered version, OpenAI-compatible; the api_key is shown once",
    body=DeploymentRequestSchema,
    responses={201: DeploymentSchema, 200: DeploymentSchema},
    headers=["Idempotency-Key"],
    errors=(400, 404, 409, 503, 507),
)
def create_deployment():
    body = load(schema(DeploymentRequestSchema), json_body())
    view, replayed = get_service().deployments.create(body, idempotency_key=idempotency_key())
    return created(
        schema(DeploymentSchema).dump(view), f"{PREFIX}/deployments/{view['deployment_id']}", replayed
    )


@bp.get("/deployments")
@doc(
    "Deployments, newest first",
    query=DeploymentQuerySchema,
    responses={200: DeploymentListSchema},
    errors=(400,),
)
def list_deployments():
    query = load(schema(DeploymentQuerySchema), request.args.to_dict())
    total, page = get_service().deployments.list(query["limit"], query["offset"], query.get("status"))
    body = {"total": total, "limit": query["limit"], "offset": query["offset"], "deployments": page}
    return schema(DeploymentListSchema).dump(body)


@bp.get("/deployments/<deployment_id>")
@doc(
    "A deployment: its status, base_url, model id, GPUs, requests served",
    responses={200: DeploymentSchema},
    errors=(400, 404),
)
def get_deployment(deployment_id):
    return schema(DeploymentSchema).dump(get_service().deployments.get(deployment_id))


@bp.delete("/deployments/<deployment_id>")
@doc(
    "Stop a deployment: its server ends and its slot is free (202 while it is still stopping)",
    responses={200: DeploymentSchema, 202: DeploymentSchema},
    errors=(400, 404),
)
def delete_deployment(deployment_id):
    view, done = get_service().deployments.stop(deployment_id)
    return schema(DeploymentSchema).dump(view), 200 if done else 202


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


@bp.post("/deployments/<deployment_id>/chat")
@doc(
    "Chat with a ready deployment through the service (the dashboard's box): server-sent events as "
    "OpenAI's; a failure once the answer has started is an event whose data is {error: {message}}",
    body=ChatRequestSchema,
    responses={200: "text/event-stream"},
    errors=(400, 404, 409),
)
def chat_with_deployment(deployment_id):
    body = load(schema(ChatRequestSchema), json_body())
    events = get_service().deployments.chat(deployment_id, body["messages"], body["max_tokens"])
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(events), mimetype="text/event-stream", headers=headers)
