"""The service's errors, below HTTP: what went wrong, in words, with the fields it is about.

Each says what kind of failure it is, not an HTTP status: the stores, the runners and the
detached monitors raise and catch them, and serve no HTTP. The HTTP layer alone maps them to
statuses, in one table (http/errors.py), as MLflow's exceptions map error codes.
"""

import errno


class ServiceError(Exception):
    """A failure a caller can be told about: a machine-readable code, a message and field errors
    ({field, reason}); `extra` goes into the error body, `headers` into the answer."""

    code = "internal_error"

    def __init__(self, message, *, field=None, errors=None, code=None, extra=None, headers=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.errors = list(errors or [])
        if field is not None:
            self.errors.insert(0, {"field": field, "reason": message})
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class ValidationFailed(ServiceError):
    """The request is not one the service can take (a field, its value, a rule between fields)."""

    code = "validation_error"


class Unauthorized(ServiceError):
    """No credential, or one nobody holds."""

    code = "unauthorized"


class Forbidden(ServiceError):
    """The caller may not do this (its role, its team's limits, another site's request)."""

    code = "forbidden"


class NotFound(ServiceError):
    """Nothing by that name (another team's looks the same)."""

    code = "not_found"


class Conflict(ServiceError):
    """The resource's state does not allow it now (a job still running, a name taken)."""

    code = "conflict"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class Misdirected(ServiceError):
    """A request for a host this service does not answer to."""

    code = "misdirected_request"


class TooManyRequests(ServiceError):
    """A limit on how many: try again later (its headers say when)."""

    code = "too_many_requests"


class Unavailable(ServiceError):
    """The service cannot do it now (a lock timed out, the store is not writable); retry later."""

    code = "unavailable"


class InsufficientStorage(ServiceError):
    """The disk is full: nothing was written."""

    code = "insufficient_storage"


def storage_error(exc, what):
    """Translate an OSError from a write into the API error a client should see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left on the device while {what}; nothing was changed")
    return Unavailable(f"the job store is not writable while {what} ({exc.strerror}); nothing was changed")
