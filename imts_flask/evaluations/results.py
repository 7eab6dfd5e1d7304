"""What an evaluation's phases leave in output/<phase>/: figures (all_results.json) and samples
(generated_predictions.jsonl, one line per row: prompt, predict, label), and the comparison of the
tuned model with its base."""

import itertools
import json
import math
import os

from ..fsio import read_json
from .record import MODELS

RESULTS = "all_results.json"
PREDICTIONS = "generated_predictions.jsonl"
# LLaMA Factory's names of the figures an evaluation reports, and the API's.
_FIGURES = {
    "eval_loss": "loss",
    "eval_perplexity": "perplexity",
    "eval_accuracy": "accuracy",
    "predict_bleu-4": "bleu_4",
    "predict_rouge-1": "rouge_1",
    "predict_rouge-2": "rouge_2",
    "predict_rouge-l": "rouge_l",
}
ORDER = ("bleu_4", "rouge_1", "rouge_2", "rouge_l", "loss", "perplexity", "accuracy")
_MAX_LINE = 1024 * 1024  # a generated line longer than this is cut (max_new_tokens bounds it far lower)


def phase_done(output_dir):
    return os.path.exists(os.path.join(output_dir, RESULTS))


def phase_figures(output_dir):
    """The figures of a finished phase, by the API's names; {} when it wrote none."""
    try:
        raw = read_json(os.path.join(output_dir, RESULTS))
    except (OSError, ValueError):
        return {}
    figures = {name: raw[key] for key, name in _FIGURES.items() if _number(raw.get(key)) is not None}
    if "loss" in figures and "perplexity" not in figures:
        figures["perplexity"] = math.exp(figures["loss"]) if figures["loss"] < 700 else None
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}


def comparison(results, baseline):
    """{tuned, base, difference}: each model's figures from its phases, and tuned minus base."""
    by_model = {"tuned": {}, "base": {}}
    for phase, figures in (results or {}).items():
        by_model.setdefault(phase.split("-", 1)[0], {}).update(figures or {})
    tuned = _ordered(by_model["tuned"])
    base = _ordered(by_model["base"]) if baseline else None
    difference = None
    if base is not None:
        difference = {
            k: round(tuned[k] - base[k], 6)
            for k in tuned
            if _number(tuned[k]) is not None and _number(base.get(k)) is not None
        }
    return {"tuned": tuned or None, "base": base or None, "difference": difference or None}


def sample_count(output_dir, phase):
    try:
        with open(os.path.join(output_dir, phase, PREDICTIONS), "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return None


def samples(output_dir, phases, offset, limit):
    """Rows offset..offset+limit of the predictions: {index, prompt, label, tuned, base}."""
    lines = {model: _lines(os.path.join(output_dir, f"{model}-predict", PREDICTIONS), offset, limit)
             for model in MODELS if f"{model}-predict" in phases}  # fmt: skip
    tuned, base = lines.get("tuned") or [], lines.get("base") or []
    rows = []
    for i in range(max(len(tuned), len(base))):
        first = tuned[i] if i < len(tuned) else base[i]
        rows.append(
            {
                "index": offset + i,
                "prompt": first.get("prompt"),
                "label": first.get("label"),
                "tuned": tuned[i].get("predict") if i < len(tuned) else None,
                "base": base[i].get("predict") if i < len(base) else None,
            }
        )
    return rows


def _lines(path, offset, limit):
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return []
    found = []
    with handle:
        for line in itertools.islice(_bounded_lines(handle), offset, offset + limit):
            try:
                row = json.loads(line)
            except ValueError:
                row = {}
            found.append(row if isinstance(row, dict) else {})
    return found


def _bounded_lines(handle):
    while True:
        line = handle.readline(_MAX_LINE)
        if not line:
            return
        if not line.endswith(b"\n"):  # the rest of a line past the bound is skipped, a bound at a time
            while (rest := handle.readline(_MAX_LINE)) and not rest.endswith(b"\n"):
                pass
        yield line


def _ordered(figures):
    return {k: figures[k] for k in ORDER if k in figures}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value
