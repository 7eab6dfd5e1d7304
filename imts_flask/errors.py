"""Domain exceptions that carry their HTTP status and a machine-readable code."""


class ApiError(Exception):
    """An error that maps to one JSON response: status, code, message and field errors."""

    status = 500
    code = "internal_error"

    def __init__(self, message, *, field=None, errors=None, status=None, code=None, extra=None, headers=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.errors = list(errors or [])
        if field is not None:
            self.errors.insert(0, {"field": field, "reason": message})
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class ValidationFailed(ApiError):
    status = 400
    code = "validation_error"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(ApiError):
    """The service cannot serve the request now (lock timeout, store unwritable); retry later."""

    status = 503
    code = "unavailable"


class InsufficientStorage(ApiError):
    status = 507
    code = "insufficient_storage"
