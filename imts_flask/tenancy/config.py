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
it changes (its mtime, size or inode), so a token is added or revoked without a restart; a file that
does not parse leaves the previous one in force, and says why in the log and in /health.
"""

import hashlib
import hmac
import logging
import os
import re

import yaml

from .principals import ADMIN, MEMBER, VIEWER, Principal

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DIGEST = re.compile(r"[0-9a-f]{64}")
PRIORITIES = ("low", "normal", "high")
# Each a whole number >= 0 (max_gpu_hours: a number); see tenancy/quotas.py.
QUOTAS = ("max_running_gpus", "max_queued_jobs", "max_gpu_hours", "max_non_preemptible")


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


class Tenants:
    """The tenants file as it is now, plus the operator's plain auth_tokens (admins, as before)."""

    def __init__(self, settings):
        self.path = settings.path("tenants_file")
        self.legacy = {}
        tokens = [t.strip() for t in settings.auth_tokens.split(",") if t.strip()]
        digests = [digest(t) for t in tokens]
        digests += [d.strip().lower() for d in settings.auth_token_sha256.split(",") if d.strip()]
        for number, sha in enumerate(digests, 1):
            self.legacy[sha] = Principal(name=f"auth-token-{number}", role=ADMIN)
        self.principals, self.tenants = {}, {}
        self.problem = None
        self._seen = None
        self.reload()
        if self.problem:  # a bad file at start stops the service: nothing would be guarded as meant
            raise RuntimeError(self.problem)

    @property
    def enabled(self):
        return bool(self.principals or self.legacy)

    def reload(self):
        """Read the file again if it changed; keep the previous one when the new one is bad."""
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            self.principals, self.tenants, self.problem = {}, {}, None
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                self.principals, self.tenants = parse(yaml.safe_load(handle) or {}, self.path)
            self.problem = None
            log.info(
                "tenants: %d tenants, %d tokens from %s", len(self.tenants), len(self.principals), self.path
            )
        except (OSError, ValueError, yaml.YAMLError) as exc:
            self.problem = f"the tenants file is not used as it is: {exc}"
            log.error("%s; the previous one stays in force", self.problem)

    def principal(self, token):
        """The principal of a presented token, or None; every digest is compared (constant time)."""
        self.reload()
        presented = digest(token or "")
        found = None
        for sha, principal in (*self.principals.items(), *self.legacy.items()):
            if hmac.compare_digest(presented, sha) and token:
                found = principal
        return found
