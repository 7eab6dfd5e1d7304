"""Uploaded datasets: checked row by row, registered atomically, offered to jobs like the operator's.

Layout under `uploads_dir` (data/uploads), a LLaMA Factory data directory the service alone writes:

    dataset_info.json            the registry: one LLaMA Factory entry per upload
    <name>/<version>/data.<ext>  the file as uploaded (a version per upload of that name)
    <name>/<version>/meta.json   format, stages, rows, bytes, sha256, columns, when
    .staging/  .trash/           uploads being received; datasets being removed

An upload streams into .staging, is checked by a child process (imts_flask/dataset_rows.py), then
its version directory is renamed into place and the registry replaced atomically: a crash or a full
disk never leaves half a dataset registered. Replacing a dataset adds a version; jobs keep the
absolute path of the version they were created with, so a replacement never changes a job's data.
Versions no job refers to any more are removed by the cleanup round.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

from ..errors import Conflict, NotFound, ServiceError, Unavailable, ValidationFailed, storage_error
from ..fsio import atomic_write_json, fsync_dir, move_aside, read_json
from ..jobs.store import JobStore
from ..settings import package_pythonpath
from ..state import now_utc
from ..tenancy import principals
from .readers import EXTENSIONS, kind_of
from .rows import FORMATS, STAGES_BY_FORMAT

log = logging.getLogger(__name__)

# A dataset's name, uploaded or the operator's: the one definition (schemas, catalog, OpenAPI use it).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
REGISTRY = "dataset_info.json"
META = "meta.json"
# Names a dataset may not take: the registry's own file and what is moved aside beside it.
RESERVED_PREFIX = "dataset_info"
# dataset_info "tags" for OpenAI-style messages (ShareGPT's from/value/human/gpt are LLaMA Factory's defaults)
_CONVERSATION_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def entry_for(report, file_name):
    """Return the LLaMA Factory dataset_info entry for a checked file."""
    fmt, layout, columns = report["format"], report["layout"], set(report["columns"])
    entry = {"file_name": file_name}
    if fmt == "text":
        entry["columns"] = {"prompt": "text"}
        return entry
    if layout in ("messages", "conversations"):
        entry["formatting"] = "sharegpt"
        mapping = {"messages": layout}
        if layout == "messages":
            entry["tags"] = dict(_CONVERSATION_TAGS)
        mapping.update({key: key for key in ("system", "tools") if key in columns})
    else:
        mapping = {"prompt": "instruction"}
        for key, column in (("query", "input"), ("system", "system"), ("history", "history")):
            if column in columns:
                mapping[key] = column
        if fmt != "pairwise":
            mapping["response"] = "output"
    if fmt == "pairwise":
        entry["ranking"] = True
        mapping.update(chosen="chosen", rejected="rejected")
    if fmt == "kto":
        mapping["kto_tag"] = "label" if "label" in columns else "kto_tag"
    entry["columns"] = mapping
    return entry


def _refuse_in_use(name, in_use, action):
    users = in_use(name) if in_use is not None else []
    if users:
        raise Conflict(
            f"dataset '{name}' is used by unfinished jobs ({', '.join(users)}); it cannot be {action} now",
            field="name",
            extra={"job_ids": users},
        )


class Uploads:
    """The registry of uploaded datasets under settings.uploads_dir."""

    def __init__(self, settings, store: JobStore):
        self.settings = settings
        self.store = store  # for its locks and the jobs that use a dataset
        self.root = os.path.realpath(settings.path("uploads_dir"))
        os.makedirs(os.path.join(self.root, ".staging"), exist_ok=True)

    def _dir(self, name):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValidationFailed(f"name must be {NAME_RULE}", field="name")
        if name.startswith(RESERVED_PREFIX):
            raise ValidationFailed(
                f"names starting with '{RESERVED_PREFIX}' are reserved for the registry's own files",
                field="name",
            )
        return os.path.join(self.root, name)

    # -- reading ---------------------------------------------------------------------------

    def entries(self):
        """Return the registry: {name: LLaMA Factory entry with file_name relative to the root}.

        A damaged registry (not JSON, not a mapping, a directory) is moved aside and rebuilt from the
        version directories (each holds its meta.json); while that cannot be done it reads as empty,
        so that jobs on the operator's datasets still start, and health() says why.
        """
        try:
            return self._read_registry()
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("uploads: the registry %s is damaged (%s); rebuilding it", REGISTRY, exc)
        try:
            with self.store.lock("_uploads_registry"):
                return self._repaired()
        except (OSError, Unavailable) as exc:
            log.error("uploads: the registry could not be rebuilt: %s", exc)
            return {}

    def _read_registry(self):
        registry = read_json(os.path.join(self.root, REGISTRY))
        if not all(isinstance(e, dict) and isinstance(e.get("file_name"), str) for e in registry.values()):
            raise ValueError("an entry is not a mapping with a file_name")
        return registry

    def _repaired(self):
        """Under the registry's lock: the registry as it is, or rebuilt if it is still damaged."""
        path = os.path.join(self.root, REGISTRY)
        try:
            return self._read_registry()
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            pass
        aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
        os.rename(path, aside)  # kept for a person to look at
        registry = self._rebuilt()
        atomic_write_json(path, registry)
        log.warning("uploads: registry rebuilt with %d datasets; the damaged one is %s", len(registry), aside)
        return registry

    def _rebuilt(self):
        """The registry as the version directories tell it: each name's newest checked version."""
        registry = {}
        for name in sorted(os.listdir(self.root)):
            directory = os.path.join(self.root, name)
            if not _is_dataset_dir(name, directory):
                continue
            versions = []
            for version in os.listdir(directory):
                with contextlib.suppress(OSError, ValueError):
                    meta = read_json(os.path.join(directory, version, META))
                    data = [f for f in os.listdir(os.path.join(directory, version)) if f.startswith("data.")]
                    if data and meta.get("format") in FORMATS:
                        versions.append((meta.get("created_at") or "", version, data[0], meta))
            if versions:
                _at, version, data_file, meta = max(versions)
                report = {**meta, "layout": _layout(meta)}
                registry[name] = entry_for(report, f"{name}/{version}/{data_file}")
        return registry

    def health(self):
        """(ok, check) of the registry: readable, or absent (no upload yet)."""
        path = os.path.join(self.root, REGISTRY)
        self.entries()  # repairs what it can
        try:
            self._read_registry()
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            return False, {"path": path, "problem": f"{REGISTRY} is damaged and could not be rebuilt: {exc}"}
        return True, {"path": path}

    def meta(self, name):
        """Return what is known of an uploaded dataset (NotFound if there is none of that name)."""
        entry = self.entries().get(name) if NAME.fullmatch(name or "") else None
        if entry is None:
            raise NotFound(f"dataset '{name}' does not exist", field="name")
        version_dir = os.path.dirname(os.path.join(self.root, entry["file_name"]))
        try:
            meta = read_json(os.path.join(version_dir, META))
        except (FileNotFoundError, ValueError):
            meta = {"name": name}
        return {**meta, "path": os.path.join(self.root, entry["file_name"])}

    def preview(self, path, count):
        """Return {rows, truncated}: the first `count` rows of a file, long values cut (read by the child)."""
        return self._child("preview", path, str(count))

    # -- uploading -------------------------------------------------------------------------

    @contextlib.contextmanager
    def receiving(self):
        """Yield a fresh directory on the uploads filesystem for an incoming file; remove it after."""
        staging = tempfile.mkdtemp(prefix="upload-", dir=os.path.join(self.root, ".staging"))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def add(self, name, uploaded, filename, fmt=None, overwrite=False, taken=None, in_use=None):
        """Check an uploaded file and register it under `name`; return its meta.

        `uploaded` lies in a directory from receiving(). `taken(name)` tells whether an operator
        dataset has the name; `in_use(name)` lists the unfinished jobs that use it. Raises
        ValidationFailed with the rows at fault, Conflict for a name taken.
        """
        try:
            self._dir(name)
            kind = kind_of(filename or "")
            if kind is None:
                raise ValidationFailed(
                    f"the file must end in one of {', '.join(sorted(EXTENSIONS))}", field="file"
                )
            if fmt is not None and fmt not in FORMATS:
                raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}", field="format")
            self._refuse_taken(name, overwrite, taken, in_use)  # before the long check, and again after
            # What becomes the version directory: the file and its meta.json, nothing else of the request.
            staging = os.path.join(os.path.dirname(uploaded), "version")
            os.mkdir(staging)
            data_file = os.path.join(staging, "data" + os.path.splitext(filename.lower())[1])
            os.rename(uploaded, data_file)
            report = self._child("check", data_file, *([fmt] if fmt else []))
            if report["problems"]:
                shown = "; ".join(report["problems"][:3])
                raise ValidationFailed(
                    f"the file is not a valid {report.get('format') or 'dataset'} file: {shown}",
                    errors=[{"field": "file", "reason": p} for p in report["problems"]],
                )
            return self._register(name, staging, data_file, filename, report, overwrite, taken, in_use)
        except OSError as exc:
            raise storage_error(exc, f"storing dataset '{name}'") from exc

    def _refuse_taken(self, name, overwrite, taken, in_use):
        if name in self.entries() and not principals.visible(self.meta(name).get("tenant")):
            raise Conflict(f"dataset name '{name}' is taken; choose another", field="name")
        if taken is not None and taken(name):
            raise Conflict(f"dataset '{name}' is one of the operator's; choose another name", field="name")
        if name not in self.entries():
            return
        if not overwrite:
            raise Conflict(f"dataset '{name}' exists; add ?overwrite=true to replace it", field="name")
        _refuse_in_use(name, in_use, "replaced")

    def _register(self, name, staging, data_file, filename, report, overwrite, taken, in_use):
        # Unique per upload, and telling: when, and which bytes.
        version = (
            f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{report['sha256'][:12]}-{secrets.token_hex(2)}"
        )
        relative = f"{name}/{version}/{os.path.basename(data_file)}"
        meta = {
            "name": name,
            "format": report["format"],
            "stages": STAGES_BY_FORMAT[report["format"]],
            "rows": report["rows"],
            "bytes": report["bytes"],
            "sha256": report["sha256"],
            "columns": report["columns"],
            "created_at": now_utc(),
            "filename": os.path.basename(filename),
            "version": version,
            **principals.owner(),
        }
        atomic_write_json(os.path.join(staging, META), meta)
        with self.store.lock("dataset-" + name):
            self._refuse_taken(name, overwrite, taken, in_use)  # another upload may have won meanwhile
            os.makedirs(self._dir(name), exist_ok=True)
            os.rename(staging, os.path.join(self._dir(name), version))
            fsync_dir(self._dir(name))
            replaced = self.entries().get(name)
            self._update_registry(lambda registry: registry.__setitem__(name, entry_for(report, relative)))
            if replaced:  # its age now counts from here: a job being created may still have picked it
                with contextlib.suppress(OSError):
                    os.utime(os.path.dirname(os.path.join(self.root, replaced["file_name"])))
        log.info(
            "dataset %s: registered %s (%s, %d rows, %d bytes)",
            name,
            version,
            meta["format"],
            meta["rows"],
            meta["bytes"],
        )
        return meta

    def _update_registry(self, change):
        with self.store.lock("_uploads_registry"):
            try:
                registry = self._repaired()
            except OSError as exc:  # never written over while damaged: that would drop every upload
                raise Unavailable(
                    f"the uploads registry {REGISTRY} is damaged and could not be rebuilt ({exc.strerror}); "
                    "nothing was changed"
                ) from exc
            change(registry)
            atomic_write_json(os.path.join(self.root, REGISTRY), registry)

    # -- removing --------------------------------------------------------------------------

    def delete(self, name, in_use=None):
        """Unregister an uploaded dataset and remove its files."""
        self._dir(name)  # a malformed name is a 400 before any lock or path
        with self.store.lock("dataset-" + name):
            if name not in self.entries() or not principals.visible(self.meta(name).get("tenant")):
                raise NotFound(f"dataset '{name}' does not exist", field="name")
            principals.check_may_change("delete datasets")
            _refuse_in_use(name, in_use, "deleted")
            try:
                self._update_registry(lambda registry: registry.pop(name, None))
                doomed = move_aside(self._dir(name), os.path.join(self.root, ".trash"), name)
            except OSError as exc:
                raise storage_error(exc, f"deleting dataset '{name}'") from exc
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("dataset %s: deleted", name)

    def has_leftovers(self):
        """Tell, cheaply, whether collect() may find something: superseded versions or crash leftovers."""
        registered = self.entries()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                path = os.path.join(self.root, name)
                if name in (".staging", ".trash"):
                    if os.listdir(path):
                        return True
                elif _is_dataset_dir(name, path):
                    if name not in registered or len(os.listdir(path)) > 1:
                        return True
        return False

    def collect(self, referenced, min_age_s=600):
        """Remove versions neither the registry nor any job refers to, and leftovers of crashes.

        `referenced` is the set of absolute data file paths that jobs' dataset_info.json name.
        Returns the paths removed. What changed within `min_age_s` stays: a leftover may belong to
        an upload in flight, and a version replaced a moment ago to a job being created.
        """
        removed = []
        current = {os.path.join(self.root, e["file_name"]) for e in self.entries().values()}
        cutoff = time.time() - min_age_s
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                path = os.path.join(self.root, name)
                if name in (".staging", ".trash"):
                    candidates = [os.path.join(path, n) for n in os.listdir(path)]
                elif _is_dataset_dir(name, path):
                    candidates = [
                        os.path.join(path, v)
                        for v in os.listdir(path)
                        if not any(f.startswith(os.path.join(path, v) + os.sep) for f in current | referenced)
                    ]
                else:
                    continue
                for candidate in candidates:
                    with contextlib.suppress(FileNotFoundError):
                        if os.lstat(candidate).st_mtime < cutoff:
                            shutil.rmtree(candidate, ignore_errors=True)
                            removed.append(candidate)
                with contextlib.suppress(OSError):
                    if NAME.fullmatch(name) and not os.listdir(path) and name not in self.entries():
                        os.rmdir(path)
        for path in removed:
            log.info("uploads: removed %s (no dataset or job refers to it)", path)
        return removed

    # -- the child process -----------------------------------------------------------------

    def _child(self, *args):
        """Run the row checker on a file with the service's bounds; its JSON answer, or a refusal."""
        settings = self.settings
        env = dict(os.environ, PYTHONPATH=package_pythonpath())
        argv = [settings.python, "-m", "imts_flask.datasets.rows"]
        argv += ["--memory-mb", str(settings.check_memory_mb), "--cpu-s", str(int(settings.check_timeout_s))]
        argv += ["--max-decoded-mb", str(settings.max_decoded_mb), *args]
        too_long = ValidationFailed(
            f"checking the file took longer than {settings.check_timeout_s:.0f} s (check_timeout_s)",
            field="file",
        )
        try:
            result = subprocess.run(
                argv, capture_output=True, timeout=settings.check_timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            raise too_long from None
        if result.returncode == -signal.SIGXCPU:
            raise too_long
        try:
            return json.loads(result.stdout)
        except ValueError:
            log.error(
                "dataset %s of %s failed (exit %s): %s",
                args[0],
                args[1],
                result.returncode,
                result.stderr.decode(errors="replace")[-2000:],
            )
        raise ServiceError("the dataset could not be read; the service log has the details")


def _is_dataset_dir(name, path):
    """A directory of a dataset's versions (not the registry's own files, nor one moved aside)."""
    return NAME.fullmatch(name) and not name.startswith(RESERVED_PREFIX) and os.path.isdir(path)


def _layout(meta):
    """How an uploaded version's rows are laid out, from the columns its meta.json records."""
    columns = meta.get("columns") or []
    layout = next((key for key in ("messages", "conversations") if key in columns), None)
    return layout or ("text" if meta.get("format") == "text" else "alpaca")
