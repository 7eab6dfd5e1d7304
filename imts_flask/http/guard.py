"""Requests a browser can be made to send: another site's forms and fetches, and DNS rebinding.

With auth off (the default) a page on another origin can make its visitor's browser POST to the
service (a plain HTML form, or fetch in no-cors mode), and through DNS rebinding read from it under
its own domain name. Two checks stop both without touching other clients (Spring's RestTemplate,
curl and the CLI send neither Origin nor Sec-Fetch-Site):

- the Host a request names must be this service's: an IP address, localhost, this machine's name,
  or one of `allowed_hosts` (a rebinding page always sends its own domain); others get 421;
- a request that changes something (any method but GET, HEAD, OPTIONS) from a browser must come
  from this service's own origin (the dashboard) or one of `allowed_origins`: Sec-Fetch-Site
  same-origin or none (a person typed it), else an Origin equal to the Host; others get 403.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from ..errors import Forbidden, Misdirected

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(host):
    """Split a Host header into (lower-case name, port or None); (None, None) if it is not one."""
    try:
        parts = urlsplit("//" + host)
        return (parts.hostname or "").rstrip(".") or None, parts.port
    except ValueError:
        return None, None


def _is_address(name):
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """The two checks, built once from the settings."""

    def __init__(self, settings, host_name=None):
        hosts = [h.strip().lower().rstrip(".") for h in settings.allowed_hosts.split(",") if h.strip()]
        self.any_host = "*" in hosts
        own = {"localhost", (host_name or socket.gethostname()).lower()}
        self.hosts = own | {h for h in hosts if not h.startswith(".")}
        self.domains = tuple(h for h in hosts if h.startswith("."))
        origins = settings.allowed_origins.split(",")
        self.origins = {o.strip().lower().rstrip("/") for o in origins if o.strip()}

    def host_allowed(self, host):
        """Whether a Host header names this service (an address, a local name, an allowed name)."""
        if self.any_host:
            return True
        name, _port = _split_host(host or "")
        if name is None:
            return False
        return _is_address(name) or name in self.hosts or name.endswith(self.domains)

    def same_origin(self, headers, host):
        """Whether a changing request comes from this service's origin, or from no browser at all."""
        site = headers.get("Sec-Fetch-Site")
        if site is not None:
            if site in ("same-origin", "none"):
                return True
        origin = headers.get("Origin")
        if origin is None:
            return site is None  # no browser says cross-site without an Origin; a server says neither
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        if site is not None or origin == "null":
            return False
        parts = urlsplit(origin)
        name, port = _split_host(host or "")
        try:
            origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # a port that is no number
            return False
        # A Host without a port (a proxy passing $host) leaves only the names to compare.
        return parts.hostname == name and (port is None or origin_port == port)

    def check(self, method, host, headers):
        """Raise 421 for a Host that is not this service's, 403 for a cross-site change."""
        if not self.host_allowed(host):
            raise Misdirected(
                "this service does not answer to that host name (add it to allowed_hosts)", field="Host"
            )
        if method not in SAFE_METHODS and not self.same_origin(headers, host):
            raise Forbidden(
                "a request from another site may not change anything here "
                "(a browser page must be on this service's own origin, or in allowed_origins)",
                field="Origin",
            )


def init_app(app, settings, host_name=None):
    """Check every request before anything else looks at it."""
    from flask import request

    guard = Guard(settings, host_name)

    @app.before_request
    def _guard():
        guard.check(request.method, request.host, request.headers)
