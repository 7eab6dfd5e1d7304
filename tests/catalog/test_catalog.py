"""catalog: what model_name, dataset and template may name, and what an error lists."""

import json
import os

import pytest

from imts_flask.catalog import Catalog
from imts_flask.errors import NotFound, ValidationFailed
from imts_flask.llamafactory.templates import installed_templates
from imts_flask.settings import load_settings


@pytest.fixture
def catalog(tmp_path, home, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.json").write_text("[]")
    (data / "pref.json").write_text("[]")
    (data / "kto.json").write_text("[]")
    info = {
        "sft_set": {"file_name": "sft.json"},
        "pref_set": {"file_name": "pref.json", "ranking": True},
        "kto_set": {"file_name": "kto.json", "columns": {"kto_tag": "label"}},
        "hub_set": {"hf_hub_url": "org/data"},
        "gone_set": {"file_name": "missing.json"},
        "escape_set": {"file_name": "../../etc/passwd"},
        "my sft set": {"file_name": "sft.json"},  # names no request can give
        "数据": {"file_name": "sft.json"},
        "x" * 65: {"file_name": "sft.json"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return Catalog(load_settings({"home": home, "data_dirs": [str(data)]}, environ={}))


def test_registered_alias_resolves_to_its_directory(catalog):
    path, template = catalog.resolve_model("tiny-llama")
    assert os.path.exists(os.path.join(path, "config.json")) and template == "default"


def test_directory_under_models_resolves(catalog):
    local = os.path.join(catalog.settings.path("models_dir"), "my-model")
    os.makedirs(local)
    open(os.path.join(local, "config.json"), "w").close()
    assert catalog.resolve_model("my-model") == (local, None)


def test_hub_id_must_be_in_the_local_cache(catalog, tmp_path):
    with pytest.raises(ValidationFailed) as info:
        catalog.resolve_model("meta-llama/Llama-3-8b")
    assert "offline" in info.value.message and "tiny-llama" in info.value.message
    assert info.value.errors[0]["field"] == "model_name"
    os.makedirs(tmp_path / "hf" / "models--meta-llama--Llama-3-8b" / "snapshots" / "abc")
    assert catalog.resolve_model("meta-llama/Llama-3-8b") == ("meta-llama/Llama-3-8b", None)


@pytest.mark.parametrize("name", ["../models/tiny-llama", "/etc", "a/b/c", "x\x00y"])
def test_paths_are_not_model_names(catalog, name):
    with pytest.raises(ValidationFailed):
        catalog.resolve_model(name)


def test_datasets_resolve_to_absolute_files(catalog):
    resolved = catalog.resolve_datasets(["sft_set"], "sft")
    assert os.path.isabs(resolved["sft_set"]["file_name"])
    assert catalog.resolve_datasets(["pref_set"], "dpo")["pref_set"]["ranking"] is True
    assert "kto_set" in catalog.resolve_datasets(["kto_set"], "kto")


@pytest.mark.parametrize(
    ("name", "stage", "words"),
    [
        ("nope", "sft", "unknown dataset"),
        ("sft_set", "dpo", "preference"),
        ("pref_set", "sft", "fit for rm/dpo"),
        ("sft_set", "kto", "kto_tag"),
        ("hub_set", "sft", "offline"),
        ("gone_set", "sft", "missing"),
        ("escape_set", "sft", "outside"),
    ],
)
def test_unusable_datasets_are_refused_with_what_is_available(catalog, name, stage, words):
    with pytest.raises(ValidationFailed) as info:
        catalog.resolve_datasets([name], stage)
    assert words in info.value.errors[0]["reason"]
    assert info.value.extra["available"] == catalog.available_datasets(stage)
    assert "gone_set" not in catalog.available_datasets(stage)


def test_only_datasets_a_request_can_name_are_listed(catalog):
    """An operator's dataset_info.json may name datasets no request could give (a space, other
    characters, too long): listed, they were refused by every job as unknown. They are not listed."""
    listed = {d["name"] for d in catalog.datasets()}
    assert "sft_set" in listed and not listed & {"my sft set", "数据", "x" * 65}
    for name in ("my sft set", "数据"):
        with pytest.raises(NotFound):
            catalog.dataset(name)


def test_templates_come_from_the_installed_llamafactory(catalog):
    templates = installed_templates()
    assert {"default", "llama3", "qwen"} <= set(templates)
    catalog.check_template("llama3")
    with pytest.raises(ValidationFailed) as info:
        catalog.check_template("llama99")
    assert "qwen" in info.value.message
