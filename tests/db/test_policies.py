"""Policies bound to database roles (sql/0008_policies_bound_to_roles.sql).

A session can set ``request.jwt.claims`` and ``request.jwt.claim.*`` for
itself; the role it runs as it cannot choose. Each test below acts as such a
session: ``set local role`` to anon or authenticated, then claims forged to
say service_role (or another user), then a write. Every write must be
refused (an INSERT raises, an UPDATE or DELETE touches no row) while
service_role, with or without BYPASSRLS, still writes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import structlog.testing
from psycopg import sql

from tests.support.postgres import as_role, make_show
from trr_assets import db
from trr_assets.config import DatabaseSettings

ROLES = ["anon", "authenticated"]

# (name, request.jwt.claims, request.jwt.claim.* settings): the forgeries.
FORGERIES = [
    ("claims say service_role", {"role": "service_role"}, {}),
    ("legacy claim.role says service_role", {"role": "authenticated"}, {"role": "service_role"}),
    ("both say service_role", {"role": "service_role", "sub": str(uuid.uuid4())},
     {"role": "service_role", "sub": str(uuid.uuid4())}),
    ("only the legacy settings", None, {"role": "service_role"}),
]

# (table, command, statement): every write of the two service-written tables.
WRITES = [
    ("show_assets", "insert",
     "insert into core.show_assets (show_id, bucket, object_key) values (%(show)s, 'b', 'shows/forged')"),
    ("show_assets", "update", "update core.show_assets set size_bytes = 666"),
    ("show_assets", "delete", "delete from core.show_assets"),
    ("show_social_profiles", "insert",
     "insert into core.show_social_profiles (show_id, platform, handle) values (%(show)s, 'x', 'forged')"),
    ("show_social_profiles", "update", "update core.show_social_profiles set handle = 'forged'"),
    ("show_social_profiles", "delete", "delete from core.show_social_profiles"),
]


@contextmanager
def forged(conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None,
           legacy: dict[str, str]) -> Iterator[None]:
    """A transaction running as ``role`` that sets the claims it likes."""
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        for name, value in legacy.items():
            conn.execute("select set_config(%s, %s, true)", (f"request.jwt.claim.{name}", value))
        yield


@pytest.fixture
def rows(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    show = make_show(conn)
    conn.execute("insert into core.show_assets (show_id, bucket, object_key, size_bytes) values (%s, 'b', %s, 1)",
                 (show, f"shows/{show}/a.png"))
    conn.execute("insert into core.show_social_profiles (show_id, platform, handle) values (%s, 'x', 'h')", (show,))
    return {"show": show}


def _table(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return sorted(map(repr, conn.execute(f"select * from core.{table}").fetchall()))


def _attempt(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> int:
    """The rows a write touched; an INSERT that RLS refuses raises."""
    return conn.execute(statement, params).rowcount


@pytest.mark.parametrize("table,command,statement", WRITES, ids=[f"{t}-{c}" for t, c, _ in WRITES])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("forgery", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_claims_do_not_write(conn, rows, table, command, statement, role, forgery):
    """anon or authenticated claiming to be service_role: no insert, update or delete gets through."""
    _, claims, legacy = forgery
    before = _table(conn, table)
    if command == "insert":
        with pytest.raises(psycopg.errors.InsufficientPrivilege), forged(conn, role, claims, legacy):
            _attempt(conn, statement, rows)
    else:
        with forged(conn, role, claims, legacy):
            assert conn.execute(f"select count(*) from core.{table}").fetchone()[0] == 1  # reads still work
            assert _attempt(conn, statement, rows) == 0
    assert _table(conn, table) == before


@contextmanager
def without_bypassrls(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """service_role without BYPASSRLS for one transaction (the change is never committed)."""
    with conn.transaction(force_rollback=True):
        conn.execute("alter role service_role nobypassrls")
        yield


@pytest.mark.parametrize("table,command,statement", WRITES, ids=[f"{t}-{c}" for t, c, _ in WRITES])
@pytest.mark.parametrize("bypassrls", [True, False], ids=["bypassrls", "nobypassrls"])
def test_service_role_still_writes(conn, rows, table, command, statement, bypassrls):
    """service_role with its claims writes every table and command, with BYPASSRLS and without."""
    with (without_bypassrls(conn) if not bypassrls else conn.transaction(force_rollback=True)):
        assert conn.execute(
            "select rolbypassrls from pg_roles where rolname = 'service_role'").fetchone()[0] is bypassrls
        with as_role(conn, "service_role"):
            assert _attempt(conn, statement, rows) == 1


def test_without_bypassrls_the_policies_are_what_let_service_role_write(conn, rows):
    """The policies name service_role: a session of that role whose claims say otherwise writes nothing."""
    with without_bypassrls(conn), as_role(conn, "service_role", {"role": "authenticated"}):
        assert conn.execute("delete from core.show_assets").rowcount == 0


def _policies(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(t, p): tuple(r) for t, p, r in conn.execute(
        "select tablename, policyname, roles from pg_policies where schemaname = 'core'")}


def test_write_policies_name_service_role_and_reads_stay_public(conn):
    """The catalog says it: each write policy is to service_role, each read to public as before."""
    policies = _policies(conn)
    for table in ("show_assets", "show_social_profiles"):
        for command in ("insert", "update", "delete"):
            assert policies[(table, f"{table}_service_{command}")] == ("service_role",)
        assert policies[(table, f"{table}_public_read")] == ("public",)
    for name in ("shows_org_read", "shows_org_insert", "shows_org_update"):
        assert policies[("shows", name)] == ("authenticated",)
    assert policies[("organizations", "organizations_member_read")] == ("authenticated",)
    assert policies[("org_memberships", "org_memberships_self_read")] == ("authenticated",)


def _migrate_before_0008(url: str, *, org_read: str | None = None) -> None:
    """``migrate`` as a release before 0008 ran it (its files only, and its org-read file when given)."""
    with pytest.MonkeyPatch.context() as patch:
        before = [m for m in db.available_migrations() if m.name < "0008"]
        patch.setattr(db, "available_migrations", lambda: before)
        if org_read is not None:
            patch.setattr(db, "optional_migrations", lambda: {"org-read": db.Migration("optional/org-read", org_read)})
        db.migrate(DatabaseSettings(url=url), enable=["org-read"] if org_read is not None else [])


def test_a_database_migrated_before_0008_is_closed_by_migrate(empty_db_url):
    """Before 0008 the forgery deletes every row; `migrate` applies 0008 and then it deletes none."""
    _migrate_before_0008(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        show = make_show(conn)
        insert = "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', %s)"
        conn.execute(insert, (show, "shows/one"))
        with forged(conn, "authenticated", {"role": "authenticated"}, {"role": "service_role"}):
            assert conn.execute("delete from core.show_assets").rowcount == 1  # the hole the issue shows
        conn.execute(insert, (show, "shows/two"))
    applied = db.migrate(DatabaseSettings(url=empty_db_url))
    assert applied[0] == "0008_policies_bound_to_roles"  # and any later migration after it
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        with forged(conn, "authenticated", {"role": "authenticated"}, {"role": "service_role"}):
            assert conn.execute("delete from core.show_assets").rowcount == 0
        with as_role(conn, "service_role"):
            assert conn.execute("delete from core.show_assets").rowcount == 1


SUPABASE_UID = """
create function auth.uid() returns uuid language sql stable as $$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$"""


def test_applies_on_supabase_and_leaves_its_auth_functions_alone(empty_db_url):
    """Supabase's own auth.uid() (legacy setting first) stays as it is; the role-bound policies apply."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("create schema auth")
        conn.execute(SUPABASE_UID)
        source = conn.execute("select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure").fetchone()[0]
    assert "0008_policies_bound_to_roles" in db.migrate(DatabaseSettings(url=empty_db_url))
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert conn.execute("select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure").fetchone()[0] == source
        assert "trr-assets shim" in conn.execute("select obj_description('auth.role()'::regprocedure)").fetchone()[0]
        show = make_show(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), \
                forged(conn, "anon", {"role": "service_role"}, {"role": "service_role"}):
            conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'k')", (show,))


# --- the shim's auth functions ------------------------------------------------


def test_shim_reads_request_claims_before_the_legacy_settings(conn):
    """With request.jwt.claims set, request.jwt.claim.* cannot override it."""
    real, stale = uuid.uuid4(), uuid.uuid4()
    with forged(conn, "authenticated", {"role": "authenticated", "sub": str(real)},
                {"role": "service_role", "sub": str(stale)}):
        conn.execute("select set_config('request.jwt.claim', %s, true)", (json.dumps({"role": "service_role"}),))
        assert conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'role'").fetchone() == (
            real, "authenticated", "authenticated")


def test_shim_still_reads_the_legacy_settings_alone(conn):
    """Older PostgREST sets only request.jwt.claim.*: the shim still reads them then."""
    sub = uuid.uuid4()
    with forged(conn, "authenticated", None, {"role": "authenticated", "sub": str(sub)}):
        assert conn.execute("select auth.uid(), auth.role()").fetchone() == (sub, "authenticated")


def test_a_session_level_legacy_setting_left_on_a_connection_does_not_leak_into_a_request(conn):
    """A stale `set request.jwt.claim.sub` (session-wide, as a pooled connection may keep) loses to the request's
    claims."""
    leftover, caller = uuid.uuid4(), uuid.uuid4()
    conn.execute("select set_config('request.jwt.claim.sub', %s, false)", (str(leftover),))
    with as_role(conn, "authenticated", {"role": "authenticated", "sub": str(caller)}):
        assert conn.execute("select auth.uid()").fetchone()[0] == caller


# --- the org policies ---------------------------------------------------------


@pytest.fixture
def org(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    editor = uuid.uuid4()
    org_id = conn.execute("insert into core.organizations (name) values ('o') returning id").fetchone()[0]
    conn.execute("insert into core.org_memberships (org_id, user_id, role) values (%s, %s, 'editor')", (org_id, editor))
    show = make_show(conn, org_id=org_id)
    return {"org": org_id, "editor": editor, "show": show}


def test_anon_naming_an_editor_in_its_claims_neither_reads_nor_writes_org_rows(conn, org):
    """The org policies are to authenticated: an anon session with a forged sub is nobody to them."""
    claims = {"role": "authenticated", "sub": str(org["editor"])}
    with forged(conn, "anon", claims, {"sub": str(org["editor"])}):
        for table in ("shows", "organizations", "org_memberships"):
            assert conn.execute(f"select count(*) from core.{table}").fetchone()[0] == 0
        assert conn.execute("update core.shows set title = 'forged'").rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege), forged(conn, "anon", claims, {}):
        conn.execute("insert into core.shows (title, org_id) values ('forged', %s)", (org["org"],))


def test_authenticated_is_whoever_its_claims_name(conn, org):
    """The limit docs/security.md states: a session that runs SQL as authenticated
    can name any user in request.jwt.claims, and the org policies believe it.
    auth.uid() is only as true as whoever set the claims (PostgREST, after
    checking the JWT)."""
    with forged(conn, "authenticated", {"role": "authenticated", "sub": str(org["editor"])}, {}):
        assert conn.execute("update core.shows set title = 'as the editor'").rowcount == 1


def test_org_read_is_bound_to_roles(conn, db_url, org):
    """With --enable org-read: a forged service_role claim reads nothing more; members and service_role read."""
    db.migrate(DatabaseSettings(url=db_url), enable=["org-read"])
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/o')",
                 (org["show"],))
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/p')",
                 (make_show(conn),))
    for role in ROLES:
        with forged(conn, role, {"role": "service_role"}, {"role": "service_role"}):
            assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0
    with as_role(conn, "authenticated", {"role": "authenticated", "sub": str(org["editor"])}):
        assert conn.execute("select object_key from core.show_assets").fetchall() == [("shows/o",)]
    with without_bypassrls(conn), as_role(conn, "service_role"):
        assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 2


# sql/optional/org-read.sql as databases enabled it before 0008.
ORG_READ_BEFORE_0008 = """
drop policy if exists show_assets_public_read on core.show_assets;
create policy show_assets_org_read on core.show_assets
  for select
  using (
    auth.role() = 'service_role'
    or exists (
      select 1
      from core.shows s
      join core.org_memberships om on om.org_id = s.org_id
      where s.id = core.show_assets.show_id
        and om.user_id = auth.uid()
    )
  );
"""


def test_org_read_enabled_before_0008_is_rebound(empty_db_url):
    """A database that enabled org-read before 0008 gets the role-bound read policies, and its record the new file's
    checksum."""
    _migrate_before_0008(empty_db_url, org_read=ORG_READ_BEFORE_0008)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        show = make_show(conn)
        conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'k')", (show,))
        with forged(conn, "anon", {"role": "service_role"}, {}):
            assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 1  # the old hole
    with structlog.testing.capture_logs() as logs:
        applied = db.migrate(DatabaseSettings(url=empty_db_url), enable=["org-read"])
        assert applied[0] == "0008_policies_bound_to_roles"  # and any later migration after it
        assert db.migrate(DatabaseSettings(url=empty_db_url), enable=["org-read"]) == []
    assert not [e for e in logs if e["event"] == "migration_changed_since_applied"]
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        policies = _policies(conn)
        with forged(conn, "anon", {"role": "service_role"}, {}):
            assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0
    assert policies[("show_assets", "show_assets_org_read")] == ("authenticated",)
    assert policies[("show_assets", "show_assets_service_read")] == ("service_role",)
    assert ("show_assets", "show_assets_public_read") not in policies


def test_0008_records_the_checksum_org_read_has_now():
    """0008 re-records optional/org-read with the file's checksum: the two must agree (edit both together)."""
    migration = next(m for m in db.available_migrations() if m.name == "0008_policies_bound_to_roles")
    assert db.optional_migrations()["org-read"].checksum in migration.sql
