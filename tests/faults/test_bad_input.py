"""Bad input: odd keys, bad configuration, missing buckets, wrong credentials,
unreachable services, malformed ids, hostile strings. Each gives a clear
one-line error (or is treated as plain data) and loses nothing.

Command-line cases run the CLI as a child process, as a user would, and read
its stderr: JSON log lines plus at most one ``trr-assets: error: ...`` line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.moto_server import S3Server, moto_auth
from tests.support.postgres import make_show
from tests.support.processes import child_env, run_cli, stdout_json
from tests.support.s3 import TEST_BUCKET
from trr_assets import db, deletes, sync
from trr_assets.config import DatabaseSettings
from trr_assets.errors import DatabaseError
from trr_assets.presign import AssetNotFound, Presigner

HOSTILE = [
    "'; drop table core.show_assets; --",
    "x'); delete from core.shows; --",
    "' or '1'='1",
    "1; truncate core.show_assets cascade",
    "$$; drop schema core cascade; $$",
    "\\'; select pg_sleep(10); --",
    "%s %(id)s {0} ${id}",
    "Robert'); DROP TABLE Students;--",
]
EXAMPLES = dict(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The stderr lines that are not JSON log lines."""
    lines = []
    for line in result.stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def _assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = _error_lines(result)
    assert len(errors) == 1 and errors[0].startswith("trr-assets: error: "), result.stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def _tables_intact(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Row counts of the seed tables and the outbox (each must still exist)."""
    counts = {}
    for table in ("core.shows", "core.show_assets", "core.organizations", "core.org_memberships",
                  "core.show_social_profiles", "trr_assets.delete_queue"):
        counts[table] = conn.execute(f"select count(*) from {table}").fetchone()[0]
    return counts


# --- any key round-trips ---------------------------------------------------------

# Any character S3 accepts, except "\n": moto's HTTP server (werkzeug) cannot
# route a path holding one; real S3 can. NUL is skipped by sync (PostgreSQL
# text cannot hold it): see the skip test below.
KEY_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00")
TRICKY = [" ", "  ", "+", "%", "%2F", "%41", "//", "/", "./", "..", "?", "#", "&", "=", ";", "~", "'", '"', "\\",
          "<", ">", "漢字", "😀", "é", "e\u0301", "\t", "\r", "\x01", "\x7f", "\ufeff", "\u200b", "\u202e", *HOSTILE]
NAMES = st.lists(st.one_of(st.text(KEY_CHARS, min_size=1, max_size=12), st.sampled_from(TRICKY)),
                 min_size=1, max_size=10).map("".join)


def _fit(base: str, name: str, pad: bool) -> str:
    """``base + name``, cut or padded to at most (or, with ``pad``, exactly) 1,024 UTF-8 bytes."""
    key = base + name
    while len(key.encode()) > 1024:
        key = key[:-1]
    if pad:
        key += "L" * (1024 - len(key.encode()))
    return key


def _neighbour(key: str) -> str:
    """A different key as close as can be: another normal form, or one more character."""
    import unicodedata

    for form in ("NFD", "NFC"):
        other = unicodedata.normalize(form, key)
        if other != key and len(other.encode()) <= 1024:
            return other
    return key[:-1] + ("a" if key[-1] != "a" else "b")


@pytest.fixture
def round_trip(conn, db_url, s3_server):
    settings = s3_server.settings(db_url, s3={"list_shards": 1})
    with Presigner(settings) as presigner:
        yield settings, s3_server, presigner, make_show(conn)


@settings(**EXAMPLES)
@given(name=NAMES, pad=st.booleans())
@example(name="with space/and+plus/100%/a//b", pad=False)
@example(name="ü" * 600, pad=False)
@example(name=HOSTILE[0], pad=True)
def test_any_key_round_trips_through_sync_presign_and_delete_exactly(conn, round_trip, name, pad):
    """Any valid key (unicode, spaces, +, %, //, quotes, up to 1,024 bytes): sync stores it byte for byte, its
    presigned URL fetches its bytes from S3, and deleting its asset deletes exactly that object (a near-identical
    neighbour key survives with its row)."""
    settings, server, presigner, show = round_trip
    key = _fit(f"shows/{show}/", name, pad)
    twin = _neighbour(key)
    body = b"body of " + key.encode()
    server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=body)
    server.client.put_object(Bucket=TEST_BUCKET, Key=twin, Body=b"twin")

    report = sync.run(settings, client=server.client, progress=False)

    assert (report.inserted, report.skipped, report.failed) == (2, 0, [])
    rows = dict(conn.execute("select object_key, id from core.show_assets").fetchall())
    assert set(rows) == {key, twin}
    with urllib.request.urlopen(presigner.get_url(rows[key]), timeout=30) as response:
        assert response.read() == body

    deleted = deletes.delete_assets(settings, [str(rows[key])], client=server.client)

    assert (deleted.deleted_rows, deleted.deleted_objects, deleted.pending) == (1, 1, 0)
    assert server.keys() == {twin}
    assert server.body(twin) == b"twin"
    assert set(dict(conn.execute("select object_key, id from core.show_assets").fetchall())) == {twin}
    deletes.delete_assets(settings, [str(rows[twin])], client=server.client)  # clean for the next example
    assert server.keys() == set()


def test_a_key_with_a_carriage_return_is_deleted_and_completed_and_its_newline_twin_survives(conn, settings, s3):
    """S3's DeleteObjects answer echoes each key in XML, whose parser reads a carriage return back as a newline:
    such a key must not be judged by that answer. "a\\rb" is deleted and its entry completed in one drain;
    its twin "a\\nb" survives."""
    show = make_show(conn)
    base = f"shows/{show}/"
    for name in ("a\rb.jpg", "a\nb.jpg", "c\r\nd.jpg", "c\nd.jpg", "plain.jpg"):
        s3.put_object(Bucket=TEST_BUCKET, Key=base + name, Body=name.encode())
        conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)",
                     (show, TEST_BUCKET, base + name))
    conn.execute("delete from core.show_assets where object_key = any(%s)",
                 ([base + "a\rb.jpg", base + "c\r\nd.jpg", base + "plain.jpg"],))

    report = deletes.drain(settings)

    assert (report.deleted, report.errors, report.pending) == (3, 0, 0)
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=TEST_BUCKET)["Contents"]}
    assert left == {base + "a\nb.jpg", base + "c\nd.jpg"}


MALFORMED_IDS = st.text("0123456789abcdefABCDEF-", min_size=36, max_size=36).filter(
    lambda s: sum(c != "-" for c in s) != 32  # 32 hex digits make a UUID wherever the dashes are
)


@settings(**EXAMPLES)
@given(
    no_match=st.lists(st.text(KEY_CHARS, max_size=35).filter(lambda s: "/" not in s), max_size=4),
    malformed=st.lists(MALFORMED_IDS, max_size=4),
    unknown=st.lists(st.uuids(), max_size=4),
    nul=st.lists(st.text(KEY_CHARS, max_size=5), max_size=2),
    valid=st.integers(0, 3),
    upper=st.booleans(),
)
def test_keys_outside_the_pattern_are_skipped_and_counted_by_reason(
    conn, round_trip, no_match, malformed, unknown, nul, valid, upper
):
    """Keys that name no show (pattern fails, a show id that is no UUID, no such show, a NUL) are skipped and
    counted by reason, never fatal, never a row; the keys of a real show (in either case) get their rows."""
    settings, server, _, show = round_trip
    skips = {
        "no_match": {f"shows/{text}" for text in no_match} | {f"shows/{text}/x" for text in no_match},
        "malformed_show_id": {f"shows/{text}/x.jpg" for text in malformed},
        "unknown_show": {f"shows/{some}/x.jpg" for some in unknown},
        "invalid_key": {f"shows/{show}/{text}\x00.jpg" for text in nul},
    }
    shown = str(show).upper() if upper else str(show)
    good = {f"shows/{shown}/{i}.jpg" for i in range(valid)}
    for key in set().union(*skips.values()) | good:
        server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x")

    report = sync.run(settings, client=server.client, progress=False)

    expected = Counter({reason: len(found) for reason, found in skips.items() if found})
    assert report.skipped_by_reason == dict(expected)
    assert (report.skipped, report.inserted, report.failed) == (sum(expected.values()), valid, [])
    assert {r[0] for r in conn.execute("select object_key from core.show_assets")} == good
    conn.execute("truncate core.show_assets")
    conn.execute("delete from trr_assets.delete_queue")
    for key in server.keys():
        server.client.delete_object(Bucket=TEST_BUCKET, Key=key)


# --- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[s3]\nbukets = ['b']\n", ["s3.bukets"]),
        ("[sink]\nx = 1\n", ["[sink]"]),
        ("[sync]\nbatch_size = 'many'\n", ["sync.batch_size", "whole number"]),
        ("[reconcile]\nmax_delete_fraction = 2.5\n", ["reconcile.max_delete_fraction"]),
        ("[reconcile]\norphaned_rows = 'drop'\n", ["reconcile.orphaned_rows", "report, delete"]),
        ("[presign]\nupload_bucket = 'Bad_Bucket'\n", ["presign.upload_bucket", "Bad_Bucket"]),
        ("[s3\nbuckets = 1\n", ["not valid TOML"]),
        ("[presign]\nexpires_seconds = 700000\n", ["presign.expires_seconds", "604800"]),
    ],
)
def test_bad_config_file_is_one_line_naming_the_problem_exit_2(tmp_path, db_url, toml, names):
    """A config file with an unknown key or section, a wrong type, a value out of range or broken TOML: exit 2,
    one line naming it, no traceback, before anything is touched."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    env = child_env(db_url, "http://127.0.0.1:1")
    result = run_cli("--config", str(path), "sync", env=env)
    _assert_one_line_error(result, 2, *names)


def test_bad_environment_override_is_one_line_naming_the_variable_exit_2(db_url):
    """An unknown TRR_ASSETS_ key, or a malformed value in one, names the variable: exit 2, one line."""
    env = child_env(db_url, "http://127.0.0.1:1", TRR_ASSETS_S3_MAX_ATTEMPT="3")
    _assert_one_line_error(run_cli("process-deletes", env=env), 2, "s3.max_attempt", "TRR_ASSETS_S3_MAX_ATTEMPT")
    env = child_env(db_url, "http://127.0.0.1:1", TRR_ASSETS_DELETES_BATCH_SIZE="1e3")
    _assert_one_line_error(run_cli("process-deletes", env=env), 2, "deletes.batch_size", "1e3")


# --- missing bucket, wrong credentials, refusing endpoint ------------------------


def _queued_asset(conn: psycopg.Connection[Any], server: S3Server, bucket: str = TEST_BUCKET) -> tuple[str, str]:
    """An asset whose row is deleted (its deletion queued); returns (key, asset id)."""
    show = make_show(conn)
    key = f"shows/{show}/a.jpg"
    if bucket == TEST_BUCKET:
        server.put(key)
    asset = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s) returning id",
        (show, bucket, key),
    ).fetchone()[0]
    return key, str(asset)


def test_missing_bucket_fails_each_command_in_one_line_and_loses_nothing(conn, db_url, s3_server):
    """A bucket that does not exist: sync reports it in `failed` (exit 1), reconcile exits 1 naming it, a drain
    keeps its deletions queued (exit 1); no traceback anywhere."""
    key, asset = _queued_asset(conn, s3_server, bucket="trr-no-such-bucket")
    conn.execute("delete from core.show_assets")
    env = child_env(db_url, s3_server.endpoint, TRR_ASSETS_S3_BUCKETS="trr-no-such-bucket")

    result = run_cli("sync", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert stdout_json(result)["failed"] == [
        "trr-no-such-bucket: s3: bucket trr-no-such-bucket does not exist or is not visible"
    ]
    _assert_one_line_error(run_cli("reconcile", env=env), 1, "trr-no-such-bucket", "does not exist")
    _assert_one_line_error(run_cli("process-deletes", env=env), 1, "S3 refused 1 deletion")
    assert conn.execute("select object_key, state, attempts from trr_assets.delete_queue").fetchall() == [
        (key, "pending", 1)
    ]


def test_wrong_credentials_fail_each_command_in_one_line_and_lose_nothing(conn, db_url, s3_server):
    """S3 refusing the access key (moto's IAM check): sync, reconcile, process-deletes and delete exit 1 with
    one line naming the refusal; the queued deletions stay queued and the objects stay."""
    key, _ = _queued_asset(conn, s3_server)
    conn.execute("delete from core.show_assets")
    kept_key, kept_asset = _queued_asset(conn, s3_server)
    env = child_env(db_url, s3_server.endpoint, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0")

    with moto_auth():
        result = run_cli("sync", env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        [failed] = stdout_json(result)["failed"]
        assert "InvalidAccessKeyId" in failed
        _assert_one_line_error(run_cli("reconcile", env=env), 1, "InvalidAccessKeyId")
        _assert_one_line_error(run_cli("process-deletes", env=env), 1, "S3 refused 1 deletion")
        result = run_cli("delete", kept_asset, env=env)
        _assert_one_line_error(result, 1, "stay queued")

    assert "InvalidAccessKeyId" in conn.execute(
        "select last_error from trr_assets.delete_queue where object_key = %s", (key,)
    ).fetchone()[0]
    assert stdout_json(result)["deleted_rows"] == 1
    assert conn.execute("select count(*) from trr_assets.delete_queue where state = 'pending'").fetchone()[0] == 2
    assert s3_server.keys() == {key, kept_key}


def test_s3_endpoint_that_refuses_connections_fails_in_one_line(conn, db_url, aws_env):
    """Nothing listening at s3.endpoint_url: reconcile and process-deletes exit 1 with one line naming the
    endpoint; sync reports it in `failed`."""
    key, _ = _queued_asset(conn, None, bucket="trr-unreached")
    conn.execute("delete from core.show_assets")
    endpoint = f"http://127.0.0.1:{_free_port()}"
    env = child_env(db_url, endpoint, TRR_ASSETS_S3_BUCKETS="trr-unreached", TRR_ASSETS_S3_MAX_ATTEMPTS="2")

    result = run_cli("sync", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert endpoint in stdout_json(result)["failed"][0]
    _assert_one_line_error(run_cli("reconcile", env=env), 1, endpoint)
    _assert_one_line_error(run_cli("process-deletes", env=env), 1, "S3 refused 1 deletion")
    assert conn.execute("select count(*) from trr_assets.delete_queue").fetchone()[0] == 1


def test_bucket_name_s3_cannot_take_is_named_in_the_error(conn, db_url, s3_server):
    """`sync --bucket` with a name S3 would never accept (here, SQL) is bad usage, exit 2, as the same
    name in s3.buckets is bad configuration; nothing is touched."""
    before = _tables_intact(conn)
    env = child_env(db_url, s3_server.endpoint)
    for command in ("sync", "reconcile"):
        result = run_cli(command, "--bucket", HOSTILE[0], env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert "is not a valid S3 bucket name" in line and result.stdout == ""
    assert _tables_intact(conn) == before


# --- an unreachable database ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["sync"],
        ["reconcile"],
        ["reconcile", "--history"],
        ["process-deletes"],
        ["delete", "6f1c2a52-8f0e-4a39-9c55-1f0e7b7d3a10"],
        ["presign", "6f1c2a52-8f0e-4a39-9c55-1f0e7b7d3a10"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_unreachable_database_is_one_line_exit_1_for_every_command(argv, aws_env):
    """No PostgreSQL at database.url: every command exits 1 with one `database: ...` line and no traceback."""
    url = f"postgresql://trr:pw@127.0.0.1:{_free_port()}/trr"
    env = child_env(url, "http://127.0.0.1:1", TRR_ASSETS_DATABASE_CONNECT_TIMEOUT_SECONDS="2")
    _assert_one_line_error(run_cli(*argv, env=env), 1, "database")


def test_database_refusing_the_login_is_one_line_exit_1(db_url, aws_env):
    """A database that does not exist on a running server: one line naming it, exit 1."""
    url = psycopg.conninfo.make_conninfo(db_url, dbname="trr_no_such_database")
    env = child_env(url, "http://127.0.0.1:1")
    _assert_one_line_error(run_cli("process-deletes", env=env), 1, "database", "trr_no_such_database")


# --- malformed ids, unknown roles, hostile strings ---------------------------------


def test_delete_with_malformed_or_hostile_ids_deletes_nothing_and_lists_them(conn, db_url, s3_server):
    """`delete` with ids that are no UUID (SQL among them) lists each in not_found, deletes nothing, exits 0."""
    show = make_show(conn)
    s3_server.put(f"shows/{show}/a.jpg")
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)",
                 (show, TEST_BUCKET, f"shows/{show}/a.jpg"))
    before = _tables_intact(conn)
    bad = [*HOSTILE, "", "not-a-uuid", "6f1c2a52-8f0e-4a39-9c55-1f0e7b7d3a1", str(uuid.uuid4())]

    result = run_cli("delete", *bad, env=child_env(db_url, s3_server.endpoint))

    assert result.returncode == 0, result.stderr
    report = stdout_json(result)
    assert report["deleted_rows"] == 0 and report["not_found"] == bad
    assert _tables_intact(conn) == before
    assert s3_server.keys() == {f"shows/{show}/a.jpg"}


def test_presign_with_a_hostile_target_is_bad_usage(conn, db_url, s3_server):
    """`presign` with SQL for an asset id is bad usage (exit 2, one line); nothing is looked up or changed."""
    before = _tables_intact(conn)
    env = child_env(db_url, s3_server.endpoint)
    for target in HOSTILE[:3]:
        _assert_one_line_error(run_cli("presign", target, env=env), 2, "neither an asset id")
    assert _tables_intact(conn) == before


def test_hostile_filename_and_ids_in_upload_url_are_data(conn, db_url, s3_server):
    """upload_url with SQL in the filename stores a sanitised key (quotes and semicolons become '-'); SQL as a show
    or owner id is a ValueError; no table changes but the one new row."""
    show = make_show(conn)
    before = _tables_intact(conn)
    settings = s3_server.settings(db_url)
    with Presigner(settings) as presigner:
        grant = presigner.upload_url(show_id=show, filename=HOSTILE[0] + ".png", content_type="image/png", size_bytes=3)
        for field in ("show_id", "owner_id"):
            for hostile in HOSTILE[:3]:
                with pytest.raises(ValueError):
                    presigner.upload_url(**{"show_id": show, "filename": "a.png", "content_type": "image/png",
                                            "size_bytes": 1, field: hostile})
    name = grant.key.rpartition("/")[2]
    assert name[37:] == "drop-table-core.show_assets.png"
    assert all(c not in grant.key for c in "'; ")
    after = _tables_intact(conn)
    assert after == {**before, "core.show_assets": before["core.show_assets"] + 1}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.sampled_from(HOSTILE),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["anon", "authenticated", "service_role", "postgres", "admin", *HOSTILE[:2]]) | JSON,
        "sub": st.uuids().map(str) | st.sampled_from(HOSTILE) | JSON,
        "email": st.sampled_from(HOSTILE) | st.text(max_size=20),
        "app_metadata": JSON,
    },
)


@pytest.fixture
def org_read_presigner(conn, db_url, s3_server, made_pools):
    """Org-scoped reads on, one member, one asset of the member's show; a presigner with a one-connection pool."""
    db.migrate(DatabaseSettings(url=db_url), enable=["org-read"])
    member = uuid.uuid4()
    org = conn.execute("insert into core.organizations (name) values ('o') returning id").fetchone()[0]
    conn.execute("insert into core.org_memberships (org_id, user_id) values (%s, %s)", (org, member))
    show = make_show(conn, org_id=org)
    asset = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s) returning id",
        (show, TEST_BUCKET, f"shows/{show}/a.png"),
    ).fetchone()[0]
    settings = s3_server.settings(db_url, database={"pool_min_size": 1, "pool_max_size": 1})
    with Presigner(settings) as presigner:
        assert presigner.get_url(asset)  # the service's lookup opens the pool the test inspects
        yield presigner, asset, member, made_pools


@settings(**EXAMPLES)
@given(claims=CLAIMS)
def test_any_claims_are_data_never_sql(conn, org_read_presigner, claims):
    """Arbitrary JWT claims (unknown roles, SQL in sub, email or nested metadata): get_url answers a URL or
    AssetNotFound, get_urls a dict or ValueError, never a database error; a URL only for the service role or the
    member; the tables are intact and the pooled connection is the owner again, with no claims left."""
    presigner, asset, member, pools = org_read_presigner
    before = _tables_intact(conn)
    allowed = claims.get("role") == "service_role" or (
        claims.get("role", "anon") == "authenticated" and claims.get("sub") == str(member)
    )
    try:
        url = presigner.get_url(asset, claims=claims)
    except AssetNotFound:
        url = None
    except DatabaseError as exc:  # pragma: no cover - the failure this test looks for
        pytest.fail(f"claims reached the database as something other than data: {exc}")
    assert (url is not None) == allowed
    try:
        urls = presigner.get_urls([asset], claims=claims)
        assert (asset in urls) == allowed
    except ValueError:
        assert claims.get("role", "anon") not in ("anon", "authenticated", "service_role")
    assert _tables_intact(conn) == before
    (pool,) = pools  # the presigner's one pool, of one connection
    with pool.connection() as pooled:
        user, leftover = pooled.execute(
            "select current_user, coalesce(current_setting('request.jwt.claims', true), '')"
        ).fetchone()
    assert user == conn.execute("select current_user").fetchone()[0] and leftover == ""
