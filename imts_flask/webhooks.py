"""Webhooks: a POST to the job's (or the service's) URL on every state change, never blocking the API.

The store calls Notifier.notify after a status change; the notifier starts a detached sender
(`python -m imts_flask.webhooks`) that POSTs the event, retries with exponential backoff on errors
and 5xx/429 answers, and appends the outcome to the job's webhooks.log.
"""

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .state import now_utc

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELIVERY_LOG = "webhooks.log"


class Notifier:
    def __init__(self, settings):
        self.settings = settings

    def notify(self, job_dir, before, state):
        """Send the change of `state` from status `before` to its webhook, in the background."""
        url = state.get("webhook_url") or self.settings.webhook_url
        if not url:
            return
        event = {
            "event": "job.status_changed",
            "job_id": state["job_id"],
            "status": state["status"],
            "previous_status": before,
            "sequence": len(state.get("history") or []),
            "at": now_utc(),
            # The attempt this change belongs to, and why it happened when the service knows.
            "attempt": state.get("attempt") or 1,
            "reason": ((state.get("history") or [{}])[-1]).get("reason"),
            "job": {
                key: state.get(key)
                for key in ("model_name", "dataset", "stage", "error", "exit_code", "reason")
            },
        }
        message = {
            "url": url,
            "event": event,
            "attempts": self.settings.webhook_attempts,
            "backoff_s": self.settings.webhook_backoff_s,
            "timeout_s": self.settings.webhook_timeout_s,
        }
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            sender = subprocess.Popen(
                [self.settings.python, "-m", "imts_flask.webhooks", job_dir],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd=job_dir,
            )
            sender.stdin.write(json.dumps(message).encode("utf-8"))
            sender.stdin.close()
        except OSError:
            log.exception("job %s: could not start the webhook sender", state["job_id"])


def deliver(message, job_dir):
    """POST the event, retrying with exponential backoff; record the outcome in webhooks.log."""
    body = json.dumps(message["event"], ensure_ascii=False).encode("utf-8")
    outcome = {"at": None, "status": message["event"]["status"], "delivered": False, "attempts": 0}
    for attempt in range(1, message["attempts"] + 1):
        outcome["attempts"] = attempt
        request = urllib.request.Request(
            message["url"],
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "imts-training-api-webhook"},
        )
        try:
            with urllib.request.urlopen(request, timeout=message["timeout_s"]) as response:
                outcome.update(response_code=response.status, delivered=True, error=None)
                break
        except urllib.error.HTTPError as exc:
            outcome.update(response_code=exc.code, error=f"HTTP {exc.code}")
            if exc.code < 500 and exc.code != 429:
                break  # the receiver refused it; retrying will not help
        except (urllib.error.URLError, OSError) as exc:
            outcome.update(response_code=None, error=str(getattr(exc, "reason", exc)))
        if attempt < message["attempts"]:
            time.sleep(message["backoff_s"] * 2 ** (attempt - 1))
    outcome["at"] = now_utc()
    with open(os.path.join(job_dir, DELIVERY_LOG), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(outcome) + "\n")
    return outcome


if __name__ == "__main__":
    deliver(json.loads(sys.stdin.read()), sys.argv[1])
