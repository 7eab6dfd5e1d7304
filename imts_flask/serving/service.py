"""What /v1 does, below HTTP: name what a `model` is (names.py), find or start the shared server of
its base model, load its adapter there, relay the request, count its tokens.

A LoRA fine-tune is an adapter of its base model's server: loaded with vLLM's runtime LoRA loading
(POST /v1/load_lora_adapter) on its first request, under its canonical name (`train_x:best`,
`support-bot:3`), and recorded in the server's record with the server process that holds it: a
server started again loads it again on its next request. Runtime loading, not vLLM's filesystem
resolver plugin: the resolver finds an adapter by a directory named as the model in one folder and
checks its base by name, where ours live in job directories and registry versions under names with
colons; the service already knows each path and each caller's right to it, and records what it did.
vLLM keeps max_loras adapters in a batch and max_cpu_loras in memory, evicting the least recently
used and reading it again from its path when it is asked for. Each adapter answers with the chat
template it was trained with (chat_template.jinja beside its weights), sent with each request.
"""

import contextlib
import hashlib
import http.client
import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request

from ..errors import Conflict, Forbidden, NotFound, TooManyRequests, Unavailable, ValidationFailed
from ..jobs.store import JobStore
from ..runs.endpoints import PORTS_LOCK, error_event, free_port, probe_host
from ..runs.ids import id_pattern
from ..runs.record import CHANGED, UNCHANGED, queued_now
from ..state import JobStatus, creation_order, now_utc
from ..tenancy import principals, quotas
from ..tenancy.tokens import TokenLedger, TokenRate
from . import record
from .names import Names, read_template

log = logging.getLogger(__name__)

SERVER_ID_PATTERN = id_pattern("serve_")
RELAY_TIMEOUT_S = 300.0  # the longest a server may stay silent in an answer


class Serving:
    def __init__(self, settings, store: JobStore, catalog, launcher, versions, started):
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.launcher = launcher
        self.versions = versions
        self.started = started  # called once a server is queued: the service schedules soon
        self.ledger = TokenLedger(settings)
        self.rate = TokenRate(settings)
        self.names = Names(store, catalog, versions)
        self.resolve, self.models = self.names.resolve, self.names.models
        # Told of each completion as it ends: (model, tenant, stream, status, usage, first token s).
        self.observe = lambda *figures: None
        self._known = {}  # base model path -> the server id found for it last

    # -- servers ----------------------------------------------------------------------------

    def _live_server(self, base_model_path):
        """The live server of a base model: the one this process found last, read again (a request
        reads one record), else the first among the runs not finished."""
        known = self._known.get(base_model_path)
        if known:
            with contextlib.suppress(NotFound):
                state = self.store.read(known)
                if not JobStatus(state.status).is_terminal() and not state.stop_requested_at:
                    return state
        for state in self.store.active_states(min_age_s=3600):
            if state.kind == record.KIND and state.base_model_path == base_model_path:
                if not JobStatus(state.status).is_terminal() and not state.stop_requested_at:
                    self._known[base_model_path] = state.job_id
                    return state
        return None

    def server_for(self, target):
        """The live server of the target's base model: one is queued if there is none, unless the
        last one failed lately (a model vLLM cannot serve would take a slot for each request)."""
        state = self._live_server(target.base_model_path)
        if state is not None:
            return state
        key = "_server_" + base_key(target.base_model_path)
        with self.store.lock(key):  # two requests never start two servers of one base model
            state = self._live_server(target.base_model_path)
            if state is not None:
                return state
            self._refuse_if_failed_lately(target)
            with self.store.lock(PORTS_LOCK):
                server_id = self.store.create_run(record.KIND, self._server_files(target))
        os.chmod(self.store.path(server_id, record.API_KEY_FILE), 0o600)
        log.info("server %s of %s queued", server_id, target.base_model)
        self.started()
        return self.store.read(server_id)

    def _refuse_if_failed_lately(self, target):
        path = failure_path(self.store, target.base_model_path)
        try:
            with open(path, encoding="utf-8") as handle:
                failed = json.load(handle)
        except (OSError, ValueError):
            return
        wait = int(failed.get("at", 0) + self.settings.serve_retry_failed_s - time.time())
        if wait > 0:
            raise Unavailable(
                f"the server of {target.base_model} failed ({failed.get('error')}); "
                f"another is tried in {wait} s",
                headers={"Retry-After": str(wait)},
                extra={"server_id": failed.get("server_id")},
            )

    def _server_files(self, target):
        settings = self.settings
        api_key = "sk-imts-serve-" + secrets.token_urlsafe(32)

        def make_files(run_id, run_dir):
            state = record.new_record(
                job_id=run_id,
                server_id=run_id,
                base_model=target.base_model,
                base_model_path=target.base_model_path,
                host=settings.deploy_host,
                port=free_port(settings, self.store, run_id),
                max_loras=settings.serve_max_loras,
                max_cpu_loras=settings.serve_max_cpu_loras,
                gpus=1 if settings.gpu_ids else 0,
                priority="low" if settings.serve_preemptible else None,  # gives way to training
                **queued_now(settings.max_attempts),
                paths={
                    "log": os.path.join(run_dir, record.LOG),
                    "api_key": os.path.join(run_dir, record.API_KEY_FILE),
                    "command": os.path.join(run_dir, record.COMMAND),
                },
                about=record.ABOUT,
            )
            return {record.API_KEY_FILE: (api_key + "\n").encode(), JobStore.STATE: state}

        return make_files

    def ready_server(self, target):
        """(record, key) of the target's server once it answers; 503 with Retry-After if it is
        still starting after serve_start_wait_s, or if it failed."""
        state = self.server_for(target)
        deadline = time.monotonic() + self.settings.serve_start_wait_s
        while True:
            shown = record.shown_status(state)
            if shown == record.READY:
                with open(state.paths["api_key"], encoding="utf-8") as handle:
                    return state, handle.read().strip()
            if JobStatus(state.status).is_terminal():
                state = self.server_for(target)  # it ended (idle, preempted): a new one
                if JobStatus(state.status).is_terminal():
                    raise Unavailable(f"the server of {target.base_model} ended: {state.error}")
                continue
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"the server of {target.base_model} ({state.job_id}) is {shown}; try again shortly",
                    headers={"Retry-After": "10"},
                    extra={"server_id": state.job_id, "server_status": shown},
                )
            time.sleep(0.5)
            state = self.store.read(state.job_id)

    def load_adapter(self, server, key, target, again=False):
        """Load the target's adapter into the server's running process unless it has it (`again`:
        the server said it has not, whatever its record says)."""
        loaded = (server.adapters or {}).get(target.name)
        if loaded and loaded.get("pid") == server.pid and not again:
            return server
        _check_rank(target, self.settings.serve_max_lora_rank)
        started = time.monotonic()
        status, answer = _call(
            server, key, "/v1/load_lora_adapter", {"lora_name": target.name, "lora_path": target.adapter}
        )
        if status != 200 and "already" not in answer.decode("utf-8", "replace"):
            raise Unavailable(
                f"the server of {target.base_model} could not load {target.name}: {answer[:300]!r}"
            )
        took_ms = round((time.monotonic() - started) * 1000, 1)
        pid = server.pid

        def note(current):
            if current.pid != pid:
                return UNCHANGED  # started again meanwhile: what it loaded is gone
            adapters = dict(current.adapters or {})
            adapters[target.name] = {
                "path": target.adapter,
                "loaded_at": now_utc(),
                "load_ms": took_ms,
                "pid": pid,
                "tenant": target.tenant,
            }
            current.set(adapters=adapters, adapter_loads=(current.adapter_loads or 0) + 1)
            return CHANGED

        with contextlib.suppress(Unavailable):
            server = self.store.update(server.job_id, note)
        log.info("server %s: adapter %s loaded in %.1f ms", server.job_id, target.name, took_ms)
        return server

    # -- completions -----------------------------------------------------------------------

    def complete(self, route, body):
        """Relay a completion request (route: chat/completions or completions) to the server of its
        model. Returns (status, JSON answer) or, for a stream, (200, iterator of its events)."""
        started = time.monotonic()
        self._check_rate()
        target = self.resolve(body.get("model"))
        server, key = self.ready_server(target)
        if target.adapter:
            server = self.load_adapter(server, key, target)
        upstream = dict(body, model=target.name)
        if route == "chat/completions" and target.template:
            upstream["chat_template"] = read_template(target.template)
        tenant = principals.owner()["tenant"] or target.tenant
        if body.get("stream"):
            asked_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            response = self._open(server, key, target, route, upstream)
            return 200, self._relayed(response, server, target, tenant, asked_usage, started)
        status, answer = _call(server, key, f"/v1/{route}", upstream, timeout=RELAY_TIMEOUT_S)
        if status == 404 and target.adapter:  # started again since its record was read: load, retry
            server = self.load_adapter(server, key, target, again=True)
            status, answer = _call(server, key, f"/v1/{route}", upstream, timeout=RELAY_TIMEOUT_S)
        try:
            parsed = json.loads(answer)
        except ValueError:
            raise Unavailable(f"the server of {target.base_model} answered {status} with no JSON") from None
        usage = parsed.get("usage") if status == 200 and isinstance(parsed, dict) else None
        self._count(tenant, target, usage, False, status, None)
        return status, parsed

    def _open(self, server, key, target, route, upstream, again=True):
        """The server's streamed answer, once its status is 200; its refusal goes to the caller."""
        try:
            return urllib.request.urlopen(
                _request(server, key, f"/v1/{route}", upstream), timeout=RELAY_TIMEOUT_S
            )
        except urllib.error.HTTPError as exc:
            answer = exc.read(64 * 1024)
            if exc.code == 404 and target.adapter and again:  # started again: load, retry once
                server = self.load_adapter(server, key, target, again=True)
                return self._open(server, key, target, route, upstream, again=False)
            with contextlib.suppress(ValueError):
                raise UpstreamError(exc.code, json.loads(answer)) from None
            raise Unavailable(f"the server of {target.base_model} answered {exc.code}") from None
        except OSError as exc:
            raise Unavailable(f"the server of {target.base_model} cannot be reached: {exc}") from None

    def _relayed(self, response, server, target, tenant, asked_usage, started):
        """The server's events as they come, its usage counted; the usage-only last event is left out
        unless the caller asked for it; a failure once they started ends with an error event."""
        done = False
        usage = first_token_s = None
        status = 200
        try:
            with response:
                for line in response:
                    if line.startswith(b"data: {"):
                        if first_token_s is None:
                            first_token_s = time.monotonic() - started
                        if b'"usage":{' in line or b'"usage": {' in line:
                            with contextlib.suppress(ValueError):
                                event = json.loads(line[6:])
                                usage = event.get("usage") or usage
                                if not asked_usage and not event.get("choices"):
                                    continue
                    done = done or line.strip() == b"data: [DONE]"
                    yield line
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("server %s: a stream of %s broke off: %s", server.job_id, target.name, exc)
            status = 502
            yield error_event(f"the model server's answer broke off: {exc}")
            return
        finally:
            self._count(tenant, target, usage, True, status if done or status != 200 else 502, first_token_s)
        if not done:
            yield error_event(
                "the model server ended its answer without finishing it (its server.log says why)"
            )

    def _check_rate(self):
        """A 429 with Retry-After for a team past its max_tokens_per_minute."""
        tenant = principals.owner()["tenant"]
        limit = (
            (quotas.load(self.settings).get(tenant) or {}).get("max_tokens_per_minute") if tenant else None
        )
        if not limit:
            return
        used, wait_s = self.rate.used(tenant)
        if used >= limit:
            raise TooManyRequests(
                f"team {tenant} used {used} tokens this minute, its max_tokens_per_minute is {limit}: "
                f"retry in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
                extra={"used": used, "limit": limit},
            )

    def _count(self, tenant, target, usage, stream, status, first_token_s):
        """Put a completion's tokens in the ledger and its figures in the metrics."""
        with contextlib.suppress(Exception):  # metrics never fail a request
            self.observe(target.name, tenant, stream, status, usage, first_token_s)
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        try:
            self.ledger.append(tenant, target.name, prompt, completion)
            if tenant:
                self.rate.add(tenant, prompt + completion)
        except OSError as exc:
            log.warning("tokens of %s not counted: %s", target.name, exc)

    # -- the servers' own routes -------------------------------------------------------------

    def list(self, limit=100, offset=0):
        states = []
        for server_id in self.store.run_ids(record.KIND):
            with contextlib.suppress(NotFound):
                states.append(self.store.read(server_id))
        states.sort(key=creation_order, reverse=True)
        return len(states), [_shown(s) for s in states[offset : offset + limit]]

    def get(self, server_id):
        return _shown(self._read(server_id))

    def stop(self, server_id):
        """Stop a server (admins only: it serves every team); (view, finished stopping)."""
        caller = principals.current()
        if caller is not None and not caller.admin:
            raise Forbidden(f"the token {caller.name!r} is not an admin's: a shared server serves every team")
        state = self._read(server_id)
        if not JobStatus(state.status).is_terminal():
            state = self.launcher.request_stop(server_id)
            if not JobStatus(state.status).is_terminal():
                state = self.launcher.wait_for(server_id, self.settings.stop_wait_s)
        self.started()
        return record.view(state), JobStatus(state.status).is_terminal()

    def _read(self, server_id):
        if not isinstance(server_id, str) or not SERVER_ID_PATTERN.fullmatch(server_id):
            raise ValidationFailed(
                "server_id must look like serve_ followed by 8 lowercase letters or digits", field="server_id"
            )
        try:
            return self.store.read(server_id)
        except NotFound:
            raise NotFound(f"server {server_id} does not exist", field="server_id") from None


def _shown(state):
    """A server as the caller may see it: a shared server is everyone's, the adapters it holds of
    another team's models are not (their names would tell the team's jobs and versions)."""
    view = record.view(state)
    held = view.get("adapters") or {}
    view["adapters"] = {name: a for name, a in held.items() if principals.visible(a.get("tenant"))}
    return view


def base_key(base_model_path):
    return hashlib.sha256(base_model_path.encode()).hexdigest()[:16]


def failure_path(store, base_model_path):
    """Where the last failure of a base model's server is written (its runner writes it)."""
    return os.path.join(store.folder(record.KIND), f"_failed_{base_key(base_model_path)}.json")


class UpstreamError(Exception):
    """The server refused a request (its status and OpenAI-shaped answer go to the caller as they are)."""

    def __init__(self, status, body):
        super().__init__(status)
        self.status, self.body = status, body


def _check_rank(target, most):
    try:
        with open(os.path.join(target.adapter, "adapter_config.json"), encoding="utf-8") as handle:
            rank = int(json.load(handle).get("r") or 0)
    except (OSError, ValueError, TypeError) as exc:
        raise Conflict(f"{target.name} has no readable adapter_config.json: {exc}", field="model") from None
    if rank > most:
        raise Conflict(
            f"{target.name} is a rank {rank} adapter; the servers take up to serve_max_lora_rank ({most})",
            field="model",
        )


def _request(server, key, path, body):
    return urllib.request.Request(
        f"http://{probe_host(server.host)}:{server.port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def _call(server, key, path, body, timeout=60.0):
    """(status, body bytes) of a POST to the server."""
    try:
        with urllib.request.urlopen(_request(server, key, path, body), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(64 * 1024)
    except OSError as exc:
        raise Unavailable(f"the server {server.job_id} cannot be reached: {exc}") from None
