"""Jobs, the first kind of run: the record (record.py), the use cases (service.py, files.py) and the
runner (runner.py); and what the store and the queue do for every kind: the jobs index, the
scheduler and preemption, liveness, the launcher, checkpoints, resume, exports, end of life,
webhooks and the status view."""
