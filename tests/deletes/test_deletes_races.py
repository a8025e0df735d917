"""Paired deletes under concurrency and crashes: a drain interrupted between
S3 and its commit, a re-upload racing a drain, two drains at once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.deletes.helpers import DeleteCalls, add_asset, add_rows, object_body, object_exists, queue
from tests.support.postgres import make_show, wait_for_lock_wait
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import deletes, storage
from trr_assets.errors import DatabaseError

WAIT_SECONDS = 30  # seconds; only a bound on waiting for a condition, never asserted


def test_drain_interrupted_between_s3_and_commit_completes_on_next_run(conn, settings, s3):
    """The drain's connection dies after S3 confirmed but before the commit: the entry stays, and the next drain
    completes it."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    client = storage.make_client(settings.s3)

    def kill_drain_connection(**_: Any) -> None:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = %s and datname = current_database()",
            (deletes.DRAIN_APPLICATION_NAME,),
        )

    client.meta.events.register("after-call.s3.DeleteObjects", kill_drain_connection)

    with pytest.raises(DatabaseError):
        deletes.drain(settings, client=client)

    assert not object_exists(s3, key)  # S3 did delete it ...
    [entry] = queue(conn)  # ... but the completion never committed
    assert (entry["object_key"], entry["state"], entry["attempts"]) == (key, "pending", 0)

    report = deletes.drain(settings)  # deleting an already-deleted key is fine

    assert (report.deleted, report.pending, report.errors) == (1, 0, 0)
    assert queue(conn) == []


def test_reupload_during_drain_waits_for_the_drain_and_the_new_object_survives(conn, db_url, settings, s3):
    """An insert of a key the drain is deleting waits until the drain commits; then the row stands, no entry remains,
    and the PUT that follows survives."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    client = storage.make_client(settings.s3)
    in_s3, release, insert_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def pause_in_s3(**_: Any) -> None:
        in_s3.set()
        release.wait(WAIT_SECONDS)

    client.meta.events.register("before-call.s3.DeleteObjects", pause_in_s3)

    def run_drain() -> None:
        results["drain"] = deletes.drain(settings, client=client)

    def reupload() -> None:
        with psycopg.connect(db_url, autocommit=True, application_name="reupload-test") as other:
            other.execute(
                "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)",
                (show, TEST_BUCKET, key),
            )
        insert_done.set()

    drainer = threading.Thread(target=run_drain)
    drainer.start()
    uploader = None
    try:
        assert in_s3.wait(WAIT_SECONDS), "the drain never reached S3"
        uploader = threading.Thread(target=reupload)
        uploader.start()
        # Fails (the insert did not wait for the drain's lock) unless it does.
        wait_for_lock_wait(conn, "reupload-test", timeout_seconds=WAIT_SECONDS)
        assert not insert_done.is_set()
    finally:
        release.set()
        drainer.join(WAIT_SECONDS)
        if uploader is not None:
            uploader.join(WAIT_SECONDS)

    assert results["drain"].deleted == 1  # the old object went first ...
    assert insert_done.is_set()  # ... then the insert went through
    assert conn.execute("select count(*) from core.show_assets where object_key = %s", (key,)).fetchone()[0] == 1
    assert queue(conn) == []
    s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"new")  # the uploader PUTs after its row exists
    assert deletes.drain(settings).requests == 0
    assert object_body(s3, key) == b"new"


def test_concurrent_drains_delete_each_key_exactly_once(conn, db_url, aws_env, s3):
    """Two drains running at once take disjoint batches (SKIP LOCKED): every key is sent to S3 once, none twice, none
    left."""
    settings = make_settings(db_url, deletes={"batch_size": 50})
    show = make_show(conn)
    keys = add_rows(conn, show, 300)
    conn.execute("delete from core.show_assets")
    client = storage.make_client(settings.s3)
    calls = DeleteCalls(client)
    # Each drain's first request waits for the other's: both hold a locked
    # batch at the same moment, so the two really overlap.
    both_in_s3 = threading.Barrier(2, timeout=WAIT_SECONDS)
    first_call = threading.local()

    def meet(**_: Any) -> None:
        if not getattr(first_call, "done", False):
            first_call.done = True
            both_in_s3.wait()

    client.meta.events.register("before-call.s3.DeleteObjects", meet)
    reports: list[deletes.DrainReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(deletes.drain(settings, client=client))
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS * 2)

    assert errors == []
    sent = Counter(calls.keys)
    assert sorted(sent) == sorted(keys)
    assert max(sent.values()) == 1
    assert sum(r.deleted for r in reports) == 300
    assert queue(conn) == []
