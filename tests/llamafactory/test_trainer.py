"""trainer: the custom_config allowlist, the YAML llamafactory-cli reads, trainer_log.jsonl tails."""

import json

import pytest
import yaml

from imts_flask.errors import ValidationFailed
from imts_flask.http.jobs_schemas import TrainingJobRequestSchema
from imts_flask.llamafactory.allowlist import validate_custom_config
from imts_flask.llamafactory.configs import build_export_config, build_train_config
from imts_flask.llamafactory.trainer_log import outcome, read_progress, run_complete

from conftest import GUIDE_EXAMPLE

# The guide's example as the schema loads it, with two datasets.
REQUEST = {
    **TrainingJobRequestSchema().load(GUIDE_EXAMPLE),
    "model_name": "tiny-llama",
    "dataset": ["a", "b"],
}


def _build(request=REQUEST):
    return build_train_config(
        request, model_path="/m", template="llama3", dataset_dir="/j/dataset", output_dir="/j/output"
    )


def test_train_config_maps_request_fields_to_llamafactory_keys():
    config = _build()
    assert config["model_name_or_path"] == "/m"
    assert config["dataset"] == "a,b" and config["dataset_dir"] == "/j/dataset"
    assert config["per_device_train_batch_size"] == 2
    assert config["num_train_epochs"] == 3.0 and config["learning_rate"] == 5e-5
    assert (config["lora_rank"], config["lora_alpha"]) == (8, 16)
    assert config["cutoff_len"] == 2048 and config["template"] == "llama3"
    assert config["output_dir"] == "/j/output" and config["report_to"] == "none"
    assert config["trust_remote_code"] is False and config["do_train"] is True


def test_full_finetuning_has_no_lora_keys():
    config = _build({**REQUEST, "finetuning_type": "full", "custom_config": {}})
    assert "lora_rank" not in config and config["finetuning_type"] == "full"


def test_custom_config_refusals_name_every_key():
    with pytest.raises(ValidationFailed) as info:
        validate_custom_config(
            {
                "output_dir": "/",
                "trust_remote_code": True,
                "deepspeed": "/tmp/x.json",
                "push_to_hub": True,
                "learning_rate": 1.0,
                "made_up_key": 1,
                "cutoff_len": "long",
                "swanlab_project": "x",
            }
        )
    fields = {e["field"]: e["reason"] for e in info.value.errors}
    assert set(fields) == {
        f"custom_config.{k}"
        for k in (
            "output_dir",
            "trust_remote_code",
            "deepspeed",
            "push_to_hub",
            "learning_rate",
            "made_up_key",
            "cutoff_len",
            "swanlab_project",
        )
    }
    assert "top-level" in fields["custom_config.learning_rate"]
    assert "unknown" in fields["custom_config.made_up_key"]
    assert "integer" in fields["custom_config.cutoff_len"]


def test_custom_config_accepts_the_guide_keys_and_bounds_values():
    validate_custom_config({"template": "llama3", "cutoff_len": 2048, "bf16": True, "warmup_ratio": 0.1})
    for bad in ({"cutoff_len": 0}, {"bf16": "yes"}, {"template": "x\ny"}, {"warmup_ratio": float("nan")}):
        with pytest.raises(ValidationFailed):
            validate_custom_config(bad)


def test_export_config_merges_the_adapter_into_the_base_model():
    config = build_export_config(_build(), "/exports/x")
    assert config["model_name_or_path"] == "/m" and config["adapter_name_or_path"] == "/j/output"
    assert config["export_dir"] == "/exports/x" and config["finetuning_type"] == "lora"
    full = build_export_config({**_build(), "finetuning_type": "full"}, "/exports/y")
    assert full["model_name_or_path"] == "/j/output" and "adapter_name_or_path" not in full


def _entry(step, total=100, **extra):
    return json.dumps(
        {
            "current_steps": step,
            "total_steps": total,
            "epoch": step / total,
            "remaining_time": "0:01:05",
            **extra,
        }
    )


def test_progress_comes_from_the_last_entries(tmp_path):
    lines = [_entry(s, loss=1.0 / s, lr=0.1) for s in range(1, 46)]
    (tmp_path / "trainer_log.jsonl").write_text("\n".join(lines) + '\n{"current_st')  # partial last line
    progress = read_progress(str(tmp_path))
    assert progress["current_step"] == 45 and progress["total_steps"] == 100
    assert progress["progress"] == pytest.approx(0.45)
    assert progress["current_loss"] == pytest.approx(1.0 / 45)
    assert progress["eta_seconds"] == 65


def test_final_summary_line_keeps_the_last_loss(tmp_path):
    lines = [_entry(99, loss=0.5), _entry(100, loss=0.25), _entry(100)]
    (tmp_path / "trainer_log.jsonl").write_text("\n".join(lines) + "\n")
    progress = read_progress(str(tmp_path))
    assert progress["progress"] == 1.0 and progress["current_loss"] == 0.25


def test_only_the_tail_of_a_long_log_is_read(tmp_path):
    # 20 MB of junk, then real lines: a reader of the whole file would choke on the junk.
    with open(tmp_path / "trainer_log.jsonl", "w") as handle:
        handle.write(("x" * 1000 + "\n") * 20_000)
        handle.write(_entry(7, total=10, loss=0.7) + "\n")
    assert read_progress(str(tmp_path))["current_step"] == 7


def test_no_log_yet_means_no_progress(tmp_path):
    assert read_progress(str(tmp_path)) == {}


def test_checkpoint_defaults_come_from_the_service_and_a_request_wins(make_app):
    client = make_app("--steps", "1", default_save_steps=25, default_save_total_limit=2).test_client()

    def config_of(custom):
        body = {"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": custom}
        job = client.post("/api/v1/training/jobs", json=body).get_json()["job_id"]
        path = client.get(f"/api/v1/training/jobs/{job}").get_json()["config_path"]
        return yaml.safe_load(open(path))

    defaults = config_of({})
    assert defaults["save_steps"] == 25 and defaults["save_total_limit"] == 2
    asked = config_of({"save_steps": 7, "save_total_limit": 9})
    assert asked["save_steps"] == 7 and asked["save_total_limit"] == 9
    assert "save_total_limit" not in build_train_config(
        REQUEST, model_path="/m", template="t", dataset_dir="/d", output_dir="/o", save_total_limit=0
    )


def _ended(tmp_path, steps, total, results=True):
    """An output_dir as LLaMA Factory leaves it: trainer_log.jsonl to `steps`, maybe all_results.json."""
    lines = [
        {"current_steps": s, "total_steps": total, "loss": 1.0, "epoch": s / total}
        for s in range(1, steps + 1)
    ]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if results:
        (tmp_path / "all_results.json").write_text('{"train_loss": 0.5}')
    return str(tmp_path)


@pytest.mark.parametrize(
    ("rc", "steps", "results", "stop", "expected"),
    [
        (0, 84, True, False, "completed"),  # ran to its planned end
        (0, 85, True, False, "completed"),  # resumed at the end of a fractional epoch: one step past it
        (0, 84, True, True, "completed"),  # a stop that came too late: it had finished
        (0, 50, True, True, "stopped"),  # a stop with its checkpoint save also writes the results
        (0, 50, True, False, "failed"),  # exit 0 short of the end, nobody asked: a SIGTERM from elsewhere
        (0, 84, False, False, "failed"),  # exit 0 without its results
        (-9, 84, False, False, "failed"),  # killed
        (1, 84, True, False, "failed"),  # an error after the results
    ],
)
def test_the_outcome_of_each_way_a_run_ends(tmp_path, rc, steps, results, stop, expected):
    assert outcome(rc, _ended(tmp_path, steps, 84, results), stop)[0] == expected


def test_a_run_that_logged_nothing_completes_on_its_results(tmp_path):
    (tmp_path / "all_results.json").write_text("{}")
    assert outcome(0, str(tmp_path), False) == ("completed", {})
    assert run_complete(str(tmp_path)) is False  # but found on disk, it proves nothing
