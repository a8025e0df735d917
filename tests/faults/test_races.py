"""Races between the jobs, the app and an operator.

Already proven elsewhere (see docs/guarantees.md): a sync racing a delete
never re-creates the row (tests/sync/test_sync_failures.py), a re-upload before
or during the drain keeps the new object (tests/deletes/test_deletes.py,
tests/deletes/test_deletes_races.py), two drains never send a key twice
(tests/deletes/test_deletes_races.py). Here: the whole life of a deleted asset
through a sync, three participants deleting 1,000 assets at once, and an
upload in flight during reconcile.
"""

from __future__ import annotations

import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from tests.faults.helpers import thousand_assets
from tests.support.postgres import make_show
from tests.support.s3_faults import ServerDeletes
from tests.support.waiting import WAIT_SECONDS
from trr_assets import deletes, reconcile, storage, sync
from trr_assets.presign import Presigner
from trr_assets.reconcile import ReconcileOptions


def _row_keys(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from core.show_assets")}


def _queued(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from trr_assets.delete_queue")}


def test_row_deleted_before_a_sync_stays_deleted_then_its_object_goes_for_good(conn, db_url, s3_server):
    """Delete a row, sync before the drain: the row is not re-created (the deletion stays queued); the drain then
    deletes the object, and later syncs and reconcile find nothing to do."""
    settings = s3_server.settings(db_url)
    show = make_show(conn)
    gone, kept = f"shows/{show}/gone.jpg", f"shows/{show}/kept.jpg"
    s3_server.put(gone)
    s3_server.put(kept)
    assert sync.run(settings, progress=False).inserted == 2
    conn.execute("delete from core.show_assets where object_key = %s", (gone,))

    before_drain = sync.run(settings, progress=False)

    assert (before_drain.pending_deletes, before_drain.inserted) == (1, 0)
    assert _row_keys(conn) == {kept} and _queued(conn) == {gone}
    assert s3_server.keys() == {gone, kept}  # the object is still there, on its way out

    drained = deletes.drain(settings)

    assert drained.deleted == 1
    assert s3_server.keys() == {kept} and _queued(conn) == set()
    after = sync.run(settings, progress=False)
    assert (after.inserted, after.updated, after.unchanged, after.pending_deletes) == (0, 0, 1, 0)
    found: list[dict[str, Any]] = []
    assert not reconcile.run(settings, ReconcileOptions(), sink=found.append).drift and found == []


def test_two_drains_and_an_operators_delete_at_once_delete_each_object_exactly_once(
    conn, db_url, s3_server, monkeypatch
):
    """1,000 assets: 600 rows deleted by SQL, then two drains and `delete` of 200 more ids, all three holding
    batches in S3 at the same moment. Every object whose row is gone is deleted by S3 exactly once (counted by the
    S3 server, whoever sent it); the 200 assets that keep their rows keep their objects and were never sent."""
    server_deletes = ServerDeletes(monkeypatch)
    settings = s3_server.settings(db_url, deletes={"batch_size": 20})
    keys, ids = thousand_assets(conn, s3_server)
    by_sql, by_operator, survivors = keys[:600], keys[600:800], keys[800:]
    conn.execute("delete from core.show_assets where object_key = any(%s)", (by_sql,))

    # The drains' first requests wait until the operator's drain is in S3 too:
    # three participants holding locked batches at one moment.
    drains_in_s3 = threading.Barrier(3, timeout=WAIT_SECONDS)  # two drains and the test
    operator_in_s3 = threading.Event()
    errors: list[BaseException] = []
    reports: dict[str, Any] = {}

    def participant(name: str, first_call: Any, work: Any) -> threading.Thread:
        client = storage.make_client(settings.s3)
        seen = []

        def hook(**_: Any) -> None:
            if not seen:
                seen.append(True)
                first_call()

        client.meta.events.register("before-call.s3.DeleteObjects", hook)

        def run() -> None:
            try:
                reports[name] = work(client)
            except BaseException as exc:  # re-raised on the test's thread below
                errors.append(exc)
                drains_in_s3.abort()
                operator_in_s3.set()

        return threading.Thread(target=run, name=name)

    def drain_first_call() -> None:
        drains_in_s3.wait()
        operator_in_s3.wait(WAIT_SECONDS)

    drains = [
        participant(f"drain-{n}", drain_first_call, lambda c: deletes.drain(settings, client=c)) for n in (1, 2)
    ]
    operator = participant(
        "operator", operator_in_s3.set,
        lambda c: deletes.delete_assets(settings, [str(ids[k]) for k in by_operator], client=c),
    )
    for thread in drains:
        thread.start()
    drains_in_s3.wait()  # both drains hold a batch of the SQL deletions, paused in S3
    operator.start()
    for thread in (*drains, operator):
        thread.join(WAIT_SECONDS * 2)

    assert errors == []
    assert reports["operator"].deleted_rows == 200
    sent = server_deletes.per_key()
    assert set(sent) == set(by_sql) | set(by_operator)
    assert set(sent.values()) == {1}
    assert server_deletes.removed() == sent
    assert s3_server.keys() == set(survivors)
    assert _row_keys(conn) == set(survivors) and _queued(conn) == set()
    assert reports["drain-1"].deleted + reports["drain-2"].deleted + reports["operator"].deleted_objects == 800


def test_upload_in_flight_is_no_orphaned_row_inside_the_grace_window(conn, db_url, s3_server):
    """A row recorded by upload_url whose object is not PUT yet: reconcile --repair (orphaned rows: delete) within
    reconcile.grace_seconds counts it as skipped_recent and leaves it; the PUT then lands, and after the next sync
    nothing drifts. The same row judged after the grace window is an orphaned row."""
    settings = s3_server.settings(
        db_url, reconcile={"grace_seconds": 3600, "orphaned_rows": "delete", "max_delete_fraction": 1.0}
    )
    show = make_show(conn)
    with Presigner(settings) as presigner:
        grant = presigner.upload_url(show_id=show, filename="poster.png", content_type="image/png", size_bytes=5)
    found: list[dict[str, Any]] = []

    summary = reconcile.run(settings, ReconcileOptions(repair=True), sink=found.append)

    assert (summary.orphaned_rows, summary.skipped_recent, summary.deleted_rows) == (0, 1, 0)
    assert found == [] and _row_keys(conn) == {grant.key}

    later = lambda: datetime.now(timezone.utc) + timedelta(hours=2)  # noqa: E731
    found = []
    summary = reconcile.run(settings, ReconcileOptions(), sink=found.append, clock=later)
    assert summary.orphaned_rows == 1
    assert [(f["kind"], f["asset_id"]) for f in found] == [("orphaned_row", str(grant.asset_id))]

    request = urllib.request.Request(grant.url, data=b"\x89PNG!", method="PUT", headers=grant.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    # PUT done, not yet synced: the row has no checksum yet. Inside the grace
    # window that is an upload finishing, not a mismatch; after it, it is one.
    found = []
    summary = reconcile.run(settings, ReconcileOptions(), sink=found.append)
    assert (summary.mismatched, summary.skipped_recent, found) == (0, 1, [])
    summary = reconcile.run(settings, ReconcileOptions(), sink=found.append, clock=later)
    assert summary.mismatched == 1 and [f["kind"] for f in found] == ["mismatch"]
    assert sync.run(settings, progress=False).updated == 1  # the row gets the object's ETag
    found = []
    assert not reconcile.run(settings, ReconcileOptions(), sink=found.append, clock=later).drift
    assert found == [] and _row_keys(conn) == {grant.key}
