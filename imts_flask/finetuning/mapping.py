"""OpenAI's fine-tuning shapes and the service's, field by field.

    OpenAI (POST /v1/fine_tuning/jobs)            the service (POST /api/v1/training/jobs)
    model                                         model_name (a base model or a registered version)
    training_file (file-...)                      dataset (the uploaded dataset of that id)
    validation_file                               validation: {dataset}
    method.type supervised | dpo                  stage sft | dpo (reinforcement: a 400)
    hyperparameters.n_epochs (auto: 3)            epochs
    hyperparameters.batch_size (auto: 2)          batch_size
    hyperparameters.learning_rate_multiplier      learning_rate = BASE_LEARNING_RATE x multiplier
      (auto: 1, so the service's default 5e-5)
    seed                                          custom_config.seed
    (a checkpoint per epoch, as OpenAI keeps)     custom_config.save_strategy: epoch
    suffix, metadata                              kept in openai.json beside the record

    status: pending -> queued, running -> running, completed -> succeeded, failed -> failed,
    stopped -> cancelled (paused once pause is supported).

"auto" picks the service's own defaults (3 epochs, batch size 2, learning rate 5e-5 for LoRA), the
values its guide documents, not a guess from the dataset's size: a team that wants OpenAI's
size-dependent choice sets the numbers.
"""

import re
import time

from ..errors import ValidationFailed
from ..state import JobStatus, parse_time

BASE_LEARNING_RATE = 5e-5
AUTO = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 1.0, "beta": 0.1}
STATUS = {
    JobStatus.PENDING.value: "queued",
    JobStatus.RUNNING.value: "running",
    JobStatus.COMPLETED.value: "succeeded",
    JobStatus.FAILED.value: "failed",
    JobStatus.STOPPED.value: "cancelled",
}
# Each parameter of OpenAI's fine-tuning job request and what the service makes of it (the OpenAPI
# document's x-openai, the README's table).
PARAMETERS = {
    "model": "model_name: a base model or a registered version",
    "training_file": "dataset: the uploaded dataset of that file id",
    "validation_file": "validation.dataset",
    "method": "stage: supervised -> sft, dpo -> dpo; reinforcement is refused (LLaMA Factory has no grader)",
    "hyperparameters": "n_epochs -> epochs (auto 3), batch_size -> batch_size (auto 2), "
    f"learning_rate_multiplier -> learning_rate = {BASE_LEARNING_RATE} x it (auto 1); "
    "dpo's beta -> custom_config.pref_beta (auto: LLaMA Factory's 0.1)",
    "seed": "custom_config.seed",
    "suffix": "kept in openai.json; part of fine_tuned_model",
    "metadata": "kept in openai.json; the list filters by metadata[k]=v",
    "integrations": "accepted and ignored (none is supported)",
}
NOT_SUPPORTED = (
    "result_files (always empty), trained_tokens (null)",
    "integrations (Weights & Biases): the service tracks with MLflow",
    "method reinforcement",
)
ROUTES = (
    "POST /v1/files", "GET /v1/files", "GET /v1/files/{id}", "GET /v1/files/{id}/content",
    "DELETE /v1/files/{id}", "POST /v1/fine_tuning/jobs", "GET /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs/{id}", "POST /v1/fine_tuning/jobs/{id}/cancel",
    "POST /v1/fine_tuning/jobs/{id}/pause", "POST /v1/fine_tuning/jobs/{id}/resume",
    "GET /v1/fine_tuning/jobs/{id}/events", "GET /v1/fine_tuning/jobs/{id}/checkpoints",
    "GET /v1/models", "GET /v1/models/{model}", "DELETE /v1/models/{model}",
    "POST /v1/chat/completions", "POST /v1/completions",
)  # fmt: skip


def openapi_extension():
    """What the OpenAPI document says of OpenAI's face (x-openai): its routes, the mapping of each
    request parameter and status, its error shape, and what it does not support."""
    return {
        "base_path": "/v1",
        "routes": list(ROUTES),
        "error_shape": {
            "error": {"message": "string", "type": "string", "param": "string", "code": "string"}
        },
        "fine_tuning_job_parameters": dict(PARAMETERS),
        "statuses": dict(STATUS),
        "model_names": {
            "fine_tuned_model": "ft:<base>:<team>:<suffix>:<job id>",
            "checkpoint": "ft:<base>:<team>:<suffix>:<job id>:ckpt-step-<N>",
            "also": "train_x, train_x:best, train_x:checkpoint-N, name:3, name@alias, a base model",
        },
        "not_supported": list(NOT_SUPPORTED),
    }


FILE_ID = re.compile(r"file-[0-9a-f]{24}")
SUFFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # OpenAI: up to 64 characters; ours stay short
MAX_METADATA = 16


def _number(value, name, kind, low, high):
    param = f"hyperparameters.{name}"
    if value is None or value == "auto":
        return AUTO[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and value != int(value))
    ):
        raise ValidationFailed(f"{param} must be 'auto' or a {kind.__name__}", field=param)
    if not low <= value <= high:
        raise ValidationFailed(f"{param} must be between {low} and {high}", field=param)
    return kind(value)


def job_request(body):
    """(the service's job request, what openai.json keeps) for an OpenAI fine-tuning job request;
    a 400 naming OpenAI's parameter for what it cannot take."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object", field="body")
    unknown = set(body) - set(PARAMETERS)
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationFailed(f"{name} is not a parameter of a fine-tuning job", field=name)
    for name in ("model", "training_file"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ValidationFailed(f"{name} is required", field=name)
    for name in ("training_file", "validation_file"):
        if body.get(name) is not None and not (isinstance(body[name], str) and FILE_ID.fullmatch(body[name])):
            raise ValidationFailed(f"{name} must be a file id from POST /v1/files (file-...)", field=name)
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
        raise ValidationFailed("method.type must be supervised or dpo", field="method.type")
    if method["type"] == "reinforcement":
        raise ValidationFailed(
            "method.type reinforcement needs a grader; LLaMA Factory trains supervised and dpo only",
            field="method.type",
        )
    given = dict(body.get("hyperparameters") or {})
    given.update((method.get(method["type"]) or {}).get("hyperparameters") or {})
    extra = set(given) - set(AUTO) - {"beta"}
    if extra:
        name = sorted(extra)[0]
        raise ValidationFailed(f"hyperparameters.{name} is not supported", field=f"hyperparameters.{name}")
    hyper = {
        "n_epochs": _number(given.get("n_epochs"), "n_epochs", int, 1, 50),
        "batch_size": _number(given.get("batch_size"), "batch_size", int, 1, 256),
        "learning_rate_multiplier": _number(
            given.get("learning_rate_multiplier"), "learning_rate_multiplier", float, 0.0001, 10
        ),
    }
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)):
        raise ValidationFailed("suffix must be 1-40 lowercase letters, digits or -", field="suffix")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise ValidationFailed(f"metadata must be an object of at most {MAX_METADATA} keys", field="metadata")
    for key, value in metadata.items():
        if not (isinstance(value, str) and len(key) <= 64 and len(value) <= 512):
            raise ValidationFailed("metadata keys (<= 64) and values (<= 512) are strings", field="metadata")
    seed = body.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1
    ):
        raise ValidationFailed("seed must be an integer from 0 to 2147483647", field="seed")
    beta = given.get("beta")
    if beta is not None and beta != "auto":
        if method["type"] != "dpo":
            raise ValidationFailed("hyperparameters.beta is for method dpo", field="hyperparameters.beta")
        hyper["beta"] = _number(beta, "beta", float, 0.0001, 1000)
    request = {
        "model_name": body["model"],
        "dataset": body["training_file"],
        "stage": "dpo" if method["type"] == "dpo" else "sft",
        "epochs": float(hyper["n_epochs"]),
        "batch_size": hyper["batch_size"],
        "learning_rate": BASE_LEARNING_RATE * hyper["learning_rate_multiplier"],
        # A checkpoint at each epoch's end, as OpenAI's jobs keep them (each answers by its name).
        "custom_config": {
            "save_strategy": "epoch",
            **({"seed": seed} if seed is not None else {}),
            **({"pref_beta": hyper["beta"]} if "beta" in hyper else {}),
        },
    }
    if body.get("validation_file"):
        request["validation"] = {"dataset": body["validation_file"]}
    kept = {
        "training_file": body["training_file"],
        "validation_file": body.get("validation_file"),
        "suffix": suffix,
        "metadata": metadata,
        "seed": seed,
        "method": method["type"],
        "hyperparameters": hyper,
    }
    return request, kept


def seconds(text):
    at = parse_time(text)
    return int(at.timestamp()) if at else None


def fine_tuned_model(state, kept):
    """ft:<base>:<team>:<suffix>:<job id>, the name /v1/chat/completions answers."""
    return f"ft:{state.model_name}:{state.tenant or 'imts'}:{(kept or {}).get('suffix') or ''}:{state.job_id}"


def checkpoint_model(state, kept, step):
    return f"{fine_tuned_model(state, kept)}:ckpt-step-{step}"


def job_view(state, kept, view, request):
    """OpenAI's FineTuningJob of a job: its record, what openai.json keeps, the service's view and
    the request it was created with (a job made through /api/v1/training has no openai.json)."""
    kept = kept or {}
    status = STATUS[state.status]
    hyper = kept.get("hyperparameters") or {
        "n_epochs": request.get("epochs", AUTO["n_epochs"]),
        "batch_size": request.get("batch_size", AUTO["batch_size"]),
        "learning_rate_multiplier": request.get("learning_rate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE,
    }
    error = None
    if state.status == JobStatus.FAILED.value:
        error = {"code": state.reason or "failed", "message": state.error or "the job failed", "param": None}
    eta = view.get("eta_seconds")
    method = kept.get("method") or ("dpo" if state.stage == "dpo" else "supervised")
    return {
        "object": "fine_tuning.job",
        "id": state.job_id,
        "created_at": seconds(state.created_at) or 0,
        "finished_at": seconds(state.finished_at) if JobStatus(state.status).is_terminal() else None,
        "model": state.model_name,
        "fine_tuned_model": fine_tuned_model(state, kept) if status == "succeeded" else None,
        "organization_id": state.tenant or "imts",
        "status": status,
        "training_file": kept.get("training_file") or state.dataset,
        "validation_file": kept.get("validation_file"),
        "hyperparameters": hyper,
        "method": {"type": method, method: {"hyperparameters": hyper}},
        "result_files": [],
        "seed": kept.get("seed") or 0,
        "trained_tokens": None,
        "error": error,
        "estimated_finish": int(time.time() + eta) if status == "running" and eta else None,
        "metadata": kept.get("metadata") or None,
        "integrations": None,
        "suffix": kept.get("suffix"),
        # The service's own figures, for a reader of both APIs.
        "progress": view.get("progress"),
        "current_loss": view.get("current_loss"),
    }
