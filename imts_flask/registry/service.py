"""What the registry endpoints do, below HTTP: register a job's weights as the next version of a name
(with its lineage), read names and versions, move aliases, delete versions nothing uses."""

import logging

from ..errors import Conflict, ValidationFailed
from ..jobs.checkpoints import choose_weights
from ..jobs.store import JobStore
from ..runs.ids import evaluation_run
from ..state import JobStatus
from ..tenancy import principals
from .versions import ModelRegistry, dataset_hashes, is_reference

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, store: JobStore, versions: ModelRegistry, in_use):
        self.store = store
        self.versions = versions
        self.in_use = in_use  # in_use(name, version): the live deployments serving that version

    def register(self, request):
        job = principals.check_visible(self.store.read(request["job_id"]), "job", request["job_id"])
        if job.status != JobStatus.COMPLETED.value:
            raise Conflict(
                f"job {job.job_id} is {job.status}; only completed jobs can be registered",
                extra={"job_status": job.status},
            )
        output_dir = job.paths["output_dir"]
        checkpoint, weights = choose_weights(output_dir, request.get("checkpoint"), job.best_checkpoint)
        train_config = self.store.read_file(job.job_id, JobStore.TRAIN_CONFIG)
        lineage = {
            "base_model": job.model_name,
            "base_model_path": train_config["model_name_or_path"],
            "stage": job.stage,
            "finetuning_type": train_config.get("finetuning_type") or "lora",
            "template": train_config.get("template"),
            "dataset": job.dataset,
            "dataset_sha256": dataset_hashes(self._dataset_info(job.job_id)),
            "figures": self._figures(job, checkpoint),
            # the caller's team; an admin's registration goes with the job's
            "tenant": principals.owner()["tenant"] or job.tenant,
            "created_by": principals.owner()["created_by"],
        }
        return self.versions.register(
            request["name"], job, checkpoint, weights, request.get("description"), lineage
        )

    def _dataset_info(self, job_id):
        try:
            return self.store.read_file(job_id, JobStore.DATASET_INFO)
        except (OSError, ValueError):
            return {}

    def _figures(self, job, checkpoint):
        """The job's training and validation figures, and its completed evaluations of these weights."""
        final = job.final or {}
        figures = {
            "final_loss": final.get("current_loss"),
            "eval_loss": job.eval_loss,
            "best_eval_loss": job.best_eval_loss,
            "best_checkpoint": job.best_checkpoint,
            "evaluations": [],
        }
        for evaluation_id in sorted(self.store.evaluation_ids(job.job_id)):
            try:
                evaluation = self.store.read(evaluation_run(job.job_id, evaluation_id))
            except Exception:  # one gone or damaged evaluation does not stop a registration
                continue
            if evaluation.status == JobStatus.COMPLETED.value and evaluation.checkpoint == checkpoint:
                figures["evaluations"].append(
                    {
                        "evaluation_id": evaluation_id,
                        "dataset": evaluation.dataset,
                        "results": evaluation.results,
                    }
                )
        return figures

    @staticmethod
    def is_reference(name):
        """Whether a model name names a registered version ("support-bot:3", "support-bot@prod")."""
        return is_reference(name)

    def base_for_training(self, reference, finetuning_type):
        """(model_name_or_path, template, adapter) for a job trained on top of a registered version."""
        version = self.versions.resolve(reference, field="model_name")
        if version["weights_kind"] == "adapter":
            if finetuning_type != "lora":
                raise ValidationFailed(
                    f"{reference} is a LoRA adapter: a job on top of it trains with finetuning_type lora "
                    "(it goes on training that adapter)",
                    field="finetuning_type",
                )
            return version["base_model_path"], version.get("template"), version["weights"]
        return version["weights"], version.get("template"), None

    def delete_version(self, name, version):
        self.versions.delete_version(name, version, self.in_use)

    def model(self, name):
        """A registered name: its versions (with their lineage) and aliases."""
        return self.versions.model(name)

    def version(self, name, version):
        return self.versions.version(name, version)

    def set_alias(self, name, alias, version):
        return self.versions.set_alias(name, alias, version)

    def delete_alias(self, name, alias):
        self.versions.delete_alias(name, alias)

    def names(self):
        """Every registered name the caller may see: {name, latest, aliases, versions (numbers)}."""
        return [
            {"name": m["name"], "latest": m["latest"], "aliases": m["aliases"],
             "versions": [v["version"] for v in m["versions"]]}
            for m in self.versions.models()
        ]  # fmt: skip


__all__ = ["Registry", "is_reference"]
