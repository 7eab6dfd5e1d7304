"""Tokens each team's requests used, per model: a ledger by month, one JSON line a request,

    logs/usage/tokens/<YYYY-MM>.jsonl
    {"at": "2026-12-07T22:40:01", "day": "2026-12-07", "tenant": "team-a", "model": "train_a1b2c3d4",
     "prompt_tokens": 12, "completion_tokens": 40}

appended by the worker that relayed the request (one write of a short line with O_APPEND: lines of
two workers never interleave), and summed for GET /usage. Each process reads a month's file from
where it left it: a report costs the lines written since the last one, not the month's history.
"""

import fcntl
import json
import os
import threading
import time

from ..state import now_utc

_sums = {}  # path -> [offset, {(tenant, day, model): [prompt, completion, requests]}]
_sums_lock = threading.Lock()


class TokenLedger:
    def __init__(self, settings):
        self.root = os.path.join(settings.path("usage_dir"), "tokens")

    def _path(self, month):
        return os.path.join(self.root, f"{month}.jsonl")

    def append(self, tenant, model, prompt_tokens, completion_tokens):
        at = now_utc()
        line = {
            "at": at,
            "day": at[:10],
            "tenant": tenant,
            "model": model,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
        }
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self._path(at[:7]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def _month(self, month):
        """The month's sums by (tenant, day, model), brought up to the end of its file."""
        path = self._path(month)
        with _sums_lock:
            offset, sums = _sums.setdefault(path, [0, {}])
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                return {}
            end = data.rfind(b"\n") + 1
            for raw in data[:end].splitlines():
                try:
                    line = json.loads(raw)
                    key = (line.get("tenant"), line["day"], line["model"])
                    row = sums.setdefault(key, [0, 0, 0])
                    row[0] += int(line["prompt_tokens"])
                    row[1] += int(line["completion_tokens"])
                    row[2] += 1
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a full disk counts nothing
            _sums[path][0] = offset + end
            return dict(sums)

    def report(self, start, end, tenant=None):
        """Tokens per team and model between two dates (inclusive)."""
        rows = {}
        month = start[:7]
        while month <= end[:7]:
            for (team, day, model), (prompt, completion, requests) in self._month(month).items():
                if start <= day <= end and tenant in (None, team):
                    row = rows.setdefault((team, model), [0, 0, 0])
                    row[0] += prompt
                    row[1] += completion
                    row[2] += requests
            year, number = int(month[:4]), int(month[5:7])
            month = f"{year + number // 12:04d}-{number % 12 + 1:02d}"
        return [
            {
                "tenant": team,
                "model": model,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "requests": requests,
            }
            for (team, model), (prompt, completion, requests) in sorted(
                rows.items(), key=lambda i: (str(i[0][0]), i[0][1])
            )
        ]


class TokenRate:
    """Tokens each team used in the current minute (UTC), shared by every worker and instance: one
    small file a team, changed under its flock. A calendar minute, not a sliding one: a team may use
    up to twice its limit across a minute's turn, never more."""

    def __init__(self, settings):
        self.root = os.path.join(settings.path("usage_dir"), "tokens", "minute")

    def _file(self, tenant):
        return os.path.join(self.root, f"{tenant}.json")

    def _locked(self, tenant, change=None):
        """(minute, tokens) of the team's file now; `change(tokens)` gives what to write instead."""
        os.makedirs(self.root, exist_ok=True)
        minute = int(time.time() // 60)
        fd = os.open(self._file(tenant), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                stored = json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                stored = {}
            tokens = stored.get("tokens", 0) if stored.get("minute") == minute else 0
            if change is not None:
                tokens = change(tokens)
                data = json.dumps({"minute": minute, "tokens": tokens}).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
            return minute, tokens
        finally:
            os.close(fd)

    def used(self, tenant):
        """(tokens this minute, seconds until the next minute)."""
        minute, tokens = self._locked(tenant)
        return tokens, max(1, int((minute + 1) * 60 - time.time()) + 1)

    def add(self, tenant, tokens):
        self._locked(tenant, lambda used: used + int(tokens))
