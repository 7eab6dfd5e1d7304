"""The ids of runs: a job (train_x), an evaluation of one (train_x/eval_y), a deployment (deploy_x)."""

import re

JOB_ID_PATTERN = re.compile(r"train_[0-9a-z]{8}")
EVALUATION_ID_PATTERN = re.compile(r"eval_[0-9a-z]{8}")
DEPLOYMENT_ID_PATTERN = re.compile(r"deploy_[0-9a-z]{8}")
# A run is a job, an evaluation of one (train_x/eval_y) or a deployment (deploy_x): each has a
# record, a lock, a monitor, and a place in the one queue.
RUN_ID_PATTERN = re.compile(r"(train_[0-9a-z]{8})(?:/(eval_[0-9a-z]{8}))?|(deploy_[0-9a-z]{8})")
# Lock and marker names of runs: "/" is no file name character.
RUN_KEY = re.compile(r"train_[0-9a-z]{8}(?:\.eval_[0-9a-z]{8})?|deploy_[0-9a-z]{8}")


def evaluation_run(job_id, evaluation_id):
    """The run id of a job's evaluation: the store's key of its record."""
    return f"{job_id}/{evaluation_id}"


def run_key(run_id):
    """A run's name in lock and marker file names: '/' is no file name character."""
    return run_id.replace("/", ".")


def key_run_id(key):
    """The run id a lock or marker file name stands for."""
    return key.replace(".", "/")
