"""What a crash in the middle of a write leaves behind, and its removal by the cleanup round.

A write goes to a temp file (fsio.TMP_PREFIX) renamed over the original; a new run is written
in jobs/.staging and renamed into place; a deleted one is renamed into jobs/.trash first. A
process killed in between leaves the temp file or the directory: harmless, but it takes space.
"""

import contextlib
import os
import shutil
import time

from ..fsio import TMP_PREFIX
from . import KINDS
from .ids import EVALUATION_ID_PATTERN


def clean(store, job_ids, min_age_s=300):
    """Remove temp files, staging and trash directories left by a crash in the middle of a write:
    in staging and trash, in the directory of every run of a kind with a folder of its own (each
    deployment's), and in the directories of `job_ids` (and their evaluations). Only leftovers
    older than `min_age_s` go (a younger one may belong to a write in flight), and a directory that
    vanishes meanwhile (a DELETE) is passed over: other processes change the store while this runs.
    The cleanup round calls it, never a worker's boot.
    """
    cutoff = time.time() - min_age_s
    candidates = [
        (os.path.join(store.root, folder, name), True)
        for folder in (store.STAGING, store.TRASH)
        for name in _names(os.path.join(store.root, folder))
    ]
    run_dirs = [store.path(d) for kind in KINDS.with_folders() for d in store.run_ids(kind.name)]
    for job_id in job_ids:
        job_dir = os.path.join(store.root, job_id)
        run_dirs.append(job_dir)
        evaluations = os.path.join(job_dir, store.EVALUATIONS)
        run_dirs += [
            os.path.join(evaluations, e) for e in _names(evaluations) if EVALUATION_ID_PATTERN.fullmatch(e)
        ]
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
