"""JobStore: the on-disk layout of jobs/<job_id>/, its locks, reads, updates and listing."""

import contextlib
import errno
import hashlib
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

from ..errors import ServiceError, Conflict, InsufficientStorage, NotFound, Unavailable, ValidationFailed
from ..fsio import TMP_PREFIX, atomic_write_json, atomic_write_yaml, fsync_dir, move_aside, read_json, write_tree
from ..state import JobStatus, now_utc, parse_time
from ..runs import record
from .index import JobIndex, index_line

log = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"train_[0-9a-z]{8}")
# Bounds (seconds) of the histogram of finished jobs' run times (imts_job_duration_seconds).
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))
EVALUATION_ID_PATTERN = re.compile(r"eval_[0-9a-z]{8}")
DEPLOYMENT_ID_PATTERN = re.compile(r"deploy_[0-9a-z]{8}")
# A run is a job, an evaluation of one (train_x/eval_y) or a deployment (deploy_x): each has a
# record, a lock, a monitor, and a place in the one queue.
RUN_ID_PATTERN = re.compile(r"(train_[0-9a-z]{8})(?:/(eval_[0-9a-z]{8}))?|(deploy_[0-9a-z]{8})")
# Lock and marker names of runs: "/" is no file name character.
_RUN_KEY = re.compile(r"train_[0-9a-z]{8}(?:\.eval_[0-9a-z]{8})?|deploy_[0-9a-z]{8}")
# What a sidecar lock may be called: a run's key, a dataset, or one of the store's own names.
_LOCK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,160}")


def new_job_id():
    """Return a fresh server-generated job id such as train_a1b2c3d4."""
    return "train_" + secrets.token_hex(4)


def evaluation_run(job_id, evaluation_id):
    """The run id of a job's evaluation: the store's key of its record."""
    return f"{job_id}/{evaluation_id}"


def _key(run_id):
    return run_id.replace("/", ".")


def _run_id(key):
    return key.replace(".", "/")


def storage_error(exc, what):
    """Translate an OSError from a write into the API error a client should see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left on the device while {what}; nothing was changed")
    return Unavailable(f"the job store is not writable while {what} ({exc.strerror}); nothing was changed")


class JobStore:
    """Own the layout of the jobs directory: one directory per job, a sidecar lock per job."""

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
    # The jobs index (jobs/.index/jobs.idx and counts.json): a listing reads its page (index.py).
    INDEX = ".index"
    # One empty marker per job with a status change whose webhook events may not all be sent yet;
    # written with the change, removed by the webhook sweep once webhooks.log records them all.
    WEBHOOKS_DUE = ".webhooks-due"
    # Jobs that reached each final state, ever (a DELETE or retention takes nothing off): the
    # counter imts_jobs_finished_total, which alert rules take increase() of; and their run times.
    FINISHED_COUNTS = ".finished-counts.json"

    def __init__(self, root, lock_timeout=10.0, notifier=None, links_dir=None, deployments_root=None):
        self.root = os.path.abspath(root)
        # deployments/<deploy_x>/: beside jobs/ unless told (settings.deployments_dir)
        self.deployments_root = os.path.abspath(
            deployments_root or os.path.join(os.path.dirname(self.root), "deployments")
        )
        self.lock_timeout = lock_timeout
        # Told of each status change: notifier.url(state) says whether it has a webhook, and
        # notifier.notify(job_dir, state) runs after the change is written (webhooks.Notifier).
        self.notifier = notifier
        # <links_dir>/<job_id> is a symlink to the job's directory (the guide's log path), or None.
        self.links_dir = links_dir
        for name in (self.LOCKS, self.STAGING, self.ACTIVE, self.IDEMPOTENCY, self.TRASH, self.WEBHOOKS_DUE):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        self.index = JobIndex(self.root, lambda: self.lock("_index"), self._every_state)

    # -- paths -----------------------------------------------------------------------------

    EVALUATIONS = "evaluations"

    def _job_dir(self, job_id):
        """The directory of a run: jobs/<job_id>, jobs/<job_id>/evaluations/<evaluation_id>, or
        deployments/<deployment_id>."""
        match = RUN_ID_PATTERN.fullmatch(job_id) if isinstance(job_id, str) else None
        if not match:
            raise ValidationFailed(
                "job_id must look like train_ followed by 8 lowercase letters or digits",
                field="job_id",
            )
        job, evaluation, deployment = match.groups()
        if deployment:
            return os.path.join(self.deployments_root, deployment)
        if evaluation:
            return os.path.join(self.root, job, self.EVALUATIONS, evaluation)
        return os.path.join(self.root, job_id)

    def path(self, job_id, name=""):
        """Return the absolute path of file `name` (a class constant) inside a job's directory."""
        return os.path.join(self._job_dir(job_id), name) if name else self._job_dir(job_id)

    def exists(self, job_id):
        return os.path.isdir(self._job_dir(job_id))

    # -- locking ---------------------------------------------------------------------------

    def _lock_file(self, name, timeout):
        name = _key(name)  # an evaluation's run id
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

    # -- create ----------------------------------------------------------------------------

    def create(self, make_files):
        """Create a job atomically and return its id.

        `make_files(job_id, job_dir)` returns {relative name: object}; names ending in .json are
        written as JSON, .yaml as YAML. The files are written into a staging directory which is
        renamed into place, so a job directory either holds all of them or does not exist.
        """
        for _ in range(16):
            job_id = new_job_id()
            final = self._job_dir(job_id)
            if os.path.exists(final):
                continue
            if self._write_new(job_id, final, make_files(job_id, final), "creating the job"):
                self._link(job_id)
                return job_id
        raise ServiceError("could not allocate a unique job id")

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
                if self._write_new(run_id, final, make_files(run_id, final, state), "creating the evaluation"):
                    return run_id
        raise ServiceError("could not allocate a unique evaluation id")

    def create_deployment(self, make_files):
        """Create a deployment atomically (deployments/<deploy_x>/, renamed into place whole); its id."""
        try:
            os.makedirs(self.deployments_root, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "creating the deployment") from exc
        for _ in range(16):
            run_id = "deploy_" + secrets.token_hex(4)
            final = self._job_dir(run_id)
            if os.path.exists(final):
                continue
            if self._write_new(run_id, final, make_files(run_id, final), "creating the deployment"):
                return run_id
        raise ServiceError("could not allocate a unique deployment id")

    def deployment_ids(self):
        """The ids of every deployment on disk (no particular order)."""
        try:
            names = os.listdir(self.deployments_root)
        except FileNotFoundError:
            return []
        return [name for name in names if DEPLOYMENT_ID_PATTERN.fullmatch(name)]

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
            staging = tempfile.mkdtemp(prefix=_key(run_id) + "-", dir=os.path.join(self.root, self.STAGING))
            write_tree(staging, files)
            indexed = JOB_ID_PATTERN.fullmatch(run_id) is not None
            if indexed:  # listed before it exists: a job on disk is always in the index
                self.index.add(state)
            os.rename(staging, final)
            staging = None
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            self._drop_active(run_id)
            if JOB_ID_PATTERN.fullmatch(run_id) and not os.path.isdir(final):
                with contextlib.suppress(OSError, ServiceError):
                    self.index.remove(run_id)  # never appeared
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
        prefix = _key(job_id) + ".eval_"
        return [_run_id(n) for n in os.listdir(os.path.join(self.root, self.ACTIVE)) if n.startswith(prefix)]

    def deployments_of(self, job_id):
        """The records of live deployments that serve a job's own files (by their markers)."""
        found = []
        for name in os.listdir(os.path.join(self.root, self.ACTIVE)):
            if not DEPLOYMENT_ID_PATTERN.fullmatch(name):
                continue
            with contextlib.suppress(NotFound, ValueError):
                state = self.read(name)
                source = state.source or {}
                if source.get("job_id") == job_id and not source.get("model"):
                    found.append(state)
        return found

    def create_once(self, key, fingerprint, make_files, create=None):
        """Create a job (or with `create(make_files)`, another run) once per idempotency key; return
        (its id, True if it already existed).

        A retry with the same key and the same request `fingerprint` gets the original job; the
        same key with another request is a 409. Concurrent retries wait on the key's lock.
        """
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        path = os.path.join(self.root, self.IDEMPOTENCY, digest + ".json")
        with self.lock("idempotency-" + digest[:40]):
            try:
                claim = read_json(path)
            except (FileNotFoundError, ValueError):
                claim = None
            if claim and self.exists(claim["job_id"]):
                if claim["fingerprint"] != fingerprint:
                    raise Conflict(
                        f"this Idempotency-Key was used for job {claim['job_id']} with a different request",
                        field="Idempotency-Key",
                        extra={"job_id": claim["job_id"]},
                    )
                return claim["job_id"], True
            job_id = (create or self.create)(make_files)
            try:
                atomic_write_json(
                    path, {"job_id": job_id, "fingerprint": fingerprint, "created_at": now_utc()}
                )
            except OSError as exc:
                raise storage_error(exc, "recording the Idempotency-Key") from exc
            return job_id, False

    # -- read and update -------------------------------------------------------------------

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
            listed = index_line(state) if JOB_ID_PATTERN.fullmatch(job_id) else None
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
            refresh = listed is not None and index_line(state) != listed
            ended = JobStatus(state.status).is_terminal() and before != state.status
            if JobStatus(state.status).is_terminal():
                self._drop_active(job_id)
        # Outside the job's lock, which is released as soon as the record is written: a monitor
        # frozen (SIGSTOP) while it holds a lock holds up only what that lock guards.
        if refresh:
            self.index_refresh(job_id)
        if ended and not state.kind:
            self._count_finished(state)
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

    # -- listing ---------------------------------------------------------------------------

    def job_ids(self):
        """Return the ids of every job directory (no particular order)."""
        ids = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if JOB_ID_PATTERN.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                    ids.append(entry.name)
        return ids

    def _active_marker(self, job_id):
        return os.path.join(self.root, self.ACTIVE, _key(job_id))

    def _drop_active(self, job_id):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._active_marker(job_id))

    # -- webhook events not sent yet ------------------------------------------------------

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
            if not _RUN_KEY.fullmatch(key):
                continue
            job_id = _run_id(key)  # a job, or an evaluation of one
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

    def listed(self):
        """Every job's index line (index.py's fields), newest first: what listings page through."""
        return self.index.lines()

    def reconcile_index(self):
        """Make the index list exactly the job directories: add those it lacks (a directory restored
        by hand), drop lines without one (a create that died before its rename). One pass over the
        directories and the index, run by the cleanup round; (added, dropped)."""
        on_disk = set(self.job_ids())
        listed = {line["job_id"] for line in self.listed()}
        added = sorted(on_disk - listed)
        for job_id in added:
            self.index_refresh(job_id)
        dropped = [job_id for job_id in sorted(listed - on_disk) if not self.exists(job_id)]
        for job_id in dropped:
            self.index.remove(job_id)
        if added or dropped:
            log.warning("jobs index: added %d job directories it lacked, dropped %d lines", len(added), len(dropped))
        return added, dropped

    def _every_state(self):
        """Every job's record, for a rebuild of the index (the directories are the truth)."""
        for job_id in self.job_ids():
            with contextlib.suppress(NotFound):
                yield self.read(job_id)

    def index_refresh(self, job_id):
        """Make a job's index line say what its record says now: after a change (outside the job's
        lock, so whoever refreshes last writes the latest), or where a listing found them apart (a
        power loss between the two writes). A failure leaves the line stale, never a change unwritten."""
        try:
            self.index.put_fresh(job_id, lambda: self.read(job_id))
        except (OSError, ServiceError) as exc:
            log.warning("job %s: the jobs index could not follow a change (%s)", job_id, exc)

    def _count_finished(self, state):
        """Add a job that just ended to the jobs finished in its state, and its run time to their
        histogram (after the job's record is written: a crash between the two misses one, never
        counts one twice). {state: n, "durations": {state: {"buckets": [n per bound], "sum": s}}}."""
        status = state.status
        started, ended = parse_time(state.started_at), parse_time(state.finished_at)
        path = os.path.join(self.root, self.FINISHED_COUNTS)
        try:
            with self.lock("_finished_counts"):
                counts = self.finished_counts()
                counts[status] = counts.get(status, 0) + 1
                if started and ended:
                    seconds = max(0.0, (ended - started).total_seconds())
                    histogram = counts.setdefault("durations", {}).setdefault(
                        status, {"buckets": [0] * len(DURATION_BUCKETS), "sum": 0.0}
                    )
                    for number, bound in enumerate(DURATION_BUCKETS):
                        histogram["buckets"][number] += seconds <= bound
                    histogram["sum"] += seconds
                atomic_write_json(path, counts)
        except (OSError, ServiceError) as exc:  # the job's end is written; only the counter lacks it
            log.warning("could not count a job finished %s: %s", status, exc)

    def finished_counts(self):
        """{final state: jobs that reached it, "durations": their run times' histogram}, ever."""
        try:
            counts = read_json(os.path.join(self.root, self.FINISHED_COUNTS))
        except (OSError, ValueError):
            return {}
        return counts if isinstance(counts, dict) else {}

    # -- end of life -----------------------------------------------------------------------

    def delete(self, job_id, check=None):
        """Remove a finished job's directory; raise Conflict unless its status is terminal.

        `check(state)` may raise to refuse as well. Under the job's lock the directory is renamed
        out of jobs/ (so it is never listed half removed) and its log link dropped; the files are
        removed after the lock is released. Returns the state the job had.
        """
        self._job_dir(job_id)  # a malformed id is a 400 before any file, its lock file included
        with self.lock(job_id):
            state = self.read(job_id)  # NotFound for an unknown job
            if not JobStatus(state.status).is_terminal():
                raise Conflict(
                    f"job {job_id} is {state.status}; stop it before deleting it",
                    extra={"job_status": state.status},
                )
            if check is not None:
                check(state)
            self._unlink(job_id)
            try:
                doomed = move_aside(self._job_dir(job_id), os.path.join(self.root, self.TRASH), job_id)
                fsync_dir(self.root)
            except OSError as exc:
                self._link(job_id)
                raise storage_error(exc, f"deleting job {job_id}") from exc
            self._drop_active(job_id)
            try:
                self.index.remove(job_id, state.created_ns)
            except (OSError, ServiceError) as exc:  # the listing drops it when it finds no directory
                log.warning("job %s: the jobs index could not drop it (%s)", job_id, exc)
        shutil.rmtree(doomed, ignore_errors=True)
        return state

    def _link_path(self, job_id):
        return os.path.join(self.links_dir, job_id)

    def _link(self, job_id):
        """Point <links_dir>/<job_id> at the job's directory; a failure is logged, never raised."""
        if not self.links_dir:
            return
        link = self._link_path(job_id)
        try:
            os.makedirs(self.links_dir, exist_ok=True)
            os.symlink(os.path.relpath(self._job_dir(job_id), self.links_dir), link)
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning("job %s: could not link %s (%s); housekeeping retries", job_id, link, exc)

    def _unlink(self, job_id):
        if self.links_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._link_path(job_id))

    def repair_links(self):
        """Link every job that has no link, and drop links whose job is gone; return (added, dropped)."""
        if not self.links_dir:
            return 0, 0
        jobs = set(self.job_ids())
        try:
            links = {n for n in os.listdir(self.links_dir) if JOB_ID_PATTERN.fullmatch(n)}
        except FileNotFoundError:
            links = set()
        dropped = 0
        for job_id in links - jobs:
            with self.lock(job_id):
                if not os.path.isdir(self._job_dir(job_id)):
                    self._unlink(job_id)
                    dropped += 1
        for job_id in jobs - links:
            self._link(job_id)
        return len(jobs - links), dropped

    def clean_temp_files(self, job_ids, min_age_s=300):
        """Remove temp files, staging and trash directories left by a crash in the middle of a write:
        in staging and trash, in every deployment's directory, and in the directories of `job_ids`
        (and their evaluations). Only leftovers older than `min_age_s` go (a younger one may belong to
        a write in flight), and a directory that vanishes meanwhile (a DELETE) is passed over: other
        processes change the store while this runs. The cleanup round calls it, never a worker's boot.
        """
        cutoff = time.time() - min_age_s
        candidates = [
            (os.path.join(self.root, folder, name), True)
            for folder in (self.STAGING, self.TRASH)
            for name in _names(os.path.join(self.root, folder))
        ]
        run_dirs = [self._job_dir(d) for d in self.deployment_ids()]
        for job_id in job_ids:
            job_dir = os.path.join(self.root, job_id)
            run_dirs.append(job_dir)
            evaluations = os.path.join(job_dir, self.EVALUATIONS)
            run_dirs += [os.path.join(evaluations, e) for e in _names(evaluations) if EVALUATION_ID_PATTERN.fullmatch(e)]
        for run_dir in run_dirs:
            candidates += [(os.path.join(run_dir, n), False) for n in _names(run_dir) if n.startswith(TMP_PREFIX)]
        removed = 0
        for path, is_dir in candidates:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_mtime > cutoff:
                    continue
                if is_dir:
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed += 1
        return removed


def _names(directory):
    """The entries of a directory, or none if it is gone (removed by another process meanwhile)."""
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
