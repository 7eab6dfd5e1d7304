"""One JSON error shape for every 4xx/5xx: {status, error, message, errors: [{field, reason}], path}."""

import logging
import uuid

from flask import request
from werkzeug.exceptions import HTTPException

from .errors import ApiError

log = logging.getLogger(__name__)


def error_body(status, code, message, errors=None, **extra):
    body = {"status": status, "error": code, "message": message, "errors": errors or [], "path": request.path}
    body.update(extra)
    return body, status


DRAIN_CAP = 16 * 1024 * 1024


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


def register_error_handlers(app):
    """Register the handlers once, for domain errors, HTTP errors and anything unexpected."""

    @app.errorhandler(ApiError)
    def _api_error(exc):
        if exc.status >= 500:
            log.error("%s %s -> %s %s: %s", request.method, request.path, exc.status, exc.code, exc.message)
        body, status = error_body(exc.status, exc.code, exc.message, exc.errors, **exc.extra)
        return body, status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 405:
            allowed = ", ".join(exc.valid_methods or [])
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        elif exc.code == 413:
            message = f"the request body is larger than {request.max_content_length} bytes"
            _drain_body(request.environ)
        return error_body(exc.code, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc):
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", incident, request.method, request.path)
        return error_body(
            500,
            "internal_error",
            f"unexpected server error; the service log has the details under incident {incident}",
            incident=incident,
        )
