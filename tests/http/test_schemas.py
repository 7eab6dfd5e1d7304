"""Request schemas: the guide's fields and defaults, camelCase from Jackson, nulls, bounds."""

import importlib

import pytest
from marshmallow import ValidationError

from imts_flask.http.jobs_schemas import (
    ExportRequestSchema,
    ListQuerySchema,
    TrainingJobRequestSchema,
)
from imts_flask.http.wire import flatten_errors

from conftest import GUIDE_EXAMPLE


def _errors(schema, data):
    with pytest.raises(ValidationError) as info:
        schema.load(data)
    return {e["field"]: e["reason"] for e in flatten_errors(info.value.messages)}


def test_the_guide_body_loads_as_written():
    loaded = TrainingJobRequestSchema().load(GUIDE_EXAMPLE)
    assert loaded["dataset"] == ["alpaca_en_demo"]
    assert loaded["custom_config"] == {"template": "llama3", "cutoff_len": 2048}
    assert loaded["epochs"] == 3.0 and loaded["batch_size"] == 2


def test_defaults_match_the_guide():
    loaded = TrainingJobRequestSchema().load({"model_name": "m", "dataset": "d"})
    assert loaded == {
        "model_name": "m",
        "dataset": ["d"],
        "stage": "sft",
        "finetuning_type": "lora",
        "batch_size": 2,
        "learning_rate": 5e-5,
        "epochs": 3.0,
        "lora_rank": 8,
        "lora_alpha": 16,
        "custom_config": {},
        "tensorboard": False,  # not in the guide: off unless asked
        "priority": "normal",  # not in the guide: the queue's order (issue 18)
        "preemptible": True,
    }


def test_jackson_camel_case_with_nulls_is_accepted():
    # What the guide's Lombok DTO sends through Jackson: camelCase, unset fields as null.
    body = {
        "modelName": "m",
        "dataset": "d",
        "stage": None,
        "finetuningType": "full",
        "batchSize": 4,
        "learningRate": 1e-4,
        "epochs": None,
        "loraRank": None,
        "loraAlpha": 32,
        "customConfig": None,
    }
    loaded = TrainingJobRequestSchema().load(body)
    assert loaded["finetuning_type"] == "full" and loaded["batch_size"] == 4 and loaded["lora_alpha"] == 32
    assert loaded["stage"] == "sft" and loaded["epochs"] == 3.0 and loaded["custom_config"] == {}


def test_custom_config_keys_are_not_renamed():
    loaded = TrainingJobRequestSchema().load(
        {"modelName": "m", "dataset": "d", "customConfig": {"cutoff_len": 8}}
    )
    assert loaded["custom_config"] == {"cutoff_len": 8}


def test_both_spellings_with_different_values_are_refused():
    errors = _errors(TrainingJobRequestSchema(), {"model_name": "a", "modelName": "b", "dataset": "d"})
    assert "model_name" in errors


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"model_name": None}, "model_name", "required"),
        ({"dataset": ""}, "dataset", "at least one"),
        ({"dataset": "a,,b"}, "dataset", "empty"),
        ({"dataset": ["a", "a"]}, "dataset", "twice"),
        ({"stage": "ppo"}, "stage", "trl"),
        ({"stage": "grpo"}, "stage", "one of"),
        ({"finetuning_type": "qlora"}, "finetuning_type", "one of"),
        ({"batch_size": 0}, "batch_size", "greater than"),
        ({"batch_size": "2"}, "batch_size", "integer"),
        ({"learning_rate": 0}, "learning_rate", "greater than"),
        ({"learning_rate": 2}, "learning_rate", "less than"),
        ({"epochs": -1}, "epochs", "greater than"),
        ({"lora_rank": 100000}, "lora_rank", "less than"),
        ({"custom_config": [1]}, "custom_config", "mapping"),
        ({"surprise": 1}, "surprise", "Unknown"),
    ],
)
def test_bad_fields_are_named_with_a_reason(patch, field, words):
    body = {"model_name": "m", "dataset": "d", **patch}
    errors = _errors(TrainingJobRequestSchema(), body)
    assert field in errors
    assert words.lower() in errors[field].lower()


def test_body_must_be_an_object():
    assert "body" in _errors(TrainingJobRequestSchema(), ["not", "an", "object"])


def test_export_request():
    loaded = ExportRequestSchema().load(
        {"jobId": "train_a1b2c3d4", "exportDir": "./models/exports/x", "mergeLora": None}
    )
    assert loaded == {"job_id": "train_a1b2c3d4", "export_dir": "./models/exports/x", "merge_lora": True}
    assert "export_dir" in _errors(ExportRequestSchema(), {"merge_lora": False})
    assert "job_id" in _errors(ExportRequestSchema(), {"job_id": "train_1", "export_dir": "x"})


def test_list_query():
    assert ListQuerySchema().load({}) == {"limit": 100, "offset": 0, "sort": "created", "order": None}
    assert "status" in _errors(ListQuerySchema(), {"status": "done"})
    assert "limit" in _errors(ListQuerySchema(), {"limit": "0"})


def _every_schema():
    """Every request and query schema of the API (imported with the app's blueprints)."""
    from marshmallow import class_registry

    import imts_flask.http  # noqa: F401
    from imts_flask.http import RESOURCES

    for name in RESOURCES:
        importlib.import_module(f"imts_flask.http.{name}")

    return {
        cls
        for entries in class_registry._registry.values()
        for cls in entries
        if cls.__module__.startswith("imts_flask")
    }


def _validators(field):
    validators = list(field.validators)
    inner = getattr(field, "inner", None)
    return validators + (list(inner.validators) if inner is not None else [])


def test_every_pattern_matches_the_whole_value_through_one_helper():
    """marshmallow's Regexp uses re.match, whose `$` also matches before a final newline: every
    pattern of a request is the one helper that matches whole values."""
    from marshmallow import validate

    from imts_flask.http.wire import Whole

    patterns = [
        (schema.__name__, name, v)
        for schema in _every_schema()
        for name, field in schema._declared_fields.items()
        for v in _validators(field)
        if isinstance(v, validate.Regexp)
    ]
    assert len(patterns) >= 8
    assert [(s, n) for s, n, v in patterns if not isinstance(v, Whole)] == []
    for _schema, _name, validator in patterns:
        with pytest.raises(ValidationError):
            validator("checkpoint-5\n")
        with pytest.raises(ValidationError):
            validator("support-bot\n")


def test_every_number_a_request_or_a_query_takes_is_bounded_both_ways():
    """GET /jobs?offset=48166428573250261560586141696 was a 500: every integer and number has a
    lower and an upper bound, in the schema (and so in the document)."""
    from marshmallow import fields as mfields
    from marshmallow import validate

    from imts_flask.http.wire import ResponseSchema

    unbounded = []
    for schema in _every_schema():
        if issubclass(schema, ResponseSchema):
            continue
        for name, field in schema._declared_fields.items():
            if isinstance(field, (mfields.Integer, mfields.Float)):
                ranges = [v for v in field.validators if isinstance(v, validate.Range)]
                if not ranges or ranges[0].min is None or ranges[0].max is None:
                    unbounded.append(f"{schema.__name__}.{name}")
    assert unbounded == []
