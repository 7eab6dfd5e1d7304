"""Idempotency keys: a create retried with the same Idempotency-Key gets the run the first one made.

    jobs/.idempotency/<sha256(key)>.json   {"job_id", "fingerprint", "created_at"}

The key arrives namespaced by its tenant (principals.scoped), so two teams' keys never meet.
"""

import hashlib
import os

from ..errors import Conflict, storage_error
from ..fsio import atomic_write_json, read_json
from ..state import now_utc


def create_once(store, key, fingerprint, make_files, create=None):
    """Create a job (or with `create(make_files)`, another run) once per idempotency key; return
    (its id, True if it already existed).

    A retry with the same key and the same request `fingerprint` gets the original run; the
    same key with another request is a 409. Concurrent retries wait on the key's lock.
    """
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    path = os.path.join(store.root, store.IDEMPOTENCY, digest + ".json")
    with store.lock("idempotency-" + digest[:40]):
        try:
            claim = read_json(path)
        except (FileNotFoundError, ValueError):
            claim = None
        if claim and store.exists(claim["job_id"]):
            if claim["fingerprint"] != fingerprint:
                raise Conflict(
                    f"this Idempotency-Key was used for job {claim['job_id']} with a different request",
                    field="Idempotency-Key",
                    extra={"job_id": claim["job_id"]},
                )
            return claim["job_id"], True
        job_id = (create or store.create)(make_files)
        try:
            atomic_write_json(path, {"job_id": job_id, "fingerprint": fingerprint, "created_at": now_utc()})
        except OSError as exc:
            raise storage_error(exc, "recording the Idempotency-Key") from exc
        return job_id, False
