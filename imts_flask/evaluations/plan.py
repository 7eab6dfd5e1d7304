"""The phases of an evaluation and the config llamafactory-cli reads for each.

sft: `eval` (do_eval: the loss on the rows, and its perplexity) and `predict` (do_predict with
predict_with_generate: BLEU-4 and ROUGE-1/2/L against the labels, and generated_predictions.jsonl);
rm: `eval` (pairwise accuracy and loss); pt: `eval` (loss, perplexity). Each runs for the tuned
weights, then with `baseline` for the base model (the job's model_name_or_path, no adapter), on the
same rows: LLaMA Factory's evaluation and prediction cannot share one run (predict_with_generate
is for do_predict alone).
"""

import os

from .record import MODELS

# The stages whose models an evaluation can judge, and the phases it runs for each.
JUDGED_STAGES = ("sft", "rm", "pt")
_STEPS = {"sft": ("eval", "predict"), "rm": ("eval",), "pt": ("eval",)}
# What the trained model was run with, so that it is judged the same way.
_CARRIED = (
    "model_name_or_path",
    "stage",
    "finetuning_type",
    "template",
    "cutoff_len",
    "trust_remote_code",
    "quantization_bit",
    "quantization_method",
    "rope_scaling",
    "flash_attn",
    "enable_thinking",
    "pref_beta",
)
MAX_EVAL_BATCH = 8


def unsupported(stage):
    """Why a job of `stage` cannot be evaluated, or None."""
    if stage in JUDGED_STAGES:
        return None
    return f"evaluations judge sft, rm and pt jobs; this job's stage is {stage}"


def phases(stage, baseline):
    """The phases in the order they run: tuned-eval, tuned-predict, then base-* with baseline."""
    models = MODELS if baseline else MODELS[:1]
    return [f"{model}-{step}" for model in models for step in _STEPS[stage]]


def phase_config(phase, train_config, weights, request, dataset_dir, output_dir):
    """The config of one phase: the job's model settings, the weights (tuned) or none (base)."""
    model, step = phase.split("-", 1)
    config = {key: train_config[key] for key in _CARRIED if key in train_config}
    if model == "tuned":
        if train_config.get("finetuning_type") == "lora":
            config["adapter_name_or_path"] = weights
        else:
            config["model_name_or_path"] = weights  # full and freeze save the whole model
    config.update(
        do_train=False,
        eval_dataset=",".join(request["dataset"]),
        dataset_dir=dataset_dir,
        max_samples=request["max_samples"],
        per_device_eval_batch_size=min(MAX_EVAL_BATCH, train_config.get("per_device_train_batch_size") or 1),
        output_dir=os.path.join(output_dir, phase),
        overwrite_output_dir=True,
        overwrite_cache=True,
        report_to="none",
    )
    if step == "eval":
        config["do_eval"] = True
    else:
        generation = request["generation"]
        temperature = generation.get("temperature") or 0
        config.update(
            do_predict=True,
            predict_with_generate=True,
            max_new_tokens=generation["max_new_tokens"],
            do_sample=temperature > 0,
        )
        if temperature > 0:
            config["temperature"] = temperature
        for key in ("top_p", "top_k", "repetition_penalty"):
            if generation.get(key) is not None:
                config[key] = generation[key]
    return config
