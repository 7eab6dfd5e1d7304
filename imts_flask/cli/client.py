"""The CLI's HTTP client: the API's address and token, its one error, multipart uploads with a
progress bar. HTTP only: the server may be another machine."""

import json
import os
import urllib.error
import urllib.request

API = "/api/v1/training"

TERMINAL = ("completed", "failed", "stopped")


class ApiError(Exception):
    def __init__(self, status, body):
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class Client:
    def __init__(self, url, token=None, timeout=60):
        self.root = url.rstrip("/")
        self.base = self.root + API
        self.token = token
        self.timeout = timeout

    def auth(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def call(self, method, path, body=None, headers=None, data=None):
        """Return (status, JSON body, response headers); 4xx/5xx raise ApiError.

        `body` goes as JSON; `data` (with its Content-Type in `headers`) as it is, a file-like
        object included.
        """
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers = {**(headers or {}), "Content-Type": "application/json"}
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=dict(headers or {})
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None, response.headers
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return 304, None, exc.headers
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            raise ApiError(exc.code, payload) from None


class Multipart:
    """A multipart/form-data body streamed from a file, with a progress bar: never all in memory."""

    def __init__(self, fields, path, bar):
        self.boundary = "imts-" + os.urandom(12).hex()
        head = "".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{os.path.basename(path)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        self.parts = [head.encode(), None, f"\r\n--{self.boundary}--\r\n".encode()]
        self.file = open(path, "rb")  # closed once read to the end
        self.length = len(self.parts[0]) + os.path.getsize(path) + len(self.parts[2])
        self.bar = bar

    def read(self, size=-1):
        while self.parts:
            if self.parts[0] is None:
                chunk = self.file.read(size if size > 0 else 1024 * 1024)
                if chunk:
                    self.bar.update(len(chunk))
                    return chunk
                self.file.close()
                self.parts.pop(0)
                continue
            chunk = self.parts.pop(0)
            return chunk
        return b""
