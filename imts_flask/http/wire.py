"""What every resource's schemas share: request schemas that take snake_case or the guide's
camelCase and null as "not given", strict booleans, whole-string patterns, dataset names, pages,
the one error shape."""

import re

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    post_load,
    pre_load,
    validate,
)

from ..datasets.uploads import NAME as DATASET_NAME
from ..datasets.uploads import NAME_RULE as DATASET_NAME_RULE

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

MAX_DATASETS = 8

# The bounds of numbers no request may pass: every integer of a request or a query has both ends.
MAX_OFFSET = 10**9  # items of a listing skipped

MAX_BYTE_OFFSET = 2**53 - 1  # a file's bytes (JSON's largest exact integer)

MAX_STEP = 10**12  # a training step


class Whole(validate.Regexp):
    """A value that the pattern matches whole (re.fullmatch): marshmallow's Regexp uses re.match, whose
    `$` matches before a final newline too ("name\\n" would pass). Every pattern of a request uses it."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# A job's id where a body names one, the weights of a job a request names, and the names of
# registered models, deployments and aliases.
WEIGHTS = Whole(
    r"^(final|best|checkpoint-[0-9]{1,12})$", error="must be final, best or a name like checkpoint-500"
)

JOB_ID = Whole(
    r"^train_[0-9a-z]{8}$", error="must look like train_ followed by 8 lowercase letters or digits"
)

REFERENCE = Whole(
    r"^[a-z0-9][a-z0-9_-]{0,62}(:[0-9]{1,9}|@[a-z0-9][a-z0-9_-]{0,62})$",
    error="must look like name:3 or name@alias",
)

NAME = Whole(
    r"^[a-z0-9][a-z0-9_-]{0,62}$",
    error="must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
)


def _snake(name):
    return _CAMEL.sub("_", name).lower()


class RequestSchema(Schema):
    """Accept snake_case and camelCase field names (Jackson's default), and null as "not given"."""

    class Meta:
        unknown = RAISE

    NOT_AN_OBJECT = "the request body must be a JSON object"

    @pre_load
    def _normalise(self, data, **kwargs):
        if not isinstance(data, dict):
            raise ValidationError(self.NOT_AN_OBJECT)
        out = {}
        for key, value in data.items():
            name = _snake(key) if isinstance(key, str) else key
            if name in out and out[name] != value:
                raise ValidationError(
                    f"given twice with different values (as '{key}' and another spelling)", name
                )
            if value is not None or name not in out:
                out[name] = value
        return out

    @post_load
    def _defaults(self, data, **kwargs):
        for name, field in self.fields.items():
            default = field.load_default
            if data.get(name) is None and default is not missing:
                data[name] = default() if callable(default) else default
        return data


REQUIRED = {"required": "is required", "null": "is required and may not be null"}


class JsonBoolean(fields.Boolean):
    """true or false, nothing else (marshmallow's Boolean also takes 1, 0, "yes", "on", ...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class QueryBoolean(fields.Boolean):
    """true or false in a query string (as the OpenAPI document says: nothing else)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value not in ("true", "false"):
            raise ValidationError("must be true or false")
        return value == "true"


def given(name):
    """JSON Schema of "the field is there and not null" (for a schema's openapi_rules)."""
    return {"required": [name], "properties": {name: {"not": {"enum": [None]}}}}


_DATASET = DATASET_NAME.pattern

_NAMES_TEXT = f"^ *{_DATASET} *(, *{_DATASET} *){{0,{MAX_DATASETS - 1}}}$"


class DatasetField(fields.Field):
    """A dataset name, several names separated by commas (spaces around them are dropped), or a list
    of names; at most MAX_DATASETS, none twice."""

    OPENAPI = {
        "oneOf": [
            {"type": "string", "pattern": _NAMES_TEXT},
            {
                "type": "array",
                "items": {"type": "string", "pattern": f"^{_DATASET}$"},
                "minItems": 1,
                "maxItems": MAX_DATASETS,
                "uniqueItems": True,
            },
        ],
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            names = [n.strip(" ") for n in value.split(",")]
        elif isinstance(value, list) and all(isinstance(n, str) for n in value):
            names = list(value)
        else:
            raise ValidationError("must be a dataset name, names separated by commas, or a list of names")
        if not names or any(not n for n in names):
            raise ValidationError("must name at least one dataset, with no empty names")
        if len(names) > MAX_DATASETS:
            raise ValidationError(f"may name at most {MAX_DATASETS} datasets")
        bad = [n for n in names if not DATASET_NAME.fullmatch(n)]
        if bad:
            raise ValidationError(f"{bad[0][:80]!r} is no dataset name: each is {DATASET_NAME_RULE}")
        if len(set(names)) != len(names):
            raise ValidationError("names a dataset twice")
        return names


class NestedRequestSchema(RequestSchema):
    NOT_AN_OBJECT = "must be a JSON object"


class PageQuerySchema(Schema):
    """A page of a listing: at most `limit` items after the first `offset`."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


class ResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE
        ordered = True


class FieldErrorSchema(ResponseSchema):
    field = fields.String()
    reason = fields.String()


class ErrorSchema(ResponseSchema):
    status = fields.Integer()
    error = fields.String()
    message = fields.String()
    errors = fields.List(fields.Nested(FieldErrorSchema))
    path = fields.String()


def flatten_errors(messages, prefix=""):
    """Turn marshmallow's nested error dict into [{field, reason}, ...]."""
    out = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = (prefix or "body") if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            out.extend(flatten_errors(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend({"field": prefix or "body", "reason": m} for m in messages)
    elif isinstance(messages, list):
        for item in messages:
            out.extend(flatten_errors(item, prefix))
    else:
        out.append({"field": prefix or "body", "reason": str(messages)})
    return out
