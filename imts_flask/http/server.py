"""What gunicorn needs from this package (gunicorn.conf.py imports it; the app never does).

- gunicorn answers some requests itself before the app sees them (a header too large, a URI too
  long, a request line it cannot parse): `install()` makes those answers the API's one JSON error
  shape instead of gunicorn's HTML page.
- `RedactingLogger` keeps the values of secret-looking query parameters (token, key, secret,
  password, auth, signature, ...) out of the access log, in the request line, the query string and
  the Referer; the parameters themselves stay, so a person reading the log sees what was asked.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time

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
    """Where the Prometheus samples of a home's gunicorn masters live, each master in a folder of
    its own below (`own_metrics_dir`): on a RAM filesystem apart from the data disk.
    prometheus_client memory-maps them as sparse files, so on a full disk a worker writing a new
    sample dies of SIGBUS (the chaos soak's full_disk found it)."""
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return os.path.join(shm, "imts-metrics-" + hashlib.sha256(home.encode()).hexdigest()[:12])
    return os.path.join(home, "cache", "metrics")


def own_metrics_dir(base):
    """A folder below `base` for one master's samples: a name no other master takes (two instances
    on one home, or a restart whose new master starts while the old one is still exiting, each
    keep their own, and one's exit never removes the other's). The folder this process already
    holds, if it holds one: gunicorn reads its config again on a HUP, in the same master."""
    return next(iter(_held), None) or os.path.join(base, f"master-{os.getpid()}-{secrets.token_hex(6)}")


_held = {}  # folder -> the open lock file that says its master lives (inherited by its workers)


def claim_metrics_dir(path):
    """Make `path` this master's samples folder, held by an flock on `<path>.lock` for as long as
    the master or any of its workers lives; first remove the folders of masters that are gone
    (the kernel drops a dead process's flock, so a kill -9 leaves nothing held)."""
    base = os.path.dirname(path)
    os.makedirs(base, exist_ok=True)
    _sweep_metrics_dirs(base, keep=path)
    # The lock first, under a temporary name, then renamed into place locked: a sweeper that sees
    # `<folder>.lock` finds it held, and a folder without its .lock beside it is a dead master's.
    staging = f"{path}.lock.{secrets.token_hex(4)}"
    handle = open(staging, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(staging, path + ".lock")
    os.makedirs(path, exist_ok=True)
    _held[path] = handle
    return path


def release_metrics_dir(path):
    """Remove this master's samples folder and its lock (at its exit); another master's stay."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".lock")
    handle = _held.pop(path, None)
    if handle is not None:
        handle.close()


def _sweep_metrics_dirs(base, keep):
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        full = os.path.join(base, name)
        if full == keep or not name.startswith("master-"):
            continue
        if name.endswith(".lock"):
            folder = full[: -len(".lock")]
            with contextlib.suppress(OSError), open(full) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its master (or one of its workers) lives
                shutil.rmtree(folder, ignore_errors=True)
                os.unlink(full)
        elif os.path.isdir(full):
            if not os.path.exists(full + ".lock"):
                shutil.rmtree(full, ignore_errors=True)  # its lock is gone: so is its master
        elif ".lock." in name:  # a claim cut short before its rename
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(full).st_mtime > 60:
                    os.unlink(full)


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
