"""What the deployment endpoints do, below HTTP: create (checked, a port and a key, then queued),
list, show, and stop (DELETE)."""

import contextlib
import hashlib
import hmac
import http.client
import importlib.util
import json
import logging
import os
import secrets
import socket
import urllib.error
import urllib.request

from ..errors import Conflict, NotFound, Unauthorized, ValidationFailed
from ..jobs.checkpoints import choose_weights
from ..jobs.store import JobStore
from ..jobs.views import waiting_view
from ..runs.endpoints import (  # noqa: F401 (port_free: its tests)
    PORTS_LOCK,
    error_event,
    free_port,
    port_free,
    probe_host,
)
from ..runs.ids import DEPLOYMENT_ID_PATTERN
from ..runs.record import queued_now
from ..state import JobStatus, creation_order
from ..tenancy import principals, quotas
from . import record

log = logging.getLogger(__name__)

_NO_KEY = "0" * 64  # compared with, where no deployment is: the refusal takes the same time
CHAT_TIMEOUT_S = 120.0  # the longest a server may stay silent in a dashboard chat
# What a deployment of a job's weights needs: a finished job whose weights can chat.
_SERVABLE = (JobStatus.COMPLETED.value, JobStatus.STOPPED.value)


def public_host(settings):
    if settings.deploy_public_host:
        return settings.deploy_public_host
    if settings.deploy_host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return settings.deploy_host


def backends(gpus_here):
    """The backends a deployment may ask for here: vllm only where it is installed and GPUs exist."""
    found = ["huggingface"]
    if gpus_here and importlib.util.find_spec("vllm") is not None:
        found.append("vllm")
    return found


def _check_vllm(gpus):
    """vLLM serves on GPUs only, and only where it is installed (looked up, never imported here)."""
    if importlib.util.find_spec("vllm") is None:
        raise ValidationFailed("backend vllm: the vllm package is not installed here", field="backend")
    if not gpus:
        raise ValidationFailed("backend vllm needs a GPU and this deployment gets none", field="backend")


class Deployments:
    def __init__(self, settings, store: JobStore, catalog, launcher, registry, started):
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.launcher = launcher
        self.registry = registry
        self.started = started  # called once a deployment is queued: the service schedules soon

    # -- create ----------------------------------------------------------------------------

    def create(self, request, idempotency_key=None):
        """Check what is to be served, give it a port and a key, write it, queue it.

        Returns (view with the API key, replayed); a replay cannot show the key again."""
        served = self._what_is_served(request)
        # The caller's tenant; an admin's deployment goes with what it serves.
        owner = principals.owner()
        if owner["tenant"] is None:
            owner["tenant"] = served["tenant"]
        gpus = self.launcher.executor.gpus_for(request.get("gpus"))
        if request.get("backend") == "vllm":
            _check_vllm(gpus)
        if request.get("template"):  # else the server would fail at its start
            self.catalog.check_template(request["template"], field="template")
        api_key = "sk-imts-" + secrets.token_urlsafe(32)

        def make_files(run_id, run_dir):
            quotas.check_new_run(self.settings, self.store, principals.owner()["tenant"])
            port = self._free_port(run_id)
            name = request.get("name") or run_id
            config = {
                "model_name_or_path": served["base_model"],
                "template": request.get("template") or served["template"] or "default",
                "finetuning_type": served["finetuning_type"],
                "infer_backend": request.get("backend") or "huggingface",
                "trust_remote_code": False,
            }
            if served["adapter"]:
                config["adapter_name_or_path"] = served["adapter"]
            if request.get("max_new_tokens"):
                config["max_new_tokens"] = request["max_new_tokens"]
            state = record.new_record(
                **owner,
                job_id=run_id,
                deployment_id=run_id,
                name=name,
                model=name,
                source=served["source"],
                base_model=served["base_model"],
                adapter=served["adapter"],
                template=config["template"],
                max_new_tokens=request.get("max_new_tokens"),
                host=self.settings.deploy_host,
                port=port,
                base_url=f"http://{public_host(self.settings)}:{port}/v1",
                api_key_sha256=hashlib.sha256(api_key.encode()).hexdigest(),
                gpus=gpus,
                **queued_now(self.settings.max_attempts),
                paths={
                    "log": os.path.join(run_dir, record.LOG),
                    "config": os.path.join(run_dir, record.CONFIG),
                    "api_key": os.path.join(run_dir, record.API_KEY_FILE),
                    "request": os.path.join(run_dir, JobStore.REQUEST),
                },
                about=record.ABOUT,
            )
            return {
                JobStore.REQUEST: request,
                record.CONFIG: config,
                record.API_KEY_FILE: (api_key + "\n").encode(),
                JobStore.STATE: state,
            }

        def create(make):
            with quotas.admitting(self.settings, self.store, principals.owner()["tenant"]):
                with self.store.lock(PORTS_LOCK):  # two creates never take one port
                    run_id = self.store.create_run(record.KIND, make)
            os.chmod(self.store.path(run_id, record.API_KEY_FILE), 0o600)
            return run_id

        if idempotency_key is None:
            run_id, replayed = create(make_files), False
        else:
            text = json.dumps({"deploy": request}, sort_keys=True)
            fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
            key = principals.scoped(idempotency_key)
            run_id, replayed = self.store.create_once(key, fingerprint, make_files, create)
        view = self.view(self.store.read(run_id))
        if not replayed:
            view["api_key"] = api_key
            log.info("deployment %s created (%s)", run_id, served["source"])
            self.started()
        return view, replayed

    def _what_is_served(self, request):
        """{source, base_model, adapter, template, finetuning_type} of a job's weights or a version."""
        if request.get("model"):
            version = self.registry.resolve(request["model"], field="model")
            adapter = version["weights_kind"] == "adapter"
            return {
                "tenant": version.get("tenant"),
                "source": {"model": version["reference"], "job_id": version["job_id"]},
                "base_model": version["base_model_path"] if adapter else version["weights"],
                "adapter": version["weights"] if adapter else None,
                "template": version.get("template"),
                "finetuning_type": version["finetuning_type"],
            }
        job = self.store.read(request["job_id"])  # 404 for an unknown job
        principals.check_visible(job, "job", request["job_id"])
        if job.status not in _SERVABLE:
            raise Conflict(
                f"job {job.job_id} is {job.status}; only completed or stopped jobs can be deployed",
                extra={"job_status": job.status},
            )
        if (job.stage or "sft") == "rm":
            raise Conflict("a reward model (stage rm) scores answers; it does not chat", field="job_id")
        train_config = self.store.read_file(job.job_id, JobStore.TRAIN_CONFIG)
        checkpoint, weights = choose_weights(
            job.paths["output_dir"], request.get("checkpoint"), job.best_checkpoint
        )
        lora = train_config.get("finetuning_type") == "lora"
        return {
            "tenant": job.tenant,
            "source": {"job_id": job.job_id, "checkpoint": checkpoint},
            "base_model": train_config["model_name_or_path"] if lora else weights,
            "adapter": weights if lora else None,
            "template": train_config.get("template"),
            "finetuning_type": train_config.get("finetuning_type") or "lora",
        }

    def _free_port(self, run_id):
        return free_port(self.settings, self.store, run_id)

    # -- read ------------------------------------------------------------------------------

    def list(self, limit=100, offset=0, status=None):
        """(total, one page of deployments), newest first."""
        states = []
        for deployment_id in self.store.run_ids(record.KIND):
            try:
                state = self.store.read(deployment_id)
            except NotFound:
                continue
            if principals.visible(state.tenant) and (status is None or record.shown_status(state) == status):
                states.append(state)
        states.sort(key=creation_order, reverse=True)
        return len(states), [self.view(s) for s in states[offset : offset + limit]]

    def get(self, deployment_id):
        view = self.view(self._read(deployment_id))
        if view["status"] == JobStatus.PENDING.value:
            view["queue_position"] = self.launcher.queue_position(deployment_id)
            view.update(waiting_view(self.launcher.waiting_for(self.store.read(deployment_id))))
        return view

    def upstream(self, deployment_id, key):
        """The port of a ready deployment, for a proxy in front (Nginx's auth_request), to a request
        that carries that deployment's own key; for anyone else the same refusal, whatever the id
        names (an unknown one, another team's, one not ready), so that it tells nothing."""
        state = None
        if isinstance(deployment_id, str) and DEPLOYMENT_ID_PATTERN.fullmatch(deployment_id):
            with contextlib.suppress(NotFound):
                state = self.store.read(deployment_id)
        expected = (state.api_key_sha256 if state is not None else None) or _NO_KEY
        presented = hashlib.sha256((key or "").encode()).hexdigest()
        if not (hmac.compare_digest(presented, expected) and key and state):
            raise Unauthorized(
                "send the deployment's own api_key: Authorization: Bearer <api_key>", field="Authorization"
            )
        return self._ready_port(state)

    def _ready_port(self, state):
        status = record.shown_status(state)
        if status != record.READY:
            raise Conflict(
                f"deployment {state.job_id} is {status}, not ready", extra={"deployment_status": status}
            )
        return state.port

    def chat(self, deployment_id, messages, max_tokens):
        """Stream a chat completion of a ready deployment (server-sent events, as OpenAI's), for the
        dashboard's chat box: the service calls its server with the deployment's own key."""
        state = self._read(deployment_id)
        port = self._ready_port(state)
        with open(state.paths["api_key"], encoding="utf-8") as handle:
            key = handle.read().strip()
        body = {"model": state.model, "messages": messages, "max_tokens": max_tokens, "stream": True}
        request = urllib.request.Request(
            f"http://{probe_host(state.host)}:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            response = urllib.request.urlopen(request, timeout=CHAT_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise Conflict(f"deployment {deployment_id} answered {exc.code}: {exc.read(500)!r}") from None
        except OSError as exc:
            raise Conflict(f"deployment {deployment_id} cannot be reached: {exc}") from None

        return _relayed(response, deployment_id)

    def serving(self, name, version):
        """The live deployments of a registered version (a version they serve cannot be deleted)."""
        reference = f"{name}:{version}"
        users = []
        for state in self.store.active_states(min_age_s=3600):
            if state.kind == record.KIND and (state.source or {}).get("model") == reference:
                users.append(state.job_id)
        return users

    # -- stop ------------------------------------------------------------------------------

    def stop(self, deployment_id):
        """Stop a deployment (its server ends, its slot is free); (view, finished stopping)."""
        state = self._read(deployment_id)
        if not JobStatus(state.status).is_terminal():
            state = self.launcher.request_stop(deployment_id)
            if not JobStatus(state.status).is_terminal():
                state = self.launcher.wait_for(deployment_id, self.settings.stop_wait_s)
        self.started()  # its slot may be free: start what waits
        return self.view(state), JobStatus(state.status).is_terminal()

    # -- helpers ---------------------------------------------------------------------------

    def _read(self, deployment_id):
        """The record of a deployment the caller may see (another tenant's reads as none)."""
        if not isinstance(deployment_id, str) or not DEPLOYMENT_ID_PATTERN.fullmatch(deployment_id):
            raise ValidationFailed(
                "deployment_id must look like deploy_ followed by 8 lowercase letters or digits",
                field="deployment_id",
            )
        try:
            state = self.store.read(deployment_id)
        except NotFound:
            raise NotFound(f"deployment {deployment_id} does not exist", field="deployment_id") from None
        return principals.check_visible(state, "deployment", deployment_id, field="deployment_id")

    def view(self, state):
        return record.view(state)


def _relayed(response, deployment_id):
    """The server's events as they come; a failure once they have started (the answer's status is
    sent) ends the stream with an error event, as OpenAI's streams carry one, instead of silence."""
    done = False
    sent = 0
    try:
        with response:
            for line in response:
                done = done or line.strip() == b"data: [DONE]"
                sent += line.startswith(b"data:")
                yield line
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("deployment %s: its stream broke off: %s", deployment_id, exc)
        yield error_event(f"the model server's answer broke off: {exc}")
        return
    if not done:
        log.warning("deployment %s: its stream ended without [DONE] after %d events", deployment_id, sent)
        yield error_event(
            "the model server ended its answer without finishing it (its deployment.log says why)"
        )
