"""FAKE deployment server for fault-injection tests (not LLaMA Factory): answers /v1/models and
/v1/chat/completions with API_KEY checked, logs access lines as uvicorn does, and dies as told.

    fake_server.py [--die-after S] [--never-ready] [--exit-code N] [--break-stream] SERVER_CONFIG.yaml

--break-stream: a streamed answer stops after its first piece and the connection closes without
[DONE], as LLaMA Factory's does when it raises once the answer has started.
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--die-after", type=float, default=None)
parser.add_argument("--never-ready", action="store_true")
parser.add_argument("--exit-code", type=int, default=1)
parser.add_argument("--break-stream", action="store_true")
parser.add_argument("config")
args = parser.parse_args()
KEY = os.environ.get("API_KEY")
MODEL = os.environ.get("API_MODEL_NAME", "fake")
# A streamed answer, markup included: a page must show it as text.
STREAMED = ["<b>six</b>", " and ", "<img src=x onerror=alert(1)>"]
print(f"fake server: config {args.config}, port {os.environ['API_PORT']}", flush=True)


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self):
        if KEY and self.headers.get("Authorization") != f"Bearer {KEY}":
            self._answer(401, {"detail": "Invalid API key."})
            return False
        return True

    def do_GET(self):
        if args.never_ready:
            self._answer(503, {"detail": "loading"})
        elif self.path == "/v1/models" and self._authorized():
            self._answer(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/v1/chat/completions" and self._authorized() and request.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in STREAMED:
                chunk = {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": piece}}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if args.break_stream:
                    self.close_connection = True
                    return
                time.sleep(0.05)
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True
        elif self.path == "/v1/chat/completions" and self._authorized():
            message = {"role": "assistant", "content": "six"}
            self._answer(
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                },
            )

    def log_message(self, fmt, *values):  # uvicorn's access line
        host, port = self.client_address[:2]
        print(
            f'INFO:     {host}:{port} - "{self.requestline}" {values[1] if len(values) > 1 else ""}',
            flush=True,
        )


server = ThreadingHTTPServer((os.environ["API_HOST"], int(os.environ["API_PORT"])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
if args.die_after is not None:
    time.sleep(args.die_after)
    print("fake server: dying as told", flush=True)
    sys.exit(args.exit_code)
while True:
    time.sleep(1)
