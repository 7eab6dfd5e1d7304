"""One JSON error shape for every 4xx/5xx: {status, error, message, errors: [{field, reason}], path},
and the one table from the service's errors to HTTP statuses."""

import logging
import uuid

from flask import request
from werkzeug.exceptions import HTTPException

from .. import errors

# The service's errors (imts_flask/errors.py) as HTTP statuses; anything else is a 500.
STATUS = {
    errors.ValidationFailed: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.UnsupportedMediaType: 415,
    errors.Misdirected: 421,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
    errors.InsufficientStorage: 507,
}


def status_of(exc):
    """The HTTP status of a service error: its class's, or its nearest base's in STATUS, else 500."""
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)


log = logging.getLogger(__name__)


OPENAI_PREFIX = "/v1/"  # OpenAI's face: its error shape, so that its SDKs read our errors
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status, code, message, errors=None, **extra):
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error(status, code, message, errors), status
    body = {"status": status, "error": code, "message": message, "errors": errors or [], "path": request.path}
    body.update(extra)
    return body, status


def openai_error(status, code, message, errors=None):
    """OpenAI's error shape: {error: {message, type, param, code}}; param names the first field."""
    param = (errors or [{}])[0].get("field")
    if status == 404 and param == "model":
        code = "model_not_found"
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


DRAIN_CAP = 16 * 1024 * 1024


def _too_large(request, exc):
    """Say which limit a 413 is about: the body, a form's parts or a form field (werkzeug raises the
    same exception for each; its multipart decoder, in the traceback, knows how many parts it read)."""
    if request.mimetype.startswith("multipart/"):
        traceback = exc.__traceback__
        while traceback is not None:
            decoder = traceback.tb_frame.f_locals.get("self")
            most = getattr(decoder, "max_parts", None)
            if most is not None and getattr(decoder, "_parts_decoded", 0) > most:
                return f"the form has more than {most} parts"
            traceback = traceback.tb_next
        length, limit = request.content_length, request.max_content_length
        if limit is None or (length or 0) <= limit:
            return f"a form field (not the file) is larger than {request.max_form_memory_size} bytes"
    return f"the request body is larger than {request.max_content_length} bytes"


def _drain_body(environ):
    """Read and drop an unread request body (up to DRAIN_CAP) before answering.

    A proxy such as Nginx sends the whole body it buffered; closing the connection on it mid-way
    turns our JSON 413 into the proxy's 502.
    """
    stream = environ.get("wsgi.input")
    try:
        remaining = min(int(environ.get("CONTENT_LENGTH") or 0), DRAIN_CAP)
    except ValueError:
        return
    while stream is not None and remaining > 0:
        chunk = stream.read(min(64 * 1024, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


def _is_framing_error(exc):
    """An error of the WSGI server's HTTP parser raised while the app reads the body (gunicorn's
    InvalidChunkSize, ChunkMissingTerminator, NoMoreData, ...): the client's fault, not ours."""
    return any(cls.__module__.startswith("gunicorn.http") for cls in type(exc).__mro__)


def register_error_handlers(app):
    """Register the handlers once, for domain errors, HTTP errors and anything unexpected."""

    @app.errorhandler(errors.ServiceError)
    def _service_error(exc):
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s -> %s %s: %s", request.method, request.path, status, exc.code, exc.message)
        body, status = error_body(status, exc.code, exc.message, exc.errors, **exc.extra)
        return body, status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 405:
            allowed = ", ".join(exc.valid_methods or [])
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        elif exc.code == 413:
            message = _too_large(request, exc)
            _drain_body(request.environ)
        # The exception's own headers go with it (a 405's Allow, a 401's WWW-Authenticate): only its
        # body is ours.
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        body, status = error_body(exc.code, code, message)
        return body, status, headers

    @app.errorhandler(Exception)
    def _unexpected(exc):
        if _is_framing_error(exc):  # the server could not read the body it was sent (a bad chunk size)
            log.info("%s %s -> 400: malformed body (%s)", request.method, request.path, exc)
            return error_body(400, "bad_request", f"the request body is malformed: {exc}"[:300])
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", incident, request.method, request.path)
        return error_body(
            500,
            "internal_error",
            f"unexpected server error; the service log has the details under incident {incident}",
            incident=incident,
        )
