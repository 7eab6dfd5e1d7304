"""A run's record (its state.json) as a type: every kind's record is a dataclass made from the kind's
table of fields, read with `from_json` and written with `to_json`, with its version on disk.

A kind (jobs, evaluations, deployments) declares its table of `Field`s and makes its class with
`record_class`: one attribute a stored field, its default where a record lacks it, and `extras` for
keys the table does not know (a newer release's, say), which are written back as they were. A record
of an earlier version reads with each missing field's default and is written as the current
version. Fields marked `optional` are left out of the file while they are None, so a record holds
what it held before they existed.

A change to a record is a function that mutates it and says what it did: UNCHANGED (nothing is
written), CHANGED, or changed(reason=...) whose details go with a status change into its history.
"""

import dataclasses
import time
from dataclasses import dataclass

from ..state import JobStatus, now_utc
from . import KINDS


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # the wire type: string, integer, number, boolean, object, strings, objects
    about: str = ""  # its description in the OpenAPI document
    default: object = None  # a new record's value, and an older record's where it lacks the field
    stored: bool = True  # kept in state.json (False: computed for the status view only)
    shown: bool = False  # in the status view and its schema
    resumed: bool = False  # a job resumed from this one takes it over
    webhook: bool = False  # in each webhook event's "job"
    optional: bool = False  # written only when set (a new record leaves it out)
    nullable: bool = True  # may read null in the status view


_PY_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict}


def _default(field):
    return list(field.default) if isinstance(field.default, tuple) else field.default


class RunRecord:
    """What every kind's record is: its fields as attributes, `extras` for the keys its table does
    not know. Made by record_class; never made directly."""

    FIELDS = ()  # the kind's stored fields, in the file's order
    KIND = None  # the kind's name in the file (None: a job, as every release wrote it)
    SCHEMA_VERSION = 1

    NAMES = frozenset()  # the names of FIELDS
    OPTIONAL = ()  # the names of the optional ones
    DEFAULTS = {}  # each field's default
    LISTS = ()  # the names of the fields whose default is a list

    @classmethod
    def from_json(cls, data):
        """The record a state.json holds, brought up to this version (missing fields take their
        defaults); keys the table does not know are kept in `extras`."""
        # Every scheduling pass reads every unfinished record: a set operation, not a loop, where
        # (as nearly always) the file holds no key the table does not know.
        if cls.NAMES.issuperset(data):
            values, extras = data, {}
        else:
            values = {k: v for k, v in data.items() if k in cls.NAMES}
            extras = {k: v for k, v in data.items() if k not in cls.NAMES}
        # Made from the defaults and the file's values, not through the generated __init__ of a
        # hundred arguments: a third of a record's read.
        record = object.__new__(cls)
        fields = record.__dict__
        fields.update(cls.DEFAULTS)
        for name in cls.LISTS:
            if name not in values:
                fields[name] = list(cls.DEFAULTS[name])  # each record its own list
        fields.update(values)
        fields["extras"] = extras
        fields["nulls"] = {name for name in cls.OPTIONAL if name in data and data[name] is None}
        fields["schema_version"] = cls.SCHEMA_VERSION
        return record

    @classmethod
    def new(cls, **values):
        """A new record: `values` over the defaults; a name that is no field of the kind is an error."""
        unknown = set(values) - cls.NAMES
        if unknown:
            raise ValueError(f"not fields of a {cls.KIND or 'job'} record: {sorted(unknown)}")
        return cls(**values)

    def to_json(self):
        """The record as state.json holds it: the table's order, optional fields only when set."""
        out = {}
        for field in self.FIELDS:
            value = getattr(self, field.name)
            if field.optional and value is None and field.name not in self.nulls:
                continue  # left out, as a record without it was written
            out[field.name] = value
        out.update(self.extras)
        return out

    def set(self, values=(), **more):
        """Set several fields at once, from a mapping and keywords (each a field of the kind)."""
        for name, value in {**dict(values), **more}.items():
            if name not in self.__dataclass_fields__ or name in ("extras", "nulls"):
                raise AttributeError(f"{name!r} is no field of a {self.KIND or 'job'} record")
            setattr(self, name, value)

    def take(self, name):
        """A field's value, leaving it None (an optional one is then left out of the file)."""
        value = getattr(self, name)
        self.set(**{name: None})
        return value

    def copy(self):
        return type(self).from_json(self.to_json())

    def path(self, name, default=None):
        """One of the run's paths (its `paths` field: config, output_dir, log, ...)."""
        return (self.paths or {}).get(name, default)

    def pick(self, names):
        """{name: value} of the named fields (None where the kind has no such field)."""
        return {name: getattr(self, name, None) for name in names}


def record_class(name, fields, kind, schema_version):
    """The dataclass of a kind's record, from its table of fields."""
    stored = tuple(f for f in fields if f.stored)
    attributes = []
    for field in stored:
        python_type = _PY_TYPES.get(field.kind, list) | None
        if isinstance(field.default, tuple):
            default = dataclasses.field(default_factory=lambda d=field.default: list(d))
        else:
            default = dataclasses.field(default=field.default)
        attributes.append((field.name, python_type, default))
    attributes.append(("extras", dict, dataclasses.field(default_factory=dict, repr=False, compare=False)))
    # The optional fields the file held as null: written back so, as the file held them.
    attributes.append(("nulls", set, dataclasses.field(default_factory=set, repr=False, compare=False)))
    cls = dataclasses.make_dataclass(
        name,
        attributes,
        bases=(RunRecord,),
        namespace={
            "FIELDS": stored,
            "NAMES": frozenset(f.name for f in stored),
            "OPTIONAL": tuple(f.name for f in stored if f.optional),
            "DEFAULTS": {f.name: f.default for f in stored},
            "LISTS": tuple(f.name for f in stored if isinstance(f.default, tuple)),
            "KIND": kind,
            "SCHEMA_VERSION": schema_version,
        },
        eq=True,
    )
    return cls


def run_fields(kind, schema_version, key, paths):
    """The fields of a run that is not a job (an evaluation, a deployment) which the queue, the
    liveness checks, the scheduler and the monitor read as they read a job's: `key` and `paths` say
    what its job_id and paths hold."""
    return (
        Field("attempt", "integer", "", 1, shown=True),
        Field("max_attempts", "integer", "", 1),
        Field("job_id", "string", key),
        Field("kind", "string", default=kind),
        Field("schema_version", "integer", default=schema_version),
        Field("gpus", "integer", "GPUs it asked for"),
        Field("created_ns", "integer"),
        Field("updated_at", "string"),
        Field("pid", "integer"),
        Field("launch", "object"),
        Field("monitor", "object"),
        Field("trainer", "object"),
        Field("stop_requested_at", "string"),
        Field("paths", "object", paths),
        Field("history", "objects", default=()),
        Field("about", "string"),
        Field("exit_code", "integer"),
        Field("signal", "string"),
        Field("reason", "string"),
        Field("lost", "object", optional=True),
        Field("tenant", "string", "the team it belongs to", shown=True),
        Field("created_by", "string", "the name of the token that created it", shown=True),
        Field("gpu_seconds", "number", "GPUs held x seconds running, every attempt", 0.0, shown=True),
        Field("cpu_seconds", "number", "CPU seconds its processes used, every attempt", 0.0, shown=True),
        Field("accounted", "object", "gpu_seconds and cpu_seconds already in the ledger", optional=True),
        # What the queue, the scheduler and the liveness checks read of every run, as of a job:
        # written only when set, so the records of runs that never use them hold what they held.
        Field("priority", "string", optional=True),
        Field("preemptible", "boolean", optional=True),
        Field("preemptions", "integer", optional=True),
        Field("preempted_by", "string", optional=True),
        Field("preempting", "object", optional=True),
        Field("queue_head_at", "string", optional=True),
        Field("stop_forced_at", "string", optional=True),
        Field("engine_launches", "integer", optional=True),
        Field("disk_bytes", "integer", optional=True),
        Field("broken", "boolean", optional=True),
    )


def queued_now(max_attempts):
    """The fields of a run made now and queued: its times, its attempts and its first history entry."""
    created = now_utc()
    return {
        "created_at": created,
        "created_ns": time.time_ns(),  # orders runs created within the same second
        "updated_at": created,
        "max_attempts": max(1, max_attempts),
        "history": [{"status": JobStatus.PENDING.value, "at": created, "attempt": 1}],
    }


def read(data):
    """The record of a state.json of any kind, as its kind's class."""
    return KINDS.record_class(data.get("kind")).from_json(data)


@dataclass(frozen=True)
class Change:
    """What a change to a record did: the store writes the record only when `write`, and a status
    change keeps `details` (a reason, say) in its history entry."""

    write: bool
    details: dict | None = None


UNCHANGED = Change(False)
CHANGED = Change(True)


def changed(**details):
    """The record changed; `details` go with its status change into the history."""
    return Change(True, details or None)


def setter(**values):
    """A change that sets `values`; it writes the record only if that changes something."""

    def change(record):
        if all(getattr(record, key) == value for key, value in values.items()):
            return UNCHANGED
        record.set(**values)
        return CHANGED

    return change


__all__ = ["CHANGED", "UNCHANGED", "Change", "Field", "RunRecord", "changed", "read", "record_class"]
