"""The ids of runs: a job (train_x), an evaluation of one (train_x/eval_y), and a run of each kind
with a folder of its own (deploy_x, ...: its prefix in runs.KINDS and 8 lowercase letters or digits)."""

import re

from . import KINDS

_TAIL = "[0-9a-z]{8}"


def id_pattern(prefix):
    """The whole-string pattern of a kind's ids."""
    return re.compile(re.escape(prefix) + _TAIL)


JOB_ID_PATTERN = id_pattern("train_")
EVALUATION_ID_PATTERN = id_pattern("eval_")
DEPLOYMENT_ID_PATTERN = id_pattern("deploy_")


def _patterns(table):
    """(run id, run key) patterns for the kinds in `table`. A run is a job, an evaluation of one
    (train_x/eval_y) or a run of a kind with a folder of its own: each has a record, a lock, a
    monitor, and a place in the one queue. Its key names its lock and markers: "/" is no file
    name character."""
    own = "|".join(re.escape(kind.prefix) for kind in table if kind.folder)
    run = re.compile(rf"(train_{_TAIL})(?:/(eval_{_TAIL}))?|((?:{own}){_TAIL})")
    key = re.compile(rf"train_{_TAIL}(?:\.eval_{_TAIL})?|(?:{own}){_TAIL}")
    return run, key


_made = (None, None)  # (the table, its patterns): every path of a run asks, so made once per table


def _current():
    global _made
    table = KINDS.TABLE
    if _made[0] is not table:
        _made = (table, _patterns(table))
    return _made[1]


def match_run_id(run_id):
    """The match of a run id: groups (job id, evaluation id, id of a run with a folder); or None."""
    return _current()[0].fullmatch(run_id) if isinstance(run_id, str) else None


def is_run_key(key):
    """Whether a lock or marker file name stands for a run."""
    return _current()[1].fullmatch(key) is not None


def evaluation_run(job_id, evaluation_id):
    """The run id of a job's evaluation: the store's key of its record."""
    return f"{job_id}/{evaluation_id}"


def run_key(run_id):
    """A run's name in lock and marker file names: '/' is no file name character."""
    return run_id.replace("/", ".")


def key_run_id(key):
    """The run id a lock or marker file name stands for."""
    return key.replace(".", "/")
