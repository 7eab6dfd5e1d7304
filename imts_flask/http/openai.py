"""OpenAI's face over the same store (/v1): the models a caller may call and their completions, so
that the SDKs teams already have (openai for Java, Python and Node; Spring AI) work by changing the
base URL. A `model` names a job's weights, a registered version or a base model (serving/service.py);
errors are in OpenAI's shape (errors.py). Streams relay the server's events as they come: under
gevent workers a stream holds a greenlet, not a worker.
"""

from flask import Blueprint, Response, jsonify, stream_with_context

from ..errors import ValidationFailed
from ..serving.service import UpstreamError
from . import get_service
from .requests import json_body

bp = Blueprint("openai", __name__, url_prefix="/v1")

MAX_MESSAGES = 1024


@bp.get("/models")
def list_models():
    return {"object": "list", "data": [_model(m) for m in get_service().serving.models()]}


@bp.get("/models/<path:model>")
def get_model(model):
    target = get_service().serving.resolve(model)
    return _model({"id": target.name, "created": 0, "owned_by": target.tenant or "imts"})


@bp.post("/chat/completions")
def chat_completions():
    body = _checked(json_body(), chat=True)
    return _answer(get_service().serving.complete("chat/completions", body))


@bp.post("/completions")
def completions():
    body = _checked(json_body(), chat=False)
    return _answer(get_service().serving.complete("completions", body))


def _model(found):
    shown = {"id": found["id"], "object": "model", "created": found["created"], "owned_by": found["owned_by"]}
    return {**shown, **{k: v for k, v in found.items() if k not in shown}}


def _checked(body, chat):
    """What the service reads of a request: the rest goes to vLLM, which answers in OpenAI's shape."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object", field="body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValidationFailed("model is required: a model id from GET /v1/models", field="model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
            raise ValidationFailed(
                f"messages must be a list of 1 to {MAX_MESSAGES} messages", field="messages"
            )
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise ValidationFailed("each message is an object with a role and a content", field="messages")
    elif "prompt" not in body:
        raise ValidationFailed("prompt is required", field="prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ValidationFailed("stream must be true or false", field="stream")
    for name in ("chat_template", "chat_template_kwargs"):  # the adapter's own template is sent
        if name in body:
            raise ValidationFailed(
                f"{name} is set by the service: each model answers with its own", field=name
            )
    return body


def _answer(result):
    status, answer = result
    if isinstance(answer, dict):
        return jsonify(answer), status
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(answer), mimetype="text/event-stream", headers=headers)


@bp.errorhandler(UpstreamError)
def _upstream(exc):
    return jsonify(exc.body), exc.status
