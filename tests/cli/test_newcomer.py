"""What a new operator tripped over, each fixed: plain words about a bucket
that could not be checked, fast failure on a database that refuses, the
right exit codes for bad configuration and bad bucket names, a silent
library, a hint to migrate, a directory given as --config, plurals and
an honest last line after a repair."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from tests.reconcile.helpers import put, write_config
from tests.support.postgres import make_show
from trr_assets import cli
from trr_assets.worker import Worker


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRR_ASSETS_", "AWS_", "PG"))
             and k != "DATABASE_URL"}
    clean.update({"AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST", "AWS_SECRET_ACCESS_KEY": "test-secret-0123456789",
                  "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                  **(env or {})})
    return subprocess.run([sys.executable, "-m", "trr_assets", *args], capture_output=True, text=True,
                          env=clean, timeout=120)


def _refused_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


# 1 -------------------------------------------------------------------------------------


def test_a_bucket_that_could_not_be_listed_is_said_once_and_plainly(db_url, s3, tmp_path, capsys) -> None:
    config = write_config(tmp_path / "c.toml", db_url, s3={"buckets": ["trr-no-such-bucket"], "list_shards": 8})
    code = cli.main(["--config", str(config), "reconcile", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "No findings" not in out and "No drift." not in out
    assert "No drift found, but 1 bucket could not be checked." in out
    assert out.strip().splitlines()[-1].startswith("FAILED: bucket trr-no-such-bucket: ")
    assert err.count('"reconcile_bucket_failed"') == 1, err


# 2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["sync"], ["presign", "00000000-0000-0000-0000-000000000001"],
                                  ["reconcile"]])
def test_a_database_that_refuses_fails_at_once_with_the_cause(args: list[str]) -> None:
    started = time.monotonic()
    # A pool that waited for its timeout would take 30 s here; one attempt takes a moment.
    result = _cli(*args, env={"DATABASE_URL": _refused_url(), "TRR_ASSETS_S3_BUCKETS": "trr-any",
                              "TRR_ASSETS_DATABASE_CONNECT_TIMEOUT_SECONDS": "30"})
    took = time.monotonic() - started
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()  # no pool warnings before it
    assert line.startswith("trr-assets: error: database: cannot connect: ") and "refused" in line
    assert took < 20, f"took {took:.1f} s: waited for the pool's timeout (30 s)"


# 3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:5432/x?bogus_option=1",
                                 "host=127.0.0.1 bogus_option=1"])
def test_a_bad_libpq_parameter_is_bad_configuration_exit_2(url: str) -> None:
    result = _cli("reconcile", "--history", env={"DATABASE_URL": url})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("trr-assets: error: config: database.url is not a valid connection string")
    assert "bogus_option" in line


# 4 -------------------------------------------------------------------------------------


def test_a_bad_bucket_name_is_exit_2_on_the_command_line_as_in_the_config(tmp_path: Path) -> None:
    on_line = _cli("sync", "--bucket", "Bad_Bucket")
    assert on_line.returncode == 2 and "'Bad_Bucket' is not a valid S3 bucket name" in on_line.stderr
    in_config = _cli("sync", env={"TRR_ASSETS_S3_BUCKETS": "Bad_Bucket"})
    assert in_config.returncode == 2 and "'Bad_Bucket', which is not a valid S3 bucket name" in in_config.stderr


# 5 -------------------------------------------------------------------------------------


def test_the_presigner_prints_nothing_when_the_program_did_not_configure_logging(db_url: str) -> None:
    program = (
        "import structlog\n"
        "from trr_assets.presign import Presigner\n"
        "from trr_assets.config import settings_from_mapping\n"
        f"p = Presigner(settings_from_mapping({{'database': {{'url': {db_url!r}}}, "
        "'s3': {'buckets': ['bkt'], 'bucket_regions': {'bkt': 'us-east-1'}}}))\n"
        "p.url_for_key('bkt', 'shows/x.jpg')\n"
        "p.get_urls(['00000000-0000-0000-0000-000000000001'])\n"
        "structlog.get_logger().debug('a debug line')\n"
        "structlog.get_logger().info('an info line')\n"
        "structlog.get_logger().warning('a warning')\n"
        "p.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST",
                                 "AWS_SECRET_ACCESS_KEY": "x" * 20})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "debug line" not in result.stderr and "info line" not in result.stderr
    assert "a warning" in result.stderr  # Python's own default: warnings reach stderr


def test_a_program_that_configured_structlog_keeps_its_configuration() -> None:
    from trr_assets import logs

    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    before = structlog.get_config()["processors"]
    logs.quiet_unless_configured()
    assert structlog.get_config()["processors"] is before


# 6 -------------------------------------------------------------------------------------


def test_an_unmigrated_database_says_to_run_migrate(empty_db_url: str) -> None:
    result = _cli("reconcile", "--history", env={"DATABASE_URL": empty_db_url})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "does not exist" in line and line.endswith("run `trr-assets migrate`")


def test_the_worker_warns_when_the_schema_is_older_than_the_code(db_url: str, aws_env: None,
                                                                  conn: psycopg.Connection[Any]) -> None:
    from tests.support.s3 import make_settings

    conn.execute("delete from trr_assets.schema_migrations where name = '0011_job_runs'")
    with structlog.testing.capture_logs() as logs:
        assert Worker(make_settings(db_url), jobs=[]).run_once() == 0
    [warning] = [e for e in logs if e["event"] == "schema_older_than_code"]
    assert warning["pending"] == ["0011_job_runs"] and "trr-assets migrate" in warning["hint"]


# 7 -------------------------------------------------------------------------------------


def test_a_directory_given_as_config_is_named_as_one(tmp_path: Path) -> None:
    result = _cli("--config", str(tmp_path), "migrate")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"trr-assets: error: config file {tmp_path} is a directory, "
                                      "not a file (from --config)")


# 8 -------------------------------------------------------------------------------------


def test_one_orphaned_object_is_singular(db_url, s3, tmp_path, capsys, conn) -> None:
    show = make_show(conn)
    put(s3, f"shows/{show}/lonely.jpg")
    config = write_config(tmp_path / "c.toml", db_url)
    assert cli.main(["--config", str(config), "reconcile", "--exit-code", "--format", "jsonl"]) == 3
    err = capsys.readouterr().err
    assert "drift found: 1 orphaned object, 0 orphaned rows, 0 mismatched, 0 failed deletions" in err


def test_a_repair_that_fixed_everything_says_so(db_url, s3, tmp_path, capsys, conn) -> None:
    show = make_show(conn)
    put(s3, f"shows/{show}/to-import.jpg")
    config = write_config(tmp_path / "c.toml", db_url, reconcile={"orphaned_objects": "import"})
    assert cli.main(["--config", str(config), "reconcile", "--repair"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "Drift found and repaired."
    assert cli.main(["--config", str(config), "reconcile"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "No drift."


def test_a_repair_that_left_findings_says_how_many(db_url, s3, tmp_path, capsys, conn) -> None:
    show = make_show(conn)
    put(s3, f"shows/{show}/a.jpg")
    put(s3, f"shows/{show}/b.jpg")
    config = write_config(tmp_path / "c.toml", db_url)  # policy "report": a repair leaves them
    assert cli.main(["--config", str(config), "reconcile", "--repair"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "Drift found; 2 findings left as they are (see the table)."


def test_quiet_logging_after_the_cli_configured_the_process_once_does_not_loop(db_url, s3, capsys) -> None:
    """cli.main leaves its bridge from ``logging`` to structlog on the root logger; a presigner made
    after structlog was reset must not send its lines round that bridge for ever."""
    import logging

    from tests.support.s3 import make_settings
    from trr_assets import logs
    from trr_assets.presign import Presigner

    logs.configure(format="json", level="info")
    structlog.reset_defaults()
    presigner = Presigner(make_settings(db_url))
    try:
        structlog.get_logger().warning("once")
        logging.getLogger("psycopg.pool").warning("a library line")
    finally:
        presigner.close()
    assert capsys.readouterr().out == ""
