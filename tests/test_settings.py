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


def test_make_run_listens_where_imts_port_says_and_stops_on_sigterm(tmp_path):
    """The configuration table names IMTS_PORT: `make run` must not override it (it set its own
    PORT, 8000, over it). PORT=... on make's command line still works."""
    import signal
    import subprocess

    import requests

    from imts_flask.llamafactory.environment import free_port

    from conftest import PROJECT, make_home, wait_for

    port = free_port()
    home = make_home(tmp_path / "home")
    env = {**os.environ, "IMTS_PORT": str(port), "IMTS_HOME": home, "IMTS_WORKERS": "1"}
    dry = subprocess.run(
        ["make", "-n", "run", "PORT=9000"], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert "IMTS_PORT=9000 " in dry.stdout
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/training/health"

        def up():
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout=120, interval=0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) is not None


def test_every_directory_the_service_writes_in_its_home_is_ignored_by_git(tmp_path):
    """`deployments/*/api_key` showed in git status after use: a `git add .` would commit secret keys.
    Every runtime directory a default setting puts inside the project is ignored."""
    import shutil
    import subprocess

    from imts_flask.settings import PROJECT_ROOT, Settings

    if not shutil.which("git") or not os.path.isdir(os.path.join(PROJECT_ROOT, ".git")):
        pytest.skip("not a git checkout")
    settings = load_settings(environ={"IMTS_HOME": PROJECT_ROOT})
    written = [name for name in vars(Settings()) if name.endswith(("_dir", "_log")) and name != "config_dir"]
    paths = [settings.path(name) for name in written] + settings.data_paths
    assert len(paths) >= 10
    probes = [os.path.relpath(os.path.join(p, "probe"), PROJECT_ROOT) for p in paths]
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *probes], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert sorted(checked.stdout.split()) == sorted(probes), (probes, checked.stdout)
    config = subprocess.run(
        ["git", "check-ignore", "--no-index", "config/models.yaml"], cwd=PROJECT_ROOT, capture_output=True
    )
    assert config.returncode == 1  # the operator's configuration is not runtime state
