"""The presigner against a real PostgreSQL: rows and RLS decide visibility,
uploads record their row first, the CLI uses the same code, and a presigned
URL really fetches the object from an S3 endpoint over HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import cli, db, storage
from trr_assets.config import DatabaseSettings, Settings
from trr_assets.errors import ConfigError, DatabaseError, TrrAssetsError
from trr_assets.presign import AssetNotFound, Presigner, UploadRefused, safe_filename

MEMBER = uuid.UUID("11111111-1111-4111-8111-111111111111")
STRANGER = uuid.UUID("22222222-2222-4222-8222-222222222222")


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """cli.main configures structlog onto the captured stderr; put the defaults back."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def presigner(settings: Settings) -> Iterator[Presigner]:
    """A presigner whose clock stands still, so URLs for one key compare equal."""
    with Presigner(settings, clock=lambda: 1_764_000_000.0) as p:
        yield p


def add_asset(conn: psycopg.Connection[Any], show: uuid.UUID, key: str | None = None,
              bucket: str = TEST_BUCKET) -> uuid.UUID:
    """Insert an asset row as the table owner; return its id."""
    key = key or f"shows/{show}/{uuid.uuid4()}.png"
    row = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes)"
        " values (%s, %s, %s, 'image/png', 3) returning id",
        (show, bucket, key),
    ).fetchone()
    assert row is not None
    return row[0]


def url_key(url: str) -> str:
    return urlsplit(url).path


def asset_count(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("select count(*) from core.show_assets").fetchone()[0]


@pytest.fixture
def org_read(db_url: str, conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    """The opt-in org-scoped read policy, with one show in an org MEMBER belongs to."""
    db.migrate(DatabaseSettings(url=db_url), enable=["org-read"])
    org = conn.execute("insert into core.organizations (name) values ('org') returning id").fetchone()[0]
    conn.execute("insert into core.org_memberships (org_id, user_id) values (%s, %s)", (org, MEMBER))
    show = make_show(conn, org_id=org)
    return {"show": show, "asset": add_asset(conn, show)}


def member(role: str = "authenticated", sub: Any = MEMBER) -> dict[str, Any]:
    return {"role": role, "sub": str(sub), "aud": "authenticated"}


# --- reading -------------------------------------------------------------------


def test_get_url_signs_the_rows_bucket_and_key(presigner, conn):
    """Without claims (the service), an existing row gets a SigV4 URL for its own bucket and key."""
    show = make_show(conn)
    asset = add_asset(conn, show, key=f"shows/{show}/photo one.png")
    url = presigner.get_url(asset)
    assert url.startswith(f"https://{TEST_BUCKET}.s3.amazonaws.com/shows/{show}/photo%20one.png?")
    assert parse_qs(urlsplit(url).query)["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert presigner.get_url(str(asset).upper()) == url


def test_no_row_no_url(presigner, conn):
    """An id with no row raises AssetNotFound."""
    make_show(conn)
    with pytest.raises(AssetNotFound):
        presigner.get_url(uuid.uuid4())


def test_deleted_row_hides_the_asset_at_once(presigner, conn):
    """Once the row is deleted, no URL is made, even though the object may still exist."""
    asset = add_asset(conn, make_show(conn))
    presigner.get_url(asset)
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    with pytest.raises(AssetNotFound):
        presigner.get_url(asset)
    assert presigner.get_urls([asset]) == {}


def test_public_read_policy_lets_every_caller_see(presigner, conn):
    """With the shipped public read policy, anon, authenticated and service_role claims all get the URL."""
    asset = add_asset(conn, make_show(conn))
    expected = presigner.get_url(asset)
    for claims in ({"role": "anon"}, member(sub=STRANGER), {"role": "service_role"}, {}):
        assert presigner.get_url(asset, claims=claims) == expected
        assert presigner.get_urls([asset], claims=claims) == {asset: expected}


def test_org_read_policy_shows_assets_to_members_only(presigner, org_read):
    """With org-read enabled, a member and the service see the asset; a non-member and anon get AssetNotFound."""
    asset = org_read["asset"]
    expected = presigner.get_url(asset)
    assert presigner.get_url(asset, claims=member()) == expected
    assert presigner.get_url(asset, claims={"role": "service_role"}) == expected
    for outsider in (member(sub=STRANGER), {"role": "anon"}, {}, {"role": "authenticated"}):
        with pytest.raises(AssetNotFound):
            presigner.get_url(asset, claims=outsider)
        assert presigner.get_urls([asset], claims=outsider) == {}
    assert presigner.get_urls([asset], claims=member()) == {asset: expected}


def test_claims_naming_any_other_role_never_get_a_url(presigner, conn):
    """Claims whose role is not anon/authenticated/service_role (the owner, injection attempts) get no URL."""
    asset = add_asset(conn, make_show(conn))
    owner = conn.execute("select current_user").fetchone()[0]
    for role in (owner, "postgres", "admin", 'authenticated"; drop table core.show_assets; --', "", None, 7):
        with pytest.raises(AssetNotFound):
            presigner.get_url(asset, claims={"role": role})
        with pytest.raises(ValueError, match="role"):
            presigner.get_urls([asset], claims={"role": role})
    assert asset_count(conn) == 1


def test_malformed_sub_claim_hides_assets_instead_of_failing(presigner, org_read):
    """A `sub` that is not a UUID makes auth.uid() fail in the policy: the asset is not visible, no DatabaseError."""
    for sub in ("not-a-uuid", 12345, ["x"]):
        with pytest.raises(AssetNotFound):
            presigner.get_url(org_read["asset"], claims={"role": "authenticated", "sub": sub})
        assert presigner.get_urls([org_read["asset"]], claims={"role": "authenticated", "sub": sub}) == {}


def test_malformed_ids(presigner, conn):
    """get_url treats a malformed id as not found; get_urls raises ValueError (and refuses one bare string)."""
    add_asset(conn, make_show(conn))
    for bad in ("nope", "", "1" * 500, 42, None):
        with pytest.raises(AssetNotFound):
            presigner.get_url(bad)
    with pytest.raises(ValueError, match="not a UUID"):
        presigner.get_urls([uuid.uuid4(), "nope"])
    with pytest.raises(ValueError, match="collection"):
        presigner.get_urls(str(uuid.uuid4()))


def test_get_urls_returns_the_visible_ids_keyed_as_given(presigner, conn, org_read):
    """A batch mixing UUIDs, strings in either case, unknown and invisible ids returns the visible ones under the given
    keys."""
    public_show = make_show(conn)
    conn.execute("update core.shows set org_id = (select org_id from core.shows where id = %s) where id = %s",
                 (org_read["show"], public_show))
    other_org = conn.execute("insert into core.organizations (name) values ('other') returning id").fetchone()[0]
    hidden = add_asset(conn, make_show(conn, org_id=other_org))
    a, b = org_read["asset"], add_asset(conn, public_show)
    given = [a, str(b).upper(), str(uuid.uuid4()), hidden, str(a)]
    urls = presigner.get_urls(given, claims=member())
    assert list(urls) == [a, str(b).upper(), str(a)]
    assert urls[a] == urls[str(a)] == presigner.get_url(a)
    assert urls[str(b).upper()] == presigner.get_url(b)
    service = presigner.get_urls(given)
    assert set(service) == {a, str(b).upper(), hidden, str(a)}


def test_get_urls_takes_up_to_a_thousand_ids(presigner, conn):
    """1,000 ids are answered in one call; 1,001 raise ValueError; none return {}."""
    show = make_show(conn)
    ids = [r[0] for r in conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key)"
        " select %s, %s, 'shows/' || %s || '/' || g || '.png' from generate_series(1, 1000) g returning id",
        (show, TEST_BUCKET, str(show)),
    )]
    urls = presigner.get_urls(ids, claims={"role": "anon"})
    assert len(urls) == 1000 and len(set(urls.values())) == 1000
    assert all(url_key(urls[i]).endswith(".png") for i in ids)
    with pytest.raises(ValueError, match="1000"):
        presigner.get_urls([*ids, uuid.uuid4()])
    assert presigner.get_urls([]) == {}


def test_role_and_claims_end_with_the_transaction(db_url, aws_env, conn, org_read, made_pools):
    """After a call with claims (successful or not), the pooled connection is the owner again, with no claims set."""
    settings = make_settings(db_url, database={"pool_min_size": 1, "pool_max_size": 1})
    owner = conn.execute("select current_user").fetchone()[0]
    with Presigner(settings) as presigner:
        presigner.get_url(org_read["asset"], claims=member())
        with pytest.raises(AssetNotFound):
            presigner.get_url(org_read["asset"], claims={"role": "authenticated", "sub": "bad"})
        with pytest.raises(UploadRefused):
            presigner.upload_url(show_id=org_read["show"], filename="a.png", content_type="image/png",
                                 size_bytes=1, claims=member())
        (pool,) = made_pools  # the presigner's one pool, of one connection
        with pool.connection() as pooled:
            user, claims = pooled.execute(
                "select current_user, coalesce(current_setting('request.jwt.claims', true), '')"
            ).fetchone()
        assert (user, claims) == (owner, "")
        # And the service, on that same connection, sees what RLS would hide.
        assert presigner.get_url(org_read["asset"])


def test_pool_and_client_are_made_once_and_shared_by_threads(settings, conn, monkeypatch):
    """Sixteen threads on a fresh presigner get correct URLs from one pool and one S3 client."""
    asset = add_asset(conn, make_show(conn))
    made = {"pools": 0, "clients": 0}
    real_pool, real_client = db.make_pool, storage.make_client

    def count(kind: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            made[kind] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(db, "make_pool", count("pools", real_pool))
    monkeypatch.setattr(storage, "make_client", count("clients", real_client))
    presigner = Presigner(settings, clock=lambda: 1_764_000_000.0)
    assert made == {"pools": 0, "clients": 0}  # nothing happens in the constructor
    start = threading.Barrier(16)
    results: list[Any] = []

    def work() -> None:
        start.wait()
        try:
            results.append(presigner.get_url(asset, claims={"role": "anon"}))
        except Exception as exc:  # collected, asserted below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    presigner.close()
    assert made == {"pools": 1, "clients": 1}
    assert len(results) == 16 and len(set(results)) == 1 and isinstance(results[0], str)


def test_constructor_does_no_io_and_failures_are_one_line(aws_env, tmp_path):
    """Presigner() with an unreachable database constructs; the first lookup is a one-line DatabaseError."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[database]\nurl = "postgresql://nobody:s3cret@127.0.0.1:1/none"\nconnect_timeout_seconds = 1.0\n'
        '[s3]\nbuckets = ["trr-test-assets"]\n'
    )
    presigner = Presigner.from_config(str(config))
    assert presigner.settings.source == str(config)
    with pytest.raises(DatabaseError) as caught:
        presigner.get_url(uuid.uuid4())
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)
    presigner.close()
    with pytest.raises(TrrAssetsError, match="closed"):
        presigner.get_url(uuid.uuid4())


# --- uploads -------------------------------------------------------------------


def test_upload_url_records_the_row_first_and_binds_type_and_length(settings, conn):
    """The service's upload: row written with type, size and owner; PUT signs content-length and content-type."""
    show = make_show(conn)
    owner = uuid.uuid4()
    now = 1_700_000_000.25
    with Presigner(settings, clock=lambda: now) as presigner:
        grant = presigner.upload_url(show_id=str(show), filename="Holiday Photo.PNG", content_type="Image/PNG",
                                     size_bytes=1234, owner_id=owner)
    row = conn.execute(
        "select show_id, bucket, object_key, content_type, size_bytes, owner_id from core.show_assets where id = %s",
        (grant.asset_id,),
    ).fetchone()
    assert row == (show, TEST_BUCKET, grant.key, "image/png", 1234, owner)
    assert grant.bucket == TEST_BUCKET
    prefix, _, name = grant.key.rpartition("/")
    assert prefix == f"shows/{show}"
    assert uuid.UUID(name[:36]) and name[36:] == "-Holiday-Photo.PNG"
    assert grant.headers == {"Content-Type": "image/png", "Content-Length": "1234"}
    query = parse_qs(urlsplit(grant.url).query)
    assert query["X-Amz-SignedHeaders"] == ["content-length;content-type;host"]
    assert int(grant.expires_at.timestamp()) == int(now) + settings.presign.expires_seconds
    assert grant.expires_at.tzinfo is not None


def test_upload_refused_for_callers_rls_does_not_let_write(presigner, conn):
    """authenticated and anon claims may not insert assets (service-only write policy): UploadRefused, no row."""
    show = make_show(conn)
    for claims in (member(), {"role": "anon"}, {"role": "authenticated", "sub": "junk"}):
        with pytest.raises(UploadRefused):
            presigner.upload_url(show_id=show, filename="a.png", content_type="image/png", size_bytes=1, claims=claims)
    assert asset_count(conn) == 0
    grant = presigner.upload_url(show_id=show, filename="a.png", content_type="image/png", size_bytes=1,
                                 claims={"role": "service_role"})
    assert conn.execute("select object_key from core.show_assets").fetchone()[0] == grant.key


def test_upload_refused_for_size_type_and_unknown_show(db_url, aws_env, conn):
    """Too large, a type outside the allow-list, or no such show: UploadRefused and no row; malformed arguments:
    ValueError."""
    settings = make_settings(
        db_url, presign={"max_upload_bytes": 1000, "allowed_content_types": ["image/*", "video/mp4"]}
    )
    show = make_show(conn)
    ok = {"show_id": show, "filename": "a.png", "content_type": "image/png", "size_bytes": 1000}
    with Presigner(settings) as presigner:
        for change in ({"size_bytes": 1001}, {"content_type": "video/webm"}, {"content_type": "text/html"},
                       {"show_id": uuid.uuid4()}):
            with pytest.raises(UploadRefused):
                presigner.upload_url(**{**ok, **change})
        for change in ({"size_bytes": -1}, {"size_bytes": True}, {"content_type": "image/png; charset=x"},
                       {"content_type": "image/png\r\nX-Evil: 1"}, {"show_id": "show-1"}, {"owner_id": "me"},
                       {"filename": None}, {"claims": {"role": "root"}}):
            with pytest.raises(ValueError):
                presigner.upload_url(**{**ok, **change})
        assert asset_count(conn) == 0
        presigner.upload_url(**{**ok, "content_type": "video/mp4"})
    assert asset_count(conn) == 1


def test_upload_bucket_is_configurable(db_url, aws_env, conn):
    """presign.upload_bucket wins over the first of s3.buckets; with neither, a ConfigError and no row."""
    show = make_show(conn)
    args = {"show_id": show, "filename": "a.png", "content_type": "image/png", "size_bytes": 1}
    settings = make_settings(db_url, s3={"bucket_regions": {"uploads-here": "us-east-1"}},
                             presign={"upload_bucket": "uploads-here"})
    with Presigner(settings) as presigner:
        assert presigner.upload_url(**args).bucket == "uploads-here"
    with Presigner(make_settings(db_url, s3={"buckets": []})) as presigner:
        with pytest.raises(ConfigError, match="upload_bucket"):
            presigner.upload_url(**args)
    assert asset_count(conn) == 1


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("..", "file"),
        ("", "file"),
        (".bashrc", "file.bashrc"),
        ("my photo (1).JPG", "my-photo-1.JPG"),
        ("résumé.pdf", "résumé.pdf"),
        ("a\x00b\r\nc.png", "a-b-c.png"),
        ("evil\u202egnp.exe", "evil-gnp.exe"),
        ("x...y.tar.gz", "x.y.tar.gz"),
    ],
)
def test_safe_filename_examples(filename, expected):
    """Path tricks, controls and invisible characters are neutralised; the extension is kept."""
    assert safe_filename(filename) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["", ".png", ".MP4", ".jpeg"]))
def test_safe_filename_never_escapes_its_segment(name, extension):
    """For any input: no slash, backslash, '..', control or format character; bounded length; extension kept."""
    result = safe_filename(name + extension)
    assert result and "/" not in result and "\\" not in result and ".." not in result
    assert not result.startswith(".")
    assert all(c.isalnum() or c in "-_." for c in result)
    assert len(result) <= 100 + 17
    if extension:
        assert result.endswith(extension)


# --- the CLI -------------------------------------------------------------------


def _config(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "config.toml"
    url = db_url.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        f'[database]\nurl = "{url}"\n[s3]\nbuckets = ["{TEST_BUCKET}"]\n'
        f'bucket_regions = {{ {TEST_BUCKET} = "us-east-1", other-bucket = "us-east-1" }}\n'
        '[logging]\nformat = "json"\n'
    )
    return str(path)


def test_cli_presign_prints_the_url_of_an_asset(db_url, aws_env, conn, tmp_path, capsys):
    """`presign ASSET_ID` prints the asset's URL; --method put and --expires are honoured."""
    asset = add_asset(conn, make_show(conn), key="shows/x/cli.png")
    config = _config(tmp_path, db_url)
    assert cli.main(["--config", config, "presign", str(asset)]) == 0
    url = capsys.readouterr().out.strip()
    assert urlsplit(url).path == "/shows/x/cli.png" and "X-Amz-Signature=" in url
    assert cli.main(["--config", config, "presign", str(asset), "--method", "put", "--expires", "60"]) == 0
    query = parse_qs(urlsplit(capsys.readouterr().out.strip()).query)
    assert query["X-Amz-Expires"] == ["60"]


def test_cli_presign_s3_url_and_errors(db_url, aws_env, conn, tmp_path, capsys):
    """s3://BUCKET/KEY is signed as is; an unknown asset id exits 1, malformed targets and --expires exit 2."""
    config = _config(tmp_path, db_url)
    assert cli.main(["--config", config, "presign", "s3://other-bucket/a/b c.png"]) == 0
    assert urlsplit(capsys.readouterr().out.strip()).netloc == "other-bucket.s3.amazonaws.com"
    assert cli.main(["--config", config, "presign", str(uuid.uuid4())]) == 1
    err = capsys.readouterr().err
    assert "no asset with id" in err and err.count("\n") == 1
    for argv in (["not-an-id"], ["s3://bucket-only"], ["s3:///key"], [str(uuid.uuid4()), "--expires", "0"],
                 ["s3://b/k", "--expires", "604801"]):
        assert cli.main(["--config", config, "presign", *argv]) == 2
        assert capsys.readouterr().err.count("\n") == 1


# --- over HTTP against a local S3 endpoint -------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto in server mode on a free local port; yields its endpoint URL."""
    from tests.support.moto_server import moto_server

    with moto_server() as endpoint:
        yield endpoint


def test_presigned_urls_work_over_http(db_url, aws_env, conn, s3_server):
    """A presigned GET fetches the object's bytes; an upload grant's PUT (with its headers) stores the object."""
    settings = make_settings(db_url, s3={"endpoint_url": s3_server, "addressing_style": "path"})
    client = storage.make_client(settings.s3)
    client.create_bucket(Bucket=TEST_BUCKET)
    show = make_show(conn)
    key = f"shows/{show}/a b+c~d%e.png"
    client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"\x89PNG bytes", ContentType="image/png")
    asset = add_asset(conn, show, key=key)
    with Presigner(settings) as presigner:
        with urllib.request.urlopen(presigner.get_url(asset), timeout=10) as response:
            assert response.read() == b"\x89PNG bytes"
        body = b"GIF89a uploaded"
        grant = presigner.upload_url(show_id=show, filename="up.gif", content_type="image/gif", size_bytes=len(body))
        request = urllib.request.Request(grant.url, data=body, method="PUT", headers=grant.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(presigner.get_url(grant.asset_id), timeout=10) as response:
            assert response.read() == body
            assert response.headers["Content-Type"] == "image/gif"
        missing = presigner.url_for_key(TEST_BUCKET, f"shows/{show}/nothing-here.png")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(missing, timeout=10)
        assert caught.value.code == 404
