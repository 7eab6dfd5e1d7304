"""What gunicorn needs from this package (gunicorn.conf.py imports it; the app never does).

- gunicorn answers some requests itself before the app sees them (a header too large, a URI too
  long, a request line it cannot parse): `install()` makes those answers the API's one JSON error
  shape instead of gunicorn's HTML page.
- `RedactingLogger` keeps the values of secret-looking query parameters (token, key, secret,
  password, auth, signature, ...) out of the access log, in the request line, the query string and
  the Referer; the parameters themselves stay, so a person reading the log sees what was asked.
"""

import hashlib
import json
import os
import re

from gunicorn import glogging, util

REDACTED = "[redacted]"
_SECRET_PARAMETER = re.compile(
    r"((?:^|[?&;])[^=&;#\s]*(?:token|key|secret|passw|auth|signature|sig|credential|session|jwt)"
    r"[^=&;#\s]*=)[^&;#\s]*",
    re.IGNORECASE,
)
# Headers that are secrets whole, should an operator's access_log_format name them.
_SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{proxy-authorization}i", "{x-api-key}i")


def metrics_dir(home, shm="/dev/shm"):
    """Where the workers' Prometheus samples live (PROMETHEUS_MULTIPROC_DIR, unless set): on a RAM
    filesystem apart from the data disk. prometheus_client memory-maps them as sparse files, so on a
    full disk a worker writing a new sample dies of SIGBUS (the chaos soak's full_disk found it)."""
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return os.path.join(shm, "imts-prometheus-" + hashlib.sha256(home.encode()).hexdigest()[:12])
    return os.path.join(home, "cache", "prometheus")


def redact(text):
    """Replace the values of secret-looking query parameters in a URL, query string or request line."""
    if not isinstance(text, str) or "=" not in text:
        return text
    return _SECRET_PARAMETER.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingLogger(glogging.Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q", "f", "{referer}i", "{raw_uri}e", "{query_string}e", "{http_referer}e"):
            if key in atoms:
                atoms[key] = redact(atoms[key])
        for key in _SECRET_HEADERS:
            if key in atoms:
                atoms[key] = REDACTED
        return atoms


def _json_error(sock, status_int, reason, mesg):
    """gunicorn's own error answer, in the API's shape: {status, error, message, errors, path}."""
    body = json.dumps(
        {
            "status": status_int,
            "error": reason.lower().replace(" ", "_"),
            "message": mesg or reason,
            "errors": [],
            "path": "",  # the request could not be read far enough to know it
        }
    ).encode("utf-8")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install():
    """Make gunicorn's own error answers JSON (workers fork from the master that calls this)."""
    util.write_error = _json_error
