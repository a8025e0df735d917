"""The CLI and the worker as real child processes, against the test's database and S3.

- ``clean_env``, ``child_env``, ``worker_env``: a child's environment, with
  nothing of this machine's trr-assets, AWS or libpq settings.
- ``run_cli`` / ``run_cli_killed_at``: ``trr-assets ARGS`` run to its end,
  or until it SIGKILLs itself at a precise S3 call (``kill_at.py``).
- ``Process``: a long-running child (the worker) whose JSON logs the test reads.
- ``wait_for_sessions_to_end``: PostgreSQL has noticed a killed client is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.support.s3 import FAKE_AWS, TEST_BUCKET
from tests.support.waiting import wait_for

KILL_AT_SCRIPT = str(Path(__file__).with_name("kill_at.py"))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without trr-assets, AWS or libpq settings, with fake
    AWS credentials, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("TRR_ASSETS_", "AWS_", "PG")) and k != "DATABASE_URL"
    }
    env.update(FAKE_AWS)
    env.update(extra)
    return env


def child_env(db_url: str, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: this database and S3 server, JSON logs."""
    defaults = {
        "DATABASE_URL": db_url,
        "TRR_ASSETS_S3_ENDPOINT_URL": endpoint,
        "TRR_ASSETS_S3_ADDRESSING_STYLE": "path",
        "TRR_ASSETS_S3_BUCKETS": TEST_BUCKET,
        "TRR_ASSETS_RECONCILE_GRACE_SECONDS": "0",
        "TRR_ASSETS_LOGGING_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    return clean_env(**{**defaults, **extra})  # extra wins


def worker_env(db_url: str, endpoint: str, bucket: str, **settings: str | int) -> dict[str, str]:
    """Environment for a worker process; ``settings`` as ``section_key=value``."""
    values: dict[str, str | int] = {
        "s3_endpoint_url": endpoint,
        "s3_buckets": bucket,
        "s3_addressing_style": "path",
        "s3_list_shards": 2,
        "s3_list_concurrency": 2,
        "s3_head_concurrency": 4,
        "sync_interval_seconds": 1,
        "deletes_interval_seconds": 1,
        "reconcile_grace_seconds": 0,
        "worker_reconcile_interval_seconds": 4,
        "worker_heartbeat_seconds": 1,
        "logging_format": "json",
        **settings,
    }
    return clean_env(DATABASE_URL=db_url, **{f"TRR_ASSETS_{k.upper()}": str(v) for k, v in values.items()})


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``trr-assets ARGS`` in a child process; waits for it."""
    return subprocess.run(
        [sys.executable, "-m", "trr_assets", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def run_cli_killed_at(
    operation: str, nth: int, *args: str, env: dict[str, str], when: str = "after-call"
) -> subprocess.CompletedProcess[str]:
    """``trr-assets ARGS`` in a child that SIGKILLs itself at the ``nth``
    ``when`` (``after-call`` or ``before-send``) event of ``operation``."""
    return subprocess.run(
        [sys.executable, "-P", KILL_AT_SCRIPT, operation, when, str(nth), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def stdout_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last stdout line of a CLI child, parsed."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr[-2000:]}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def killed(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether the child ended by SIGKILL."""
    return result.returncode == -signal.SIGKILL


def wait_for_sessions_to_end(conn: psycopg.Connection[Any], prefix: str = "trr-assets") -> None:
    """Wait until PostgreSQL has noticed that killed clients are gone (their
    sessions end and their transactions roll back)."""

    def none_left() -> bool:
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and application_name like %s and pid <> pg_backend_pid()",
            (prefix + "%",),
        ).fetchone()
        return bool(row and row[0] == 0)

    wait_for(none_left, what="the sessions of the killed process to end")


class Process:
    """``python -m trr_assets ARGS`` with stderr (the JSON logs) in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trr_assets", *args],
            stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
        )

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log lines logged so far, those named ``name`` with ``match``'s fields."""
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if (name is None or event.get("event") == name) and all(event.get(k) == v for k, v in match.items()):
                found.append(event)
        return found

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def stop(self) -> None:
        """Teardown: whatever state the test left it in, the process ends."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()

    def stderr_text(self) -> str:
        return self.log_path.read_text()
