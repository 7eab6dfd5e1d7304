"""Everything LLaMA Factory: the allowlist of custom_config keys, train/export YAML, trainer_log.jsonl."""

import json
import math
import os
import re

from .errors import ValidationFailed
from .fsio import atomic_write_bytes, read_tail

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
    "val_size": _num(0, 10**9),
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
    "eval_strategy": _choice("no", "steps", "epoch"),
    "eval_steps": _int(1, 10**9),
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

# Keys the service sets itself, or that would let a caller read or write anywhere, run code or
# send data off the machine (../shared/LLAMAFACTORY_NOTES.md). Each is refused with its reason.
_OWNED = "set by the service from the job"
_TOP_LEVEL = "set it with the top-level request field '{}'"
REFUSED_KEYS = {
    **{key: _TOP_LEVEL.format(field) for field, key in FIELD_KEYS.items()},
    **dict.fromkeys(
        [
            "do_train",
            "output_dir",
            "overwrite_output_dir",
            "logging_dir",
            "dataset_dir",
            "eval_dataset",
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


def build_train_config(
    request,
    *,
    model_path,
    template,
    dataset_dir,
    output_dir,
    jit_checkpoint=True,
    deepspeed_dir=None,
    save_steps=100,
    save_total_limit=0,
):
    """Return the exact dict that llamafactory-cli train reads for a validated request.

    `save_steps` and `save_total_limit` (0: keep every checkpoint) are the service's defaults; a
    request's custom_config overrides them.
    """
    custom = dict(request.get("custom_config") or {})
    if "deepspeed" in custom:
        # A template name (validated against the shipped files) becomes that file's path.
        custom["deepspeed"] = os.path.join(deepspeed_dir, custom["deepspeed"] + ".json")
    config = {
        "model_name_or_path": model_path,
        "trust_remote_code": False,  # custom_config may turn it on only where the operator allows it
        "stage": request["stage"],
        "do_train": True,
        "finetuning_type": request["finetuning_type"],
    }
    if request["finetuning_type"] == "lora":
        config.update(lora_rank=request["lora_rank"], lora_alpha=request["lora_alpha"], lora_target="all")
    config.update(
        dataset=",".join(request["dataset"]),
        dataset_dir=dataset_dir,
        template=template,
        cutoff_len=1024,
        overwrite_cache=True,
        output_dir=output_dir,
        overwrite_output_dir=True,
        logging_steps=5,
        save_steps=save_steps,
        plot_loss=True,
        # LLaMA Factory then logs total_tokens (and a throughput): tokens a second in the status.
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        per_device_train_batch_size=request["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=request["learning_rate"],
        num_train_epochs=float(request["epochs"]),
        lr_scheduler_type="cosine",
    )
    if request["stage"] in ("dpo", "kto"):
        config["pref_beta"] = 0.1
    if save_total_limit:
        config["save_total_limit"] = save_total_limit
    if jit_checkpoint:
        # SIGTERM then makes the trainer save a checkpoint before exiting (LLAMAFACTORY_NOTES.md).
        config["enable_jit_checkpoint"] = True
    config.update(custom)
    return config


def resume_refusal(config):
    """Return why LLaMA Factory cannot resume a run of `config` from a checkpoint, or None.

    0.9.5 drops resume_from_checkpoint for stage rm with full or freeze fine-tuning
    (hparams/parser.py), so such a run would silently start over.
    """
    if config.get("stage") == "rm" and config.get("finetuning_type") in ("full", "freeze"):
        return "LLaMA Factory cannot resume stage rm with full or freeze fine-tuning from a checkpoint"
    return None


def attempt_config(config, checkpoint_path):
    """Return `config` set to resume from `checkpoint_path`, or to start over when it is None.

    Resuming keeps output_dir (overwrite_output_dir false, so trainer_log.jsonl is appended to,
    not deleted); starting over is the job's first configuration.
    """
    config = dict(config)
    if checkpoint_path:
        config.update(resume_from_checkpoint=checkpoint_path, overwrite_output_dir=False)
    else:
        config.pop("resume_from_checkpoint", None)
        config["overwrite_output_dir"] = True
    return config


def build_export_config(train_config, export_dir):
    """Return the dict for llamafactory-cli export that merges a job's output into export_dir."""
    output_dir = train_config["output_dir"]
    config = {"template": train_config.get("template", "default"), "trust_remote_code": False}
    if train_config.get("finetuning_type") == "lora":
        config.update(
            model_name_or_path=train_config["model_name_or_path"],
            adapter_name_or_path=output_dir,
            finetuning_type="lora",
        )
    else:
        config.update(
            model_name_or_path=output_dir, finetuning_type=train_config.get("finetuning_type", "full")
        )
    config.update(export_dir=export_dir, export_size=5, export_device="cpu", export_legacy_format=False)
    return config


# -- trainer_log.jsonl -------------------------------------------------------------------------

TRAINER_LOG = "trainer_log.jsonl"
_TAIL_BYTES = 64 * 1024
_FIRST_TAIL_BYTES = 4 * 1024


def read_progress(output_dir):
    """Read progress from the tail of trainer_log.jsonl: its cost does not grow with the log.

    Returns {current_step, total_steps, progress, current_loss, learning_rate, epoch, eta_seconds,
    elapsed_seconds, steps_per_second, tokens_per_second}, or {} when the trainer has logged nothing.
    """
    path = os.path.join(output_dir, TRAINER_LOG)
    # The last few lines almost always hold a loss entry; read more only when they do not.
    progress = _progress_from(read_tail(path, _FIRST_TAIL_BYTES))
    if progress.get("current_loss") is None:
        progress = _progress_from(read_tail(path, _TAIL_BYTES))
    return progress


# Rates of steps and tokens are taken over at least this many seconds of the trainer's clock.
_RATE_SPAN_S = 2


def _progress_from(text):
    """Progress from the newest lines of a log; lines are parsed from the end, only as far as needed."""
    run, source = [], None  # the latest run's entries (newest first), the nearest loss entry
    closed, floor = False, None  # floor: the trainer's second the rates start at, once far enough back
    for line in reversed(text.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a partial line still being appended
        if not isinstance(entry, dict) or "current_steps" not in entry:
            continue
        if source is None and "loss" in entry:
            source = entry
        if not closed:
            if run and not _same_run(entry, run[-1]):
                closed = True  # an earlier run: its clock started before this one's
            elif floor is not None and _seconds(entry.get("elapsed_time")) < floor:
                closed = True  # past the first entry of the floor's second
            else:
                run.append(entry)
                if floor is None and _span(run) >= _RATE_SPAN_S:
                    floor = _seconds(entry.get("elapsed_time"))
        timed = _seconds(run[0].get("elapsed_time")) is not None
        if source is not None and (closed or not timed):
            break
    if not run:
        return {}
    latest, source = run[0], source or {}
    step, total = latest.get("current_steps"), latest.get("total_steps")
    progress = (
        min(1.0, step / total) if isinstance(step, int) and isinstance(total, int) and total > 0 else None
    )
    return {
        "elapsed_seconds": _seconds(latest.get("elapsed_time")),
        "current_step": step,
        "total_steps": total,
        "progress": progress,
        "current_loss": source.get("loss"),
        "learning_rate": source.get("lr"),
        "epoch": latest.get("epoch", source.get("epoch")),
        "eta_seconds": _seconds(latest.get("remaining_time")),
        **_rates(run),
    }


def _same_run(earlier, later):
    before, after = _seconds(earlier.get("elapsed_time")), _seconds(later.get("elapsed_time"))
    return before is not None and after is not None and before <= after


def _span(run):
    return (_seconds(run[0].get("elapsed_time")) or 0) - (_seconds(run[-1].get("elapsed_time")) or 0)


def _rates(run):
    """Steps and tokens a second over the newest entries of the latest run (newest first).

    From differences, not LLaMA Factory's own throughput, which divides every token seen by this
    run's time and so runs high after a resume.
    """
    # The trainer's clock counts whole seconds: measure between the first entries of two seconds.
    newest = next(e for e in reversed(run) if e.get("elapsed_time") == run[0].get("elapsed_time"))
    oldest = run[-1]
    span = _span([newest, oldest])
    if span < _RATE_SPAN_S:
        # The tail spans too little of the clock's whole seconds (a fast job logging often): no
        # rate of steps, and LLaMA Factory's average of tokens, which counts those seen before a
        # resume too (the status drops it for a resumed run).
        return {
            "steps_per_second": None,
            "tokens_per_second": None,
            "tokens_average": newest.get("throughput"),
        }
    tokens = [e.get("total_tokens") for e in (newest, oldest)]
    return {
        "steps_per_second": (newest["current_steps"] - oldest["current_steps"]) / span,
        "tokens_per_second": (tokens[0] - tokens[1]) / span
        if all(isinstance(t, int) for t in tokens)
        else None,
    }


def eta_after_resume(progress, resumed_step):
    """Return the seconds left for a run that resumed at `resumed_step`, or None.

    LLaMA Factory's remaining_time divides the time of this run by every step so far, those before
    the resume included, so after a resume it promises far too little: use this run's steps only.
    """
    step, total, elapsed = (progress.get(k) for k in ("current_step", "total_steps", "elapsed_seconds"))
    if not all(isinstance(v, int) for v in (step, total, elapsed)) or step <= resumed_step or not elapsed:
        return None
    return int((total - step) * elapsed / (step - resumed_step))


def trim_log(output_dir, step):
    """Cut trainer_log.jsonl back to `step`, in whole lines, before a run resumes there in place.

    The steps after the checkpoint are trained again; without this they would appear twice, and
    a line cut short by a killed trainer would swallow the first line of the next run.
    """
    if os.path.exists(os.path.join(output_dir, TRAINER_LOG)):
        atomic_write_bytes(os.path.join(output_dir, TRAINER_LOG), log_until(output_dir, step))


def log_until(output_dir, step):
    """Return the lines of trainer_log.jsonl up to `step`, as bytes: the history a resumed run continues."""
    kept = []
    try:
        with open(os.path.join(output_dir, TRAINER_LOG), "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("current_steps"), int):
                    if entry["current_steps"] <= step:
                        kept.append(line if line.endswith(b"\n") else line + b"\n")
    except FileNotFoundError:
        pass
    return b"".join(kept)


def _seconds(hms):
    """Turn LLaMA Factory's "0:01:23" remaining_time into seconds."""
    if not isinstance(hms, str):
        return None
    try:
        parts = [float(p) for p in hms.split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return int(seconds)


FINAL_RESULTS = ("all_results.json", "train_results.json")


def training_finished(output_dir):
    """Tell whether LLaMA Factory wrote its final results (a graceful stop also exits 0)."""
    return os.path.exists(os.path.join(output_dir, FINAL_RESULTS[0]))


def reached_end(progress):
    """Whether a run's log reached its planned last step (or past it: transformers may take one
    more step when it resumes inside an unfinished epoch)."""
    step, total = progress.get("current_step"), progress.get("total_steps")
    return isinstance(step, int) and isinstance(total, int) and step >= total


def run_complete(output_dir):
    """Whether the run in `output_dir` trained to its end and saved its results, whoever watched it.

    A stop with a checkpoint also writes the final results (and exits 0), short of the last step.
    """
    return training_finished(output_dir) and reached_end(read_progress(output_dir))


def outcome(rc, output_dir, stop_requested):
    """What a trainer's exit means: (status, progress) with status completed, stopped or failed.

    completed: exit 0 with the final results, at the planned end or past it (or a run that logged
    no steps at all); stopped: a stop was asked for; else failed (the caller says why).
    """
    progress = read_progress(output_dir)
    if rc == 0 and training_finished(output_dir) and (reached_end(progress) or not progress):
        return "completed", progress
    if stop_requested:
        return "stopped", progress
    return "failed", progress


def read_series(output_dir, since_step=0, limit=1000):
    """Return trainer_log.jsonl entries after `since_step`, one per step (the last wins after a resume)."""
    by_step = {}
    try:
        with open(os.path.join(output_dir, TRAINER_LOG), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                step = entry.get("current_steps") if isinstance(entry, dict) else None
                if isinstance(step, int) and step > since_step and "loss" in entry:
                    by_step[step] = entry
    except FileNotFoundError:
        return []
    points = [
        {
            "step": step,
            "loss": e.get("loss"),
            "learning_rate": e.get("lr"),
            "epoch": e.get("epoch"),
            "eval_loss": e.get("eval_loss"),
            "elapsed_seconds": _seconds(e.get("elapsed_time")),
        }
        for step, e in sorted(by_step.items())
    ]
    return points[:limit]
