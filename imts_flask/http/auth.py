"""Optional bearer-token authentication, compared in constant time. No Flask import."""

import hashlib
import hmac
import re

from ..errors import ApiError

_BEARER = re.compile(r"Bearer ([A-Za-z0-9._~+/=-]{1,512})")


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


def _digest(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenCheck:
    """Accept the configured tokens; every refusal looks the same, whatever was wrong."""

    def __init__(self, settings):
        tokens = [t.strip() for t in settings.auth_tokens.split(",") if t.strip()]
        digests = [d.strip().lower() for d in settings.auth_token_sha256.split(",") if d.strip()]
        self.digests = [_digest(t) for t in tokens] + digests

    @property
    def enabled(self):
        return bool(self.digests)

    def check(self, authorization):
        """Raise Unauthorized unless the Authorization header carries a configured token."""
        match = _BEARER.fullmatch(authorization or "")
        presented = _digest(match.group(1)) if match else _digest("")
        # Compare with every digest, without stopping early, so timing says nothing.
        accepted = False
        for digest in self.digests:
            accepted |= hmac.compare_digest(presented, digest)
        if not (match and accepted):
            raise Unauthorized(
                "a valid bearer token is required: send Authorization: Bearer <token>",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="imts-training-api"'},
            )


OPEN_ENDPOINTS = ("training.health", "training.deployment_upstream")


def init_app(app, settings):
    """With tokens configured, every endpoint but health needs one (unknown paths too: 401, not 404).

    Health for load balancers, and the dashboard's pages and files, which hold no data (their
    scripts' data calls need the token), are open; so is a ready deployment's port for Nginx's
    auth_request (its callers hold the deployment's own key, which its server checks).
    """
    from flask import request

    tokens = TokenCheck(settings)
    app.extensions["imts_auth"] = tokens

    @app.before_request
    def _authenticate():
        if tokens.enabled and request.endpoint not in OPEN_ENDPOINTS and request.blueprint != "dashboard":
            tokens.check(request.headers.get("Authorization"))
