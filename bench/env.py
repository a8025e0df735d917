"""The benchmark's world: a throwaway PostgreSQL, migrated templates, moto.

PostgreSQL is a ``pgserver`` instance whose data lives in a temporary
directory of its own (never under a pytest basetemp, which a concurrent
pytest run may prune), removed at the end. The migrations run once, into a
template database; a benchmark that changes state takes a fresh
``CREATE DATABASE ... TEMPLATE`` clone for every repetition, which costs a
file copy, not a re-migration. Templates with data (shows, 200,000 rows) are
built once per run and cloned the same way.

S3 is moto in a process of its own (``bench.moto_server``), started on first
use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from trr_assets import db
from trr_assets.config import DatabaseSettings, Settings, settings_from_mapping

_queries: dict[str, str] | None = None


def query(name: str) -> str:
    """The SQL of a named query of ``bench/queries.sql``."""
    global _queries
    if _queries is None:
        text = resources.files("bench").joinpath("queries.sql").read_text("utf-8")
        _queries = db.parse_queries(text, origin="bench/queries.sql")
    return _queries[name]


def fake_aws_environment() -> None:
    """Fixed, fake AWS credentials for this process and its children;
    nothing from the developer's machine (profiles, endpoints) is used."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIABENCHBENCHBENCH0",
        AWS_SECRET_ACCESS_KEY="bench-secret-key-0123456789abcdefghijklmn",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent/trr-assets-bench",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/trr-assets-bench",
    )


class Moto:
    """The moto server process: its endpoints and its seeding commands."""

    def __init__(self, *, list_delay: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.moto_server", "--list-delay", str(list_delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        if not first:
            raise RuntimeError("bench: the moto server did not start")
        started = json.loads(first)
        self.endpoint: str = started["endpoint"]
        self.slow_endpoint: str = started["slow_endpoint"]  # ListObjectsV2 pages arrive list_delay late
        self.list_delay = list_delay

    def command(self, **command: Any) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        if not answer.get("ok"):
            raise RuntimeError(f"bench: moto {command['op']}: {answer.get('error')}")
        return answer

    def create_bucket(self, bucket: str) -> None:
        self.command(op="create_bucket", bucket=bucket)

    def put(self, bucket: str, keys: Iterable[str], *, body: str = "x", chunk: int = 20000) -> int:
        """Create these objects (all with ``body``) straight in moto's backend."""
        batch: list[str] = []
        total = 0
        for key in keys:
            batch.append(key)
            if len(batch) >= chunk:
                total += self.command(op="put", bucket=bucket, keys=batch, body=body)["count"]
                batch = []
        if batch:
            total += self.command(op="put", bucket=bucket, keys=batch, body=body)["count"]
        return total

    def clear(self, bucket: str) -> None:
        self.command(op="clear", bucket=bucket)

    def count(self, bucket: str) -> int:
        return int(self.command(op="count", bucket=bucket)["count"])

    def forget_pages(self) -> None:
        self.command(op="forget_pages")

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class Env:
    """One benchmark run's PostgreSQL cluster, templates and moto server."""

    def __init__(self, *, list_delay: float = 0.2) -> None:
        self._list_delay = list_delay
        self._server: Any = None
        self.admin_url = ""
        self.migrated = ""  # template database with every migration applied
        self._templates: dict[str, str] = {}
        self._moto: Moto | None = None

    def __enter__(self) -> Env:
        import pgserver

        self._server = pgserver.get_server(tempfile.mkdtemp(prefix="trr-bench-pg-"), cleanup_mode="delete")
        self.admin_url = self._server.get_uri()
        self.migrated = self._create(f"bench_migrated_{uuid.uuid4().hex[:8]}", "template0")
        db.migrate(DatabaseSettings(url=self.url(self.migrated)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._moto is not None:
            self._moto.close()
        if self._server is not None:
            self._server.cleanup()

    # -- PostgreSQL

    def url(self, database: str) -> str:
        return make_conninfo(self.admin_url, dbname=database)

    def _create(self, name: str, template: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))
            )
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    @contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        """A new database cloned from ``template`` (default: migrated, empty); yields its URL."""
        name = self._create(f"bench_{uuid.uuid4().hex[:12]}", template or self.migrated)
        try:
            yield self.url(name)
        finally:
            self.drop(name)

    def template(
        self, key: str, build: Callable[[psycopg.Connection[Any], str], object], *, parent: str | None = None
    ) -> str:
        """A database built once per run by ``build(conn, url)`` (on a clone of
        ``parent``), vacuumed and analyzed, to clone with ``database(template=...)``."""
        if key not in self._templates:
            name = self._create(f"bench_tpl_{uuid.uuid4().hex[:8]}", parent or self.migrated)
            with psycopg.connect(self.url(name), autocommit=True) as conn:
                build(conn, self.url(name))
                # Clones start with hint bits set and statistics known, as a
                # long-lived production table would be.
                conn.execute("vacuum (freeze, analyze)")
            self._templates[key] = name
        return self._templates[key]

    def server_version(self) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("show server_version").fetchone()
        return str(row[0]) if row else "?"

    # -- S3

    @property
    def moto(self) -> Moto:
        if self._moto is None:
            self._moto = Moto(list_delay=self._list_delay)
        return self._moto

    def settings(self, db_url: str, *, endpoint: str | None = None, **sections: dict[str, Any]) -> Settings:
        """Settings for a benchmark: this database, the bench bucket, logs at
        warning level, and S3 at ``endpoint`` (default: AWS itself, for
        benchmarks that make no S3 call)."""
        from bench.data import BUCKET, PREFIX

        data: dict[str, Any] = {
            "database": {"url": db_url},
            # The bench bucket's region is named: presigning asks S3 for no region.
            "s3": {"buckets": [BUCKET], "prefix": PREFIX, "bucket_regions": {BUCKET: "us-east-1"}},
            "reconcile": {"grace_seconds": 0},
            "logging": {"format": "json", "level": "warning"},
        }
        if endpoint:
            data["s3"].update(endpoint_url=endpoint, addressing_style="path")
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values}
        return settings_from_mapping(data)
