"""Row Level Security as PostgREST applies it: role and request.jwt.claims per transaction."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.support.postgres import as_role, make_show
from trr_assets import db
from trr_assets.config import DatabaseSettings

API_ROLES = ["anon", "authenticated"]


def _claims(role: str, sub: uuid.UUID | None = None) -> dict:
    claims = {"role": role}
    if sub is not None:
        claims["sub"] = str(sub)
    return claims


@pytest.fixture
def asset(conn):
    show = make_show(conn)
    asset_id = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes) "
        "values (%s, 'b', %s, 1) returning id",
        (show, f"shows/{show}/a.png"),
    ).fetchone()[0]
    return show, asset_id


def test_auth_functions_read_postgrest_claims(conn):
    sub = uuid.uuid4()
    with as_role(conn, "authenticated", _claims("authenticated", sub)):
        row = conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'role', current_user").fetchone()
    assert row == (sub, "authenticated", "authenticated", "authenticated")
    # The settings were transaction-local: gone afterwards.
    assert conn.execute("select auth.role(), current_user").fetchone()[1] != "authenticated"


@pytest.mark.parametrize("role", API_ROLES)
def test_api_roles_read_assets_but_cannot_write_them(conn, asset, role):
    show, asset_id = asset
    with as_role(conn, role, _claims(role, uuid.uuid4())):
        assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_role(conn, role, _claims(role, uuid.uuid4())):
            conn.execute(
                "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/x')", (show,)
            )
    # UPDATE and DELETE are filtered to no rows by RLS: nothing changes.
    with as_role(conn, role, _claims(role, uuid.uuid4())):
        assert conn.execute("update core.show_assets set size_bytes = 99").rowcount == 0
        assert conn.execute("delete from core.show_assets").rowcount == 0
    assert conn.execute("select size_bytes from core.show_assets where id = %s", (asset_id,)).fetchone()[0] == 1


def test_service_role_writes_assets(conn, asset):
    show, asset_id = asset
    with as_role(conn, "service_role"):
        conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/y')", (show,))
        assert conn.execute("update core.show_assets set size_bytes = 7 where id = %s", (asset_id,)).rowcount == 1
        assert conn.execute("delete from core.show_assets where object_key = 'shows/y'").rowcount == 1


def test_service_role_claim_alone_writes_through_the_policies(conn, asset):
    """Without BYPASSRLS, the service_role claim is what the write policies check."""
    show, _ = asset
    conn.execute("alter role service_role nobypassrls")
    try:
        with as_role(conn, "service_role", {"role": "service_role"}):
            conn.execute(
                "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/z')", (show,)
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(conn, "service_role", {"role": "authenticated"}):
                conn.execute(
                    "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', 'shows/w')", (show,)
                )
    finally:
        conn.execute("alter role service_role bypassrls")


@pytest.mark.parametrize("role", API_ROLES)
def test_api_roles_cannot_write_social_profiles(conn, role):
    show = make_show(conn)
    conn.execute("insert into core.show_social_profiles (show_id, platform, handle) values (%s, 'x', 'h')", (show,))
    with as_role(conn, role, _claims(role, uuid.uuid4())):
        assert conn.execute("select count(*) from core.show_social_profiles").fetchone()[0] == 1
        assert conn.execute("update core.show_social_profiles set handle = 'evil'").rowcount == 0
        assert conn.execute("delete from core.show_social_profiles").rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_role(conn, role, _claims(role, uuid.uuid4())):
            conn.execute(
                "insert into core.show_social_profiles (show_id, platform, handle) values (%s, 'y', 'h')", (show,)
            )


@pytest.mark.parametrize("role", API_ROLES)
def test_api_roles_cannot_write_organizations_or_memberships(conn, role):
    user = uuid.uuid4()
    org = conn.execute("insert into core.organizations (name) values ('o') returning id").fetchone()[0]
    conn.execute("insert into core.org_memberships (org_id, user_id, role) values (%s, %s, 'admin')", (org, user))
    for statement in (
        "insert into core.organizations (name) values ('mine')",
        f"insert into core.org_memberships (org_id, user_id, role) values ('{org}', '{user}', 'admin')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(conn, role, _claims(role, user)):
                conn.execute(statement)
    with as_role(conn, role, _claims(role, user)):
        assert conn.execute("update core.organizations set name = 'x'").rowcount == 0
        assert conn.execute("delete from core.org_memberships").rowcount == 0


def test_shows_are_read_by_members_and_written_by_editors(conn):
    member, editor, outsider = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    org = conn.execute("insert into core.organizations (name) values ('o') returning id").fetchone()[0]
    conn.execute(
        "insert into core.org_memberships (org_id, user_id, role) values (%s, %s, 'member'), (%s, %s, 'editor')",
        (org, member, org, editor),
    )
    make_show(conn, org_id=org)
    with as_role(conn, "authenticated", _claims("authenticated", member)):
        assert conn.execute("select count(*) from core.shows").fetchone()[0] == 1
        assert conn.execute("update core.shows set title = 'm'").rowcount == 0
    with as_role(conn, "authenticated", _claims("authenticated", outsider)):
        assert conn.execute("select count(*) from core.shows").fetchone()[0] == 0
    with as_role(conn, "authenticated", _claims("authenticated", editor)):
        assert conn.execute("update core.shows set title = 'e'").rowcount == 1
        conn.execute("insert into core.shows (title, org_id) values ('new', %s)", (org,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_role(conn, "authenticated", _claims("authenticated", member)):
            conn.execute("insert into core.shows (title, org_id) values ('nope', %s)", (org,))


def test_org_read_policy_hides_other_organizations_assets(conn, db_url):
    """With --enable org-read, a member sees only their organization's assets."""
    db.migrate(DatabaseSettings(url=db_url), enable=["org-read"])
    alice, bob = uuid.uuid4(), uuid.uuid4()
    orgs = [conn.execute("insert into core.organizations (name) values (%s) returning id", (n,)).fetchone()[0]
            for n in ("a", "b")]
    conn.execute(
        "insert into core.org_memberships (org_id, user_id) values (%s, %s), (%s, %s)",
        (orgs[0], alice, orgs[1], bob),
    )
    for org in orgs:
        show = make_show(conn, org_id=org)
        conn.execute(
            "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'b', %s)",
            (show, f"shows/{show}/x"),
        )
    with as_role(conn, "authenticated", _claims("authenticated", alice)):
        visible = conn.execute(
            "select s.org_id from core.show_assets a join core.shows s on s.id = a.show_id"
        ).fetchall()
    assert visible == [(orgs[0],)]
    with as_role(conn, "anon"):
        assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0
    with as_role(conn, "service_role"):
        assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 2


def test_api_roles_cannot_see_trr_assets_schema(conn):
    """The outbox and history tables are not reachable by API roles."""
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(conn, role):
                conn.execute("select count(*) from trr_assets.delete_queue")
