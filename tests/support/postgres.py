"""PostgreSQL for tests: a real server, one migrated template, a clone per test.

The server is ``$TRR_ASSETS_TEST_DATABASE_URL`` (an admin URL: it must be
allowed to CREATE DATABASE) or else a throwaway ``pgserver`` instance started
once per session. The migrations run once, into a template database; every
test that asks for ``db_url`` gets its own ``CREATE DATABASE ... TEMPLATE``
clone, so tests never see each other's rows.

Fixtures: ``pg_admin_url``, ``template_db``, ``db_url``, ``empty_db_url``,
``conn``, ``made_pools``. Helpers: ``scratch_database``, ``as_role``, ``make_show``,
``wait_for_lock_wait``.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from tests.support.waiting import wait_for
from trr_assets import db
from trr_assets.config import DatabaseSettings


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the test cluster (maintenance database ``postgres``)."""
    url = os.environ.get("TRR_ASSETS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    # Not under pytest's basetemp: a concurrent pytest run prunes old
    # basetemp folders, and would delete a running server's data under it.
    server = pgserver.get_server(tempfile.mkdtemp(prefix="trr-assets-pg-"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _admin_execute(admin_url: str, statement: sql.Composable) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def database_url(admin_url: str, name: str) -> str:
    return make_conninfo(admin_url, dbname=name)


@contextmanager
def scratch_database(admin_url: str, *, template: str = "template0") -> Iterator[str]:
    """A new database for one test, dropped afterwards; yields its URL."""
    name = f"trr_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(
        admin_url, sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))
    )
    try:
        yield database_url(admin_url, name)
    finally:
        _admin_execute(admin_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """Name of a database with every (non-optional) migration applied."""
    name = f"trr_template_{uuid.uuid4().hex[:8]}"
    _admin_execute(pg_admin_url, sql.SQL("create database {} template template0").format(sql.Identifier(name)))
    db.migrate(DatabaseSettings(url=database_url(pg_admin_url, name)))
    try:
        yield name
    finally:
        _admin_execute(pg_admin_url, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """URL of a freshly migrated database of this test's own."""
    with scratch_database(pg_admin_url, template=template_db) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """URL of a database with nothing migrated."""
    with scratch_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database, as its owner."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def made_pools(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionPool]:
    """Every pool ``db.make_pool`` makes during the test, as made (real, and
    used by whoever made it): a test reaches a component's own connections
    through them."""
    made: list[ConnectionPool] = []
    real = db.make_pool

    def recording(*args: Any, **kwargs: Any) -> ConnectionPool:
        pool = real(*args, **kwargs)
        made.append(pool)
        return pool

    monkeypatch.setattr(db, "make_pool", recording)
    return made


@contextmanager
def as_role(connection: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None = None) -> Iterator[None]:
    """Act as PostgREST does for a request: in one transaction, SET LOCAL ROLE
    and ``request.jwt.claims``; both end with the transaction."""
    with connection.transaction():
        connection.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        connection.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps(claims if claims is not None else {"role": role}),),
        )
        yield


def make_show(connection: psycopg.Connection[Any], *, org_id: uuid.UUID | None = None) -> uuid.UUID:
    """Insert a show (as the owner) and return its id."""
    row = connection.execute(
        "insert into core.shows (title, org_id) values ('a show', %s) returning id", (org_id,)
    ).fetchone()
    assert row is not None
    return row[0]


def wait_for_lock_wait(conn: psycopg.Connection[Any], application_name: str, *, timeout_seconds: float = 20) -> None:
    """Return once the session named ``application_name`` waits for a lock (fail after ``timeout_seconds``)."""

    def waiting() -> bool:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s and wait_event_type = 'Lock'",
            (application_name,),
        ).fetchone()
        return bool(row and row[0])

    wait_for(
        waiting, timeout_seconds=timeout_seconds, what=f"{application_name} to wait for a lock", interval_seconds=0.02
    )
