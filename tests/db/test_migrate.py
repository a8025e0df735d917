"""Migrations: in order, recorded, idempotent, serialized, Supabase-friendly."""

from __future__ import annotations

import threading

import psycopg
import pytest

from trr_assets import db
from trr_assets.cli import main
from trr_assets.config import DatabaseSettings
from trr_assets.errors import MigrationError, UsageError

SEED_TABLES = [
    "core.shows",
    "core.organizations",
    "core.org_memberships",
    "core.show_social_profiles",
    "core.show_assets",
]


def _migrations_applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return db.applied_migrations(conn)


def test_migrate_twice_applies_nothing_the_second_time(empty_db_url, aws_env, monkeypatch, capsys):
    """The CLI prints each file the first time and 'nothing to apply' the second."""
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert main(["migrate"]) == 0
    first = capsys.readouterr().out
    assert main(["migrate"]) == 0
    second = capsys.readouterr().out
    names = [m.name for m in db.available_migrations()]
    assert [line.removeprefix("applied ") for line in first.splitlines()] == names
    assert second.strip() == "nothing to apply: the database is up to date"
    assert _migrations_applied(empty_db_url) == names


def test_every_seed_table_exists_with_rls_enabled(conn):
    for table in SEED_TABLES:
        schema, name = table.split(".")
        row = conn.execute(
            "select c.relrowsecurity from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relname = %s",
            (schema, name),
        ).fetchone()
        assert row is not None, f"{table} missing"
        assert row[0] is True, f"{table} has RLS disabled"


def test_object_key_sorts_in_byte_order(conn):
    """object_key is collated "C": S3's order, not the locale's."""
    collation = conn.execute(
        "select collation_name from information_schema.columns "
        "where table_schema='core' and table_name='show_assets' and column_name='object_key'"
    ).fetchone()[0]
    assert collation == "C"
    keys = ["shows/b", "shows/B", "shows/a", "shows/_", "shows/é", "shows/Z"]
    ordered = [r[0] for r in conn.execute(
        "select k collate \"C\" from unnest(%s::text[]) k order by 1", (keys,)
    )]
    assert ordered == sorted(keys, key=lambda k: k.encode())


def test_concurrent_migrations_apply_each_file_once(empty_db_url):
    """Two migrate runs at once: both succeed, each file is applied exactly once."""
    settings = DatabaseSettings(url=empty_db_url)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(db.migrate(settings))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = [m.name for m in db.available_migrations()]
    assert sorted(results, key=len) == [[], names]
    with psycopg.connect(empty_db_url) as conn:
        count = conn.execute("select count(*) from trr_assets.schema_migrations").fetchone()[0]
    assert count == len(names)


def test_second_migrate_waits_for_the_first(empty_db_url):
    """While one migrate holds the lock, another blocks, then applies nothing."""
    settings = DatabaseSettings(url=empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (db.MIGRATE_LOCK_KEY,))
        done = threading.Event()
        result: list[list[str]] = []
        t = threading.Thread(target=lambda: (result.append(db.migrate(settings)), done.set()))
        t.start()
        assert not done.wait(1.0), "migrate did not wait for the lock"
        holder.execute("select pg_advisory_unlock(%s)", (db.MIGRATE_LOCK_KEY,))
    t.join(timeout=30)
    assert done.is_set()
    assert len(result[0]) == len(db.available_migrations())


def test_applies_where_supabase_objects_already_exist(empty_db_url):
    """Roles, auth functions and core.shows that already exist are kept, not replaced."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("""
            create schema auth;
            create function auth.uid() returns uuid language sql stable
              as $$ select '00000000-0000-0000-0000-00000000abcd'::uuid $$;
            create schema core;
            create table core.shows (id uuid primary key default gen_random_uuid(), name text not null default 'x',
                                     slug text);
        """)
    applied = db.migrate(DatabaseSettings(url=empty_db_url))
    assert "0004_show_assets" in applied
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert conn.execute("select auth.uid()::text").fetchone()[0].endswith("abcd")
        columns = {r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema='core' and table_name='shows'"
        )}
        assert {"name", "slug", "org_id"} <= columns
        assert conn.execute("select auth.role() is null").fetchone()[0] is True


def test_optional_org_read_is_recorded_and_replaces_public_read(db_url):
    applied = db.migrate(DatabaseSettings(url=db_url), enable=["org-read"])
    assert applied == ["optional/org-read"]
    assert db.migrate(DatabaseSettings(url=db_url), enable=["org-read"]) == []
    with psycopg.connect(db_url) as conn:
        policies = {r[0] for r in conn.execute(
            "select policyname from pg_policies where schemaname='core' and tablename='show_assets'"
        )}
    assert "show_assets_org_read" in policies and "show_assets_public_read" not in policies


def test_unknown_optional_migration_is_a_usage_error(db_url):
    with pytest.raises(UsageError, match="org-raed"):
        db.migrate(DatabaseSettings(url=db_url), enable=["org-raed"])


def _with_migration(monkeypatch: pytest.MonkeyPatch, migration: db.Migration) -> None:
    """``migrate`` finds ``migration`` after the bundled ones, as if it were a file in ``sql/``."""
    bundled = db.available_migrations
    monkeypatch.setattr(db, "available_migrations", lambda: [*bundled(), migration])


def test_failed_migration_leaves_nothing_recorded_or_applied(db_url, monkeypatch):
    """A failing file rolls back whole: its first statement is undone and it is not recorded."""
    _with_migration(monkeypatch, db.Migration("9999_broken", "create table core.half_done (id int); select 1/0;"))
    with pytest.raises(MigrationError, match="9999_broken"):
        db.migrate(DatabaseSettings(url=db_url))
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("select to_regclass('core.half_done')").fetchone()[0] is None
        assert "9999_broken" not in db.applied_migrations(conn)


def test_no_transaction_migration_runs_outside_a_transaction(db_url, monkeypatch):
    """A file marked no-transaction can CREATE INDEX CONCURRENTLY."""
    m = db.Migration(
        "9998_concurrent_index",
        "-- trr-assets: no-transaction\n"
        "create index concurrently if not exists show_assets_owner_idx on core.show_assets (owner_id)",
    )
    assert not m.in_transaction
    _with_migration(monkeypatch, m)
    assert db.migrate(DatabaseSettings(url=db_url)) == ["9998_concurrent_index"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("select to_regclass('core.show_assets_owner_idx')").fetchone()[0] is not None
        assert "9998_concurrent_index" in db.applied_migrations(conn)
