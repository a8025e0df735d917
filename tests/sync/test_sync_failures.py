"""sync under failure and concurrency: failed buckets, database errors, a racing delete."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
import structlog

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from tests.sync.helpers import (
    FailingHeads,
    object_info,
    put,
    rows,
    run,
    show_key,
    sync_settings,
    upsert_blocked_until_commit,
)
from trr_assets import cli
from trr_assets.config import Settings
from trr_assets.errors import DatabaseError, StorageError
from trr_assets.storage import ObjectInfo
from trr_assets.writer import upsert_objects

MISSING_BUCKET = "trr-test-no-such-bucket"


@pytest.fixture(autouse=True)
def _restore_structlog():
    """`cli.main` configures structlog onto pytest's captured stderr; undo it afterwards."""
    yield
    structlog.reset_defaults()


def test_missing_bucket_fails_alone(conn, db_url, s3):
    """A missing bucket goes into `failed`; the other bucket is still synced."""
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    settings = sync_settings(db_url, buckets=[MISSING_BUCKET, TEST_BUCKET])

    report = run(settings, s3)

    assert set(rows(conn)) == {show_key(show, "a.jpg")}
    assert report.inserted == 1
    assert len(report.failed) == 1
    assert report.failed[0].startswith(f"{MISSING_BUCKET}: ") and "does not exist" in report.failed[0]
    assert report.buckets[TEST_BUCKET].error is None


def test_cli_sync_prints_the_report_and_exits_1_when_a_bucket_failed(conn, db_url, s3, tmp_path, capsys):
    """`trr-assets sync` prints one JSON report on stdout and exits 1 when a bucket failed."""
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    config = tmp_path / "config.toml"
    config.write_text(
        f"[database]\nurl = {json.dumps(db_url)}\n"
        f"[s3]\nbuckets = [{json.dumps(TEST_BUCKET)}, {json.dumps(MISSING_BUCKET)}]\nlist_shards = 2\n"
    )

    code = cli.main(["--config", str(config), "sync"])

    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert len(out) == 1
    report = json.loads(out[0])
    assert (report["scanned"], report["inserted"]) == (1, 1)
    assert len(report["failed"]) == 1 and MISSING_BUCKET in report["failed"][0]


def test_cli_sync_names_the_failed_bucket_in_one_error_line_on_stderr(conn, db_url, s3, tmp_path, capsys):
    """A failed bucket is a failure at run time (SPEC: exit 1, the error on stderr in one line), besides the
    JSON report on stdout."""
    put(s3, show_key(make_show(conn), "a.jpg"))
    config = tmp_path / "config.toml"
    config.write_text(
        f"[database]\nurl = {json.dumps(db_url)}\n"
        f"[s3]\nbuckets = [{json.dumps(TEST_BUCKET)}, {json.dumps(MISSING_BUCKET)}]\n"
    )

    code = cli.main(["--config", str(config), "sync"])

    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if not line.startswith("{")] == [
        f"trr-assets: error: sync: {MISSING_BUCKET}: s3: bucket {MISSING_BUCKET} does not exist or is not visible"
    ]


def test_cli_sync_exits_0_when_every_bucket_synced(conn, db_url, s3, tmp_path, capsys):
    """`trr-assets sync` exits 0 when no bucket failed."""
    put(s3, show_key(make_show(conn), "a.jpg"))
    config = tmp_path / "config.toml"
    config.write_text(f"[database]\nurl = {json.dumps(db_url)}\n[s3]\nbuckets = [{json.dumps(TEST_BUCKET)}]\n")

    code = cli.main(["--config", str(config), "sync"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["inserted"] == 1


def test_database_error_mid_run_keeps_committed_batches_and_next_run_completes(conn, db_url, s3):
    """A batch failing in PostgreSQL fails the bucket; earlier batches stay whole; the next run finishes."""
    show = make_show(conn)
    names = ["01.jpg", "02.jpg", "03.jpg", "04.jpg", "05-boom.jpg", "06.jpg"]
    etags = {show_key(show, n): put(s3, show_key(show, n), n.encode()) for n in names}
    conn.execute(
        "create function test_boom() returns trigger language plpgsql as $$"
        " begin if new.object_key like '%boom%' then raise exception 'boom'; end if; return new; end $$"
    )
    conn.execute("create trigger test_boom before insert on core.show_assets for each row execute function test_boom()")
    settings = sync_settings(db_url, list_shards=1, batch_size=2)

    failed = run(settings, s3)

    committed = rows(conn)
    assert failed.failed and "boom" in failed.failed[0]
    assert set(committed) == {show_key(show, n) for n in names[:4]}
    assert all(row[2] == etags[key] and row[1] == 6 for key, row in committed.items())

    conn.execute("drop trigger test_boom on core.show_assets")
    second = run(settings, s3)

    assert second.failed == []
    assert set(rows(conn)) == set(etags)
    assert (second.inserted, second.unchanged) == (2, 4)


def test_unreachable_database_fails_the_whole_run(aws_env, s3, caplog):
    """With no database to talk to, sync raises one DatabaseError (exit 1) instead of reporting; the log says why."""
    settings = make_settings("postgresql://nobody@127.0.0.1:9/none", database={"connect_timeout_seconds": 1.0})

    with caplog.at_level("WARNING", logger="psycopg.pool"), pytest.raises(DatabaseError) as caught:
        run(settings, s3)

    assert str(caught.value) == "database: cannot connect: no connection within 1 s (the log has each attempt's error)"
    assert any("Connection refused" in record.getMessage() for record in caplog.records)


def test_upsert_objects_deduplicates_within_a_batch_and_counts_vanished_objects(conn, db_url, s3):
    """The same key twice in a batch makes one row; an object gone before its HEAD makes none."""
    show = make_show(conn)
    key, gone = show_key(show, "a.jpg"), show_key(show, "gone.jpg")
    put(s3, key)
    obj = object_info(s3, key)
    settings: Settings = sync_settings(db_url)
    ghost = ObjectInfo(gone, 1, "0" * 32, datetime.now(timezone.utc))

    with psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(writer, s3, TEST_BUCKET, [obj, ghost, obj], settings=settings)

    assert set(rows(conn)) == {key}
    assert (counts.inserted, counts.vanished, counts.skipped) == (1, 1, 0)


def test_upsert_objects_over_several_batches_writes_each_key_once_and_adds_up_the_counts(conn, db_url, s3):
    """Several batches: every row once, counts summed, the guard disarmed again in the caller's transaction."""
    show = make_show(conn)
    objects = []
    for i in range(7):
        put(s3, show_key(show, f"{i:02d}.jpg"), bytes([i]) * (i + 1))
        objects.append(object_info(s3, show_key(show, f"{i:02d}.jpg")))
    ghost = ObjectInfo(show_key(show, "08-gone.jpg"), 1, "0" * 32, datetime.now(timezone.utc))
    no_show = ObjectInfo(show_key(uuid.uuid4(), "x.jpg"), 1, "0" * 32, datetime.now(timezone.utc))
    listing = [*objects[:3], objects[1], no_show, *objects[3:], ghost]
    settings = sync_settings(db_url, batch_size=2)

    with psycopg.connect(db_url) as writer:  # the caller holds a transaction: each batch is a savepoint
        with writer.transaction():
            counts = upsert_objects(writer, s3, TEST_BUCKET, listing, settings=settings)
            guard = writer.execute("select current_setting('trr_assets.refuse_queued_keys', true)").fetchone()

    assert set(rows(conn)) == {o.key for o in objects}
    assert all(row[1] == int(key[-6:-4]) + 1 for key, row in rows(conn).items())
    assert (counts.inserted, counts.updated, counts.vanished, counts.skipped) == (7, 0, 1, 1)
    assert counts.skipped_by_reason == {"unknown_show": 1}
    assert guard == ("off",)


def test_upsert_objects_failing_in_a_later_batch_keeps_the_batches_before_it_whole(conn, db_url, s3):
    """An S3 error while batch 3 is HEADed ends the call: batches 1-2 committed whole, nothing of the rest."""
    show = make_show(conn)
    keys = [show_key(show, f"{i:02d}.jpg") for i in range(8)]
    for key in keys:
        put(s3, key)
    objects = [object_info(s3, key) for key in keys]
    settings = sync_settings(db_url, batch_size=2)

    with psycopg.connect(db_url, autocommit=True) as writer:
        with pytest.raises(StorageError, match="boom"):
            upsert_objects(writer, FailingHeads(s3, keys[4]), TEST_BUCKET, objects, settings=settings)
        status = writer.info.transaction_status

    assert set(rows(conn)) == set(keys[:4])
    assert status == psycopg.pq.TransactionStatus.IDLE


def test_upsert_objects_never_inserts_a_queued_key(conn, db_url, s3):
    """upsert_objects (reconcile's import path too) skips a key whose deletion is queued and keeps it queued."""
    show = make_show(conn)
    key = show_key(show, "a.jpg")
    put(s3, key)
    settings = sync_settings(db_url)
    run(settings, s3)
    conn.execute("delete from core.show_assets where object_key = %s", (key,))

    with psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(writer, s3, TEST_BUCKET, [object_info(s3, key)], settings=settings)

    assert rows(conn) == {}
    assert conn.execute("select object_key from trr_assets.delete_queue").fetchall() == [(key,)]
    assert (counts.inserted, counts.pending_deletes) == (0, 1)


def test_upsert_racing_a_delete_does_not_resurrect_the_row(conn, db_url, s3):
    """A row deleted (deletion queued) while the upsert waits on it is not re-inserted, and stays queued."""
    show = make_show(conn)
    key = show_key(show, "a.jpg")
    put(s3, key, b"v1")
    settings = sync_settings(db_url)
    run(settings, s3)
    put(s3, key, b"v2, changed")  # the listing now says: changed, update the row
    changed = object_info(s3, key)

    with psycopg.connect(db_url) as deleter:
        deleter.execute("delete from core.show_assets where object_key = %s", (key,))  # not committed yet
        counts = upsert_blocked_until_commit(conn, deleter, db_url, lambda writer: upsert_objects(
            writer, s3, TEST_BUCKET, [changed], settings=settings))

    assert rows(conn) == {}
    assert conn.execute("select object_key, state from trr_assets.delete_queue").fetchall() == [(key, "pending")]
    assert (counts.inserted, counts.updated, counts.pending_deletes) == (0, 0, 1)
