"""Webhooks: a POST to the job's (or the service's) URL on every state change, never blocking the API.

The events are the job's `history` in state.json: event N is its N-th status change. After a
change, the store calls Notifier.notify, which starts a detached sender (`python -m
imts_flask.jobs.webhooks`). The sender posts, in order, every event of the job that webhooks.log does not
record yet, retrying with exponential backoff on errors and 5xx/429 answers, and appends each outcome
(with its sequence) to webhooks.log. One sender per job works at a time (a sidecar lock); a sender
that finds the lock taken leaves its events to the holder.

So an event is not lost when the process that made the change dies before its sender starts (a
monitor killed with the host): the job's next change sends it first, and for a last change the
store leaves a marker (jobs/.webhooks-due/<job_id>) that housekeeping's sweep turns into a sender.
"""

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ..errors import NotFound, Unavailable
from ..settings import package_pythonpath
from ..state import now_utc
from . import record
from .store import JobStore

log = logging.getLogger(__name__)

DELIVERY_LOG = "webhooks.log"
SWEEP_LOCK = "_webhook-sweep"
SENDER_LOCK = "webhooks-"  # + the job id: held by the job's one sender at work


def _opener():
    """HTTP(S) only, and no redirect followed: a receiver answers 2xx where it was told to be.

    urllib's default opener follows a 3xx to http, https or ftp, so a webhook URL could send the
    service anywhere; without the redirect handler a 3xx is an HTTPError, recorded and not retried.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class Notifier:
    def __init__(self, settings):
        self.settings = settings

    def url(self, state):
        """Return where this job's events go, or "" when nowhere (an evaluation sends none)."""
        if state.kind == "evaluation":
            return ""
        own = state.webhook_url if state.kind is None else None  # a job's own; a deployment has none
        return own or self.settings.webhook_url

    def notify(self, job_dir, state):
        """Start a sender for the job's events not sent yet, in the background."""
        url = self.url(state)
        if not url:
            return
        message = {
            "url": url,
            "attempts": self.settings.webhook_attempts,
            "backoff_s": self.settings.webhook_backoff_s,
            "timeout_s": self.settings.webhook_timeout_s,
        }
        env = dict(os.environ, PYTHONPATH=package_pythonpath())
        try:
            sender = subprocess.Popen(
                [self.settings.python, "-m", "imts_flask.jobs.webhooks", job_dir],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd=job_dir,
            )
            # Through stdin, not argv: a webhook URL may carry a secret that `ps` would show.
            sender.stdin.write(json.dumps(message).encode("utf-8"))
            sender.stdin.close()
        except OSError:
            log.exception("job %s: could not start the webhook sender", state.job_id)

    def sweep(self, store: JobStore):
        """Start senders for jobs whose last change's sender never started; forget settled jobs."""
        with store.try_lock(SWEEP_LOCK) as taken:
            if not taken:
                return
            for job_id in store.webhooks_due():
                job_dir, state = store.path(job_id), _state(store, job_id)
                if state is None or not due_events(job_dir, state):
                    with contextlib.suppress(Unavailable):  # a busy job lock: the next sweep clears it
                        store.clear_webhook_due(job_id, lambda s, d=job_dir: not due_events(d, s))
                elif not _sending(store, job_id):
                    log.info("job %s: starting a sender for webhook events not sent yet", job_id)
                    self.notify(job_dir, state)


def due_events(job_dir, state):
    """Return the events of the job's history that webhooks.log does not record yet, oldest first."""
    history = state.history or []
    sent = _last_sequence(os.path.join(job_dir, DELIVERY_LOG))
    return [_event(state, history, n) for n in range(sent + 1, len(history) + 1)]


def _event(state, history, sequence):
    change = history[sequence - 1]
    return {
        "event": "job.status_changed",
        "job_id": state.job_id,
        "status": change["status"],
        "previous_status": history[sequence - 2]["status"] if sequence > 1 else None,
        "sequence": sequence,
        "at": change.get("at"),
        # The attempt this change belongs to, and why it happened when the service knows.
        "attempt": change.get("attempt") or 1,
        "reason": change.get("reason"),
        # The job as it is when the event is sent.
        "job": state.pick(record.WEBHOOK),
    }


def _last_sequence(path):
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return 0
    last = 0
    for line in lines:
        try:
            last = max(last, int(json.loads(line).get("sequence") or 0))
        except (ValueError, AttributeError, TypeError):
            continue  # a line torn by a crash, or one written before lines had a sequence
    return last


def _state(store, job_id):
    try:
        return store.read(job_id)  # a damaged record reads as broken, without a history
    except NotFound:
        return None  # deleted: nothing left to send


def _due(store, job_id):
    state = _state(store, job_id)
    return due_events(store.path(job_id), state) if state else []


def _sending(store, job_id):
    with store.try_lock(SENDER_LOCK + job_id) as free:
        return not free


def send_due(message, store, job_id):
    """Deliver the job's due events in order, unless another sender holds the job's sender lock."""
    while True:
        with store.try_lock(SENDER_LOCK + job_id) as taken:
            if not taken:
                return  # that sender re-reads the history when it is done, and sends ours too
            try:
                for event in _due(store, job_id):
                    deliver(message, event, store.path(job_id))
            except OSError:
                return  # the job directory went away (deleted): nothing left to record into
        # A change written while we held the lock may have had its sender turned away: look again.
        if not _due(store, job_id):
            return


def deliver(message, event, job_dir):
    """POST one event, retrying with exponential backoff; record the outcome in webhooks.log."""
    body = json.dumps(event, ensure_ascii=False).encode("utf-8")
    outcome = {"at": None, "sequence": event["sequence"], "status": event["status"]}
    outcome.update(delivered=False, attempts=0)
    opener = _opener()
    for attempt in range(1, message["attempts"] + 1):
        outcome["attempts"] = attempt
        request = urllib.request.Request(
            message["url"],
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "imts-training-api-webhook"},
        )
        try:
            with opener.open(request, timeout=message["timeout_s"]) as response:
                outcome.update(response_code=response.status, delivered=True, error=None)
                break
        except urllib.error.HTTPError as exc:
            outcome.update(response_code=exc.code, error=f"HTTP {exc.code}")
            if 300 <= exc.code < 400:
                where = str(exc.headers.get("Location", ""))[:200]
                outcome["error"] = f"HTTP {exc.code}: redirects are not followed (Location: {where})"
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
    try:
        _message = json.loads(sys.stdin.read())
    except ValueError:
        sys.exit(0)  # the process that started us died mid-write; the job's next sender sends ours
    _root, _job_id = os.path.split(os.path.abspath(sys.argv[1]))
    send_due(_message, JobStore(_root), _job_id)
