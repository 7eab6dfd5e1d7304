"""The jobs' store: the run store (runs/store.py) with what only jobs have: the jobs index a listing
reads its page from (index.py), the guide's log path (logs/training_jobs/<job_id>), the counter of
finished jobs and their run times, and a job's create and delete."""

import contextlib
import logging
import os
import secrets
import shutil

from ..errors import Conflict, NotFound, ServiceError, storage_error
from ..fsio import atomic_write_json, fsync_dir, move_aside, read_json
from ..runs.ids import DEPLOYMENT_ID_PATTERN, JOB_ID_PATTERN
from ..runs.store import RunStore
from ..state import JobStatus, parse_time
from .index import JobIndex, index_line

log = logging.getLogger(__name__)

# Bounds (seconds) of the histogram of finished jobs' run times (imts_job_duration_seconds).
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))


def new_job_id():
    """Return a fresh server-generated job id such as train_a1b2c3d4."""
    return "train_" + secrets.token_hex(4)


class JobStore(RunStore):
    """The run store of a service: runs of every kind, and the jobs' index, links and counter."""

    # The jobs index (jobs/.index/jobs.idx and counts.json): a listing reads its page (index.py).
    INDEX = ".index"
    # Jobs that reached each final state, ever (a DELETE or retention takes nothing off): the
    # counter imts_jobs_finished_total, which alert rules take increase() of; and their run times.
    FINISHED_COUNTS = ".finished-counts.json"

    def __init__(self, root, lock_timeout=10.0, notifier=None, links_dir=None, folders=None):
        super().__init__(root, lock_timeout, notifier, folders)
        # <links_dir>/<job_id> is a symlink to the job's directory (the guide's log path), or None.
        self.links_dir = links_dir
        self.index = JobIndex(self.root, lambda: self.lock("_index"), self._every_state)

    def _before_appearing(self, run_id, state):
        if JOB_ID_PATTERN.fullmatch(run_id):  # listed before it exists: a job on disk is always in the index
            self.index.add(state)

    def _never_appeared(self, run_id):
        if JOB_ID_PATTERN.fullmatch(run_id):
            with contextlib.suppress(OSError, ServiceError):
                self.index.remove(run_id)

    def _before_change(self, run_id, state):
        return index_line(state) if JOB_ID_PATTERN.fullmatch(run_id) else None

    def _after_change(self, run_id, state, before_status, listed):
        if listed is not None and index_line(state) != listed:
            self.index_refresh(run_id)
        if JobStatus(state.status).is_terminal() and before_status != state.status and not state.kind:
            self._count_finished(state)

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

    def job_ids(self):
        """Return the ids of every job directory (no particular order)."""
        ids = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if JOB_ID_PATTERN.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                    ids.append(entry.name)
        return ids

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
            log.warning(
                "jobs index: added %d job directories it lacked, dropped %d lines", len(added), len(dropped)
            )
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
