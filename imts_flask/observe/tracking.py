"""Tracking in MLflow, over its REST API (no mlflow package in the service): a job is a run of the
`mlflow_experiment` experiment on `mlflow_tracking_uri`, with the job's config as parameters, its
trainer_log.jsonl entries as metrics (loss, learning_rate, epoch, eval_loss by step) and its end as
the run's status; an evaluation logs its figures to the job's run.

The job's monitor does the logging, a beat at a time; the run's id is in the job's record, so a
new attempt logs to the same run. Tracking never fails a job: a server that cannot be reached or
refuses is a warning in monitor.log, and the next beat tries the metrics again.
"""

import json
import logging
import time
import urllib.error
import urllib.request

from ..llamafactory.trainer_log import NewEntries

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0
_MAX_PARAM_CHARS = 500  # MLflow's limit of a parameter value in older servers
_BATCH = 1000  # metrics per log-batch call (MLflow's limit)
# trainer_log.jsonl's keys, and the metric each becomes.
_METRICS = {"loss": "loss", "lr": "learning_rate", "epoch": "epoch", "eval_loss": "eval_loss"}
# How a job's status ends its run.
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


class TrackingError(Exception):
    pass


class MlflowClient:
    """The few calls of MLflow's REST API (/api/2.0/mlflow/...) a job's run needs."""

    def __init__(self, uri, timeout=_TIMEOUT_S):
        self.base = uri.rstrip("/") + "/api/2.0/mlflow"
        self.timeout = timeout

    def _call(self, method, path, body=None, query=""):
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            f"{self.base}/{path}{query}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise TrackingError(f"MLflow answered {exc.code} to {path}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise TrackingError(f"MLflow at {self.base} cannot be reached: {exc}") from None

    def experiment_id(self, name):
        """The id of experiment `name`, created if it does not exist."""
        try:
            found = self._call("GET", "experiments/get-by-name", query=f"?experiment_name={_quote(name)}")
            return found["experiment"]["experiment_id"]
        except TrackingError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            return self._call("POST", "experiments/create", {"name": name})["experiment_id"]
        except TrackingError as exc:  # created meanwhile by another monitor
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            return self.experiment_id(name)

    def create_run(self, experiment_id, name, tags):
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()],
        }
        return self._call("POST", "runs/create", body)["run"]["info"]["run_id"]

    def log_batch(self, run_id, params=(), metrics=()):
        """Log parameters (100 a call) and metrics (1000 a call), as MLflow's limits allow."""
        params, metrics = list(params), list(metrics)
        for start in range(0, len(params), 100):
            self._call("POST", "runs/log-batch", {"run_id": run_id, "params": params[start : start + 100]})
        for start in range(0, len(metrics), _BATCH):
            self._call(
                "POST", "runs/log-batch", {"run_id": run_id, "metrics": metrics[start : start + _BATCH]}
            )

    def finish(self, run_id, status):
        self._call(
            "POST", "runs/update", {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
        )


class JobTracking:
    """A job's MLflow run, kept by its monitor: started (or found again), fed on each beat, ended."""

    def __init__(self, settings, output_dir):
        self.client = MlflowClient(settings.mlflow_tracking_uri) if settings.mlflow_tracking_uri else None
        self.experiment = settings.mlflow_experiment
        self.entries = NewEntries(output_dir)
        self.run_id = None
        self.pending = []  # metrics read but not logged yet (a server that did not answer)

    @property
    def on(self):
        return self.client is not None

    def start(self, state, config):
        """Find the job's run (a new attempt's) or create it with the config as parameters; its id."""
        if not self.on:
            return None
        self.run_id = state.mlflow_run_id
        if self.run_id:
            return self.run_id
        try:
            experiment = self.client.experiment_id(self.experiment)
            self.run_id = self.client.create_run(
                experiment,
                state.job_id,
                {"imts.job_id": state.job_id, "imts.model_name": state.model_name,
                 "imts.dataset": state.dataset, "mlflow.runName": state.job_id},
            )  # fmt: skip
            self.client.log_batch(self.run_id, params=_params(config))
        except TrackingError as exc:
            log.warning("tracking: %s; the job goes on without its MLflow run", exc)
            self.client = None
        return self.run_id

    def beat(self):
        """Log the trainer_log entries written since the last beat as metrics."""
        if not self.run_id:
            return
        for entry in self.entries.read():
            step = entry.get("current_steps")
            for key, name in _METRICS.items():
                value = entry.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(step, int):
                    self.pending.append(
                        {"key": name, "value": value, "timestamp": int(time.time() * 1000), "step": step}
                    )
        if not self.pending:
            return
        try:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        except TrackingError as exc:
            log.warning("tracking: %s; the metrics are sent again on the next beat", exc)

    def end(self, status):
        if not self.run_id:
            return
        self.beat()
        try:
            self.client.finish(self.run_id, RUN_STATUS.get(status, "FINISHED"))
        except TrackingError as exc:
            log.warning("tracking: %s", exc)


def log_evaluation(settings, run_id, evaluation_id, results):
    """Log an evaluation's figures to its job's run: evaluation/<id>/<model>/<metric>."""
    if not settings.mlflow_tracking_uri or not run_id:
        return
    metrics = [
        {
            "key": f"evaluation/{evaluation_id}/{model}/{name}",
            "value": value,
            "timestamp": int(time.time() * 1000),
            "step": 0,
        }
        for model, figures in (results or {}).items()
        for name, value in (figures or {}).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    try:
        MlflowClient(settings.mlflow_tracking_uri).log_batch(run_id, metrics=metrics)
    except TrackingError as exc:
        log.warning("tracking: %s; the evaluation's figures are not in MLflow", exc)


def _params(config):
    out = []
    for key, value in sorted(config.items()):
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        out.append({"key": key, "value": str(value)[:_MAX_PARAM_CHARS]})
    return out


def _quote(text):
    return urllib.request.quote(text, safe="")
