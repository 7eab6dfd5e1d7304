"""What the API does with datasets, below HTTP: upload (checked row by row), list, describe with a
preview, delete. The operator's datasets (data_dir) are the catalog's; the uploads are uploads.py's.
"""

import contextlib

from ..errors import Forbidden, storage_error


class Datasets:
    def __init__(self, settings, store, uploads, catalog):
        self.settings = settings
        self.store = store
        self.uploads = uploads
        self.catalog = catalog

    def add(self, name, uploaded, filename, fmt=None, overwrite=False):
        """Check an uploaded file row by row and register it under `name`; return its description."""
        self.store.require_free(self.settings.min_free_disk_mb)
        self.uploads.add(
            name,
            uploaded,
            filename,
            fmt,
            overwrite,
            taken=self.catalog.is_operator_dataset,
            in_use=self.jobs_using,
        )
        return self.catalog.dataset(name)

    def list(self):
        """Every dataset a job may name: the operator's and the uploads."""
        return self.catalog.datasets()

    @contextlib.contextmanager
    def receiving(self):
        """Yield (a fresh directory for an incoming file, the most bytes it may take); a full disk
        while the file streams in is a 507, and the directory goes when the upload is done."""
        with self.uploads.receiving() as staging:
            try:
                yield staging, self.settings.max_upload_mb * 1024 * 1024
            except OSError as exc:
                raise storage_error(exc, "receiving the upload") from exc

    def get(self, name, preview=0):
        """Describe a dataset a job may name, with its first `preview` rows when asked."""
        described = self.catalog.dataset(name)
        if preview:
            shown = self.uploads.preview(described["file"], preview)
            described.update(preview=shown["rows"], preview_truncated=shown["truncated"])
        return described

    def delete(self, name):
        """Remove an uploaded dataset; the operator's are not the API's to remove."""
        if self.catalog.is_operator_dataset(name):
            raise Forbidden(
                f"dataset '{name}' belongs to the operator's data directory; it is not removed here"
            )
        self.uploads.delete(name, in_use=self.jobs_using)

    def jobs_using(self, name):
        """The unfinished jobs and evaluations that read dataset `name` (a deployment reads none)."""
        return [
            s.job_id
            for s in self.store.active_states()
            if s.kind in (None, "evaluation")
            and name in (s.dataset or "").split(",")  # a deployment reads none
        ]
