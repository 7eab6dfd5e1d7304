"""settings: defaults, then config/imts.yaml, then IMTS_* variables, then explicit overrides."""

import os

import pytest

from imts_flask.settings import load_settings


def test_defaults_live_under_home(tmp_path):
    settings = load_settings(environ={"IMTS_HOME": str(tmp_path)})
    assert settings.path("jobs_dir") == os.path.join(str(tmp_path), "jobs")
    assert settings.path("exports_dir") == os.path.join(str(tmp_path), "models", "exports")
    assert settings.data_paths == [os.path.join(str(tmp_path), "data")]
    assert settings.max_upload_mb == 1024


def test_environment_beats_file_and_overrides_beat_both(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "imts.yaml").write_text(
        "max_upload_mb: 9000\nstop_grace_s: 3\nmin_free_disk_mb: 5\n"
    )
    env = {
        "IMTS_HOME": str(tmp_path),
        "IMTS_MAX_UPLOAD_MB": "9100",
        "IMTS_DATA_DIR": "/a:/b",
        "IMTS_ENABLE_JIT_CHECKPOINT": "false",
    }
    settings = load_settings({"min_free_disk_mb": 7}, environ=env)
    assert settings.max_upload_mb == 9100 and settings.stop_grace_s == 3.0 and settings.min_free_disk_mb == 7
    assert settings.data_paths == ["/a", "/b"]
    assert settings.enable_jit_checkpoint is False


def test_unknown_setting_in_the_file_is_an_error(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "imts.yaml").write_text("prot: 9000\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(environ={"IMTS_HOME": str(tmp_path)})
