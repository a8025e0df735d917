"""The CLI edge: exit codes and one-line errors, never a traceback without --debug."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from trr_assets.cli import main


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TRR_ASSETS_", "AWS_")) and k != "DATABASE_URL"
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trr_assets", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_config_value_exits_2_naming_the_key():
    result = _run("migrate", env={"TRR_ASSETS_RECONCILE_GRACE_SECONDS": "forever"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "trr-assets: error: config: reconcile.grace_seconds must be a whole number, "
        "got 'forever' (from TRR_ASSETS_RECONCILE_GRACE_SECONDS)"
    ]


def test_bad_cron_schedule_exits_2(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[reconcile]\nschedule = "61 * * * *"\n')
    result = _run("--config", str(path), "migrate")
    assert result.returncode == 2
    assert "reconcile.schedule" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = _run("--config", str(tmp_path / "absent.toml"), "migrate")
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_bad_usage_exits_2_in_one_line():
    result = _run("reconcile", "--grace-seconds", "-3")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_database_exits_1_without_traceback_or_password():
    url = f"postgresql://postgres:sekrit-pass@127.0.0.1:{_free_port()}/postgres"
    result = _run("migrate", env={"DATABASE_URL": url, "TRR_ASSETS_DATABASE_CONNECT_TIMEOUT_SECONDS": "2"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trr-assets: error: database: cannot connect")
    assert "sekrit-pass" not in result.stderr


def test_debug_shows_the_traceback():
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres"
    result = _run("--debug", "migrate", env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_main_returns_exit_codes_in_process(capsys):
    assert main(["--config", "/nonexistent/trr.toml", "migrate"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("trr-assets ")


def test_every_command_runs_with_the_collector_tuned_for_many_small_tuples():
    """main() raises the collector's first threshold (sync and reconcile allocate a few tuples per key)."""
    import gc

    from trr_assets import runtime

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, *before[1:])
        assert main(["--config", "/nonexistent/trr.toml", "migrate"]) == 2  # even when the command then fails
        assert gc.get_threshold() == (runtime.COLLECTOR_FIRST_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)
