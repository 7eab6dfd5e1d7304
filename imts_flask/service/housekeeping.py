"""Housekeeping: what keeps the store moving when no request asks, in each worker.

Every housekeeping_s each worker settles runs whose monitor is gone and starts queued runs that
now fit (the scheduler), sends webhook events whose sender never started, and runs a cleanup
round when one is due (one worker at a time: jobs/lifecycle.py). A request that may free or fill
a slot starts the scheduler at once, in the background, so that it answers at once.
"""

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


class Housekeeper:
    def __init__(self, settings, store, launcher, notifier, lifecycle):
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.notifier = notifier
        self.lifecycle = lifecycle
        self._pid = None

    def start_queued_soon(self):
        """Start queued runs in the background, so the request that queued one answers at once.

        If this worker dies first, any worker's housekeeping starts them.
        """
        threading.Thread(target=self._start_queued, name="imts-start", daemon=True).start()

    def _start_queued(self):
        try:
            self.launcher.schedule()
        except Exception:
            log.exception("starting queued runs failed; housekeeping will retry")

    def run(self):
        """Settle runs whose monitor is gone, start queued runs that now fit, send webhook events
        whose sender never started, and run a due cleanup round."""
        self.launcher.schedule()
        self.notifier.sweep(self.store)
        self.lifecycle.maybe_run()

    def ensure_started(self):
        """Start this process's housekeeping thread once (lazily: nothing starts at import or fork)."""
        if self.settings.housekeeping_s <= 0 or self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._loop, name="imts-housekeeper", daemon=True).start()

    def _loop(self):
        while True:
            time.sleep(self.settings.housekeeping_s)
            try:
                self.run()
            except Exception:  # keep the loop alive; the next round may succeed
                log.exception("housekeeping failed")
