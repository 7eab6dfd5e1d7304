"""The composition root: the service's parts, built once per process in the order they need.

    store -> tenants, uploads, catalog -> launcher, lifecycle -> housekeeper -> model versions ->
    deployments, serving -> registry -> evaluations, sharing -> jobs, datasets

Each part is handed the parts it uses; none reaches for another through this object. The HTTP
layer reaches the parts through get_service(): `service.jobs.create(...)`, `service.registry`.
What belongs to no one resource is here: health and the GPUs' figures.
"""

import logging
import os
import shutil

from ..catalog import Catalog
from ..datasets.service import Datasets
from ..datasets.uploads import Uploads
from ..deployments.service import Deployments
from ..evaluations.service import Evaluations
from ..finetuning.service import FineTuning
from ..fsio import filesystem_problems
from ..jobs.files import JobFiles
from ..jobs.launcher import Launcher
from ..jobs.lifecycle import Lifecycle
from ..jobs.service import Jobs
from ..jobs.sharing import Sharing
from ..jobs.store import JobStore
from ..jobs.webhooks import Notifier
from ..observe.gpus import Gpus
from ..registry.service import Registry
from ..registry.versions import ModelRegistry
from ..runs import KINDS
from ..serving.service import Serving
from ..tenancy import principals
from ..tenancy.config import Tenants
from .housekeeping import Housekeeper

log = logging.getLogger(__name__)


class TrainingService:
    def __init__(self, settings):
        self.settings = settings
        self.notifier = Notifier(settings)
        self.store = JobStore(
            settings.path("jobs_dir"),
            settings.lock_timeout_s,
            self.notifier,
            settings.log_links_dir,
            folders=KINDS.folders(settings),
        )
        problems = filesystem_problems(self.store.root)
        if problems:  # a store whose locks do not lock would lose jobs quietly: refuse to start
            raise RuntimeError("the job store cannot be used: " + "; ".join(problems))
        self.tenants = Tenants(settings)  # who each token is; read again when its file changes
        self.uploads = Uploads(settings, self.store)
        self.catalog = Catalog(settings, self.uploads)
        self.launcher = Launcher(settings, self.store)
        self.lifecycle = Lifecycle(settings, self.store, self.uploads)
        self.housekeeper = Housekeeper(settings, self.store, self.launcher, self.notifier, self.lifecycle)
        soon = self.housekeeper.start_queued_soon
        # The GPUs this service hands out (with Ray they are the cluster's, read on its nodes).
        self.gpus = Gpus(self.launcher.executor.gpu_ids())
        versions = ModelRegistry(settings, self.store)
        self.deployments = Deployments(settings, self.store, self.catalog, self.launcher, versions, soon)
        self.serving = Serving(settings, self.store, self.catalog, self.launcher, versions, soon)
        self.registry = Registry(self.store, versions, in_use=self.deployments.serving)
        self.evaluations = Evaluations(settings, self.store, self.catalog, self.launcher, soon)
        self.sharing = Sharing(settings, self.store, soon)
        self.jobs = Jobs(
            settings, self.store, self.catalog, self.registry, self.launcher, self.lifecycle,
            self.notifier, self.gpus, soon,
        )  # fmt: skip
        self.job_files = JobFiles(self.store)
        self.datasets = Datasets(settings, self.store, self.uploads, self.catalog)
        self.finetuning = FineTuning(
            settings, self.store, self.jobs, self.job_files, self.datasets, self.uploads
        )

    def gpu_figures(self):
        """The GPUs this service hands out, as NVML reads them, each with the jobs handed it."""
        reading = self.gpus.read()
        holders = {}
        for state in self.store.active_states():
            if not principals.visible(state.tenant):
                continue  # another team's: the GPU shows busy without saying whose
            for gpu in (state.launch or {}).get("gpus") or []:
                holders.setdefault(gpu, []).append(state.job_id)
        gpus = [{**g, "job_ids": holders.get(g["id"], [])} for g in reading["gpus"]]
        return {
            "available": reading["available"],
            "detail": reading["error"],
            "driver": reading["driver"],
            "gpus": gpus,
        }

    def health(self):
        """Return (healthy, checks): trainer runnable, jobs directory writable, disk not nearly full."""
        cli = self.settings.llamafactory_cli
        jobs = self.store.root
        free_mb = shutil.disk_usage(jobs).free // (1024 * 1024)
        executor_ok, executor = self.launcher.executor.health()
        gpus_ok, gpus = self.gpus.health()
        registry_ok, registry = self.uploads.health()
        checks = {
            "llamafactory_cli": {"ok": os.path.isfile(cli) and os.access(cli, os.X_OK), "path": cli},
            "executor": {"ok": executor_ok, **executor},
            "uploads_registry": {"ok": registry_ok, **registry},
            "tenants": {
                "ok": self.tenants.problem is None,
                "path": self.tenants.path,
                "detail": self.tenants.problem,
            },
            "gpus": {"ok": gpus_ok, **gpus},
            "jobs_dir_writable": {"ok": os.access(jobs, os.W_OK | os.X_OK), "path": jobs},
            "disk_free": {
                "ok": free_mb >= self.settings.min_free_disk_mb,
                "free_mb": free_mb,
                "min_free_mb": self.settings.min_free_disk_mb,
            },
        }
        # The executor's engine (Ray) and the uploads registry are shared by every instance: their
        # trouble is reported (degraded), but it does not turn this instance unhealthy, or a load
        # balancer would take every instance out of service, status reads and job creation all.
        shared = ("executor", "uploads_registry", "tenants")
        healthy = all(c["ok"] for name, c in checks.items() if name not in shared)
        return healthy, checks
