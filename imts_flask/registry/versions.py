"""Registered model versions on disk, beside the models (settings.registry_dir, models/registry/).

    <name>/versions/<n>/state.json   the version's record: its lineage (job, base model, datasets
                                     with their sha256, checkpoint, figures), written once
    <name>/versions/<n>/model.yaml   what LLaMA Factory reads to load it (base model, adapter, template)
    <name>/versions/<n>/weights/     the weights: hard links of the job's files where the filesystem
                                     allows (no copy, no space), else a copy; either way the version
                                     outlives the job
    <name>/aliases.json              {"production": 3}
    <name>/last_version              the highest version number ever given under the name: a number
                                     is never given twice, so a deleted version's pins stay broken
                                     rather than naming other weights
    <name>/registry.log              a line per registration, alias change and deletion
    .staging/ .trash/                versions being written, versions being removed

A version directory is written in staging and renamed into place whole, under the name's lock (the
job store's sidecar locks, `registry.<name>`), so a reader sees a version whole or not at all.
Versions are never changed; aliases move. A version an alias points to, or that a live deployment
serves, cannot be deleted (409).
"""

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile

from ..errors import Conflict, NotFound, ValidationFailed, storage_error
from ..fsio import atomic_write_bytes, atomic_write_json, read_json, write_tree
from ..jobs.checkpoints import CHECKPOINT_STATE, TRAINING_RECORDS
from ..state import now_utc
from ..tenancy import principals

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# "name:3" or "name@alias": a registered version where a model name is asked for.
REFERENCE = re.compile(r"([a-z0-9][a-z0-9_-]{0,62})(?::([0-9]{1,9})|@([a-z0-9][a-z0-9_-]{0,62}))")
STATE = "state.json"
MODEL_CONFIG = "model.yaml"
WEIGHTS = "weights"
ALIASES = "aliases.json"
LAST_VERSION = "last_version"
LOG = "registry.log"
_LOGGED = re.compile(r" registered version ([0-9]{1,9}) ")
HASH_LIMIT = 256 * 1024 * 1024  # datasets above this are recorded by size and time, not hashed


def is_reference(name):
    return isinstance(name, str) and REFERENCE.fullmatch(name) is not None


def check_name(name, field="name"):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValidationFailed(
            "must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
            field=field,
        )
    return name


class ModelRegistry:
    def __init__(self, settings, store):
        self.root = settings.path("registry_dir")
        self.store = store  # its sidecar locks

    # -- paths and locks -------------------------------------------------------------------

    def _dir(self, name, *parts):
        return os.path.join(self.root, check_name(name), *parts)

    def _version_dir(self, name, version):
        return self._dir(name, "versions", str(int(version)))

    def _lock(self, name):
        return self.store.lock("registry." + check_name(name))

    def _lock_existing(self, name):
        """The lock of a registered name: an unknown one is a 404 before any lock file is made."""
        if not self._visible(name):
            raise NotFound(f"no model is registered as {name!r}", field="name")
        return self._lock(name)

    def _owner(self, name):
        """The tenant of a name: its first version's."""
        versions = self._versions(name)
        if not versions:
            return None
        with contextlib.suppress(OSError, ValueError):
            return read_json(os.path.join(self._version_dir(name, versions[0]), STATE)).get("tenant")
        return None

    def _visible(self, name):
        return bool(self._versions(name)) and principals.visible(self._owner(name))

    def _versions(self, name):
        try:
            names = os.listdir(self._dir(name, "versions"))
        except FileNotFoundError:
            return []
        return sorted(
            int(n) for n in names if n.isdigit() and os.path.isfile(self._dir(name, "versions", n, STATE))
        )

    def _highest_given(self, name):
        """The highest version number ever given under `name` (a deleted one's too)."""
        try:
            with open(self._dir(name, LAST_VERSION), encoding="ascii") as handle:
                return int(handle.read().strip())
        except (FileNotFoundError, ValueError):
            pass
        try:  # a name registered before last_version was kept: its log remembers every number
            with open(self._dir(name, LOG), encoding="utf-8", errors="replace") as handle:
                return max((int(m.group(1)) for line in handle if (m := _LOGGED.search(line))), default=0)
        except FileNotFoundError:
            return 0

    def _aliases(self, name):
        try:
            return read_json(self._dir(name, ALIASES))
        except FileNotFoundError:
            return {}

    def _log(self, name, line):
        with contextlib.suppress(OSError):
            with open(self._dir(name, LOG), "a", encoding="utf-8") as handle:
                handle.write(f"{now_utc()} {line}\n")

    # -- register --------------------------------------------------------------------------

    def register(self, name, job, checkpoint, weights_path, description, lineage):
        """Write the next version of `name` from a job's weights; return its record."""
        check_name(name)
        adapter = lineage["finetuning_type"] == "lora"
        staging_root = os.path.join(self.root, ".staging")
        try:
            os.makedirs(staging_root, exist_ok=True)
            os.makedirs(self._dir(name, "versions"), exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "registering the model") from exc
        with self._lock(name):
            versions = self._versions(name)
            if versions and self._owner(name) != lineage.get("tenant"):
                raise Conflict(f"the name {name!r} is taken by another team; choose another", field="name")
            version = max(self._highest_given(name), max(versions, default=0)) + 1
            staging = tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root)
            try:
                # Written before the version appears: a crash between the two skips a number, never
                # gives one twice.
                atomic_write_bytes(self._dir(name, LAST_VERSION), f"{version}\n".encode())
                weights = os.path.join(staging, WEIGHTS)
                _link_weights(weights_path, weights)
                final = self._version_dir(name, version)
                final_weights = os.path.join(final, WEIGHTS)
                state = {
                    "name": name,
                    "version": version,
                    "description": description,
                    "job_id": job.job_id,
                    "checkpoint": checkpoint,
                    "weights": final_weights,
                    "weights_kind": "adapter" if adapter else "model",
                    **lineage,
                    "created_at": now_utc(),
                }
                config = {
                    "model_name_or_path": lineage["base_model_path"] if adapter else final_weights,
                    "template": lineage["template"],
                    "finetuning_type": lineage["finetuning_type"],
                    "trust_remote_code": False,
                }
                if adapter:
                    config["adapter_name_or_path"] = final_weights
                write_tree(staging, {STATE: state, MODEL_CONFIG: config})
                os.rename(staging, final)
                staging = None
            except OSError as exc:
                raise storage_error(exc, "registering the model") from exc
            finally:
                if staging:
                    shutil.rmtree(staging, ignore_errors=True)
            self._log(name, f"registered version {version} from {job.job_id} ({checkpoint})")
        log.info("model %s version %s registered from job %s", name, version, job.job_id)
        return self.version(name, version)

    # -- read ------------------------------------------------------------------------------

    def names(self):
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if NAME.fullmatch(n) and self._visible(n))

    def model(self, name):
        """A name's versions (newest last) and aliases; NotFound when it has none."""
        versions = self._versions(name)
        if not versions or not self._visible(name):
            raise NotFound(f"no model is registered as {name!r}", field="name")
        return {
            "name": name,
            "versions": [self.version(name, v) for v in versions],
            "aliases": self._aliases(name),
            "latest": versions[-1],
        }

    def models(self):
        return [self.model(name) for name in self.names()]

    def version(self, name, version):
        if not self._visible(name):
            raise NotFound(f"model {name!r} has no version {version}", field="version")
        try:
            stored = read_json(os.path.join(self._version_dir(name, version), STATE))
        except (FileNotFoundError, ValueError):
            raise NotFound(f"model {name!r} has no version {version}", field="version") from None
        aliases = self._aliases(name)
        stored["aliases"] = sorted(a for a, v in aliases.items() if v == stored["version"])
        stored["reference"] = f"{name}:{stored['version']}"
        return stored

    def resolve(self, reference, field="model"):
        """The version that "name:3" or "name@alias" names (a 400 that says why, if none)."""
        match = REFERENCE.fullmatch(reference or "")
        if not match:
            raise ValidationFailed("must look like name:3 or name@alias", field=field)
        name, number, alias = match.groups()
        if not self._visible(name):
            raise ValidationFailed(f"no model is registered as {name!r}", field=field)
        if alias is not None:
            aliases = self._aliases(name)
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ValidationFailed(
                    f"model {name!r} has no alias {alias!r} (aliases: {known})", field=field
                )
            number = aliases[alias]
        try:
            return self.version(name, int(number))
        except NotFound:
            versions = ", ".join(map(str, self._versions(name))) or "none"
            raise ValidationFailed(
                f"model {name!r} has no version {number} (versions: {versions})", field=field
            ) from None

    # -- change ----------------------------------------------------------------------------

    def set_alias(self, name, alias, version):
        check_name(alias, field="alias")
        with self._lock_existing(name):
            self.version(name, version)  # 404 for a version that does not exist
            aliases = self._aliases(name)
            before = aliases.get(alias)
            aliases[alias] = int(version)
            try:
                atomic_write_json(self._dir(name, ALIASES), aliases)
            except OSError as exc:
                raise storage_error(exc, "moving the alias") from exc
            self._log(name, f"alias {alias} -> version {version}" + (f" (was {before})" if before else ""))
        return self.model(name)

    def delete_alias(self, name, alias):
        check_name(alias, field="alias")
        with self._lock_existing(name):
            aliases = self._aliases(name)
            if alias not in aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}", field="alias")
            del aliases[alias]
            try:
                atomic_write_json(self._dir(name, ALIASES), aliases)
            except OSError as exc:
                raise storage_error(exc, "removing the alias") from exc
            self._log(name, f"alias {alias} removed")

    def delete_version(self, name, version, in_use):
        """Remove a version no alias points to and `in_use(reference)` does not name (else 409)."""
        with self._lock_existing(name):
            self.version(name, version)
            pointing = sorted(a for a, v in self._aliases(name).items() if v == int(version))
            if pointing:
                raise Conflict(
                    f"alias {', '.join(pointing)} of model {name!r} points to version {version}: "
                    "move it first",
                    field="version",
                )
            users = in_use(name, int(version))
            if users:
                raise Conflict(
                    f"version {version} of model {name!r} is served by {', '.join(users)}; stop it first",
                    field="version",
                )
            trash = os.path.join(self.root, ".trash")
            try:
                os.makedirs(trash, exist_ok=True)
                gone = tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=trash)
                os.rename(self._version_dir(name, version), os.path.join(gone, "version"))
            except OSError as exc:
                raise storage_error(exc, "deleting the version") from exc
            self._log(name, f"version {version} deleted")
        shutil.rmtree(gone, ignore_errors=True)


def _link_weights(source, target):
    """Hard-link (or copy, across filesystems) the weight files of `source` into a new `target`:
    its top-level files, without checkpoints, the training's records and optimizer states."""
    os.makedirs(target)
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if not os.path.isfile(path) or name in TRAINING_RECORDS or name.startswith(CHECKPOINT_STATE):
            continue
        try:
            os.link(path, os.path.join(target, name))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(path, os.path.join(target, name))


def dataset_hashes(dataset_info):
    """{dataset: sha256 of its file} for the datasets a job trained on (None past HASH_LIMIT)."""
    hashes = {}
    for name, entry in (dataset_info or {}).items():
        path = entry.get("file_name") or ""
        if not os.path.isfile(path) or os.path.getsize(path) > HASH_LIMIT:
            hashes[name] = None
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
        hashes[name] = digest.hexdigest()
    return hashes
