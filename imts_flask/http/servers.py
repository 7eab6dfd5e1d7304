"""The shared base-model servers' routes: list them, read one, stop one (admins). Clients never call
a server: they call /v1 (openai.py), which starts the server of a model's base model when needed."""

from flask import Blueprint, request

from . import get_service
from .openapi import doc
from .requests import PREFIX, load, schema
from .servers_schemas import ServerListSchema, ServerQuerySchema, ServerSchema

bp = Blueprint("servers", __name__, url_prefix=PREFIX)


@bp.get("/servers")
@doc(
    "Shared base-model servers (vLLM), newest first: their adapters loaded and traffic",
    query=ServerQuerySchema,
    responses={200: ServerListSchema},
    errors=(400,),
)
def list_servers():
    query = load(schema(ServerQuerySchema), request.args.to_dict())
    total, page = get_service().serving.list(query["limit"], query["offset"])
    body = {"total": total, "limit": query["limit"], "offset": query["offset"], "servers": page}
    return schema(ServerListSchema).dump(body)


@bp.get("/servers/<server_id>")
@doc(
    "A shared server: its status, base model, adapters loaded",
    responses={200: ServerSchema},
    errors=(400, 404),
)
def get_server(server_id):
    return schema(ServerSchema).dump(get_service().serving.get(server_id))


@bp.delete("/servers/<server_id>")
@doc(
    "Stop a shared server (admins): its slot is free; the next request for one of its models starts one "
    "again (202 while it is still stopping)",
    responses={200: ServerSchema, 202: ServerSchema},
    errors=(400, 403, 404),
)
def delete_server(server_id):
    view, done = get_service().serving.stop(server_id)
    return schema(ServerSchema).dump(view), 200 if done else 202
