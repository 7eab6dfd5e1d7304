"""Running a shared server, in the monitor that claimed its launch: vLLM's OpenAI server of one base
model with runtime LoRA loading, kept alive by monitor/servers.py (ready once /v1/models answers,
started again when it dies, stopped after serve_idle_stop_minutes without a request).

vLLM runs under settings.vllm_python, the interpreter of its own venv (`make vllm`): it pins a torch
and a transformers of its own. Its runtime adapter routes (/v1/load_lora_adapter) are open to
whoever holds the server's key, which only the service does; the server listens on the deployment
address (127.0.0.1 unless the operator says otherwise).
"""

import json
import os
import shlex
import time

from ..fsio import atomic_write_json
from ..monitor.servers import Served, keep_serving
from ..state import JobStatus
from . import record
from .service import failure_path

# LLaMA Factory's `default` template as it writes it beside an adapter (chat_template.jinja): what a
# base model without a template of its own answers with.
DEFAULT_TEMPLATE = os.path.join(os.path.dirname(__file__), "default_chat_template.jinja")


def command(settings, state, api_key):
    """(argv, env) of vLLM's OpenAI server for a server record."""
    argv = [
        settings.vllm_python_path,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        state.base_model_path,
        "--served-model-name",
        state.base_model,
        "--host",
        state.host,
        "--port",
        str(state.port),
        "--enable-lora",
        "--max-lora-rank",
        str(settings.serve_max_lora_rank),
        "--max-loras",
        str(state.max_loras),
        "--max-cpu-loras",
        str(state.max_cpu_loras),
        "--max-model-len",
        str(settings.serve_max_model_len),
        "--chat-template",
        DEFAULT_TEMPLATE,
        # Each adapter's own template comes with its requests; only the service (with the key) sends
        # one: /v1 refuses a client's chat_template.
        "--trust-request-chat-template",
        "--uvicorn-log-level",  # its access lines count the requests served
        "info",
    ]
    if not (state.launch or {}).get("gpus"):
        argv += ["--dtype", "float32"]  # the CPU build computes in float32
    argv += shlex.split(settings.serve_extra_args)
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(int(settings.serve_kvcache_gb)),  # whole GiB
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": "",
    }
    return argv, {**env, "VLLM_API_KEY": api_key}  # in its environment: not on `ps` to other users


def run(sup, state):
    """Serve a claimed server until it is stopped, idle, or its process keeps dying."""
    settings = sup.settings
    state = sup.mark_running(ready_at=None, adapters={})
    if state is None:
        return
    with open(state.paths["api_key"], encoding="utf-8") as handle:
        api_key = handle.read().strip()
    argv, env = command(settings, state, api_key)
    shown_env = {k: v for k, v in env.items() if k != "VLLM_API_KEY"}
    with open(state.paths["command"], "w", encoding="utf-8") as handle:
        json.dump({"argv": argv, "env": shown_env}, handle, indent=1)
    served = Served(
        argv=argv,
        log_name=record.LOG,
        host=state.host,
        port=state.port,
        api_key=api_key,
        idle_minutes=settings.serve_idle_stop_minutes,
        start_timeout_s=settings.deploy_start_timeout_s,
        env=env,
    )
    # A process started again has loaded nothing: its adapters load again on their next request.
    keep_serving(sup, state, served, restart_changes={"adapters": {}})
    ended = sup.read()
    if ended.status == JobStatus.FAILED.value:  # the next request waits serve_retry_failed_s
        note = {"at": time.time(), "server_id": ended.job_id, "error": ended.error}
        atomic_write_json(failure_path(sup.store, ended.base_model_path), note)
