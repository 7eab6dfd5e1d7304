"""Everything that knows LLaMA Factory and nothing of HTTP: the custom_config allowlist, the YAML
llamafactory-cli reads, its trainer_log.jsonl, the trainer's environment, its chat templates."""
