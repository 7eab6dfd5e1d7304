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
- KINDS (below)   every kind: its name, its package, its ids, where its runs live

The monitor (imts_flask/monitor/) hands a kind's runner its supervisor, the public context of a
run in its process (claim, mark running, update my record, start my process, wait, stop, why it
failed). A kind is a package of its own beside the others, with record.py (RECORD, its class, and
next_attempt(record), what a lost run's next attempt does, in words), runner.py (`run(supervisor,
record)`, what its monitor does) and service.py (what the API calls). Adding a kind is a new
package and one line in Kinds.TABLE: its ids (a prefix and 8 lowercase letters or digits) and its
folder (beside jobs/, or where the setting <folder>_dir says), for which the store creates, reads,
locks, lists and cleans up its runs (tests/runs/test_kinds.py adds one and runs it).
"""

import dataclasses
import importlib
import os


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of run: its record's `kind`, its package, its ids, its folder."""

    name: str
    package: str
    prefix: str  # its ids: this and 8 lowercase letters or digits
    # Its runs' folder beside jobs/ (or where the setting <folder>_dir says); "" for the kinds whose
    # runs live in jobs/: jobs themselves, and evaluations inside their job's directory.
    folder: str = ""


class Kinds:
    """Every kind of run."""

    TABLE = (
        Kind("job", "imts_flask.jobs", "train_"),  # a job's record names no kind: None is "job"
        Kind("evaluation", "imts_flask.evaluations", "eval_"),
        Kind("deployment", "imts_flask.deployments", "deploy_", folder="deployments"),
        Kind("server", "imts_flask.serving", "serve_", folder="servers"),
    )

    def __init__(self):
        self._classes = {}

    def named(self, name):
        """The kind called `name` (None: a job, as every release wrote it)."""
        for kind in self.TABLE:
            if kind.name == (name or "job"):
                return kind
        raise ValueError(f"no kind of run is called {name!r}")

    def with_folders(self):
        """The kinds whose runs have a folder of their own (not in jobs/)."""
        return [kind for kind in self.TABLE if kind.folder]

    def of_id(self, run_id):
        """The kind with a folder of its own whose ids `run_id` looks like, or None."""
        for kind in self.with_folders():
            if run_id.startswith(kind.prefix) and len(run_id) == len(kind.prefix) + 8:
                return kind
        return None

    def folders(self, settings):
        """Each such kind's folder: the setting <folder>_dir where there is one, else beside jobs/."""
        jobs = settings.path("jobs_dir")
        return {
            kind.name: settings.path(f"{kind.folder}_dir")
            if hasattr(settings, f"{kind.folder}_dir")
            else os.path.join(os.path.dirname(jobs), kind.folder)
            for kind in self.with_folders()
        }

    def package(self, kind):
        return importlib.import_module(self.named(kind).package)

    def module(self, kind, name):
        """A module of a kind's package (record, runner, service)."""
        return importlib.import_module(f"{self.named(kind).package}.{name}")

    def record_class(self, kind):
        """The record class of a kind (its package's record.RECORD)."""
        found = self._classes.get(kind)  # every record read asks: no import machinery each time
        if found is None:
            found = self._classes[kind] = self.module(kind, "record").RECORD
        return found

    def runner(self, kind):
        """What a kind's monitor runs: its package's runner.run(context, record)."""
        return self.module(kind, "runner").run

    def next_attempt(self, state):
        """What a lost run's next attempt does, in words (its kind's record.next_attempt)."""
        return self.module(state.kind, "record").next_attempt(state)


KINDS = Kinds()
