"""Shared base-model servers: one vLLM OpenAI server per base model, every LoRA fine-tune of it an
adapter loaded on demand, one OpenAI endpoint (/v1) in front of them all.

A server is a kind of run (record.py; runs.KINDS): a directory under servers/ with its state.json,
its vLLM command line and its log, queued for a slot as a deployment is, started and watched by the
detached monitor (runner.py; monitor/servers.py keeps it alive), stopped after serve_idle_stop_minutes
without a request. service.py answers /v1: it names what a `model` is (a job's weights, a registered
version, a base model), finds or starts the server of its base model, loads its adapter there with
vLLM's runtime LoRA loading, relays the request and counts its tokens (usage.py). vLLM runs in a venv
of its own (`make vllm`); no API worker imports it.
"""
