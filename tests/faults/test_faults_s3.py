"""S3 throttling and errors: S3 answers 503 SlowDown or 500 InternalError for
a share of requests during sync, the delete drain and reconcile.

botocore retries them (``s3.retry_mode``, ``s3.max_attempts``, set by
``storage.make_client``); the tests count the tries on the wire to prove it.
A run either completes or fails cleanly (one-line error, nothing half
written), and a following run without faults leaves the rows and S3
consistent: a reconcile dry run finds no drift.

S3 is moto in server mode; faults are injected before a request is sent,
so a refused request never reaches S3 (as with a real 503). The backoff
botocore computes is slept a hundredth of (``quick_backoff``).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.moto_server import S3Server
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.support.s3_faults import S3Faults
from trr_assets import deletes, reconcile, storage, sync
from trr_assets.config import Settings
from trr_assets.errors import StorageError
from trr_assets.reconcile import ReconcileOptions


def _rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """``{key: (size, checksum)}`` of every row."""
    return {r[0]: (r[1], r[2]) for r in conn.execute("select object_key, size_bytes, checksum from core.show_assets")}


def _objects(server: S3Server) -> dict[str, tuple[int, str]]:
    """``{key: (size, etag)}`` of every object of the test bucket."""
    pages = server.client.get_paginator("list_objects_v2").paginate(Bucket=TEST_BUCKET)
    return {o["Key"]: (o["Size"], o["ETag"].strip('"')) for p in pages for o in p.get("Contents", ())}


def _plant_objects(conn: psycopg.Connection[Any], server: S3Server, shows: int, per_show: int) -> list[str]:
    keys = []
    for _ in range(shows):
        show = make_show(conn)
        for i in range(per_show):
            key = f"shows/{show}/{i:03d} photo.jpg"
            server.put(key, f"{key} body".encode() * (i + 1))
            keys.append(key)
    return keys


def _dry_run(settings: Settings) -> tuple[list[dict[str, Any]], reconcile.ReconcileSummary]:
    found: list[dict[str, Any]] = []
    summary = reconcile.run(settings, ReconcileOptions(), sink=found.append)
    return found, summary


def _assert_consistent(conn: psycopg.Connection[Any], server: S3Server, settings: Settings) -> None:
    """Rows and objects agree, and reconcile (fault-free) finds no drift."""
    found, summary = _dry_run(settings)
    assert found == [] and not summary.drift, found
    assert _rows(conn) == {k: v for k, v in _objects(server).items() if k in _rows(conn)}


# --- the retry policy ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_a_request_is_tried_exactly_s3_max_attempts_times_then_fails_in_one_line(
    s3_server, db_url, quick_backoff, mode
):
    """s3.max_attempts counts every try, the first included (config.example.toml); the error is one line."""
    settings = s3_server.settings(db_url, s3={"retry_mode": mode, "max_attempts": 3})
    client = storage.make_client(settings.s3)
    faults = S3Faults(client, every=1, fail_attempts=None, statuses=(503,))

    with pytest.raises(StorageError) as caught:
        storage.check_bucket(client, TEST_BUCKET)

    assert faults.count("HeadBucket") == 3
    assert [a.attempt for a in faults.attempts] == [1, 2, 3]
    assert len(quick_backoff) == 2  # a backoff before each retry
    assert "\n" not in str(caught.value) and TEST_BUCKET in str(caught.value)


def test_max_attempts_1_means_no_retry(s3_server, db_url, quick_backoff):
    """s3.max_attempts = 1: one try, no retry."""
    client = storage.make_client(s3_server.settings(db_url, s3={"max_attempts": 1}).s3)
    faults = S3Faults(client, every=1, fail_attempts=None)
    with pytest.raises(StorageError):
        list(storage.list_objects(client, TEST_BUCKET, prefix="shows/"))
    assert faults.count() == 1


# --- sync ----------------------------------------------------------------------------


def _sync_settings(server: S3Server, db_url: str) -> Settings:
    return server.settings(
        db_url, s3={"list_shards": 4, "list_concurrency": 2, "head_concurrency": 4}, sync={"batch_size": 10}
    )


def test_sync_under_throttling_retries_completes_and_the_next_run_has_nothing_to_do(
    conn, db_url, s3_server, quick_backoff
):
    """Every 3rd listing page and HEAD gets 503/500 twice: botocore retries each, the pass completes, every row is
    right; a fault-free pass then writes nothing and reconcile finds no drift."""
    keys = _plant_objects(conn, s3_server, shows=3, per_show=15)
    s3_server.put("shows/not-a-show/x.jpg")
    settings = _sync_settings(s3_server, db_url)
    client = storage.make_client(settings.s3, max_pool_connections=8)
    faults = S3Faults(client, every=3, fail_attempts=2)

    report = sync.run(settings, client=client, progress=False)

    assert report.failed == []
    assert (report.scanned, report.inserted, report.skipped) == (46, 45, 1)
    assert {a.operation for a in faults.injected} == {"ListObjectsV2", "HeadObject"}
    assert faults.count("HeadObject", faulted=True) == 2 * (45 // 3)
    assert faults.unanswered_faults() == []  # each refused try was followed by another
    assert _rows(conn) == {k: v for k, v in _objects(s3_server).items() if k in keys}

    again = sync.run(settings, progress=False)
    assert (again.inserted, again.updated, again.unchanged, again.failed) == (0, 0, 45, [])
    s3_server.client.delete_object(Bucket=TEST_BUCKET, Key="shows/not-a-show/x.jpg")  # reconcile's business
    _assert_consistent(conn, s3_server, settings)


def test_sync_when_s3_keeps_failing_fails_the_bucket_cleanly_and_the_next_run_converges(
    conn, db_url, s3_server, quick_backoff
):
    """HEADs that fail every try fail the bucket (one line in `failed`); the rows written are whole and right;
    the next, fault-free pass writes the rest and reconcile finds no drift."""
    keys = _plant_objects(conn, s3_server, shows=2, per_show=20)
    settings = _sync_settings(s3_server, db_url)
    client = storage.make_client(settings.s3, max_pool_connections=8)
    faults = S3Faults(client, every=7, fail_attempts=None, operations=frozenset({"HeadObject"}))

    report = sync.run(settings, client=client, progress=False)

    assert len(report.failed) == 1 and "\n" not in report.failed[0]
    assert report.failed[0].startswith(f"{TEST_BUCKET}: s3: head object")
    assert max(faults.tries_per_request("HeadObject").values()) == settings.s3.max_attempts
    objects = _objects(s3_server)
    written = _rows(conn)
    assert len(written) < len(keys)
    assert all(written[k] == objects[k] for k in written)  # nothing half written

    again = sync.run(settings, progress=False)
    assert again.failed == [] and again.inserted == len(keys) - len(written)
    assert _rows(conn) == objects
    _assert_consistent(conn, s3_server, settings)


# --- the delete drain ----------------------------------------------------------------


def _queue(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    return conn.execute(
        "select object_key, state, attempts from trr_assets.delete_queue order by object_key"
    ).fetchall()


def _queued_deletions(conn: psycopg.Connection[Any], server: S3Server, count: int) -> tuple[list[str], list[str]]:
    """``count`` objects with rows, whose rows are then deleted (queued); and 5 kept assets. Returns (gone, kept)."""
    show = make_show(conn)
    gone, kept = [], []
    for i in range(count + 5):
        key = f"shows/{show}/{i:04d}.jpg"
        etag = server.put(key, key.encode())
        conn.execute(
            "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum)"
            " values (%s, %s, %s, %s, %s)",
            (show, TEST_BUCKET, key, len(key.encode()), etag),
        )
        (gone if i < count else kept).append(key)
    conn.execute("delete from core.show_assets where object_key = any(%s)", (gone,))
    return gone, kept


def test_drain_under_throttling_deletes_everything_through_retries(conn, db_url, s3_server, quick_backoff):
    """Every 2nd DeleteObjects gets a 503/500 on its first try: botocore retries it, S3 is never seen to refuse,
    every queued object is gone, and nothing else."""
    gone, kept = _queued_deletions(conn, s3_server, 120)
    settings = s3_server.settings(db_url, deletes={"batch_size": 25})
    client = storage.make_client(settings.s3)
    faults = S3Faults(client, every=2, operations=frozenset({"DeleteObjects"}))

    report = deletes.drain(settings, client=client)

    assert (report.deleted, report.requests, report.errors, report.pending) == (120, 5, 0, 0)
    assert faults.count("DeleteObjects", faulted=True) == 2 and faults.unanswered_faults() == []
    assert faults.count("DeleteObjects") == 7  # 5 requests, 2 of them tried twice
    assert _queue(conn) == []
    assert s3_server.keys() == set(kept)
    _assert_consistent(conn, s3_server, settings)


def test_drain_when_s3_keeps_failing_loses_nothing_and_the_next_run_converges(conn, db_url, s3_server, quick_backoff):
    """DeleteObjects failing every try costs its batch's entries one attempt each and ends the run (the rest wait);
    no entry is lost, no object deleted; once S3 answers, the next drain deletes them all."""
    gone, kept = _queued_deletions(conn, s3_server, 60)
    settings = s3_server.settings(db_url, deletes={"batch_size": 25, "backoff_base_seconds": 0})
    client = storage.make_client(settings.s3)
    faults = S3Faults(client, every=1, fail_attempts=None, operations=frozenset({"DeleteObjects"}))

    report = deletes.drain(settings, client=client)

    assert (report.deleted, report.retried, report.requests, report.pending) == (0, 25, 1, 60)
    assert faults.count("DeleteObjects") == settings.s3.max_attempts
    attempts = sorted(attempts for _, state, attempts in _queue(conn))
    assert attempts == [0] * 35 + [1] * 25
    assert s3_server.keys() == set(gone) | set(kept)

    faults.active = False
    again = deletes.drain(settings, client=client)
    assert (again.deleted, again.pending, again.errors) == (60, 0, 0)
    assert _queue(conn) == [] and s3_server.keys() == set(kept)
    _assert_consistent(conn, s3_server, settings)


# --- reconcile -------------------------------------------------------------------------


def _plant_drift(conn: psycopg.Connection[Any], server: S3Server) -> dict[str, set[str]]:
    """In sync, orphaned objects, orphaned rows and mismatches, 6 of each, across 2 shows."""
    planted: dict[str, set[str]] = {
        "in_sync": set(),
        "orphaned_object": set(),
        "orphaned_row": set(),
        "mismatch": set(),
    }
    for _ in range(2):
        show = make_show(conn)
        for i in range(3):
            for kind in planted:
                key = f"shows/{show}/{kind}-{i}.jpg"
                planted[kind].add(key)
                etag = "0" * 32
                if kind != "orphaned_row":
                    etag = server.put(key, key.encode())
                if kind == "orphaned_object":
                    continue
                size = len(key.encode()) + (7 if kind == "mismatch" else 0)
                conn.execute(
                    "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum, updated_at)"
                    " values (%s, %s, %s, %s, %s, now() - interval '30 days')",
                    (show, TEST_BUCKET, key, size, etag if kind != "mismatch" else "1" * 32),
                )
    return planted


def test_reconcile_under_throttling_reports_and_repairs_exactly(conn, db_url, s3_server, quick_backoff):
    """With every 3rd listing page, HEAD, DeleteObject and CopyObject failing once, a dry run reports exactly the
    planted drift and a repair fixes all of it; after the queued deletions drain, a fault-free dry run is clean."""
    planted = _plant_drift(conn, s3_server)
    settings = s3_server.settings(
        db_url,
        s3={"list_shards": 4, "list_concurrency": 2},
        reconcile={"orphaned_objects": "quarantine", "orphaned_rows": "delete", "max_delete_fraction": 1.0},
    )
    client = storage.make_client(settings.s3)
    faults = S3Faults(client, every=3)

    found: list[dict[str, Any]] = []
    summary = reconcile.run(settings, ReconcileOptions(), sink=found.append, client=client)
    for kind in ("orphaned_object", "orphaned_row", "mismatch"):
        assert {f["key"] for f in found if f["kind"] == kind} == planted[kind]

    repaired: list[dict[str, Any]] = []
    summary = reconcile.run(settings, ReconcileOptions(repair=True), sink=repaired.append, client=client)

    assert (summary.quarantined, summary.deleted_rows, summary.refreshed, summary.action_errors) == (6, 6, 6, 0)
    assert {a.operation for a in faults.injected} >= {"ListObjectsV2", "HeadObject", "CopyObject", "DeleteObject"}
    assert faults.unanswered_faults() == []
    quarantined = {settings.reconcile.quarantine_prefix + key for key in planted["orphaned_object"]}
    assert s3_server.keys() == planted["in_sync"] | planted["mismatch"] | quarantined
    assert deletes.drain(settings).deleted == 6  # the deleted rows' (absent) objects
    _assert_consistent(conn, s3_server, settings)
