"""The Ray executor: each monitor is a Ray job, submitted over Ray's Jobs REST API (plain HTTP).

The API workers never import ray. The entrypoint is the job's own monitor; Ray places it on a node
with the job's CPUs and GPUs free (`entrypoint_num_cpus`, `entrypoint_num_gpus`, and the operator's
`ray_resources`), sets CUDA_VISIBLE_DEVICES there, and keeps it queued while no node has them. Every
node mounts IMTS_HOME and holds the service's installation at the same path, so the monitor writes
the job directory exactly as it does locally.
"""

import json
import logging
import os
import shlex
import time
import urllib.error
import urllib.request

from ..errors import ValidationFailed
from ..runs import queue
from ..state import parse_time
from .common import MONITOR_LOG_ENV, monitor_argv, monitor_env

log = logging.getLogger(__name__)

ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
# The service's variables a trainer may see travel to the node; the node's own identity does not.
_TRAVELS = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HF_HOME",
    "HF_HUB_CACHE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
_TIMEOUT_S = 10
# Ray's word on a submission is kept this long: status reads of a waiting job do not each ask Ray.
_CACHE_S = 2.0


class RayUnavailable(OSError):
    """The Ray job server did not answer, or answered with an error."""


class RayExecutor:
    name = "ray"

    def __init__(self, settings):
        self.settings = settings
        self.base = settings.ray_address.rstrip("/")
        self.resources = json.loads(settings.ray_resources or "{}")
        if not isinstance(self.resources, dict):
            raise ValueError('ray_resources must be a JSON object of custom resources, e.g. {"imts": 1}')
        self._seen = {}  # submission id -> (when, Ray's record or None)

    # -- HTTP ------------------------------------------------------------------------------

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text
        except (OSError, ValueError) as exc:
            raise RayUnavailable(f"the Ray job server at {self.base} did not answer ({exc})") from exc

    def job_info(self, submission_id):
        """Ray's record of a submission (a second or two old at most), or None if Ray does not know it."""
        seen = self._seen.get(submission_id)
        if seen and time.monotonic() - seen[0] < _CACHE_S:
            return seen[1]
        status, info = self._call("GET", f"/api/jobs/{submission_id}")
        if status == 404:
            info = None
        elif status != 200 or not isinstance(info, dict):
            raise RayUnavailable(f"Ray answered {status} for job {submission_id}: {str(info)[:300]}")
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[submission_id] = (time.monotonic(), info)
        return info

    # -- the queue: Ray holds a job until a node has its resources free -----------------------

    def gpu_ids(self):
        """None of the service's own: Ray picks a job's GPUs on the node it places it on."""
        return []

    def capacity(self):
        """(jobs that may run at once: Ray's to say, GPUs a job may ask for at most), for the metrics."""
        return float("nan"), self.settings.ray_max_gpus

    def gpus_for(self, asked):
        """How many GPUs a job asks Ray for: as asked, within ray_max_gpus (default 1 if any)."""
        most = self.settings.ray_max_gpus
        if asked is not None and asked > most:
            raise ValidationFailed(
                f"asks for {asked} GPUs but the Ray cluster offers at most {most} (ray_max_gpus)",
                field="gpus",
            )
        return (1 if most else 0) if asked is None else asked

    def waits(self, state):
        """Whether a job waits: submitted or not, its monitor has not started (it is in Ray's queue)."""
        return queue.waiting(state)

    def place(self, state, slots, free_gpus):
        """Every queued job goes to Ray at once, with the GPUs it asks for: Ray places it."""
        need = state.gpus or 0
        placement = {"gpus": None, "num_gpus": need}
        if self.settings.ray_gpus_per_node and need > self.settings.ray_gpus_per_node:
            # More GPUs than a node has: LLaMA Factory's Ray workers claim them across nodes.
            placement.update(num_gpus=0, ray_workers=need)
        return placement, free_gpus

    def name_launch(self, state, launch):
        """Ray's name for the launch: the job's id the first time (`ray job status train_xxx` finds
        it), then one per launch, since Ray keeps the names it has seen."""
        count = state.engine_launches or 0
        name = state.job_id.replace("/", "-")  # an evaluation's run id: Ray's ids go into its URLs
        launch["submission_id"] = name if not count else f"{name}-{launch['id']}"
        state.engine_launches = count + 1

    def withdraw(self, launch):
        """Take a job that was stopped while waiting out of Ray's queue."""
        self.stop(launch)

    # -- monitors ------------------------------------------------------------------------------

    def start(self, args, launch, job_dir, log_path):
        """Submit the monitor as Ray job `launch['submission_id']`; a repeated submit is harmless.

        Returns None when Ray cannot be reached now: the launch then expires and is submitted again.
        """
        parent, job_id = os.path.split(job_dir)
        if os.path.basename(parent) == "evaluations":  # jobs/<job>/evaluations/<eval>: its run id
            job_id = f"{os.path.basename(os.path.dirname(parent))}/{job_id}"
        env = {
            **{k: os.environ[k] for k in _TRAVELS if k in os.environ},
            **monitor_env(self.settings),
            MONITOR_LOG_ENV: log_path,
        }
        body = {
            "submission_id": launch["submission_id"],
            "entrypoint": shlex.join(monitor_argv(self.settings, args)),
            "entrypoint_num_cpus": self.settings.ray_cpus_per_job,
            "entrypoint_num_gpus": launch.get("num_gpus") or 0,
            "runtime_env": {"env_vars": env},
            "metadata": {"imts_job_id": job_id, "imts_launch_id": launch["id"]},
        }
        if self.resources:
            body["entrypoint_resources"] = self.resources
        try:
            status, reply = self._call("POST", "/api/jobs/", body)
        except RayUnavailable as exc:
            log.warning("job %s: %s", job_id, exc)
            return None
        if status == 200 or (status in (400, 500) and "already exists" in str(reply)):
            return f"Ray job {launch['submission_id']}"
        raise OSError(f"Ray refused job {launch['submission_id']} ({status}): {str(reply)[-500:]}")

    def lost(self, launch, claimed):
        """Gone when Ray says the submission ended, or does not know it (a while after it was sent)."""
        submission_id = (launch or {}).get("submission_id")
        if not submission_id:
            return None
        try:
            info = self.job_info(submission_id)
        except RayUnavailable as exc:
            log.warning("%s; liveness rests on the heartbeat meanwhile", exc)
            return None
        if info is None:
            at = parse_time(launch.get("at"))
            if at is not None and time.time() - at.timestamp() > self.settings.launch_timeout_s:
                return f"Ray has no job {submission_id}"
            return None
        if info.get("status") in ENDED:
            message = (info.get("message") or "").splitlines()[0] if info.get("message") else ""
            return f"its Ray job {submission_id} ended {info['status']} ({message})"
        return None

    def stop(self, launch):
        """Ask Ray to stop the submission (SIGTERM to its process group, then SIGKILL)."""
        submission_id = (launch or {}).get("submission_id")
        if submission_id:
            try:
                self._call("POST", f"/api/jobs/{submission_id}/stop")
            except RayUnavailable as exc:
                log.warning("could not stop Ray job %s: %s", submission_id, exc)

    def health(self):
        try:
            status, version = self._call("GET", "/api/version")
        except RayUnavailable as exc:
            return False, {"executor": "ray", "address": self.base, "error": str(exc)}
        ok = status == 200 and isinstance(version, dict)
        detail = {"executor": "ray", "address": self.base}
        if ok:
            detail["ray_version"] = version.get("ray_version")
        return ok, detail
