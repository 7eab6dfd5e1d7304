"""Job status values (terminal ones never change: JobStore enforces it) and time stamps."""

import enum
from datetime import UTC, datetime

# The guide's format: "2025-01-06T10:30:00" (UTC, no offset, second precision).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    def is_terminal(self):
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED})


def now_utc():
    """Return the current UTC time as the guide formats it."""
    return datetime.now(UTC).strftime(TIME_FORMAT)


def creation_order(record):
    """Sort key for runs by creation: created_ns (nanoseconds), else created_at, then the id."""
    created = record.created_ns
    if created is None:
        at = parse_time(record.created_at)
        created = int(at.timestamp() * 1e9) if at else 0
    return (created, record.job_id or "")


def parse_time(text):
    """Parse a time written by now_utc() back into an aware datetime (None stays None)."""
    if not text:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
