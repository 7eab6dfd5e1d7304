"""The run store: where every kind of run lives on disk, its locks, its record's reads and updates,
the state machine, and the markers of runs not finished.

    jobs/<job_id>/                       a job (jobs/store.py adds its index, links and counter)
    jobs/<job_id>/evaluations/<eval_id>/ an evaluation of it
    deployments/<deploy_id>/             a deployment: a run of a kind with a folder of its own
                                         (runs.KINDS), beside jobs/ unless told otherwise

Each run is a directory holding its record (state.json) with its config and logs, created whole
(written in staging, renamed into place) under a sidecar lock (.locks/<key>.lock). A change is a
function of the record made under its lock and written atomically; a terminal status never
changes. It raises the service's errors (not found, conflict, full, unavailable), never HTTP
statuses: the monitors that use it serve no HTTP.
"""

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time

import filelock
import yaml

from ..errors import (
    Conflict,
    InsufficientStorage,
    NotFound,
    ServiceError,
    Unavailable,
    ValidationFailed,
    storage_error,
)
from ..fsio import (
    atomic_write_json,
    atomic_write_yaml,
    fsync_dir,
    read_json,
    write_tree,
)
from ..state import JobStatus, now_utc
from . import KINDS, idempotency, leftovers, record
from .ids import (
    EVALUATION_ID_PATTERN,
    JOB_ID_PATTERN,
    evaluation_run,
    id_pattern,
    is_run_key,
    key_run_id,
    match_run_id,
    run_key,
)

log = logging.getLogger(__name__)

# What a sidecar lock may be called: a run's key, a dataset, or one of the store's own names.
_LOCK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,160}")


class RunStore:
    """Own the layout of the runs' directories: one directory per run, a sidecar lock per run."""

    STATE = "state.json"
    REQUEST = "request.json"
    TRAIN_CONFIG = "training_config.yaml"
    EXPORT_CONFIG = "export_config.yaml"
    DATASET_INFO = "dataset/dataset_info.json"
    TRAIN_LOG = "training.log"
    EXPORT_LOG = "export.log"
    MONITOR_LOG = "monitor.log"
    HEARTBEAT = "monitor.heartbeat"
    OUTPUT = "output"
    LOCKS = ".locks"
    STAGING = ".staging"
    # One empty marker per job that is not finished: housekeeping reads these jobs only.
    ACTIVE = ".active"
    # Idempotency-Key records: sha256(key).json -> the job that key created.
    IDEMPOTENCY = ".idempotency"
    # Deleted jobs are renamed here first, then removed: a crash never leaves half a job listed.
    TRASH = ".trash"
    # One empty marker per job with a status change whose webhook events may not all be sent yet;
    # written with the change, removed by the webhook sweep once webhooks.log records them all.
    WEBHOOKS_DUE = ".webhooks-due"

    EVALUATIONS = "evaluations"

    def __init__(self, root, lock_timeout=10.0, notifier=None, folders=None):
        self.root = os.path.abspath(root)
        # The folder of each kind with one (deployments/<deploy_x>/): {kind: path}, as the settings
        # say (KINDS.folders); a kind not named here keeps its runs beside jobs/.
        self.folders = {kind: os.path.abspath(path) for kind, path in (folders or {}).items()}
        self.lock_timeout = lock_timeout
        # Told of each status change: notifier.url(state) says whether it has a webhook, and
        # notifier.notify(job_dir, state) runs after the change is written (webhooks.Notifier).
        self.notifier = notifier
        for name in (self.LOCKS, self.STAGING, self.ACTIVE, self.IDEMPOTENCY, self.TRASH, self.WEBHOOKS_DUE):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)

    def _job_dir(self, job_id):
        """The directory of a run: jobs/<job_id>, jobs/<job_id>/evaluations/<evaluation_id>, or
        deployments/<deployment_id>."""
        match = match_run_id(job_id)
        if not match:
            raise ValidationFailed(
                "job_id must look like train_ followed by 8 lowercase letters or digits",
                field="job_id",
            )
        job, evaluation, own = match.groups()
        if own:
            return os.path.join(self.folder(KINDS.of_id(own).name), own)
        if evaluation:
            return os.path.join(self.root, job, self.EVALUATIONS, evaluation)
        return os.path.join(self.root, job_id)

    def folder(self, kind):
        """The folder of a kind's runs (deployments/ for deployments)."""
        if kind not in self.folders:
            self.folders[kind] = os.path.join(os.path.dirname(self.root), KINDS.named(kind).folder)
        return self.folders[kind]

    def path(self, job_id, name=""):
        """Return the absolute path of file `name` (a class constant) inside a job's directory."""
        return os.path.join(self._job_dir(job_id), name) if name else self._job_dir(job_id)

    def exists(self, job_id):
        return os.path.isdir(self._job_dir(job_id))

    def require_free(self, min_free_mb):
        """Refuse a new run (or upload) while the store's disk has less than `min_free_mb` free."""
        free_mb = shutil.disk_usage(self.root).free // (1024 * 1024)
        if free_mb < min_free_mb:
            raise InsufficientStorage(
                f"only {free_mb} MB free under {self.root} (at least {min_free_mb} MB needed)"
            )

    def _lock_file(self, name, timeout):
        name = run_key(name)  # an evaluation's run id
        if not _LOCK_NAME.fullmatch(name):  # callers validate first; a lock file is never made of input
            raise ValidationFailed(f"{name[:80]!r} is not a name the store locks", field="name")
        return filelock.FileLock(os.path.join(self.root, self.LOCKS, name + ".lock"), timeout=timeout)

    @contextlib.contextmanager
    def lock(self, name):
        """Hold the sidecar lock `jobs/.locks/<name>.lock`; a timeout becomes a 503."""
        lock = self._lock_file(name, self.lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise Unavailable(f"timed out waiting for the lock of {name}; try again") from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def try_lock(self, name):
        """Hold the sidecar lock `name` if it is free now; yield whether it was taken."""
        lock = self._lock_file(name, 0)
        try:
            lock.acquire()
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def create_evaluation(self, job_id, make_files, check):
        """Create an evaluation of a job atomically under the job's lock; return its run id.

        `check(job_state)` may raise to refuse (the job is gone, running, deleted meanwhile);
        `make_files(run_id, run_dir, job_state)` returns the files as for create. The evaluation's
        directory is jobs/<job_id>/evaluations/<evaluation_id>/, renamed into place whole.
        """
        with self.lock(job_id):
            state = self.read(job_id)
            check(state)
            parent = os.path.join(self._job_dir(job_id), self.EVALUATIONS)
            for _ in range(16):
                run_id = evaluation_run(job_id, "eval_" + secrets.token_hex(4))
                final = self._job_dir(run_id)
                if os.path.exists(final):
                    continue
                try:
                    os.makedirs(parent, exist_ok=True)
                except OSError as exc:
                    raise storage_error(exc, "creating the evaluation") from exc
                if self._write_new(
                    run_id, final, make_files(run_id, final, state), "creating the evaluation"
                ):
                    return run_id
        raise ServiceError("could not allocate a unique evaluation id")

    def create_run(self, kind, make_files):
        """Create a run of a kind with a folder of its own (deployments/<deploy_x>/, renamed into
        place whole); its id. `make_files(run_id, run_dir)` returns the files as for create."""
        prefix, what = KINDS.named(kind).prefix, f"creating the {kind}"
        try:
            os.makedirs(self.folder(kind), exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, what) from exc
        for _ in range(16):
            run_id = prefix + secrets.token_hex(4)
            final = self._job_dir(run_id)
            if os.path.exists(final):
                continue
            if self._write_new(run_id, final, make_files(run_id, final), what):
                return run_id
        raise ServiceError(f"could not allocate a unique {kind} id")

    def run_ids(self, kind):
        """The ids of every run of a kind with a folder of its own, on disk (no particular order)."""
        try:
            names = os.listdir(self.folder(kind))
        except FileNotFoundError:
            return []
        pattern = id_pattern(KINDS.named(kind).prefix)
        return [name for name in names if pattern.fullmatch(name)]

    def _write_new(self, run_id, final, files, what):
        """Write a new run's files into staging and rename it into place; False if the name was taken."""
        staging = None
        state = files[self.STATE]
        if not isinstance(state, record.RunRecord):  # its JSON: as the store reads it back
            state = record.read(state)
        files = {**files, self.STATE: state.to_json()}
        try:
            # The marker goes first: a crash before the rename leaves a marker without a run,
            # which housekeeping drops, never a run that housekeeping cannot see.
            open(self._active_marker(run_id), "w").close()
            staging = tempfile.mkdtemp(
                prefix=run_key(run_id) + "-", dir=os.path.join(self.root, self.STAGING)
            )
            write_tree(staging, files)
            self._before_appearing(run_id, state)
            os.rename(staging, final)
            staging = None
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            self._drop_active(run_id)
            if not os.path.isdir(final):
                self._never_appeared(run_id)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise storage_error(exc, what) from exc
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
        return True

    def evaluation_ids(self, job_id):
        """The ids of a job's evaluations (no particular order)."""
        try:
            names = os.listdir(os.path.join(self._job_dir(job_id), self.EVALUATIONS))
        except FileNotFoundError:
            return []
        return [name for name in names if EVALUATION_ID_PATTERN.fullmatch(name)]

    def active_evaluations(self, job_id):
        """The run ids of a job's evaluations not finished (by their markers)."""
        prefix = run_key(job_id) + ".eval_"
        return [
            key_run_id(n) for n in os.listdir(os.path.join(self.root, self.ACTIVE)) if n.startswith(prefix)
        ]

    def create_once(self, key, fingerprint, make_files, create=None):
        """Create a run once per idempotency key (idempotency.py); return (its id, True if it existed)."""
        return idempotency.create_once(self, key, fingerprint, make_files, create)

    def read(self, job_id):
        """Return a job's record (upgraded to the current version); an unreadable one reads as broken."""
        job_dir = self._job_dir(job_id)
        path = os.path.join(job_dir, self.STATE)
        for attempt in range(2):
            try:
                return record.read(read_json(path))
            except FileNotFoundError:
                if not os.path.isdir(job_dir):
                    raise NotFound(f"job {job_id} does not exist", field="job_id") from None
                if attempt == 0:
                    continue  # the directory was renamed into place while we looked: read again
                return self._broken(job_id, "state.json is missing")
            except ValueError as exc:
                return self._broken(job_id, f"state.json is unreadable: {exc}")

    def _broken(self, job_id, reason):
        log.warning("job %s: %s", job_id, reason)
        damaged = {"job_id": job_id, "status": JobStatus.FAILED.value, "broken": True}
        return record.read({**damaged, "error": f"job record is damaged: {reason}"})

    def update(self, job_id, change):
        """Apply `change(state)` under the job's lock and write the result atomically.

        `change` mutates the record in place and returns a record.Change: UNCHANGED (nothing is
        written), CHANGED, or changed(reason=...) whose details go with a status change into
        `history`. A terminal status never changes: an attempt to change it is ignored. Returns
        the record as stored.
        """
        path = self.path(job_id, self.STATE)
        with self.lock(job_id):
            try:
                state = record.read(read_json(path))
            except FileNotFoundError:
                if not os.path.isdir(self._job_dir(job_id)):
                    raise NotFound(f"job {job_id} does not exist", field="job_id") from None
                raise Conflict(f"job {job_id} has no state.json; it cannot be changed") from None
            except ValueError as exc:
                raise Conflict(
                    f"job {job_id} has a damaged state.json ({exc}); it cannot be changed"
                ) from None
            before = state.status
            token = self._before_change(job_id, state)
            result = change(state)
            if not isinstance(result, record.Change):
                raise TypeError(f"a change of a job record returns a record.Change, not {result!r}")
            if not result.write:
                return state
            after = state.status
            if before != after:
                if JobStatus(before).is_terminal():
                    log.info("job %s: ignored change of terminal status %s to %s", job_id, before, after)
                    state.status = before
                else:
                    event = {"status": after, "at": now_utc()}
                    if state.attempt:
                        event["attempt"] = state.attempt
                    event.update(result.details or {})
                    state.history.append(event)
                    if JobStatus(after).is_terminal() and not state.finished_at:
                        state.finished_at = now_utc()
                    if self.notifier is not None and self.notifier.url(state):
                        self._mark_webhook_due(job_id)  # before the write: a crash after it is caught up
            state.updated_at = now_utc()
            try:
                atomic_write_json(path, state.to_json())
            except OSError as exc:
                raise storage_error(exc, f"updating job {job_id}") from exc
            if JobStatus(state.status).is_terminal():
                self._drop_active(job_id)
        # Outside the run's lock, which is released as soon as the record is written: a monitor
        # frozen (SIGSTOP) while it holds a lock holds up only what that lock guards.
        self._after_change(job_id, state, before, token)
        if before != state.status and self.notifier is not None:
            self.notifier.notify(self.path(job_id), state)  # it spawns
        return state

    def read_file(self, job_id, name):
        """Read a YAML/JSON file of a job (its training config, say): safe_load, or JSON."""
        with open(self.path(job_id, name), encoding="utf-8") as handle:
            return (json.load(handle) if name.endswith(".json") else yaml.safe_load(handle)) or {}

    def write_file(self, job_id, name, obj):
        """Write a YAML/JSON file of a job atomically (an export config, say)."""
        path = self.path(job_id, name)
        try:
            if name.endswith(".json"):
                atomic_write_json(path, obj)
            else:
                atomic_write_yaml(path, obj)
        except OSError as exc:
            raise storage_error(exc, f"writing {name} of job {job_id}") from exc
        return path

    def _active_marker(self, job_id):
        return os.path.join(self.root, self.ACTIVE, run_key(job_id))

    def _drop_active(self, job_id):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._active_marker(job_id))

    def _mark_webhook_due(self, job_id):
        try:
            open(os.path.join(self.root, self.WEBHOOKS_DUE, job_id), "w").close()
        except OSError as exc:  # the change itself still matters more than its catch-up marker
            log.warning("job %s: could not mark its webhook events due: %s", job_id, exc)

    def webhooks_due(self):
        """Return the ids of jobs marked as having webhook events that may not be sent yet."""
        names = os.listdir(os.path.join(self.root, self.WEBHOOKS_DUE))
        return [name for name in names if JOB_ID_PATTERN.fullmatch(name)]

    def clear_webhook_due(self, job_id, settled):
        """Drop a job's webhook marker if `settled(state)`, under the job's lock so no change races it."""
        marker = os.path.join(self.root, self.WEBHOOKS_DUE, job_id)
        with self.lock(job_id):
            try:
                state = record.read(read_json(self.path(job_id, self.STATE)))
            except (OSError, ValueError):
                state = None  # deleted or damaged: nothing will be sent for it
            if state is None or settled(state):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)

    def active_states(self, min_age_s=60):
        """Read the jobs marked as not finished; drop markers of finished or vanished jobs."""
        states = []
        for key in os.listdir(os.path.join(self.root, self.ACTIVE)):
            if not is_run_key(key):
                continue
            job_id = key_run_id(key)  # a job, or an evaluation of one
            marker = self._active_marker(job_id)
            try:
                state = self.read(job_id)
            except NotFound:
                state = None  # a create in flight, or one that crashed before its rename
            if state is not None and not state.broken and not JobStatus(state.status).is_terminal():
                states.append(state)
            elif state is not None and not state.broken:
                self._drop_active(job_id)
            else:
                # Missing or damaged: drop the marker only once it is old, never in a race with a create.
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.lstat(marker).st_mtime > min_age_s:
                        self._drop_active(job_id)
        return states

    def clean_temp_files(self, job_ids, min_age_s=300):
        """Remove what a crash in the middle of a write left (leftovers.py); return how many went."""
        return leftovers.clean(self, job_ids, min_age_s)

    # -- what a kind's store adds (jobs/store.py: the jobs index, the finished-jobs counter) --------

    def _before_appearing(self, run_id, state):
        """A new run's record is written in staging and about to be renamed into place."""

    def _never_appeared(self, run_id):
        """A new run's write failed before its directory appeared."""

    def _before_change(self, run_id, state):
        """Under the run's lock, before a change: whatever _after_change needs to compare."""
        return None

    def _after_change(self, run_id, state, before_status, token):
        """After a change was written, outside the run's lock."""
