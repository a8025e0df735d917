"""Proof of erasure: every deletion of the drain recorded once, crash or not (trr_assets/erasures.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import structlog.testing

from tests.deletes.helpers import add_asset, object_exists, queue
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import cli, db, deletes, erasures


@pytest.fixture
def versioned(s3: Any) -> Any:
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def recorded(settings: Any, **filters: Any) -> list[dict[str, Any]]:
    with db.connect(settings.database, autocommit=True) as conn:
        return list(erasures.listed(conn, **filters))


def all_versions(s3: Any, key: str) -> list[tuple[str, bool, int]]:
    """(version id, is a delete marker, size) of every version of exactly ``key``."""
    page = s3.list_object_versions(Bucket=TEST_BUCKET, Prefix=key)
    return [(v["VersionId"], False, v["Size"]) for v in page.get("Versions", []) if v["Key"] == key] + [
        (m["VersionId"], True, 0) for m in page.get("DeleteMarkers", []) if m["Key"] == key
    ]


def crash_on_confirm(conn: Any, ids: Any, *_: Any) -> None:
    """In place of erasures.confirm: the process dies after S3's answer, before the commit."""
    if ids:
        raise RuntimeError("killed between S3's answer and the commit")


def test_drain_records_each_deleted_object_once(conn, settings, s3):
    show = make_show(conn)
    first, key = add_asset(conn, s3, show, "a.jpg")
    second, other = add_asset(conn, s3, show, "b.jpg")
    conn.execute("delete from core.show_assets where id in (%s, %s)", (first, second))

    assert deletes.drain(settings).deleted == 2

    rows = recorded(settings)
    assert sorted(r["key"] for r in rows) == [key, other]
    for row in rows:
        assert (row["bucket"], row["version_id"], row["kind"], row["deleted_by"]) == (
            TEST_BUCKET, None, "object", "drain")
        assert datetime.fromisoformat(row["deleted_at"]) > datetime.now(timezone.utc) - timedelta(minutes=5)
        assert "delete_marker_version_id" not in row
    assert conn.execute("select count(*) from trr_assets.erasures where state = 'intended'").fetchone() == (0,)


def test_refused_deletion_is_not_recorded(conn, settings, s3):
    """A deletion S3 refuses (here: no such bucket) leaves no erasure and no open intent."""
    show = make_show(conn)
    conn.execute("insert into core.show_assets (show_id, bucket, object_key) values (%s, 'trr-no-such-bucket', 'k')",
                 (show,))
    conn.execute("delete from core.show_assets")

    assert deletes.drain(settings).errors == 1

    assert recorded(settings) == []
    assert conn.execute("select count(*) from trr_assets.erasures").fetchone() == (0,)


def test_plain_delete_on_versioned_bucket_records_the_marker_it_placed(conn, settings, versioned):
    show = make_show(conn)
    asset, key = add_asset(conn, versioned, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))

    deletes.drain(settings)

    [marker] = [v for v, is_marker, _ in all_versions(versioned, key) if is_marker]
    [row] = recorded(settings)
    assert (row["kind"], row["version_id"], row["delete_marker_version_id"]) == ("object", None, marker)


def test_all_versions_records_every_version_with_its_size_and_the_check(conn, db_url, aws_env, versioned):
    settings = make_settings(db_url, deletes={"all_versions": True})
    show = make_show(conn)
    asset, key = add_asset(conn, versioned, show, "a.jpg", body=b"v1")
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"version2")
    versioned.delete_object(Bucket=TEST_BUCKET, Key=key)
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"v-three")
    before = all_versions(versioned, key)
    conn.execute("delete from core.show_assets where id = %s", (asset,))

    assert deletes.drain(settings).deleted == 1

    assert all_versions(versioned, key) == []
    rows = recorded(settings, key=key)
    erased = sorted((r["version_id"], r["kind"] == "delete_marker", r.get("size", 0))
                    for r in rows if r["kind"] != "no_version_remains")
    assert erased == sorted(before)
    assert [r["kind"] for r in rows if r["version_id"] is not None].count("version") == 3
    [check] = [r for r in rows if r["kind"] == "no_version_remains"]
    assert check["versions_remaining"] == 0 and check["bucket"] == TEST_BUCKET


def test_crash_between_s3_delete_and_record_is_recorded_on_the_retry(conn, db_url, aws_env, s3, monkeypatch):
    """S3 deleted the object, then the drain died before its commit: the retry records it, once."""
    settings = make_settings(db_url)
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    real_confirm = erasures.confirm

    monkeypatch.setattr(erasures, "confirm", crash_on_confirm)
    with pytest.raises(RuntimeError):
        deletes.drain(settings)
    assert not object_exists(s3, key)  # S3's side happened
    assert recorded(settings) == [] and len(queue(conn)) == 1

    monkeypatch.setattr(erasures, "confirm", real_confirm)
    deletes.drain(settings)

    assert [r["key"] for r in recorded(settings)] == [key]
    assert queue(conn) == []
    assert conn.execute("select count(*) from trr_assets.erasures").fetchone() == (1,)


def test_crash_after_all_versions_deleted_is_settled_on_the_retry(conn, db_url, aws_env, versioned, monkeypatch):
    """The versions S3 removed before the crash are no longer listed on the retry:
    their intents are settled (looked up, found gone), each recorded once."""
    settings = make_settings(db_url, deletes={"all_versions": True, "settle_after_seconds": 0})
    show = make_show(conn)
    asset, key = add_asset(conn, versioned, show, "a.jpg", body=b"v1")
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"v2")
    before = sorted(v for v, _, _ in all_versions(versioned, key))
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    real_confirm = erasures.confirm
    monkeypatch.setattr(erasures, "confirm", crash_on_confirm)
    with pytest.raises(RuntimeError):
        deletes.drain(settings)
    assert all_versions(versioned, key) == [] and recorded(settings) == []

    monkeypatch.setattr(erasures, "confirm", real_confirm)
    with structlog.testing.capture_logs() as logs:
        deletes.drain(settings)

    rows = recorded(settings, key=key)
    assert sorted(r["version_id"] for r in rows if r["kind"] == "version") == before
    assert [r["versions_remaining"] for r in rows if r["kind"] == "no_version_remains"] == [0]
    assert queue(conn) == []
    assert {"event": "erasures_settled", "confirmed": 2, "dropped": 0, "log_level": "info"} in logs


def test_an_intent_whose_object_is_still_there_is_dropped(conn, settings, s3):
    """An intent left by a process that died before its S3 call: the object is
    still there, so nothing is recorded as erased."""
    s3.put_object(Bucket=TEST_BUCKET, Key="shows/x/kept.jpg", Body=b"x")
    with db.connect(settings.database, autocommit=True) as side:
        erasures.intend(side, [erasures.Item(TEST_BUCKET, "shows/x/kept.jpg", "object"),
                               erasures.Item(TEST_BUCKET, "shows/x/gone.jpg", "object")], deleted_by="drain")
    client = deletes.storage.make_client(settings.s3)

    assert erasures.settle(conn, client, older_than_seconds=0) == (1, 1)

    assert [r["key"] for r in recorded(settings)] == ["shows/x/gone.jpg"]
    assert conn.execute("select count(*) from trr_assets.erasures where state = 'intended'").fetchone() == (0,)


def test_young_intents_are_left_to_the_run_that_made_them(conn, settings, s3):
    with db.connect(settings.database, autocommit=True) as side:
        erasures.intend(side, [erasures.Item(TEST_BUCKET, "shows/x/a.jpg", "object")], deleted_by="drain")
    client = deletes.storage.make_client(settings.s3)

    assert erasures.settle(conn, client, older_than_seconds=900) == (0, 0)


def test_erasures_cli_prints_json_lines_filtered(conn, s3, capsys, db_url, tmp_path):
    from tests.reconcile.helpers import write_config

    settings = make_settings(db_url)
    config = ["--config", str(write_config(tmp_path / "config.toml", db_url))]
    show = make_show(conn)
    ids_keys = [add_asset(conn, s3, show, name) for name in ("a.jpg", "b.jpg")]
    conn.execute("delete from core.show_assets")
    deletes.drain(settings)
    capsys.readouterr()

    assert cli.main([*config, "erasures"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(k for _, k in ids_keys)
    assert all({"bucket", "key", "version_id", "deleted_at"} <= set(line) for line in lines)

    assert cli.main([*config, "erasures", "--key", ids_keys[0][1], "--bucket", TEST_BUCKET]) == 0
    assert [json.loads(x)["key"] for x in capsys.readouterr().out.splitlines()] == [ids_keys[0][1]]

    assert cli.main([*config, "erasures", "--bucket", "other"]) == 0
    assert capsys.readouterr().out == ""

    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert cli.main([*config, "erasures", "--since", future]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main([*config, "erasures", "--since", "2000-01-01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_erasures_cli_bad_since_is_usage_error(capsys):
    assert cli.main(["erasures", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- reconcile's repairs -----------------------------------------------------------


def test_reconcile_delete_and_quarantine_record_their_deletions(conn, db_url, aws_env, s3):
    from tests.reconcile.helpers import put, run

    show = make_show(conn)
    orphan = f"shows/{show}/orphan.jpg"
    put(s3, orphan, b"12345")
    settings = make_settings(db_url, reconcile={"orphaned_objects": "delete", "max_delete_fraction": 1.0})
    run(settings, repair=True)
    aside = f"shows/{show}/aside.jpg"
    put(s3, aside, b"123")
    settings = make_settings(db_url, reconcile={"orphaned_objects": "quarantine", "max_delete_fraction": 1.0})
    run(settings, repair=True)

    rows = recorded(settings)
    assert [(r["key"], r["kind"], r["size"], r["deleted_by"]) for r in rows] == [
        (orphan, "object", 5, "reconcile_orphaned_object"), (aside, "object", 3, "reconcile_quarantine")]


def test_reconcile_crash_between_delete_and_record_is_settled_by_the_next_run(conn, db_url, aws_env, s3, monkeypatch):
    from tests.reconcile.helpers import put, run

    show = make_show(conn)
    orphan = f"shows/{show}/orphan.jpg"
    put(s3, orphan)
    settings = make_settings(db_url, reconcile={"orphaned_objects": "delete", "max_delete_fraction": 1.0},
                             deletes={"settle_after_seconds": 0})
    real_confirm = erasures.confirm
    monkeypatch.setattr(erasures, "confirm", crash_on_confirm)
    with pytest.raises(RuntimeError):
        run(settings, repair=True)
    assert not object_exists(s3, orphan) and recorded(settings) == []

    monkeypatch.setattr(erasures, "confirm", real_confirm)
    run(settings, repair=True)  # finds nothing left to delete; settles the intent

    assert [(r["key"], r["deleted_by"]) for r in recorded(settings)] == [(orphan, "reconcile_orphaned_object")]
