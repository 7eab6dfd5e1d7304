"""The tenants file (config/tenants.yaml, or IMTS_TENANTS_FILE): teams, their tokens and roles.

    tenants:
      team-a:
        max_priority: high
        quotas: {max_running_gpus: 2, max_queued_jobs: 20, max_gpu_hours: 500}
        tokens:
          - {name: a-ci, role: member, sha256: "<hex digest of the token>"}
          - {name: a-dash, role: viewer, sha256: "..."}
    admins:
      - {name: ops, sha256: "..."}

Tokens are SHA-256 digests (the tokens are on no disk of the server). The file is read again when
it changes (its mtime, size or inode), so a token is added or revoked without a restart.

It fails closed. Once a service has read a file with tokens, anything short of another valid file
with tokens keeps the last valid one in force: a file that does not parse, one renamed away, one
emptied, one left without any token. `/health` then lists `tenants` in `degraded` and the log says
why. A file renamed over the old one is read at once; one changed in place (truncated, then written
again) once it has been still for SETTLE_S, so that it is not read half-written. Edit it safely by
writing the new file beside it and renaming it over the old one. The last valid file is kept as a
snapshot in the cache directory, so a worker that starts (gunicorn recycles them) or a job's monitor
applying quotas while the file is missing keeps it too. Turning tenants off is a restart with
`tenants_file` set to "" (another path starts from nothing as well), never a file that vanished.
"""

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time

import yaml

from ..fsio import atomic_write_json, read_json
from ..runs.queue import PRIORITIES
from .principals import ADMIN, MEMBER, VIEWER, Principal

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DIGEST = re.compile(r"[0-9a-f]{64}")
# Each a whole number >= 0 (max_gpu_hours: a number); see tenancy/quotas.py.
QUOTAS = (
    "max_running_gpus",
    "max_queued_jobs",
    "max_gpu_hours",
    "max_non_preemptible",
    "max_tokens_per_minute",
)


def digest(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse(data, path="tenants file"):
    """{sha256: Principal} and {tenant: its settings} from the file's YAML; ValueError says what is wrong."""
    if not isinstance(data, dict) or set(data) - {"tenants", "admins"}:
        raise ValueError(f"{path}: the top level holds `tenants` and `admins` only")
    principals, tenants = {}, {}

    def add(entry, role, tenant, where):
        if not isinstance(entry, dict) or set(entry) - {"name", "role", "sha256"}:
            raise ValueError(f"{where}: a token is {{name, role, sha256}}")
        name, sha = str(entry.get("name") or ""), str(entry.get("sha256") or "").lower()
        if not NAME.fullmatch(name):
            raise ValueError(f"{where}: token name {name!r} is not 1-63 lowercase letters, digits, '-', '_'")
        if not DIGEST.fullmatch(sha):
            raise ValueError(f"{where}: token {name}'s sha256 is not 64 hex digits")
        if sha in principals:
            raise ValueError(f"{where}: token {name}'s digest is also {principals[sha].name}'s")
        principals[sha] = Principal(name=name, role=role, tenant=tenant)

    for name, team in (data.get("tenants") or {}).items():
        where = f"{path}: tenant {name}"
        if not NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: a tenant's name is 1-63 lowercase letters, digits, '-', '_'")
        team = team or {}
        if not isinstance(team, dict) or set(team) - {"max_priority", "quotas", "tokens"}:
            raise ValueError(f"{where}: a tenant holds max_priority, quotas and tokens")
        if team.get("max_priority", "normal") not in PRIORITIES:
            raise ValueError(f"{where}: max_priority is one of {', '.join(PRIORITIES)}")
        quotas = team.get("quotas") or {}
        if not isinstance(quotas, dict) or set(quotas) - set(QUOTAS):
            raise ValueError(f"{where}: quotas are {', '.join(QUOTAS)}")
        for key, value in quotas.items():
            number = (int, float) if key == "max_gpu_hours" else int
            if isinstance(value, bool) or not isinstance(value, number) or value < 0:
                raise ValueError(f"{where}: quota {key} is a number >= 0, not {value!r}")
        for entry in team.get("tokens") or []:
            role = (entry or {}).get("role", MEMBER) if isinstance(entry, dict) else None
            if role not in (MEMBER, VIEWER):
                raise ValueError(
                    f"{where}: a tenant's token is a member or a viewer (admins are listed apart)"
                )
            add(entry, role, str(name), where)
        tenants[str(name)] = {
            "max_priority": team.get("max_priority", "normal"),
            "quotas": quotas,
        }
    for entry in data.get("admins") or []:
        add({**entry, "role": ADMIN} if isinstance(entry, dict) else entry, ADMIN, None, f"{path}: admins")
    return principals, tenants


SETTLE_S = 1.0  # a changed file is read once it has been still this long
_UNREAD = object()


class TenantsFile:
    """The tenants file as last read valid: {sha256: Principal} and {tenant: its settings}, and the
    problem with the file as it is now (None when it is the one in force)."""

    def __init__(self, settings):
        name = settings.tenants_file
        self.path = settings.path("tenants_file") if name else None
        self.snapshot = None
        if self.path:
            named = hashlib.sha256(self.path.encode()).hexdigest()[:12]
            self.snapshot = os.path.join(settings.path("cache_dir"), f"tenants-{named}.json")
        self.principals, self.tenants = {}, {}
        self.problem = None
        self._seen = _UNREAD
        self._lock = threading.Lock()  # one reader at a time: gevent greenlets and threads share it
        self._from_snapshot()
        self._read(settled=True)

    def refresh(self):
        """Read the file again if it changed and has settled; keep what is in force otherwise."""
        with self._lock:
            self._read(settled=False)

    def _read(self, settled):
        if self.path is None:
            return
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            stat = seen = None
        except OSError as exc:
            return self._refuse(f"the tenants file {self.path} cannot be read ({exc.strerror})", None)
        if seen == self._seen:
            return
        in_place = stat is not None and self._seen not in (None, _UNREAD) and self._seen[2] == stat.st_ino
        if in_place and not settled and time.time() - stat.st_mtime < SETTLE_S:
            return  # written in place, perhaps still being written: read once it has been still a moment
        if stat is None:
            if self.principals:
                return self._refuse(f"the tenants file {self.path} is missing", seen)
            self._seen, self.problem = seen, None
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                principals, tenants = parse(yaml.safe_load(handle) or {}, self.path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            return self._refuse(f"the tenants file is not used as it is: {exc}", seen)
        if self.principals and not principals:
            return self._refuse(f"the tenants file {self.path} holds no token", seen)
        self._seen, self.problem = seen, None
        if (principals, tenants) != (self.principals, self.tenants):
            self.principals, self.tenants = principals, tenants
            log.info("tenants: %d tenants, %d tokens from %s", len(tenants), len(principals), self.path)
            self._keep_snapshot()

    def _refuse(self, problem, seen):
        self._seen = seen
        if self.principals:
            problem += (
                "; the last valid one stays in force (write the new file beside it and rename it over; "
                'to turn tenants off, restart with tenants_file set to "")'
            )
        if problem != self.problem:
            log.error("%s", problem)
        self.problem = problem

    def _keep_snapshot(self):
        if not self.principals:
            return
        tokens = [
            {"sha256": sha, "name": p.name, "role": p.role, "tenant": p.tenant}
            for sha, p in self.principals.items()
        ]
        try:
            os.makedirs(os.path.dirname(self.snapshot), exist_ok=True)
            atomic_write_json(self.snapshot, {"path": self.path, "tokens": tokens, "tenants": self.tenants})
            os.chmod(self.snapshot, 0o600)
        except OSError as exc:
            log.warning("tenants: could not keep a snapshot of the last valid file (%s)", exc)

    def _from_snapshot(self):
        if self.snapshot is None:
            return
        try:
            data = read_json(self.snapshot)
            principals = {
                t["sha256"]: Principal(name=t["name"], role=t["role"], tenant=t["tenant"])
                for t in data["tokens"]
            }
            tenants = dict(data["tenants"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.error("tenants: the snapshot %s cannot be read (%s)", self.snapshot, exc)
            return
        self.principals, self.tenants = principals, tenants


_files = {}
_files_lock = threading.Lock()


def shared_file(settings):
    """The process's one TenantsFile for the settings' tenants_file (quotas read it in monitors too)."""
    key = (settings.tenants_file and settings.path("tenants_file"), settings.path("cache_dir"))
    with _files_lock:
        found = _files.get(key)
        if found is None:
            found = _files[key] = TenantsFile(settings)
    found.refresh()
    return found


class Tenants:
    """The tenants file as it is in force, plus the operator's plain auth_tokens (admins, as before)."""

    def __init__(self, settings):
        self.legacy = {}
        tokens = [t.strip() for t in settings.auth_tokens.split(",") if t.strip()]
        digests = [digest(t) for t in tokens]
        digests += [d.strip().lower() for d in settings.auth_token_sha256.split(",") if d.strip()]
        for number, sha in enumerate(digests, 1):
            self.legacy[sha] = Principal(name=f"auth-token-{number}", role=ADMIN)
        self.file = TenantsFile(settings)
        self.path = self.file.path
        # A bad file at the very first start (no valid one ever read): nothing would be guarded as meant.
        if self.file.problem and not self.file.principals:
            raise RuntimeError(self.file.problem)

    @property
    def problem(self):
        return self.file.problem

    @property
    def tenants(self):
        return self.file.tenants

    @property
    def principals(self):
        return self.file.principals

    @property
    def enabled(self):
        return bool(self.file.principals or self.legacy)

    def reload(self):
        """Read the file again if it changed (see TenantsFile: it fails closed)."""
        self.file.refresh()

    def principal(self, token):
        """The principal of a presented token, or None; every digest is compared (constant time)."""
        self.reload()
        presented = digest(token or "")
        found = None
        for sha, principal in (*self.file.principals.items(), *self.legacy.items()):
            if hmac.compare_digest(presented, sha) and token:
                found = principal
        return found
