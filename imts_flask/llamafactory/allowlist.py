"""The custom_config keys a request may set, with their types and bounds, and the ones it may not.

Keys the service owns, or that would let a caller read or write anywhere, run code or send data
off the machine (../shared/LLAMAFACTORY_NOTES.md), are refused with their reason.
"""

import math
import re

from ..errors import ValidationFailed

STAGES = ("sft", "pt", "rm", "dpo", "kto")


FINETUNING_TYPES = ("lora", "full", "freeze")


PPO_REASON = (
    "stage 'ppo' is not supported: LLaMA Factory 0.9.5 needs trl<=0.9.6 for PPO while it installs "
    "trl 0.24, and PPO needs a separately trained reward model; use dpo or kto for preference tuning"
)


# A request field and the LLaMA Factory key it fills.
FIELD_KEYS = {
    "batch_size": "per_device_train_batch_size",
    "learning_rate": "learning_rate",
    "epochs": "num_train_epochs",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "stage": "stage",
    "finetuning_type": "finetuning_type",
    "model_name": "model_name_or_path",
    "dataset": "dataset",
}


_NAME = re.compile(r"[A-Za-z0-9_.,\-]{1,200}")


def _int(lo, hi):
    return ("int", lo, hi)


def _num(lo, hi):
    return ("number", lo, hi)


def _choice(*values):
    return ("choice", values)


_BOOL = ("bool",)


_NAMES = ("names",)  # comma-separated identifiers such as lora_target: q_proj,v_proj


_TEXT = ("text",)


# custom_config keys a request may set, with their types and bounds.
CUSTOM_KEYS = {
    "template": _NAMES,
    "default_system": _TEXT,
    "enable_thinking": _BOOL,
    "cutoff_len": _int(1, 1_048_576),
    "max_samples": _int(1, 10**9),
    "packing": _BOOL,
    "neat_packing": _BOOL,
    "train_on_prompt": _BOOL,
    "mask_history": _BOOL,
    "mix_strategy": _choice("concat", "interleave_under", "interleave_over"),
    "interleave_probs": _NAMES,
    "preprocessing_num_workers": _int(1, 256),
    "dataloader_num_workers": _int(0, 256),
    "overwrite_cache": _BOOL,
    "gradient_accumulation_steps": _int(1, 4096),
    "lr_scheduler_type": _choice(
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ),
    "warmup_ratio": _num(0, 1),
    "warmup_steps": _int(0, 10**9),
    "weight_decay": _num(0, 10),
    "max_grad_norm": _num(0, 10**6),
    "max_steps": _int(-1, 10**9),
    "seed": _int(0, 2**32 - 1),
    "optim": _NAMES,
    "bf16": _BOOL,
    "fp16": _BOOL,
    "pure_bf16": _BOOL,
    "disable_gradient_checkpointing": _BOOL,
    "flash_attn": _choice("auto", "disabled", "sdpa", "fa2"),
    "rope_scaling": _choice("linear", "dynamic", "yarn", "llama3"),
    "quantization_bit": _choice(2, 3, 4, 5, 6, 8),
    "logging_steps": _int(1, 10**6),
    "save_steps": _int(1, 10**9),
    "save_strategy": _choice("no", "steps", "epoch"),
    "save_total_limit": _int(1, 1000),
    "save_only_model": _BOOL,
    "per_device_eval_batch_size": _int(1, 4096),
    "plot_loss": _BOOL,
    "include_num_input_tokens_seen": _BOOL,
    "ddp_timeout": _int(1, 10**8),
    "lora_target": _NAMES,
    "lora_dropout": _num(0, 1),
    "additional_target": _NAMES,
    "use_dora": _BOOL,
    "use_rslora": _BOOL,
    "pissa_init": _BOOL,
    "loraplus_lr_ratio": _num(0, 10**4),
    "freeze_trainable_layers": _int(-10_000, 10_000),
    "freeze_trainable_modules": _NAMES,
    "freeze_extra_modules": _NAMES,
    "pref_beta": _num(0, 1000),
    "pref_ftx": _num(0, 1000),
    "pref_loss": _choice("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"),
    "dpo_label_smoothing": _num(0, 0.5),
    "simpo_gamma": _num(0, 1000),
    "kto_chosen_weight": _num(0, 1000),
    "kto_rejected_weight": _num(0, 1000),
}


def allowed_keys():
    """CUSTOM_KEYS as data: [{key, type, min, max, choices}] (GET /custom-config, the dashboard's form)."""
    found = []
    for key, rule in CUSTOM_KEYS.items():
        kind = rule[0]
        entry = {"key": key, "type": kind, "min": None, "max": None, "choices": None}
        if kind in ("int", "number"):
            entry.update(min=rule[1], max=rule[2])
        elif kind == "choice":
            entry["choices"] = list(rule[1])
        found.append(entry)
    return found


# Keys the service sets itself, or that would let a caller read or write anywhere, run code or
# send data off the machine (../shared/LLAMAFACTORY_NOTES.md). Each is refused with its reason.
_OWNED = "set by the service from the job"


_TOP_LEVEL = "set it with the top-level request field '{}'"
# Keys of the evaluation during training: the request's `validation` and `early_stopping` set them.
VALIDATION_KEYS = {
    "val_size": "validation",
    "eval_dataset": "validation",
    "eval_strategy": "validation",
    "eval_steps": "validation",
    "metric_for_best_model": "validation",
    "greater_is_better": "validation",
    "load_best_model_at_end": "early_stopping",
    "early_stopping_steps": "early_stopping",
}


REFUSED_KEYS = {
    **{key: _TOP_LEVEL.format(field) for field, key in FIELD_KEYS.items()},
    **{key: _TOP_LEVEL.format(field) for key, field in VALIDATION_KEYS.items()},
    **dict.fromkeys(
        ["do_eval", "do_predict", "predict_with_generate"],
        "set by the service (evaluations: POST .../evaluations)",
    ),
    **dict.fromkeys(
        [
            "do_train",
            "output_dir",
            "overwrite_output_dir",
            "logging_dir",
            "dataset_dir",
            "report_to",
            "run_name",
            "enable_jit_checkpoint",
        ],
        _OWNED,
    ),
    **dict.fromkeys(
        [
            "tokenized_path",
            "cache_dir",
            "export_dir",
            "offload_folder",
            "media_dir",
            "adapter_name_or_path",
            "ref_model",
            "reward_model",
            "resume_from_checkpoint",
            "deepspeed",
            "fsdp_config",
            "new_special_tokens_config",
            "image_dir",
            "video_dir",
            "audio_dir",
        ],
        "a path: the service decides where a job reads and writes",
    ),
    **dict.fromkeys(
        ["trust_remote_code", "ray_init_kwargs", "use_unsloth", "use_kt", "use_mca", "infer_backend"],
        "runs code outside the service's control",
    ),
    **dict.fromkeys(
        [
            "push_to_hub",
            "hub_model_id",
            "hub_token",
            "hub_strategy",
            "hub_private_repo",
            "hf_hub_token",
            "ms_hub_token",
            "om_hub_token",
            "export_hub_model_id",
            "reward_model_type",
            "cloud_file_name",
        ],
        "sends data off the machine",
    ),
}


_REFUSED_PREFIXES = ("swanlab", "trackio", "ray_", "hub_", "profiler", "export_")


def _check_value(spec, value):
    """Return the reason `value` does not fit `spec`, or None."""
    kind = spec[0]
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number" if kind == "number" else "must be an integer"
        if kind == "int" and not float(value).is_integer():
            return "must be an integer"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        lo, hi = spec[1], spec[2]
        return None if lo <= value <= hi else f"must be between {lo} and {hi}"
    if kind == "choice":
        return None if value in spec[1] else f"must be one of {', '.join(map(str, spec[1]))}"
    if kind == "names":
        ok = isinstance(value, str) and _NAME.fullmatch(value)
        return None if ok else "must be names made of letters, digits, '_', '.', '-' separated by commas"
    if kind == "text":
        ok = isinstance(value, str) and len(value) <= 4000 and "\x00" not in value
        return None if ok else "must be a string of at most 4000 characters"
    raise AssertionError(kind)


_SPEC_TYPES = {
    "bool": lambda e: _BOOL,
    "int": lambda e: _int(e["min"], e["max"]),
    "number": lambda e: _num(e["min"], e["max"]),
    "choice": lambda e: _choice(*e["values"]),
    "names": lambda e: _NAMES,
    "text": lambda e: _TEXT,
}


def parse_extra_keys(allow):
    """Turn an operator's `allow:` mapping (config/custom_config.yaml) into key specs, or raise ValueError."""
    specs = {}
    for key, entry in (allow or {}).items():
        if key in REFUSED_KEYS or key.startswith(_REFUSED_PREFIXES):
            raise ValueError(
                f"custom_config key {key!r} cannot be allowed: the service owns it or it is unsafe"
            )
        if not isinstance(entry, dict) or entry.get("type") not in _SPEC_TYPES:
            raise ValueError(f"custom_config key {key!r}: type must be one of {', '.join(_SPEC_TYPES)}")
        try:
            specs[key] = _SPEC_TYPES[entry["type"]](entry)
        except KeyError as exc:
            raise ValueError(f"custom_config key {key!r}: {entry['type']} needs {exc.args[0]!r}") from None
    return specs


def validate_custom_config(custom, extra_keys=None, deepspeed_templates=(), trust_remote_code=False):
    """Refuse every custom_config key that is not allowed or whose value is out of bounds.

    `extra_keys` are the operator's additions; `deepspeed` may name one of `deepspeed_templates`;
    `trust_remote_code` is accepted only when the operator allows it.
    """
    allowed = {**CUSTOM_KEYS, **(extra_keys or {})}
    if deepspeed_templates:
        allowed["deepspeed"] = _choice(*deepspeed_templates)
    if trust_remote_code:
        allowed["trust_remote_code"] = _BOOL
    errors = []
    for key, value in custom.items():
        where = f"custom_config.{key}" if isinstance(key, str) and len(key) < 100 else "custom_config"
        if key in allowed:
            reason = _check_value(allowed[key], value)
            if reason:
                errors.append({"field": where, "reason": reason})
        elif key in REFUSED_KEYS:
            errors.append({"field": where, "reason": f"not allowed: {REFUSED_KEYS[key]}"})
        elif key.startswith(_REFUSED_PREFIXES):
            errors.append(
                {"field": where, "reason": "not allowed: owned by the service or sends data off the machine"}
            )
        else:
            errors.append(
                {"field": where, "reason": "unknown key: not in the service's list of LLaMA Factory keys"}
            )
    if errors:
        raise ValidationFailed("custom_config has keys that are not accepted", errors=errors)
