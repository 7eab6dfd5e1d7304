"""The YAML llamafactory-cli reads: a job's train config, an attempt's resume settings, an export."""

import os


def build_train_config(
    request,
    *,
    model_path,
    template,
    dataset_dir,
    adapter=None,
    output_dir,
    jit_checkpoint=True,
    deepspeed_dir=None,
    save_steps=100,
    save_total_limit=0,
    tensorboard=False,
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
    if adapter:
        # On top of a registered LoRA version: LLaMA Factory goes on training that adapter.
        config["adapter_name_or_path"] = adapter
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
    if tensorboard:
        # Into the job's directory: the monitor sets TENSORBOARD_LOGGING_DIR (transformers 5 ignores
        # logging_dir).
        config["report_to"] = "tensorboard"
    config.update(custom)
    _validation(config, request.get("validation"), request.get("early_stopping"), request["batch_size"])
    return config


def _validation(config, validation, early_stopping, batch_size):
    """Evaluate on held-out data during training: every eval_steps (default: at each save), the
    best checkpoint tracked by eval_loss; with early_stopping, stop after `patience` evaluations
    without improvement and end on the best weights (LLaMA Factory's early_stopping_steps)."""
    if not validation:
        return
    if validation.get("dataset"):
        config["eval_dataset"] = ",".join(validation["dataset"])
    else:
        config["val_size"] = validation["val_size"]
    config.update(
        eval_strategy="steps",
        eval_steps=validation.get("eval_steps") or config["save_steps"],
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    config.setdefault("per_device_eval_batch_size", batch_size)
    if early_stopping:
        # The best model is loaded at the end from a checkpoint: a save at every evaluation.
        config.update(
            early_stopping_steps=early_stopping["patience"],
            load_best_model_at_end=True,
            save_strategy="steps",
            save_steps=config["eval_steps"],
        )
        if early_stopping.get("min_delta"):
            # LLaMA Factory's callback counts any improvement; the monitor stops the run when the
            # improvements stay under min_delta, through the graceful stop a SIGTERM gives.
            config["enable_jit_checkpoint"] = True


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


def build_export_config(train_config, export_dir, weights=None):
    """Return the dict for llamafactory-cli export that merges a job's weights (its output_dir, or
    one of its checkpoints: `weights`) into export_dir."""
    output_dir = weights or train_config["output_dir"]
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
