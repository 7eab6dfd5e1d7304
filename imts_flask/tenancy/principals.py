"""Who is asking: the caller of the request being served, and what it may see.

The HTTP layer sets the caller once per request (`use`); below it, the service reads it where it
makes a record (`owner`) or follows an id a body names (`check_visible`). With auth off there is
no caller (None) and everything is visible, as before tenants existed. An admin sees every tenant;
anyone else sees its own tenant's resources only, and another tenant's look like nothing at all
(a 404, so that ids do not leak).
"""

import contextvars
from dataclasses import dataclass

from ..errors import Forbidden, NotFound

ADMIN, MEMBER, VIEWER = "admin", "member", "viewer"


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name (never the token)
    role: str
    tenant: str | None = None  # None for admins: every tenant

    @property
    def admin(self):
        return self.role == ADMIN


_caller = contextvars.ContextVar("imts_caller", default=None)


def use(principal):
    """Make `principal` (or None: auth off) the caller of the request being served."""
    _caller.set(principal)


def current():
    return _caller.get()


def owner():
    """The fields a new record takes from its creator: its tenant and the token's name."""
    caller = current()
    if caller is None:
        return {"tenant": None, "created_by": None}
    return {"tenant": caller.tenant, "created_by": caller.name}


def scoped(key):
    """An Idempotency-Key in its caller's namespace: a team's keys apart from every other team's and
    from the admins' (else a retry would be answered with another's run). Apart by construction: a
    team's key is "<tenant>" NEWLINE "<key>", and no key a client sends holds a newline (it is printable
    text, checked at the edge and here), so no admin's key can name a team's."""
    if not isinstance(key, str) or not key.isprintable():
        raise ValueError("an Idempotency-Key is printable text")
    caller = current()
    return key if caller is None or caller.tenant is None else f"{caller.tenant}\n{key}"


def visible(tenant):
    """Whether the caller may see a resource of `tenant` (None: made by an admin or before tenants)."""
    caller = current()
    return caller is None or caller.admin or caller.tenant == tenant


def check_visible(record, what, ident, field="job_id"):
    """A 404 for a resource (its record) of another tenant, worded as for one that does not exist."""
    if not visible(record.tenant):
        raise NotFound(f"{what} {ident} does not exist", field=field)
    return record


def check_may_change(action="change things"):
    """Viewers read; members and admins act."""
    caller = current()
    if caller is not None and caller.role == VIEWER:
        raise Forbidden(f"the token {caller.name!r} is a viewer of {caller.tenant}: it may not {action}")
