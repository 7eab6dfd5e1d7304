"""The core every kind of run shares: jobs, evaluations and deployments are kinds of run.

A run is a directory with its record (state.json), its config and its logs, under sidecar locks,
queued for the same slots and GPUs and started by a detached monitor. What they share lives here:

- record.py       the typed record: a dataclass per kind made from its table of fields, to_json and
                  from_json, its version on disk; the one way a change says what it did
- store.py        the run store: layout, locks, create, read, update (the state machine), the
                  markers of runs not finished; it raises the service's errors (not found, conflict,
                  full, unavailable), never HTTP statuses
- ids.py          the ids of runs; idempotency.py, a create once per Idempotency-Key;
                  leftovers.py, what a crash in the middle of a write leaves
- KINDS (below)   every kind by name: its record class and its runner

The monitor (imts_flask/monitor/) hands a kind's runner its supervisor, the public context of a
run in its process (claim, mark running, update my record, start my process, wait, stop, why it
failed). A kind is a package of its own beside the others, with record.py (RECORD, its class),
runner.py (`run(supervisor, record)`, what its monitor does) and service.py (what the API calls).
Adding a kind is a new package and one line in Kinds.PACKAGES.
"""

import importlib


class Kinds:
    """Every kind of run by name, and where its package is."""

    # A job's record names no kind (as every release wrote it): None is "job".
    PACKAGES = {
        "job": "imts_flask.jobs",
        "evaluation": "imts_flask.evaluations",
        "deployment": "imts_flask.deployments",
    }

    def __init__(self):
        self._classes = {}

    def package(self, kind):
        try:
            return importlib.import_module(self.PACKAGES[kind or "job"])
        except KeyError:
            raise ValueError(f"no kind of run is called {kind!r}") from None

    def record_class(self, kind):
        """The record class of a kind (its package's record.RECORD)."""
        found = self._classes.get(kind)  # every record read asks: no import machinery each time
        if found is None:
            found = self._classes[kind] = importlib.import_module(
                f"{self.PACKAGES[kind or 'job']}.record"
            ).RECORD
        return found

    def runner(self, kind):
        """What a kind's monitor runs: its package's runner.run(context, record)."""
        return importlib.import_module(f"{self.PACKAGES[kind or 'job']}.runner").run


KINDS = Kinds()
