"""Who is asking, and whether it may: bearer tokens, tenants and roles, and the audit log.

With no token configured (no tenants file, no auth_tokens) the service is open, as it always was:
no caller, everything visible, nothing audited but changes. Otherwise every endpoint but a few
needs a token: an admin's (the tenants file's `admins`, or the plain auth_tokens) sees and does
everything; a member acts on its own tenant's resources; a viewer reads them. Another tenant's job
or deployment answers 404, as one that does not exist. /metrics (per-job series) is for admins.
"""

import ipaddress
import re
import types

from ..errors import Forbidden, Unauthorized
from ..tenancy import principals
from ..tenancy.audit import AuditLog

_BEARER = re.compile(r"Bearer ([A-Za-z0-9._~+/=-]{1,512})")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Open without a service token: health for load balancers, and a ready deployment's port for Nginx's
# auth_request, which answers only a request carrying that deployment's own key.
OPEN_ENDPOINTS = ("meta.health", "deployments.deployment_upstream")
ADMIN_ENDPOINTS = ("metrics.prometheus_metrics",)
# POSTs that change nothing: a viewer may call a model.
READING_POSTS = ("openai.chat_completions", "openai.completions")
# URL parts that name a resource of a tenant, and what reads its record.
_OWNED = {"job_id": "job", "deployment_id": "deployment"}


def _refuse():
    return Unauthorized(
        "a valid bearer token is required: send Authorization: Bearer <token>",
        field="Authorization",
        headers={"WWW-Authenticate": 'Bearer realm="imts-training-api"'},
    )


def client_address(remote, forwarded, trusted):
    """The client: X-Forwarded-For's last hop when the peer is a trusted proxy, else the peer."""
    if forwarded and remote in trusted:
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            if hop not in trusted:
                return hop
    return remote


def init_app(app, settings):
    """Authenticate each request (a principal, or 401), check its role and the tenant of the
    resource its URL names (403, 404), and audit every change and every refusal."""
    from flask import g, request

    from . import get_service

    tenants = app.extensions["imts"].tenants
    audit = AuditLog(settings.path("audit_log"))
    trusted = {p.strip() for p in settings.trusted_proxies.split(",") if p.strip()}

    @app.before_request
    def _authenticate():
        principals.use(None)
        tenants.reload()
        if not tenants.enabled or request.endpoint in OPEN_ENDPOINTS or request.blueprint == "dashboard":
            return
        match = _BEARER.fullmatch(request.headers.get("Authorization") or "")
        principal = tenants.principal(match.group(1) if match else "")
        if principal is None:
            raise _refuse()
        principals.use(principal)
        g.imts_principal = principal
        if request.endpoint in ADMIN_ENDPOINTS and not principal.admin:
            raise Forbidden(f"the token {principal.name!r} is not an admin's: /metrics is for admins")
        if request.method not in SAFE_METHODS and request.endpoint not in READING_POSTS:
            principals.check_may_change("change things")
        for part, what in _OWNED.items():
            ident = (request.view_args or {}).get(part)
            if ident is not None and not principal.admin:
                _check_owner(get_service().store, what, ident, part)

    @app.after_request
    def _audit(response):
        if request.method in SAFE_METHODS and response.status_code not in (401, 403, 421, 429):
            return response
        principal = principals.current()
        audit.write(
            tenant=principal.tenant if principal else None,
            token=principal.name if principal else None,
            client=client_address(request.remote_addr, request.headers.get("X-Forwarded-For"), trusted),
            action=f"{request.method} {request.url_rule.rule if request.url_rule else request.path[:200]}",
            resource=dict(request.view_args or {}),
            outcome=response.status_code,
        )
        return response


_NOBODYS = types.SimpleNamespace(tenant=object())  # what a run that does not exist reads as


def _check_owner(store, what, ident, part):
    """A 404 for another tenant's resource, and the same 404 for one that does not exist, before
    the view reads the body (else a 400 about the body would tell the two apart). A malformed id
    is left to the view."""
    from ..errors import NotFound, ValidationFailed

    try:
        state = store.read(ident)
    except ValidationFailed:
        return
    except NotFound:
        state = _NOBODYS  # no one's: nobody sees it
    principals.check_visible(state, what, ident, field=part)
