"""trainer_state.json, transformers' record of a run: its evaluations, the best checkpoint, an early stop.

The trainer writes one into each checkpoint-N/ and, at the end of a run (a graceful stop's too),
one into output_dir. Its `log_history` holds every logged entry, evaluations with all their
`eval_*` figures; `best_metric` / `best_model_checkpoint` the best evaluation that had a save
(metric_for_best_model: eval_loss); `stateful_callbacks.EarlyStoppingCallback` how many
evaluations in a row did not improve. Read at the end of a run, and per checkpoint: never while
the trainer writes it on every step.
"""

import math
import os

from ..fsio import read_json

TRAINER_STATE = "trainer_state.json"
# At most this much of a trainer_state.json is read: a long run's log_history, not the weights.
_MAX_BYTES = 64 * 1024 * 1024


def read_state(directory):
    """The trainer_state.json in `directory` as a dict, or {} where it is missing or unreadable."""
    path = os.path.join(directory, TRAINER_STATE)
    try:
        if os.path.getsize(path) > _MAX_BYTES:
            return {}
        saved = read_json(path)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def evaluations(saved):
    """The evaluation entries of a saved trainer state's log_history: {step, eval_loss, eval_*...}."""
    found = []
    for entry in saved.get("log_history") or []:
        if isinstance(entry, dict) and _number(entry.get("eval_loss")) is not None:
            found.append({k: v for k, v in entry.items() if k == "step" or k.startswith("eval_")})
    return found


def early_stopped(saved):
    """Whether transformers' EarlyStoppingCallback ended the run: `patience` evaluations in a row
    without improvement, before the planned last step."""
    callbacks = (saved.get("stateful_callbacks") or {}).get("EarlyStoppingCallback")
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if not isinstance(callback, dict):
            continue
        patience = (callback.get("args") or {}).get("early_stopping_patience")
        counter = (callback.get("attributes") or {}).get("early_stopping_patience_counter")
        if isinstance(patience, int) and isinstance(counter, int) and counter >= patience > 0:
            step, planned = saved.get("global_step"), saved.get("max_steps")
            return not (isinstance(step, int) and isinstance(planned, int) and step >= planned)
    return False


def validation_figures(output_dir):
    """A finished run's figures on its held-out data, from output_dir/trainer_state.json:
    {eval_loss (the last), best_eval_loss, best_checkpoint, stopped_early}; {} without a final state."""
    saved = read_state(output_dir)
    if not saved:
        return {}
    found = evaluations(saved)
    best = saved.get("best_model_checkpoint")
    figures = {
        "eval_loss": found[-1]["eval_loss"] if found else None,
        "best_eval_loss": _number(saved.get("best_metric")),
        "best_checkpoint": os.path.basename(best.rstrip("/")) if isinstance(best, str) and best else None,
        "stopped_early": early_stopped(saved),
    }
    if figures["best_eval_loss"] is None and found:
        figures["best_eval_loss"] = min(e["eval_loss"] for e in found)
    return figures


def checkpoint_evaluation(checkpoint_dir, step):
    """The evaluation at a checkpoint's own step ({eval_loss, eval_*...}), or None."""
    at_step = [e for e in evaluations(read_state(checkpoint_dir)) if e.get("step") == step]
    if not at_step:
        return None
    return {k: v for k, v in at_step[-1].items() if k != "step"}


def best_checkpoint(checkpoint_dir):
    """The best checkpoint's name as the trainer knew it when it saved `checkpoint_dir`, or None."""
    best = read_state(checkpoint_dir).get("best_model_checkpoint")
    return os.path.basename(best.rstrip("/")) if isinstance(best, str) and best else None


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value
