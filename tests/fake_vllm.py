"""FAKE vLLM OpenAI server for fault-injection and routing tests (not vLLM): started as vLLM is
(`-m vllm.entrypoints.openai.api_server --model DIR --served-model-name NAME --port P ...`), it answers
/v1/models, /v1/load_lora_adapter and /v1/chat/completions and /v1/completions (plain and streamed,
with usage) for the base model and the adapters loaded, checks VLLM_API_KEY, logs access lines as
uvicorn does, and records what it was sent in fake_vllm_requests.jsonl beside its log (its cwd).

FAKE_VLLM_READY_AFTER (seconds) delays its first answer to /v1/models; --fake-exit N (through
serve_extra_args) makes it die as it starts.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

argv = sys.argv[1:]
if argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]:
    argv = argv[2:]
options = {}
i = 0
while i < len(argv):
    if argv[i].startswith("--"):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[argv[i][2:]] = argv[i + 1]
            i += 2
            continue
        options[argv[i][2:]] = True
    i += 1
KEY = os.environ.get("VLLM_API_KEY")
BASE = options.get("served-model-name", options.get("model"))
PORT = int(options["port"])
READY_AT = time.time() + float(os.environ.get("FAKE_VLLM_READY_AFTER", "0"))
ADAPTERS = {}  # lora_name -> path
LOCK = threading.Lock()
print(f"fake vllm: {BASE} on {PORT}, options {sorted(options)}", flush=True)
if "fake-exit" in options:  # a model vLLM refuses: the server dies as it starts
    print("RuntimeError: Unsupported CPU attention configuration (FAKE)", flush=True)
    sys.exit(int(options["fake-exit"]))


def words(n):
    return [f" w{i}" for i in range(n)]


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message, kind="BadRequestError"):
        self._answer(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def _authorized(self):
        if KEY and self.headers.get("Authorization") != f"Bearer {KEY}":
            self._answer(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        if not self._authorized():
            return
        if self.path == "/v1/models" and time.time() >= READY_AT:
            with LOCK:
                names = [BASE, *ADAPTERS]
            self._answer(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
        else:
            self._error(404, "not found", "NotFoundError")

    def do_POST(self):
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with open("fake_vllm_requests.jsonl", "a") as handle:
            handle.write(json.dumps({"path": self.path, "body": body}) + "\n")
        if self.path == "/v1/load_lora_adapter":
            with LOCK:
                if body["lora_name"] in ADAPTERS:
                    return self._error(
                        400, f"The lora adapter '{body['lora_name']}' has already been loaded."
                    )
                if not os.path.exists(os.path.join(body["lora_path"], "adapter_config.json")):
                    return self._error(400, f"no adapter at {body['lora_path']}")
                ADAPTERS[body["lora_name"]] = body["lora_path"]
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, "not found", "NotFoundError")
        if "chat_template" in body and "trust-request-chat-template" not in options:
            return self._error(
                400, "Chat template is passed with request, but --trust-request-chat-template is not set."
            )
        model = body.get("model")
        with LOCK:
            known = model == BASE or model in ADAPTERS
        if not known:
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
        n = int(body.get("max_tokens") or 4)
        if n > 256:
            return self._error(400, f"max_tokens {n} is too large for the context of 256")
        pieces = words(n)
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        chat = self.path == "/v1/chat/completions"
        if not body.get("stream"):
            choice = {"index": 0, "finish_reason": "length"}
            choice.update(
                {"message": {"role": "assistant", "content": "".join(pieces)}}
                if chat
                else {"text": "".join(pieces)}
            )
            return self._answer(
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in pieces:
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            event = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, **delta, "finish_reason": None}],
            }
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, fmt, *args):
        # uvicorn's access line: '127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200'
        print(
            f'INFO: {self.client_address[0]}:{self.client_address[1]} - "{self.requestline}" {args[1]}',
            flush=True,
        )


ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer((options.get("host", "127.0.0.1"), PORT), Handler).serve_forever()
