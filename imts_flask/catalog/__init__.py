"""What a request may name: models (registry, models/ dir, local HF cache), datasets, templates."""

import contextlib
import functools
import json
import math
import os
import re

import yaml

from ..datasets.uploads import NAME as DATASET_NAME
from ..errors import NotFound, ValidationFailed
from ..fsio import safetensors_header
from ..llamafactory.allowlist import parse_extra_keys
from ..llamafactory.templates import installed_templates
from ..tenancy import principals

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")
_LOCAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")

# What each stage needs from a dataset_info.json entry.
_PREFERENCE_STAGES = ("rm", "dpo")


def _hf_hub_cache():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


class Catalog:
    """Resolve model, dataset and template names to what a job needs, or explain what is available."""

    def __init__(self, settings, uploads=None):
        self.settings = settings
        self.uploads = uploads  # datasets.Uploads, offered after the operator's data directories

    # -- models ----------------------------------------------------------------------------

    def registry(self):
        """Return the model registry from config/models.yaml: alias -> {path, template, ...}."""
        path = self.settings.models_registry_path
        if not os.path.exists(path):
            return {}
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        return dict(data.get("models") or {})

    def _abs(self, path):
        return path if os.path.isabs(path) else os.path.join(self.settings.home, path)

    def available_models(self):
        names = [alias for alias, entry in self.registry().items() if os.path.isdir(self._abs(entry["path"]))]
        models_dir = self.settings.path("models_dir")
        if os.path.isdir(models_dir):
            for name in sorted(os.listdir(models_dir)):
                if os.path.exists(os.path.join(models_dir, name, "config.json")) and name not in names:
                    names.append(name)
        return names

    def models(self):
        """Describe every model a job may name: registry aliases, models/ directories, the hub cache."""
        found = []
        for alias, entry in sorted(self.registry().items()):
            found.append(_describe_model(alias, "registry", self._abs(entry["path"]), entry.get("template")))
        known = {m["name"] for m in found}
        models_dir = self.settings.path("models_dir")
        if os.path.isdir(models_dir):
            for name in sorted(os.listdir(models_dir)):
                path = os.path.join(models_dir, name)
                if name not in known and os.path.exists(os.path.join(path, "config.json")):
                    found.append(_describe_model(name, "models_dir", path, None))
        cache = _hf_hub_cache()
        if os.path.isdir(cache):
            for folder in sorted(os.listdir(cache)):
                snapshots = os.path.join(cache, folder, "snapshots")
                if folder.startswith("models--") and os.path.isdir(snapshots) and os.listdir(snapshots):
                    newest = max(
                        (os.path.join(snapshots, s) for s in os.listdir(snapshots)), key=os.path.getmtime
                    )
                    hub_id = folder[len("models--") :].replace("--", "/", 1)
                    found.append(_describe_model(hub_id, "hub_cache", newest, None))
        return [{k: v for k, v in m.items() if k != "available"} for m in found if m["available"]]

    def resolve_model(self, name):
        """Return (model_name_or_path for LLaMA Factory, default template or None)."""
        entry = self.registry().get(name)
        if entry:
            path = self._abs(entry["path"])
            if not os.path.exists(os.path.join(path, "config.json")):
                raise ValidationFailed(
                    f"model '{name}' is registered in config/models.yaml at {entry['path']}, "
                    "but that directory holds no model yet (run `make setup` to build the demo model)",
                    field="model_name",
                )
            return path, entry.get("template")
        if _LOCAL_NAME.fullmatch(name):
            path = os.path.join(self.settings.path("models_dir"), name)
            if os.path.exists(os.path.join(path, "config.json")):
                return path, None
        if _HUB_ID.fullmatch(name) and ".." not in name:
            cached = os.path.join(_hf_hub_cache(), "models--" + name.replace("/", "--"), "snapshots")
            if os.path.isdir(cached) and os.listdir(cached):
                return name, None
            reason = (
                f"model '{name}' is not available: the service runs offline and it is not in the local "
                f"Hugging Face cache ({_hf_hub_cache()}), not under models/ and not in config/models.yaml"
            )
        else:
            reason = f"model '{name}' is not a registered alias, a directory under models/ or a hub id"
        raise ValidationFailed(
            f"{reason}; available: {', '.join(self.available_models()) or 'none'}",
            field="model_name",
            extra={"available": self.available_models()},
        )

    # -- custom_config extensions ----------------------------------------------------------

    def extra_custom_keys(self):
        """Read the operator's additions in config/custom_config.yaml; raise ValueError if bad."""
        path = os.path.join(self.settings.path("config_dir"), "custom_config.yaml")
        if not os.path.exists(path):
            return {}
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        try:
            return parse_extra_keys(data.get("allow"))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @property
    def deepspeed_dir(self):
        return os.path.join(self.settings.path("config_dir"), "deepspeed")

    def deepspeed_templates(self):
        """Names of the DeepSpeed configs that ship with the service (config/deepspeed/<name>.json)."""
        try:
            names = os.listdir(self.deepspeed_dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and _LOCAL_NAME.fullmatch(n))

    # -- templates -------------------------------------------------------------------------

    def templates(self):
        """The chat templates a job may name (those of the installed LLaMA Factory)."""
        return installed_templates() or []

    def check_template(self, template, field="custom_config.template"):
        known = installed_templates()
        if known is not None and template not in known:
            raise ValidationFailed(
                f"template '{template}' is not a LLaMA Factory template; available: {', '.join(known)}",
                field=field,
                extra={"available": known},
            )

    # -- datasets --------------------------------------------------------------------------

    def _dataset_entries(self):
        """Return {name: (data_dir, entry, source)}: the operator's directories first, then uploads."""
        found = {}
        for data_dir in self.settings.data_paths:
            info_path = os.path.join(data_dir, "dataset_info.json")
            try:
                with open(info_path, encoding="utf-8") as handle:
                    info = json.load(handle)
            except (OSError, ValueError):
                continue
            for name, entry in info.items():
                # A name a request could not give (spaces, other characters, over 64 long) is no
                # dataset of the API's: listed, it could never be used.
                if isinstance(entry, dict) and name not in found and DATASET_NAME.fullmatch(name):
                    found[name] = (data_dir, entry, "operator")
        if self.uploads is not None:
            for name, entry in self.uploads.entries().items():
                if name not in found and self._visible_upload(name):
                    found[name] = (self.uploads.root, entry, "upload")
        return found

    def _visible_upload(self, name):
        """Another tenant's upload is no dataset for the caller (admins and auth off see all)."""
        caller = principals.current()
        if caller is None or caller.admin:
            return True
        try:
            return principals.visible(self.uploads.meta(name).get("tenant"))
        except NotFound:
            return False

    def is_operator_dataset(self, name):
        entry = self._dataset_entries().get(name)
        return entry is not None and entry[2] == "operator"

    @staticmethod
    def _file_problem(data_dir, entry):
        """Return why a dataset entry has no local file a job can read, or None."""
        if "file_name" not in entry:
            return "it is not a local file (hub and script datasets are not available offline)"
        root = os.path.realpath(data_dir)
        path = os.path.realpath(os.path.join(data_dir, str(entry["file_name"])))
        if os.path.commonpath([root, path]) != root:
            return "its file lies outside its data directory"
        if not os.path.exists(path):
            return f"its file {entry['file_name']} is missing from {data_dir}"
        return None

    @classmethod
    def _unfit(cls, data_dir, entry, stage):
        """Return why a dataset entry cannot serve `stage`, or None."""
        problem = cls._file_problem(data_dir, entry)
        if problem:
            return problem
        stages = stages_of(entry)
        if stage in stages:
            return None
        if stage in _PREFERENCE_STAGES:
            return (
                f"stage '{stage}' needs a preference dataset (\"ranking\": true with chosen/rejected answers)"
            )
        if stage == "kto":
            return "stage 'kto' needs a dataset with a kto_tag column"
        if "dpo" in stages:
            return f"it is a preference dataset, fit for rm/dpo, not for stage '{stage}'"
        if "kto" in stages:
            return f"it is a kto dataset (with a kto_tag column), not for stage '{stage}'"
        if stages == ["pt"]:
            return f"it is plain text, fit for pt, not for stage '{stage}'"
        return "it is an instruction dataset, fit for sft; stage 'pt' needs plain text (a text column)"

    def available_datasets(self, stage):
        return sorted(
            n for n, (d, e, _source) in self._dataset_entries().items() if self._unfit(d, e, stage) is None
        )

    def datasets(self):
        """Describe every dataset a job may name: name, source, format, stages, file (uploads: rows, ...)."""
        return [
            self.dataset(name, found)
            for name, found in sorted(self._dataset_entries().items())
            if self._file_problem(found[0], found[1]) is None
        ]

    def dataset(self, name, found=None):
        """Describe one dataset a job may name (NotFound if none has that name)."""
        found = found or self._dataset_entries().get(name)
        if found is None:
            raise NotFound(f"dataset '{name}' does not exist", field="name")
        data_dir, entry, source = found
        path = os.path.realpath(os.path.join(data_dir, str(entry.get("file_name", ""))))
        described = {
            "name": name,
            "source": source,
            "format": format_of(entry),
            "stages": stages_of(entry),
            "rows": None,
            "bytes": os.path.getsize(path) if os.path.isfile(path) else None,
            "sha256": None,
            "columns": sorted(set((entry.get("columns") or {}).values())),
            "created_at": None,
            "tenant": None,
            "created_by": None,
            "file": path,
        }
        if source == "upload":
            meta = self.uploads.meta(name)
            described.update({k: meta.get(k, described[k]) for k in UPLOAD_FIELDS})
        return described

    def resolve_datasets(self, names, stage, field="dataset"):
        """Return dataset_info.json entries for `names`, with file_name made absolute; an unknown or
        unfit name is a 400 on `field`."""
        entries = self._dataset_entries()
        resolved, errors = {}, []
        for name in names:
            if not DATASET_NAME.fullmatch(name) or name not in entries:
                errors.append({"field": field, "reason": f"unknown dataset '{name}'"})
                continue
            data_dir, entry, _source = entries[name]
            reason = self._unfit(data_dir, entry, stage)
            if reason is None:
                path = os.path.realpath(os.path.join(data_dir, entry["file_name"]))
                resolved[name] = {**entry, "file_name": path}
            else:
                errors.append({"field": field, "reason": f"dataset '{name}' cannot be used: {reason}"})
        if errors:
            available = self.available_datasets(stage)
            raise ValidationFailed(
                f"{errors[0]['reason']}; datasets available for stage '{stage}': "
                f"{', '.join(available) or 'none'}",
                errors=errors,
                extra={"available": available},
            )
        return resolved


def _describe_model(name, source, path, template):
    """What a model directory holds: architecture and parameters from its files, size on disk."""
    config = {}
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return {
        "name": name,
        "source": source,
        "path": path,
        "available": bool(config),
        "template": template,
        "architecture": architectures[0] if isinstance(architectures, list) and architectures else None,
        "model_type": config.get("model_type") if isinstance(config, dict) else None,
        **_weights(path),
    }


@functools.lru_cache(maxsize=256)
def _weights_of(path, _version):
    parameters, size, counted = 0, 0, False
    for name in os.listdir(path):
        full = os.path.join(path, name)
        with contextlib.suppress(OSError):
            size += os.stat(full).st_size  # follows the hub cache's links to its blobs
        if name.endswith(".safetensors"):
            count = _safetensors_parameters(full)
            counted = counted or count is not None
            parameters += count or 0
    return {"parameters": parameters if counted else None, "bytes": size}


def _weights(path):
    """Parameter count (from safetensors headers, never the weights) and bytes, cached by mtime."""
    try:
        return _weights_of(path, os.stat(path).st_mtime_ns)
    except OSError:
        return {"parameters": None, "bytes": None}


def _safetensors_parameters(path):
    try:
        tensors, _length, _size = safetensors_header(path)
    except (OSError, ValueError):
        return None
    return sum(math.prod(t["shape"]) for t in tensors.values())


UPLOAD_FIELDS = (
    "format",
    "stages",
    "rows",
    "bytes",
    "sha256",
    "columns",
    "created_at",
    "tenant",
    "created_by",
)


def stages_of(entry):
    """The stages a dataset_info entry can train, as LLaMA Factory reads it."""
    columns = entry.get("columns") or {}
    if entry.get("ranking"):
        return ["rm", "dpo"]
    if "kto_tag" in columns:
        return ["kto"]
    if (
        entry.get("formatting") != "sharegpt"
        and columns
        and "response" not in columns
        and "prompt" in columns
    ):
        return ["pt"]  # a text column only: LLaMA Factory's pretraining layout
    return ["sft"]


def format_of(entry):
    """The upload format (alpaca, sharegpt, pairwise, kto, text) an entry corresponds to."""
    stages = stages_of(entry)
    if "dpo" in stages:
        return "pairwise"
    if "kto" in stages:
        return "kto"
    if stages == ["pt"]:
        return "text"
    return "sharegpt" if entry.get("formatting") == "sharegpt" else "alpaca"
