"""End of life for jobs: delete, retention, checkpoint pruning, log links and disk use, in housekeeping.

One worker at a time runs a cleanup round, at most every `cleanup_interval_s`: it makes the jobs
index list exactly the job directories (and say what the records of unfinished jobs say),
removes finished jobs older than `retention_days`, prunes the checkpoints of completed jobs to
the newest `keep_checkpoints`, repairs the logs/training_jobs links, measures jobs whose disk
use is not recorded, and removes what a crash in the middle of a write left (temp files,
staging, trash). Each removal is logged in logs/imts.log.
"""

import contextlib
import logging
import os
import time

from ..errors import Conflict, NotFound, ServiceError
from ..fsio import read_json
from ..runs.record import setter
from ..state import JobStatus
from .checkpoints import disk_bytes, prune
from .store import JobStore

log = logging.getLogger(__name__)

CLEANUP_LOCK = "_cleanup"
CLEANUP_MARK = ".cleanup-at"  # its mtime: when the last round ended
TEMP_FILE_SLICE = 1000  # finished jobs' directories a round looks into for a crash's leftovers, about


class Lifecycle:
    def __init__(self, settings, store: JobStore, uploads=None):
        self.settings = settings
        self.store = store
        self.uploads = uploads

    # -- delete ----------------------------------------------------------------------------

    def delete(self, job_id):
        """Delete a finished job (its exports stay); Conflict while it runs, exports, or seeds a resume."""

        def check(state):
            export = state.export or {}
            if export.get("status") == "running":
                raise Conflict(f"job {job_id} is exporting to {export.get('export_dir')}; wait for it to end")
            evaluating = self.store.active_evaluations(job_id)
            if evaluating:
                raise Conflict(
                    f"job {job_id} has an evaluation that has not ended ({evaluating[0]}); "
                    "stop it or wait for it, then delete the job",
                    extra={"evaluations": [run.split("/")[1] for run in evaluating]},
                )
            serving = [s for s in self.store.deployments_of(job_id) if not JobStatus(s.status).is_terminal()]
            if serving:
                raise Conflict(
                    f"job {job_id} is served by deployment {serving[0].job_id}; stop it (DELETE "
                    "/deployments/{id}) or register the job's weights as a model version, then delete "
                    "the job",
                    extra={"deployments": [s.job_id for s in serving]},
                )
            waiting = self._resumes_waiting_on(job_id)
            if waiting:
                raise Conflict(
                    f"job {waiting[0]} will resume from a checkpoint of job {job_id} and has not copied it "
                    "yet; delete this job once that one is running",
                    extra={"job_ids": waiting},
                )

        state = self.store.delete(job_id, check)
        log.info("job %s: deleted (%s, %s bytes)", job_id, state.status, state.disk_bytes)
        return state

    def _relist(self, lines):
        """Make the index lines of unfinished jobs say what their records say, where a change's own
        refresh of its line failed (a full disk, a crash between the two writes); the ids mended.
        A listing shows the record's status meanwhile: a read never writes."""
        mended = []
        for line in lines:
            with contextlib.suppress(NotFound):
                state = self.store.read(line["job_id"])
                if state.status != line["status"] and not state.broken:
                    self.store.index_refresh(line["job_id"])
                    mended.append(line["job_id"])
        return mended

    def _resumes_waiting_on(self, job_id):
        return [
            s.job_id
            for s in self.store.active_states()
            if s.kind is None and (s.resumed_from or {}).get("job_id") == job_id and not s.seeded_at
        ]

    # -- the cleanup round -----------------------------------------------------------------

    def maybe_run(self):
        """Run a cleanup round if none ran within cleanup_interval_s and no other worker runs one."""
        mark = os.path.join(self.store.root, CLEANUP_MARK)
        with self.store.try_lock(CLEANUP_LOCK) as taken:
            last = _mtime(mark)
            if not taken or time.time() - last < self.settings.cleanup_interval_s:
                return False
            self.run(finished_since=last - 60 if last else 0)
            with open(mark, "w"):
                pass  # touched: the next round is due cleanup_interval_s from now
        return True

    def run(self, finished_since=0):
        """Run one cleanup round now; return what it did, by kind.

        It reads the jobs index, not every record: a finished job is read only to be removed, to
        be measured, or, once, to prune its checkpoints (those that finished since the last round).
        """
        done = {"deleted": [], "pruned": {}, "links": self.store.repair_links(), "measured": []}
        done["indexed"] = self.store.reconcile_index()
        done["uploads"] = self._collect_uploads()
        now = time.time()
        lines = list(self.store.listed())
        # Leftovers of a crash mid-write: in unfinished runs, jobs finished since the last round, and
        # a slice of the others that moves each round (each job once in `stride` rounds): a
        # round costs the same at 100 or 100,000 jobs.
        stride = max(1, len(lines) // TEMP_FILE_SLICE)
        phase = int(now // max(1.0, self.settings.cleanup_interval_s)) % stride
        scanned = [
            line["job_id"]
            for number, line in enumerate(lines)
            if not JobStatus(line["status"]).is_terminal()
            or (line["finished"] or 0) >= finished_since
            or number % stride == phase
        ]
        done["temp_files"] = self.store.clean_temp_files(scanned)
        done["relisted"] = self._relist(line for line in lines if not JobStatus(line["status"]).is_terminal())
        for line in lines:
            if not JobStatus(line["status"]).is_terminal():
                continue
            job_id = line["job_id"]
            try:
                if self._expired(line, now):
                    self.delete(job_id)
                    done["deleted"].append(job_id)
                    continue
                recent = (line["finished"] or 0) >= finished_since
                if (
                    line["status"] == JobStatus.COMPLETED.value
                    and self.settings.keep_checkpoints > 0
                    and recent
                ):
                    removed = self.prune(job_id)
                    if removed:
                        done["pruned"][job_id] = removed
                        continue
                if line["disk_bytes"] is None:
                    self._measure(job_id)
                    done["measured"].append(job_id)
            except NotFound:
                continue  # deleted meanwhile
            except ServiceError as exc:
                log.info("job %s: cleanup skipped it: %s", job_id, exc.message)
        return done

    def _collect_uploads(self):
        """Remove uploaded versions that neither the registry nor any job's dataset_info.json names."""
        if self.uploads is None or not self.uploads.has_leftovers():
            return []  # the common case: no job's files need reading
        return self.uploads.collect(self.dataset_files_in_use())

    def dataset_files_in_use(self):
        """The data files that jobs' and their evaluations' dataset_info.json name (absolute paths)."""
        referenced = set()
        for job_id in self.store.job_ids():
            runs = [job_id] + [f"{job_id}/{e}" for e in self.store.evaluation_ids(job_id)]
            for run_id in runs:
                with contextlib.suppress(OSError, ValueError):
                    info = read_json(self.store.path(run_id, JobStore.DATASET_INFO))
                    referenced |= {str(e.get("file_name")) for e in info.values() if isinstance(e, dict)}
        return referenced

    def _expired(self, line, now):
        days = self.settings.retention_days
        return days > 0 and line["finished"] is not None and now - line["finished"] > days * 86400

    def prune(self, job_id):
        """Prune a completed job's checkpoints to the newest keep_checkpoints; the final weights and
        the best checkpoint (validation's lowest eval_loss) stay."""
        keep = self.settings.keep_checkpoints
        removed = prune(
            self.store.path(job_id, JobStore.OUTPUT), keep, lambda: self._checkpoints_in_use(job_id)
        )
        for name in removed:
            log.info("job %s: removed %s (keep_checkpoints=%d)", job_id, name, keep)
        if removed:
            self._measure(job_id)
        return removed

    def _checkpoints_in_use(self, job_id):
        """The best checkpoint, and those that unfinished evaluations and live deployments of the job read."""
        names = {self.store.read(job_id).best_checkpoint}
        names.update((s.source or {}).get("checkpoint") for s in self.store.deployments_of(job_id))
        for run_id in self.store.active_evaluations(job_id):
            with contextlib.suppress(NotFound):
                names.add(self.store.read(run_id).checkpoint)
        return names - {None}

    def _measure(self, job_id):
        used = disk_bytes(self.store.path(job_id))
        self.store.update(job_id, setter(disk_bytes=used))


def _mtime(path):
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path).st_mtime
    return 0.0
