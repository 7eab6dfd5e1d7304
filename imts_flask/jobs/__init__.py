"""Jobs and their store: the record, the on-disk store and its locks, the queue and scheduler, the
launcher and the per-job monitor, checkpoints, resume, exports and the end of life."""
