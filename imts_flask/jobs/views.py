"""What GET /jobs/{id} answers: a job's record turned into its status, live progress included.

No disk but the tail of the trainer's log; no Flask. The fields are JobStatusSchema's, in its order
(the view goes out as it is, and tests/test_fuzz.py checks it against the OpenAPI document).
"""

from ..state import JobStatus
from ..llamafactory.trainer_log import eta_after_resume, read_progress

EXPORT_FIELDS = ("status", "export_dir", "merge_lora", "model_path", "requested_at", "finished_at", "error")


def job_view(state, gpu_memory=None, detail=True):
    """The status of a job from its record; `gpu_memory` (bytes) is read by the caller where it can be."""
    status = state.get("status")
    paths = state.get("paths") or {}
    if state.get("final") is not None:
        progress = dict(state["final"])
    elif paths.get("output_dir"):
        # Pending jobs too: a job queued again after its host died, or a resumed one, shows where
        # it stands (a new job has no trainer_log.jsonl yet: one failed open).
        progress = read_progress(paths["output_dir"])
    else:
        progress = {}
    fraction = 1.0 if status == JobStatus.COMPLETED.value else (progress.get("progress") or 0.0)
    running = status == JobStatus.RUNNING.value
    eta = progress.get("eta_seconds") if running else None
    if running and state.get("resumed_at_step") is not None:
        eta = eta_after_resume(progress, state["resumed_at_step"])
    view = {
        "job_id": state.get("job_id"),
        "status": status,
        "pid": state.get("pid") if running else None,
        "config_path": paths.get("config"),
        "progress": round(fraction, 6),
        "current_loss": progress.get("current_loss"),
        "current_step": progress.get("current_step"),
        "total_steps": progress.get("total_steps"),
        "epoch": progress.get("epoch"),
        "learning_rate": progress.get("learning_rate"),
        "eta_seconds": eta,
        "created_at": state.get("created_at"),
        "started_at": state.get("started_at"),
        "finished_at": state.get("finished_at"),
        "model_name": state.get("model_name"),
        "dataset": state.get("dataset"),
        "stage": state.get("stage"),
        "finetuning_type": state.get("finetuning_type"),
        "gpus": state.get("gpus"),
        "gpu_ids": (state.get("launch") or {}).get("gpus"),
        "queue_position": None,
        "gpu_memory_mb": gpu_memory // 2**20 if running and gpu_memory is not None else None,
        # LLaMA Factory's own average counts the tokens seen before a resume: not for a resumed run.
        "tokens_per_second": _rounded(
            progress.get("tokens_per_second")
            or (None if state.get("resumed_at_step") else progress.get("tokens_average"))
        ),
        "samples_per_second": _rounded(
            (progress.get("steps_per_second") or 0) * (state.get("samples_per_step") or 0) or None
        ),
        "attempt": state.get("attempt") or 1,
        "max_attempts": state.get("max_attempts") or 1,
        "resumed_from": state.get("resumed_from"),
        "disk_bytes": state.get("disk_bytes"),
        "stop_requested": bool(state.get("stop_requested_at")),
        "exit_code": state.get("exit_code"),
        "signal": state.get("signal"),
        "reason": state.get("reason"),
        "error": state.get("error"),
        "output_dir": paths.get("output_dir"),
        "log_path": paths.get("log"),
        "export": export_view(state.get("export")),
    }
    if detail and status == JobStatus.FAILED.value:
        view["log_tail"] = state.get("log_tail") or []
    return view


def export_view(export):
    """The documented fields of a job's last export (the record also holds its monitor's pid)."""
    if not export:
        return None
    view = {key: export.get(key) for key in EXPORT_FIELDS}
    if export.get("log_tail"):
        view["log_tail"] = export["log_tail"]
    return view


def _rounded(value, digits=1):
    return round(value, digits) if isinstance(value, (int, float)) else None
