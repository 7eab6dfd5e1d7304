"""The audit log (logs/audit.log): one JSON line per change and per denied access.

    {"at": "2026-11-30T07:01:02", "tenant": "team-a", "token": "a-ci", "client": "10.0.0.7",
     "action": "POST /api/v1/training/jobs/{job_id}/stop", "resource": {"job_id": "train_a1b2c3d4"},
     "outcome": 200}

Each line is appended with O_APPEND and fsynced, the file opened for each line, so logrotate's
rename is followed at once (no reopen signal needed) and a line is whole or absent.
"""

import json
import logging
import os

from ..state import now_utc

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path):
        self.path = path

    def write(self, **entry):
        line = json.dumps({"at": now_utc(), **entry}, ensure_ascii=False, sort_keys=False) + "\n"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            # A full disk must not turn every answer into a 500; the service log says what was lost.
            log.exception("audit: could not write %s", line.strip())
