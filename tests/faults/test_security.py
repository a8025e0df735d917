"""Nobody gets in: RLS on every seed table, URL lifetimes, no secret in any
log line or error message.

What tests/db/test_rls.py, tests/presign/test_presign.py and tests/presign/test_presign_sigv4.py
already prove is not repeated here (docs/guarantees.md lists them); this
file fills the gaps: the writes no test covered yet, every presigning entry
point against its configured lifetime, and the secrets.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from tests.support.moto_server import S3Server, moto_auth
from tests.support.postgres import as_role, make_show
from tests.support.processes import child_env, run_cli
from tests.support.s3 import AWS_SECRET, TEST_BUCKET
from trr_assets import deletes, reconcile, sync
from trr_assets.config import SIGV4_MAX_EXPIRES_SECONDS
from trr_assets.errors import TrrAssetsError
from trr_assets.presign import Presigner
from trr_assets.reconcile import ReconcileOptions

# --- RLS: the writes tests/db/test_rls.py does not cover --------------------------------

MEMBER, EDITOR, OUTSIDER = (uuid.UUID(f"{n}{n}{n}{n}{n}{n}{n}{n}-0000-4000-8000-000000000000") for n in "abc")
CALLERS = {
    "anon": ("anon", {"role": "anon"}),
    "outsider": ("authenticated", {"role": "authenticated", "sub": str(OUTSIDER)}),
    "member": ("authenticated", {"role": "authenticated", "sub": str(MEMBER)}),
}


@pytest.fixture
def seeded(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """One row in each seed table: an organization with a member and an editor, its show, a profile, an asset."""
    org = conn.execute("insert into core.organizations (name) values ('org') returning id").fetchone()[0]
    conn.execute(
        "insert into core.org_memberships (org_id, user_id, role) values (%s, %s, 'member'), (%s, %s, 'editor')",
        (org, MEMBER, org, EDITOR),
    )
    show = make_show(conn, org_id=org)
    conn.execute("insert into core.show_social_profiles (show_id, platform, handle) values (%s, 'x', 'h')", (show,))
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)",
                 (show, TEST_BUCKET, f"shows/{show}/a.png"))
    return {"org": org, "show": show}


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    tables = ("core.organizations", "core.org_memberships", "core.shows", "core.show_social_profiles",
              "core.show_assets")
    return {t: sorted(map(repr, conn.execute(f"select * from {t}").fetchall())) for t in tables}


# (table, statement): the writes of the seed tables that tests/db/test_rls.py leaves out.
MISSING_WRITES = [
    ("shows", "insert into core.shows (title, org_id) values ('mine', %(org)s)"),
    ("shows", "update core.shows set title = 'taken'"),
    ("shows", "delete from core.shows"),
    ("organizations", "delete from core.organizations"),
    ("org_memberships", "update core.org_memberships set role = 'admin'"),
]


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize(("table", "statement"), MISSING_WRITES, ids=[f"{t}:{s.split()[0]}" for t, s in MISSING_WRITES])
def test_api_roles_cannot_write_what_the_rls_tests_leave_out(conn, seeded, caller, table, statement):
    """anon, an authenticated outsider and a plain member cannot insert, update or delete shows, delete
    organizations or promote a membership: an insert is refused, an update or delete touches no row."""
    role, claims = CALLERS[caller]
    before = _snapshot(conn)
    if statement.startswith("insert"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(conn, role, claims):
                conn.execute(statement, seeded)
    else:
        with as_role(conn, role, claims):
            assert conn.execute(statement, seeded).rowcount == 0
    assert _snapshot(conn) == before


def test_no_api_role_deletes_a_show_not_even_its_editor(conn, seeded):
    """Deleting a show cascades to its assets and then their objects: no API caller may, the org's editor
    included (there is no delete policy on core.shows); the service role may."""
    before = _snapshot(conn)
    with as_role(conn, "authenticated", {"role": "authenticated", "sub": str(EDITOR)}):
        assert conn.execute("update core.shows set title = 'edited'").rowcount == 1  # editors do write shows
        assert conn.execute("delete from core.shows").rowcount == 0
    assert len(_snapshot(conn)["core.show_assets"]) == len(before["core.show_assets"]) == 1
    with as_role(conn, "service_role"):
        assert conn.execute("delete from core.shows").rowcount == 1
    assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0
    assert conn.execute("select count(*) from trr_assets.delete_queue").fetchone()[0] == 1


def test_service_role_writes_every_seed_table(conn, seeded):
    """service_role inserts, updates and deletes rows of organizations, memberships, shows and social profiles
    (assets: tests/db/test_rls.py)."""
    user = uuid.uuid4()
    with as_role(conn, "service_role"):
        org = conn.execute("insert into core.organizations (name) values ('new') returning id").fetchone()[0]
        conn.execute("insert into core.org_memberships (org_id, user_id) values (%s, %s)", (org, user))
        show = conn.execute("insert into core.shows (title, org_id) values ('s', %s) returning id", (org,)).fetchone()[
            0
        ]
        conn.execute("insert into core.show_social_profiles (show_id, platform, handle) values (%s, 'y', 'z')", (show,))
        for table, key in (("organizations", "id"), ("shows", "id")):
            assert conn.execute(f"update core.{table} set updated_at = now() where {key} = %s",
                                (org if table == "organizations" else show,)).rowcount == 1
        assert conn.execute("update core.org_memberships set role = 'admin' where user_id = %s", (user,)).rowcount == 1
        assert (
            conn.execute("update core.show_social_profiles set handle = 'w' where show_id = %s", (show,)).rowcount == 1
        )
        assert conn.execute("delete from core.show_social_profiles where show_id = %s", (show,)).rowcount == 1
        assert conn.execute("delete from core.shows where id = %s", (show,)).rowcount == 1
        assert conn.execute("delete from core.org_memberships where user_id = %s", (user,)).rowcount == 1
        assert conn.execute("delete from core.organizations where id = %s", (org,)).rowcount == 1


@pytest.mark.parametrize("table", ["delete_queue", "reconcile_runs", "schema_migrations"])
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_or_write_trr_assets_tables(conn, role, table):
    """trr-assets' own tables (the outbox, the run history, the migrations) are out of the API roles' reach."""
    for statement in (f"select count(*) from trr_assets.{table}", f"delete from trr_assets.{table}"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(conn, role):
                conn.execute(statement)


# --- URL lifetimes ------------------------------------------------------------------


def _lifetime(url: str) -> tuple[int, int]:
    """(signing time, X-Amz-Expires) of a presigned URL."""
    from calendar import timegm
    from time import strptime

    query = parse_qs(urlsplit(url).query)
    return timegm(strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")), int(query["X-Amz-Expires"][0])


@pytest.fixture
def lifetime_rig(conn, db_url, aws_env) -> Iterator[tuple[Any, Any, uuid.UUID]]:
    show = make_show(conn)
    asset = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s) returning id",
        (show, TEST_BUCKET, f"shows/{show}/a.png"),
    ).fetchone()[0]
    from tests.support.s3 import make_settings

    yield make_settings(db_url), show, asset


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    expires=st.integers(1, SIGV4_MAX_EXPIRES_SECONDS),
    window=st.integers(0, SIGV4_MAX_EXPIRES_SECONDS),
    now=st.floats(1.6e9, 2.0e9),
)
def test_every_presigned_url_lives_its_configured_time_and_never_over_7_days(lifetime_rig, expires, window, now):
    """get_url, get_urls, upload_url and url_for_key, for any presign.expires_seconds and cache window: the URL
    works from the moment it is made for at least expires_seconds, at most expires_seconds + the window, never
    beyond SigV4's 7 days; an upload grant's expires_at is the URL's own end."""
    base, show, asset = lifetime_rig
    config = base.replace(presign={"expires_seconds": expires, "cache_window_seconds": window})
    with Presigner(config, clock=lambda: now) as presigner:
        grant = presigner.upload_url(show_id=show, filename="a.png", content_type="image/png", size_bytes=1)
        urls = [
            presigner.get_url(asset),
            presigner.get_urls([asset])[asset],
            presigner.url_for_key(TEST_BUCKET, "k", "put"),
            grant.url,
        ]
    for url in urls:
        signed_at, x_expires = _lifetime(url)
        assert signed_at <= now and x_expires <= SIGV4_MAX_EXPIRES_SECONDS
        assert int(now) + expires <= signed_at + x_expires <= int(now) + expires + window
    assert grant.expires_at.timestamp() == sum(_lifetime(grant.url))


# --- no secret in any log line or error message ------------------------------------

DB_PASSWORD = "db-pass-Z9q!never-logged"
SESSION_TOKEN = "FQoGZXIvYXdzEJr//////////wEaDsession+token/never=logged"


def _secrets_in(text: str, extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    found = [s for s in (DB_PASSWORD, AWS_SECRET, SESSION_TOKEN, *extra) if s in text]
    # URL signatures: any X-Amz-Signature value at all (64 hex digits).
    found += re.findall(r"X-Amz-Signature=[0-9a-f]{64}", text)
    return found


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)


def _plant(conn: psycopg.Connection[Any], server: S3Server) -> uuid.UUID:
    """Something for every job to do: a new object, an orphaned row, a queued deletion. Returns an asset id."""
    show = make_show(conn)
    server.put(f"shows/{show}/new.jpg")
    server.put(f"shows/{show}/doomed.jpg")
    server.put(f"shows/{show}/kept.jpg")
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, updated_at) values"
        " (%s, %s, %s, now() - interval '2 days'), (%s, %s, %s, now())",
        (show, TEST_BUCKET, f"shows/{show}/row-only.jpg", show, TEST_BUCKET, f"shows/{show}/doomed.jpg"),
    )
    conn.execute("delete from core.show_assets where object_key = %s", (f"shows/{show}/doomed.jpg",))
    return conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s) returning id",
        (show, TEST_BUCKET, f"shows/{show}/kept.jpg"),
    ).fetchone()[0]


def test_no_secret_in_any_event_the_jobs_log(conn, db_url, s3_server, secret_env):
    """sync, drain, reconcile (dry run and repair), the presigner, and their failures (a missing bucket, refused
    credentials, a refused upload), run with a database password, an AWS secret key and a session token: no
    event they log, and no error they raise, holds any of them or a URL signature (captured before redaction)."""
    asset = _plant(conn, s3_server)
    secret_url = make_conninfo(db_url, password=DB_PASSWORD)
    settings = s3_server.settings(
        secret_url, reconcile={"orphaned_rows": "delete", "max_delete_fraction": 1.0}, logging={"level": "debug"}
    )
    errors: list[str] = []
    urls: list[str] = []
    with structlog.testing.capture_logs() as events:
        sync.run(settings, progress=False)
        reconcile.run(settings, ReconcileOptions(), sink=lambda _: None)
        reconcile.run(settings, ReconcileOptions(repair=True), sink=lambda _: None)
        deletes.drain(settings)
        with Presigner(settings) as presigner:
            urls += [presigner.get_url(asset), presigner.get_urls([asset])[asset]]
            urls.append(presigner.upload_url(show_id=make_show(conn), filename="p.png", content_type="image/png",
                                              size_bytes=1).url)
            for claims in ({"role": "authenticated", "sub": "nope"}, {"role": "anon"}):
                try:
                    presigner.upload_url(show_id=uuid.uuid4(), filename="p.png", content_type="image/png",
                                         size_bytes=1, claims=claims)
                except TrrAssetsError as exc:
                    errors.append(str(exc))
        failing = settings.replace(s3={"buckets": ["trr-no-such-bucket"]})
        errors += sync.run(failing, progress=False).failed
        for call in (lambda: reconcile.run(failing, ReconcileOptions(), sink=lambda _: None),):
            try:
                call()
            except TrrAssetsError as exc:
                errors.append(str(exc))
        with moto_auth():
            errors += sync.run(settings, progress=False).failed
            conn.execute("delete from core.show_assets where id = %s", (asset,))
            errors.append(str(deletes.drain(settings).as_dict()))
            errors.append(conn.execute("select last_error from trr_assets.delete_queue").fetchone()[0])
    assert len(events) > 20 and len(errors) >= 5 and len(urls) == 3
    assert all(_secrets_in(url) for url in urls)  # the URLs do carry a signature: the check can see one
    text = json.dumps(events, default=str) + "\n".join(errors)
    assert _secrets_in(text) == [], _secrets_in(text)


def _cli_runs(db_url: str, server: S3Server, asset: uuid.UUID) -> list[tuple[list[str], dict[str, str], bool]]:
    """(argv, env, whether stdout may hold a URL) of each command to check."""
    secret_url = make_conninfo(db_url, password=DB_PASSWORD)
    env = child_env(secret_url, server.endpoint, AWS_SESSION_TOKEN=SESSION_TOKEN, TRR_ASSETS_LOGGING_LEVEL="debug",
                    TRR_ASSETS_RECONCILE_ORPHANED_ROWS="delete", TRR_ASSETS_RECONCILE_MAX_DELETE_FRACTION="1")
    unreachable = child_env(
        f"postgresql://trr:{DB_PASSWORD}@127.0.0.1:1/trr", server.endpoint, AWS_SESSION_TOKEN=SESSION_TOKEN,
        TRR_ASSETS_DATABASE_CONNECT_TIMEOUT_SECONDS="1",
    )
    no_bucket = {**env, "TRR_ASSETS_S3_BUCKETS": "trr-no-such-bucket"}
    return [
        (["sync"], env, False),
        (["reconcile", "--format", "jsonl"], env, False),
        (["reconcile", "--repair", "--format", "jsonl"], env, False),
        (["process-deletes"], env, False),
        (["presign", str(asset)], env, True),
        (["presign", f"s3://{TEST_BUCKET}/k", "--method", "put"], env, True),
        (["delete", str(asset)], env, False),
        (["reconcile", "--history"], env, False),
        (["sync"], no_bucket, False),
        (["reconcile"], no_bucket, False),
        (["--debug", "reconcile"], no_bucket, False),
        (["sync"], unreachable, False),
        (["process-deletes"], unreachable, False),
        (["--debug", "presign", str(asset)], unreachable, False),
        (["migrate"], unreachable, False),
    ]


@pytest.mark.slow
def test_no_secret_on_the_command_lines_stderr_or_in_its_reports(conn, db_url, s3_server):
    """Every command, succeeding or failing (a missing bucket, an unreachable database, with --debug too), run
    with a database password, an AWS secret key and a session token: stderr (logs, errors, tracebacks) holds
    none of them and no URL signature; stdout neither, but for the URL presign prints."""
    asset = _plant(conn, s3_server)
    outputs = []
    for argv, env, prints_url in _cli_runs(db_url, s3_server, asset):
        result = run_cli(*argv, env=env)
        outputs.append((argv, result.returncode))
        assert _secrets_in(result.stderr) == [], (argv, result.stderr)
        if prints_url:
            assert result.returncode == 0 and _secrets_in(result.stdout)
        else:
            assert _secrets_in(result.stdout) == [], (argv, result.stdout)
    codes = [code for _, code in outputs]
    assert codes.count(0) >= 8 and codes.count(1) >= 6, outputs  # both kinds were exercised
    show = make_show(conn)
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, 'shows/q.jpg')",
                 (show, TEST_BUCKET))
    conn.execute("delete from core.show_assets where object_key = 'shows/q.jpg'")
    with moto_auth():  # S3 refusing the credentials
        env = _cli_runs(db_url, s3_server, asset)[0][1]
        for argv in (["sync"], ["reconcile"], ["process-deletes"]):
            result = run_cli(*argv, env=env)
            assert result.returncode == 1 and _secrets_in(result.stderr + result.stdout) == []
    queued = conn.execute("select state, attempts from trr_assets.delete_queue where object_key = 'shows/q.jpg'")
    assert queued.fetchall() == [("pending", 1)]  # refused, kept for a retry
