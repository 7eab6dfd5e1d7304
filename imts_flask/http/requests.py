"""What every resource's views share: reading a request (its JSON body, bounded; its schema,
loaded; its Idempotency-Key) and answering a create (201 with Location, or 200 with
Idempotent-Replayed for a retry), and the ETag of a JSON read.

A view loads, calls the service, dumps: `load(schema(Cls), json_body())`, then `created(...)`.
"""

import functools
import json
import re
import tempfile

from flask import Request, request
from marshmallow import ValidationError

from ..errors import UnsupportedMediaType, ValidationFailed
from .wire import flatten_errors

PREFIX = "/api/v1/training"  # every resource's blueprint is under it


class UploadRequest(Request):
    """A request whose file parts stream into `upload_dir` when a view sets it (uploads stay off the
    heap and off /tmp: they land on the filesystem where the dataset will live)."""

    upload_dir = None

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        if self.upload_dir is None:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        return tempfile.NamedTemporaryFile(dir=self.upload_dir, prefix="part-", delete=False)


MAX_IDEMPOTENCY_KEY = 255

_IDEMPOTENCY_KEY = re.compile(f"[ -~]{{1,{MAX_IDEMPOTENCY_KEY}}}")  # as the OpenAPI document says

MAX_DEPTH = 8  # a request body is an object of fields whose values nest at most a few levels


@functools.cache
def schema(cls):
    """One instance per schema: building one deep-copies its fields, and they hold no request state."""
    return cls()


def load(loader, data):
    try:
        return loader.load(data)
    except ValidationError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationFailed(
            "; ".join(f"{e['field']}: {e['reason']}" for e in errors), errors=errors
        ) from None


def json_body():
    """The request's JSON body: application/json only, at most MAX_DEPTH deep, text without surrogates."""
    raw = body()
    if not raw:
        raise ValidationFailed("the request body is empty; send a JSON object", field="body")
    if not request.is_json:
        raise UnsupportedMediaType(
            f"send the body as Content-Type: application/json (not {request.mimetype or 'none'})",
            field="Content-Type",
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        data = _TOO_DEEP
    except ValueError:
        raise ValidationFailed("the request body is not valid JSON", field="body") from None
    if data is _TOO_DEEP or _depth(data) > MAX_DEPTH:
        raise ValidationFailed(f"the request body is nested more than {MAX_DEPTH} levels deep", field="body")
    return data


_TOO_DEEP = object()

# A lone UTF-16 surrogate ("\ud800" in JSON) is valid JSON but no valid text: no file could hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _depth(value):
    """Nesting depth of a parsed JSON value, without recursion; refuse text no file can hold."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((k, level) for k in item)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise ValidationFailed("the request body holds a lone UTF-16 surrogate: not text", field="body")
    return deepest


def optional_json_body():
    """The JSON body of a request whose body may be left out (no body, or an empty one, is {})."""
    return json_body() if body() else {}


def body():
    """The request body; past max_content_length a 413, chunked bodies (no Content-Length) too."""
    raw = request.get_data()  # a declared Content-Length over the limit is a 413 here
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        request.stream.read(1)  # werkzeug's capped stream gave exactly `limit` bytes: more is a 413
    return raw


def idempotency_key():
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def conditional(response):
    """Give the API's JSON GET (and HEAD) answers an ETag; If-None-Match with the same tag gets 304
    and no body."""
    from . import RESOURCES

    api = request.blueprint in RESOURCES
    if api and request.method in ("GET", "HEAD") and response.status_code == 200 and response.is_json:
        response.add_etag()
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)
    return response


def created(payload, location, replayed=False, status=201):
    """A create's answer: `status` (201, or 202 for a run queued) with its Location, or 200 with
    Idempotent-Replayed: true when an Idempotency-Key's retry found what the first request made."""
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return payload, 200 if replayed else status, headers
