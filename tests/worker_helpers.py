"""Helpers for tests that run ``trr-assets worker`` and ``demo`` as real processes.

In-process moto is not shared across processes, so these tests serve S3 with
moto's server mode on a free loopback port; the worker processes reach it
over HTTP like any S3-compatible endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trr_assets import storage
from trr_assets.config import S3Settings

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key-never-logged-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/trr-assets-test",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/trr-assets-test",
}


class MotoServer:
    """moto's S3 server on 127.0.0.1; can be stopped and started again on its port.

    The objects live in this process (moto's backends), so they outlast a restart.
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port; yields its endpoint URL."""
    server = MotoServer()
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return storage.make_client(S3Settings(endpoint_url=endpoint, addressing_style="path"))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without trr-assets, AWS or libpq settings, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("TRR_ASSETS_", "AWS_", "PG")) and k != "DATABASE_URL"
    }
    env.update(FAKE_AWS)
    env.update(extra)
    return env


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


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60, *,
               watch: list[Process] | None = None) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` (and the dead process)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for process in watch or ():
            assert process.alive(), f"worker exited early:\n{process.stderr_text()[-3000:]}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
