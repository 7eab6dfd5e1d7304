"""What a `model` names on /v1: a job's weights, a registered version or a base model, each as the
Target of a base model's server and its adapter; and what a caller may call (GET /v1/models).

    train_a1b2c3d4               a job's final weights (a completed or stopped LoRA job)
    train_a1b2c3d4:best          its best checkpoint; train_a1b2c3d4:checkpoint-40, one checkpoint
    ft:<base>:<team>:<suffix>:train_a1b2c3d4[:ckpt-step-40]   the same, as OpenAI's API names them
    support-bot:3                a registered version; support-bot@production, by alias
    tiny-llama-hd64              a base model, as a job names it

Another team's job or version reads as one that does not exist (404), as everywhere. A Target's
name is canonical (an alias resolved, `:final` dropped): the adapter's name on its server.
"""

import os
import re
import threading

from ..errors import Conflict, NotFound, ValidationFailed
from ..jobs.checkpoints import choose_weights
from ..jobs.store import JobStore
from ..registry.versions import REFERENCE
from ..state import JobStatus
from ..tenancy import principals

JOB_MODEL = re.compile(r"(train_[0-9a-z]{8})(?::(final|best|checkpoint-[0-9]{1,9}))?")
# OpenAI's names of a fine-tune and its checkpoints (finetuning/mapping.py): the job id decides.
FT_MODEL = re.compile(
    r"ft:[^:\s]{1,128}:[^:\s]{0,64}:[^:\s]{0,40}:(train_[0-9a-z]{8})(?::ckpt-step-([0-9]{1,9}))?"
)
TEMPLATE_FILE = "chat_template.jinja"
_SERVABLE = (JobStatus.COMPLETED.value, JobStatus.STOPPED.value)
_templates = {}  # path -> (mtime_ns, text)
_templates_lock = threading.Lock()


class Target:
    """What a model name names: the base model's server it runs on, and its adapter if it has one."""

    def __init__(self, name, tenant, base_model, base_model_path, adapter=None, template=None):
        self.name = name  # the canonical name: the adapter's name on the server, or the base model's
        self.tenant = tenant
        self.base_model = base_model
        self.base_model_path = base_model_path
        self.adapter = adapter  # the adapter's directory, or None for the base model itself
        self.template = template  # chat_template.jinja beside the adapter, if it has one


def _not_found(name):
    return NotFound(f"the model {name!r} does not exist, or you do not have access to it", field="model")


class Names:
    def __init__(self, store: JobStore, catalog, versions):
        self.store = store
        self.catalog = catalog
        self.versions = versions

    def resolve(self, name):
        """The Target of a model name the caller may use; 404 for any other (another team's too)."""
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ValidationFailed("model must name a model: see GET /v1/models", field="model")
        job = JOB_MODEL.fullmatch(name)
        if job:
            return self._job_target(name, job.group(1), job.group(2))
        fine_tune = FT_MODEL.fullmatch(name)
        if fine_tune:
            step = fine_tune.group(2)
            return self._job_target(name, fine_tune.group(1), f"checkpoint-{step}" if step else None)
        if REFERENCE.fullmatch(name):
            return self._version_target(name)
        try:
            path, _template = self.catalog.resolve_model(name)
        except ValidationFailed:
            raise _not_found(name) from None
        if not os.path.isdir(path):  # a hub id: the servers load local directories only
            raise _not_found(name)
        return Target(name, None, name, path)

    def _job_target(self, name, job_id, choice):
        try:
            job = self.store.read(job_id)
        except NotFound:
            raise _not_found(name) from None
        if job.kind is not None or not principals.visible(job.tenant):
            raise _not_found(name)
        if job.status not in _SERVABLE:
            raise Conflict(
                f"job {job_id} is {job.status}; only completed or stopped jobs answer", field="model"
            )
        train_config = self.store.read_file(job_id, JobStore.TRAIN_CONFIG)
        if (train_config.get("finetuning_type") or "lora") != "lora":
            raise Conflict(
                f"job {job_id} is a {train_config.get('finetuning_type')} fine-tune, not a LoRA adapter: "
                "serve it with a dedicated deployment (POST /api/v1/training/deployments)",
                field="model",
            )
        if (job.stage or "sft") == "rm":
            raise Conflict("a reward model (stage rm) scores answers; it does not chat", field="model")
        checkpoint, weights = choose_weights(
            job.paths["output_dir"], choice, job.best_checkpoint, field="model"
        )
        canonical = job_id if checkpoint == "final" else f"{job_id}:{choice}"
        return Target(
            canonical,
            job.tenant,
            job.model_name,
            train_config["model_name_or_path"],
            adapter=weights,
            template=_template_beside(weights),
        )

    def _version_target(self, name):
        try:
            version = self.versions.resolve(name, field="model")
        except (ValidationFailed, NotFound):
            raise _not_found(name) from None
        if version["weights_kind"] != "adapter":
            raise Conflict(
                f"{version['reference']} holds full weights, not a LoRA adapter: serve it with a dedicated "
                "deployment (POST /api/v1/training/deployments)",
                field="model",
            )
        return Target(
            version["reference"],
            version.get("tenant"),
            version.get("base_model") or os.path.basename(version["base_model_path"]),
            version["base_model_path"],
            adapter=version["weights"],
            template=_template_beside(version["weights"]),
        )

    def models(self):
        """What the caller may call: base models, its completed LoRA jobs, its registered adapters."""
        found = []
        for model in self.catalog.models():
            if model.get("source") != "hub_cache":
                found.append({"id": model["name"], "created": 0, "owned_by": "imts", "kind": "base_model"})
        for line in self.store.listed():
            if line["status"] == JobStatus.COMPLETED.value and principals.visible(line["tenant"]):
                found.append(
                    {
                        "id": line["job_id"],
                        "created": int(int(line["created_ns"] or 0) / 1e9),
                        "owned_by": line["tenant"] or "imts",
                        "kind": "job",
                        "base_model": line["model_name"],
                    }
                )
        for model in self.versions.models():
            for version in model.get("versions") or []:
                if version.get("weights_kind") == "adapter":
                    found.append(
                        {
                            "id": f"{model['name']}:{version['version']}",
                            "created": 0,
                            "owned_by": model.get("tenant") or "imts",
                            "kind": "registered_version",
                            "base_model": version.get("base_model"),
                        }
                    )
        return found


def _template_beside(weights):
    path = os.path.join(weights, TEMPLATE_FILE)
    return path if os.path.isfile(path) else None


def read_template(path):
    """A chat template's text, read again only when the file changes."""
    mtime = os.stat(path).st_mtime_ns
    with _templates_lock:
        cached = _templates.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with _templates_lock:
        _templates[path] = (mtime, text)
    return text
