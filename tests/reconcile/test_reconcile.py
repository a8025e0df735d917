"""reconcile: classification, grace, pending deletes, repair policies and live re-checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import botocore.exceptions
import pytest

from tests.reconcile.helpers import (
    LONG_AGO,
    add_row,
    enqueue,
    keys_of,
    object_keys,
    plant,
    put,
    queued_keys,
    row_keys,
    run,
)
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import db, errors, reconcile, storage
from trr_assets.errors import DatabaseError
from trr_assets.reconcile import ReconcileOptions


def test_dry_run_reports_each_class_with_exact_keys_and_counts(conn, s3, db_url):
    """A planted bucket yields exactly its orphans and mismatch, counted, and a dry run changes nothing."""
    p = plant(conn, s3)
    settings = make_settings(db_url, s3={"list_shards": 4})
    before = (object_keys(s3), row_keys(conn), queued_keys(conn))

    findings, summary = run(settings)

    assert keys_of(findings, "orphaned_object") == set(p.orphaned_objects)
    assert keys_of(findings, "orphaned_row") == set(p.orphaned_rows)
    assert keys_of(findings, "mismatch") == set(p.mismatched)
    assert len(findings) == 4 and {f["action"] for f in findings} == {"none"}
    assert (summary.objects_scanned, summary.rows_scanned) == (8, 5)
    assert (summary.orphaned_objects, summary.orphaned_rows, summary.mismatched) == (2, 1, 1)
    assert (summary.pending_deletes, summary.failed_deletes, summary.skipped_recent) == (2, 1, 0)
    assert summary.dry_run and summary.drift
    assert (object_keys(s3), row_keys(conn), queued_keys(conn)) == before


def test_findings_carry_what_the_spec_names(conn, s3, db_url):
    """Objects carry size, ETag and ISO UTC last_modified; rows their asset id; a mismatch both sides."""
    p = plant(conn, s3)
    findings, _ = run(make_settings(db_url))
    by_key = {f["key"]: f for f in findings}

    orphan = by_key[p.orphaned_objects[0]]
    assert orphan["size"] == len(b"orphan") and len(orphan["etag"]) == 32
    assert orphan["last_modified"].endswith("Z")
    assert datetime.fromisoformat(orphan["last_modified"]).tzinfo is not None

    row = by_key[p.orphaned_rows[0]]
    assert row["asset_id"] == str(p.row_ids[p.orphaned_rows[0]]) and row["bucket"] == TEST_BUCKET

    mismatch = by_key[p.mismatched[0]]
    assert mismatch["size"] == len(b"new content, longer") and mismatch["row_size"] == 3
    assert mismatch["row_etag"] == "1" * 32 and mismatch["etag"] != mismatch["row_etag"]


def test_grace_spares_young_objects_and_rows(conn, s3, db_url):
    """Objects and rows younger than grace_seconds are skipped_recent, not orphans; older ones are orphans."""
    show = make_show(conn)
    put(s3, f"shows/{show}/fresh-object.jpg")
    add_row(conn, show, f"shows/{show}/fresh-row.jpg", size=1, etag="e", updated_at=datetime.now(timezone.utc))
    add_row(conn, show, f"shows/{show}/old-row.jpg", size=1, etag="e", updated_at=LONG_AGO)
    settings = make_settings(db_url)

    findings, summary = run(settings, grace_seconds=3600)
    assert keys_of(findings, "orphaned_row") == {f"shows/{show}/old-row.jpg"}
    assert keys_of(findings, "orphaned_object") == set()
    assert summary.skipped_recent == 2

    # Two hours later the object is old enough to be an orphan.
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    found: list[dict] = []
    summary = reconcile.run(settings, ReconcileOptions(grace_seconds=3600), sink=found.append, clock=lambda: later)
    assert keys_of(found, "orphaned_object") == {f"shows/{show}/fresh-object.jpg"}
    assert summary.skipped_recent == 0


def test_queued_deletions_are_pending_not_orphans(conn, s3, db_url):
    """An object whose row was deleted (deletion queued, pending or failed) is no orphan; failures are counted."""
    show = make_show(conn)
    for key in ("one.jpg", "two.jpg", "three.jpg"):
        put(s3, f"shows/{show}/{key}")
        add_row(conn, show, f"shows/{show}/{key}", size=4, etag="x")
    conn.execute("delete from core.show_assets")  # the outbox queues three deletions
    conn.execute("update trr_assets.delete_queue set state = 'failed' where object_key like '%three.jpg'")

    findings, summary = run(make_settings(db_url))

    assert findings == []
    assert (summary.pending_deletes, summary.failed_deletes, summary.orphaned_objects) == (3, 1, 0)
    assert summary.drift  # a deletion that gave up needs an operator


def test_clean_bucket_has_no_drift(conn, s3, db_url):
    """Objects and rows that agree give no finding and no drift."""
    show = make_show(conn)
    for name in ("x.jpg", "y.jpg"):
        etag = put(s3, f"shows/{show}/{name}", b"same")
        add_row(conn, show, f"shows/{show}/{name}", size=4, etag=etag)
    findings, summary = run(make_settings(db_url))
    assert findings == [] and not summary.drift and summary.objects_scanned == 2


def test_missing_bucket_fails_the_run(conn, s3, db_url):
    """A bucket that does not exist is a run-time failure (exit 1), not an empty, clean bucket."""
    with pytest.raises(errors.ReconcileIncomplete) as caught:
        run(make_settings(db_url, s3={"buckets": ["no-such-bucket-here"]}))
    assert caught.value.exit_code == 1
    assert "no-such-bucket-here" in str(caught.value)


# --- repair ----------------------------------------------------------------------

LOOSE = {"max_delete_fraction": 1.0}  # small planted buckets are all over 5%


def test_repair_import_creates_rows_for_attributable_objects(conn, s3, db_url):
    """Policy import: an orphan whose key names a show becomes a row (content type from HEAD); others are skipped."""
    show = make_show(conn)
    put(s3, f"shows/{show}/orphan.png", b"png!", content_type="image/png")
    put(s3, "shows/not-a-show/stray.jpg")
    put(s3, "shows/00000000-0000-0000-0000-000000000000/unknown-show.jpg")
    settings = make_settings(db_url, reconcile={"orphaned_objects": "import"})

    findings, summary = run(settings, repair=True)

    actions = {f["key"]: (f["action"], f.get("reason")) for f in findings}
    assert actions == {
        f"shows/{show}/orphan.png": ("imported", None),
        "shows/not-a-show/stray.jpg": ("skipped", "no_show_in_key"),
        "shows/00000000-0000-0000-0000-000000000000/unknown-show.jpg": ("skipped", "unknown_show"),
    }
    row = conn.execute(
        "select show_id, content_type, size_bytes from core.show_assets where object_key = %s",
        (f"shows/{show}/orphan.png",),
    ).fetchone()
    assert row == (show, "image/png", 4)
    assert summary.imported == 1 and summary.skipped == 2


def test_import_never_resurrects_a_queued_deletion(conn, s3, db_url):
    """An object whose deletion got queued after the listing is not imported (that would cancel the delete)."""
    show = make_show(conn)
    key = f"shows/{show}/deleted-meanwhile.jpg"
    put(s3, key)
    settings = make_settings(db_url, reconcile={"orphaned_objects": "import"})
    client = storage.make_client(settings.s3)

    def delete_first(**_: object) -> None:
        if not queued_keys(conn):  # a row is made and deleted between the listing and the import
            enqueue(conn, key)

    client.meta.events.register("before-call.s3.HeadObject", delete_first)

    findings, _ = run(settings, client=client, repair=True)

    assert [(f["action"], f.get("reason")) for f in findings] == [("skipped", "claimed")]
    assert row_keys(conn) == set() and queued_keys(conn) == {key}


def test_repair_delete_removes_orphaned_objects_only(conn, s3, db_url):
    """Policy delete: orphaned objects are deleted; objects with rows or queued deletions stay."""
    p = plant(conn, s3)
    settings = make_settings(db_url, reconcile={"orphaned_objects": "delete", **LOOSE})

    findings, summary = run(settings, repair=True)

    assert {f["key"]: f["action"] for f in findings if f["kind"] == "orphaned_object"} == {
        k: "deleted" for k in p.orphaned_objects
    }
    assert object_keys(s3) == set(p.in_sync + p.mismatched + p.pending + p.failed)
    assert summary.deleted_objects == 2 and not summary.dry_run


def test_repair_quarantine_moves_orphans_aside_and_they_restore(conn, s3, db_url):
    """Policy quarantine: the orphan is copied under quarantine/ then deleted; copying it back restores it exactly."""
    show = make_show(conn)
    key = f"shows/{show}/orphan.png"
    put(s3, key, b"\x89PNG precious bytes", content_type="image/png")
    settings = make_settings(db_url, reconcile={"orphaned_objects": "quarantine", **LOOSE})

    findings, summary = run(settings, repair=True)

    assert [(f["action"], f["quarantine_key"]) for f in findings] == [("quarantined", "quarantine/" + key)]
    assert object_keys(s3) == {"quarantine/" + key} and summary.quarantined == 1

    s3.copy_object(Bucket=TEST_BUCKET, Key=key, CopySource={"Bucket": TEST_BUCKET, "Key": "quarantine/" + key})
    restored = s3.get_object(Bucket=TEST_BUCKET, Key=key)
    assert restored["Body"].read() == b"\x89PNG precious bytes"
    assert restored["ContentType"] == "image/png"


def test_quarantined_objects_are_not_orphans_again(conn, s3, db_url):
    """With a prefix that covers quarantine/, quarantined copies are counted in_quarantine, never re-quarantined."""
    put(s3, "quarantine/shows/x/old.jpg")
    settings = make_settings(db_url, s3={"prefix": ""}, reconcile={"orphaned_objects": "quarantine", **LOOSE})
    findings, summary = run(settings, repair=True)
    assert findings == [] and summary.in_quarantine == 1
    assert object_keys(s3) == {"quarantine/shows/x/old.jpg"}


def test_repair_delete_rows_goes_through_the_outbox(conn, s3, db_url):
    """Policy orphaned_rows=delete: the row is deleted and its S3 deletion is queued by the outbox trigger."""
    p = plant(conn, s3)
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete", **LOOSE})

    findings, summary = run(settings, repair=True)

    assert [(f["key"], f["action"]) for f in findings if f["kind"] == "orphaned_row"] == [
        (p.orphaned_rows[0], "deleted")
    ]
    assert p.orphaned_rows[0] not in row_keys(conn)
    queued = conn.execute(
        "select asset_id, state from trr_assets.delete_queue where object_key = %s", (p.orphaned_rows[0],)
    ).fetchone()
    assert queued == (p.row_ids[p.orphaned_rows[0]], "pending")
    assert summary.deleted_rows == 1


def test_repair_rechecks_an_orphaned_row_live(conn, s3, db_url):
    """A row whose object appears after the listing is not deleted: the repair HEADs the object first."""
    show = make_show(conn)
    key = f"shows/{show}/late-upload.jpg"
    add_row(conn, show, key, size=4, etag="x")
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete", **LOOSE})
    client = storage.make_client(settings.s3)
    uploads: list[str] = []

    def upload_first(**_: object) -> None:
        if not uploads:  # the object lands between the listing and the repair
            uploads.append(key)
            s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"late")

    client.meta.events.register("before-call.s3.HeadObject", upload_first)
    findings, summary = run(settings, client=client, repair=True)

    assert [(f["action"], f["reason"]) for f in findings] == [("skipped", "object_exists")]
    assert row_keys(conn) == {key} and queued_keys(conn) == set()
    assert summary.deleted_rows == 0


def test_repair_rechecks_an_orphaned_object_live(conn, s3, db_url):
    """An orphaned object that gained a row after the listing is not deleted."""
    show = make_show(conn)
    key = f"shows/{show}/synced-meanwhile.jpg"
    etag = put(s3, key)
    settings = make_settings(db_url, reconcile={"orphaned_objects": "delete", **LOOSE})
    client = storage.make_client(settings.s3)

    def sync_first(**_: object) -> None:
        if not row_keys(conn):  # sync makes the row between the listing and the repair
            add_row(conn, show, key, size=4, etag=etag)

    client.meta.events.register("before-call.s3.HeadObject", sync_first)

    findings, _ = run(settings, client=client, repair=True)

    assert [(f["action"], f["reason"]) for f in findings] == [("skipped", "claimed")]
    assert object_keys(s3) == {key}


def test_repair_refreshes_mismatched_rows(conn, s3, db_url):
    """--repair updates a mismatched row's size, checksum and content type from S3."""
    show = make_show(conn)
    key = f"shows/{show}/changed.webp"
    etag = put(s3, key, b"twelve bytes", content_type="image/webp")
    asset = add_row(conn, show, key, size=3, etag="stale")

    findings, summary = run(make_settings(db_url), repair=True)

    assert [f["action"] for f in findings] == ["refreshed"]
    assert conn.execute(
        "select size_bytes, checksum, content_type from core.show_assets where id = %s", (asset,)
    ).fetchone() == (12, etag, "image/webp")
    assert summary.refreshed == 1
    _, after = run(make_settings(db_url))
    assert after.mismatched == 0


def test_report_policy_repairs_nothing(conn, s3, db_url):
    """--repair with the report policies deletes nothing and says action none."""
    p = plant(conn, s3)
    before = (object_keys(s3), row_keys(conn), queued_keys(conn))
    findings, _ = run(make_settings(db_url, reconcile=LOOSE), repair=True)
    assert {f["key"] for f in findings if f["action"] == "none"} == set(p.orphaned_objects + p.orphaned_rows)
    assert (object_keys(s3), row_keys(conn), queued_keys(conn)) == before


# --- fail closed and safety limits ---------------------------------------------------


def _failing_second_page(client):
    calls: list[int] = []

    def hook(**_: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected failure"}}, "ListObjectsV2"
            )

    client.meta.events.register("before-call.s3.ListObjectsV2", hook)
    return calls


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_listing_failing_part_way_refuses_repair_and_deletes_nothing(conn, s3, db_url, monkeypatch, force):
    """A listing whose 2nd page fails refuses repair (exit 4), even with --force, and nothing is deleted."""
    monkeypatch.setattr(reconcile, "LIST_PAGE_SIZE", 2)
    show = make_show(conn)
    for i in range(6):
        key = f"shows/{show}/{i}.jpg"
        add_row(conn, show, key, size=4, etag=put(s3, key))
    put(s3, f"shows/{show}/orphan.jpg")
    settings = make_settings(
        db_url,
        s3={"list_shards": 1},
        reconcile={"orphaned_rows": "delete", "orphaned_objects": "delete", **LOOSE},
    )
    client = storage.make_client(settings.s3)
    _failing_second_page(client)
    before = (object_keys(s3), row_keys(conn))

    with pytest.raises(errors.ReconcileRefused) as caught:
        run(settings, client=client, repair=True, force=force)

    assert caught.value.exit_code == 4
    assert "injected failure" in str(caught.value) and "nothing was changed" in str(caught.value)
    assert (object_keys(s3), row_keys(conn), queued_keys(conn)) == (*before, set())
    assert caught.value.summary.deleted_rows == caught.value.summary.deleted_objects == 0


def test_row_query_failing_part_way_refuses_repair(conn, s3, db_url, monkeypatch):
    """A row cursor that fails part way (rows missing from the merge) refuses repair too; nothing is deleted."""
    show = make_show(conn)
    for i in range(6):
        key = f"shows/{show}/{i}.jpg"
        add_row(conn, show, key, size=4, etag=put(s3, key))
    put(s3, f"shows/{show}/orphan.jpg")
    real_stream_rows = db.stream_rows
    calls: list[int] = []

    def failing_stream_rows(*args, **kwargs):
        calls.append(1)
        for n, row in enumerate(real_stream_rows(*args, **kwargs)):
            if n == 2 and len(calls) == 1:  # the first cursor fails part way; later ones work
                raise DatabaseError("database: read rows of bucket: connection lost (injected)")
            yield row

    monkeypatch.setattr(db, "stream_rows", failing_stream_rows)
    settings = make_settings(
        db_url, s3={"list_shards": 1}, reconcile={"orphaned_objects": "delete", "orphaned_rows": "delete", **LOOSE}
    )
    before = (object_keys(s3), row_keys(conn))

    with pytest.raises(errors.ReconcileRefused, match="connection lost"):
        run(settings, repair=True, force=True)

    assert (object_keys(s3), row_keys(conn), queued_keys(conn)) == (*before, set())


def test_listing_failing_part_way_fails_a_dry_run(conn, s3, db_url, monkeypatch):
    """A dry run whose listing fails part way exits 1 and says which bucket; it never reports a clean bucket."""
    monkeypatch.setattr(reconcile, "LIST_PAGE_SIZE", 1)
    put(s3, "shows/a.jpg")
    put(s3, "shows/b.jpg")
    settings = make_settings(db_url, s3={"list_shards": 1})
    client = storage.make_client(settings.s3)
    _failing_second_page(client)
    with pytest.raises(errors.ReconcileIncomplete) as caught:
        run(settings, client=client)
    assert caught.value.exit_code == 1 and caught.value.summary.failed
    assert TEST_BUCKET in str(caught.value)


def _hundred_rows(conn) -> None:
    show = make_show(conn)
    for i in range(100):
        add_row(conn, show, f"shows/{show}/{i:03}.jpg", size=4, etag="x")


def test_empty_bucket_against_100_rows_refuses_by_fraction(conn, s3, db_url):
    """An empty listing (wrong prefix, wrong credentials) does not wipe 100 rows: refused, exit 4, limit named."""
    _hundred_rows(conn)
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete"})

    with pytest.raises(errors.ReconcileRefused) as caught:
        run(settings, repair=True)

    message = str(caught.value)
    assert caught.value.exit_code == 4
    assert "max_delete_fraction" in message and "limit 5, over by 95" in message
    assert len(row_keys(conn)) == 100 and queued_keys(conn) == set()


def test_max_deletes_refuses_with_the_excess(conn, s3, db_url):
    """More deletions than max_deletes refuses the bucket and says by how much."""
    _hundred_rows(conn)
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete", "max_deletes": 10, **LOOSE})
    with pytest.raises(errors.ReconcileRefused) as caught:
        run(settings, repair=True)
    assert "100 deletions exceed reconcile.max_deletes 10 by 90" in str(caught.value)
    assert len(row_keys(conn)) == 100


def test_force_overrides_the_limits(conn, s3, db_url):
    """--force lets a repair above max_deletes and max_delete_fraction go ahead."""
    _hundred_rows(conn)
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete", "max_deletes": 10})
    findings, summary = run(settings, repair=True, force=True)
    assert summary.deleted_rows == 100 and row_keys(conn) == set()
    assert len(queued_keys(conn)) == 100 and {f["action"] for f in findings} == {"deleted"}


def test_a_refused_bucket_does_not_stop_the_others(conn, s3, db_url):
    """Refusal is per bucket: the other bucket is still repaired, and the run still exits 4 at the end."""
    s3.create_bucket(Bucket="trr-other-bucket")
    show = make_show(conn)
    for i in range(3):
        add_row(conn, show, f"shows/{show}/{i}.jpg", size=4, etag="x")  # every row of TEST_BUCKET orphaned
    put(s3, f"shows/{show}/orphan.jpg", bucket="trr-other-bucket")
    for i in range(30):
        key = f"shows/{show}/kept-{i:02}.jpg"
        add_row(conn, show, key, size=4, etag=put(s3, key, bucket="trr-other-bucket"), bucket="trr-other-bucket")
    settings = make_settings(
        db_url,
        s3={"buckets": [TEST_BUCKET, "trr-other-bucket"]},
        reconcile={"orphaned_rows": "delete", "orphaned_objects": "delete", "max_delete_fraction": 0.1},
    )
    found: list[dict] = []
    with pytest.raises(errors.ReconcileRefused) as caught:
        reconcile.run(settings, ReconcileOptions(repair=True), sink=found.append)

    refused = caught.value.summary.refused
    assert len(refused) == 1 and refused[0].startswith(f"bucket {TEST_BUCKET}: repair refused")
    assert {f["bucket"]: f["action"] for f in found} == {TEST_BUCKET: "refused", "trr-other-bucket": "deleted"}
    assert object_keys(s3, "trr-other-bucket") == {f"shows/{show}/kept-{i:02}.jpg" for i in range(30)}
    assert len(row_keys(conn)) == 33


def test_limit_problems_name_each_limit_and_excess():
    """The refusal text names the limit broken and the excess, for objects and rows separately."""
    problems = reconcile.limit_problems(
        object_deletes=30, row_deletes=0, objects=100, rows=50, max_deletes=1000, max_fraction=0.05
    )
    assert problems == [
        "30 object deletions would be 30.0% of its 100 objects, above reconcile.max_delete_fraction 0.05 "
        "(limit 5, over by 25)"
    ]
    assert reconcile.limit_problems(5, 2, 100, 40, max_deletes=1000, max_fraction=0.05) == []
    assert reconcile.limit_problems(1, 0, 1, 0, max_deletes=0, max_fraction=1.0) == [
        "1 deletion exceeds reconcile.max_deletes 0 by 1"
    ]


def test_second_pass_never_deletes_more_than_the_first_counted(conn, s3, db_url):
    """Objects vanishing between the counting pass and the repair pass cannot raise the number of rows deleted."""
    show = make_show(conn)
    keys = [f"shows/{show}/{i}.jpg" for i in range(20)]
    for key in keys[1:]:
        add_row(conn, show, key, size=4, etag=put(s3, key))
    add_row(conn, show, keys[0], size=4, etag="x")  # the one orphaned row the first pass counts
    settings = make_settings(db_url, s3={"list_shards": 1}, reconcile={"orphaned_rows": "delete", **LOOSE})
    client = storage.make_client(settings.s3)
    calls: list[int] = []

    def vanish_before_second_pass(**_: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the repair pass starts listing: three more objects are gone
            for key in keys[1:4]:
                s3.delete_object(Bucket=TEST_BUCKET, Key=key)

    client.meta.events.register("before-call.s3.ListObjectsV2", vanish_before_second_pass)
    findings, summary = run(settings, client=client, repair=True)

    assert summary.orphaned_rows == 4 and summary.deleted_rows == 1
    assert sorted(f.get("reason", f["action"]) for f in findings) == ["deleted"] + ["over_counted_plan"] * 3
    assert len(row_keys(conn)) == 19


def test_a_stopped_run_is_incomplete_never_clean(conn, s3, db_url):
    """A stop request (the worker's shutdown) fails the run's buckets: recorded as failed, not clean."""
    import threading

    plant(conn, s3)
    stop = threading.Event()
    stop.set()
    with pytest.raises(errors.ReconcileIncomplete, match="stopped before the end") as info:
        reconcile.run(make_settings(db_url), ReconcileOptions(), stop=stop)
    assert info.value.summary.failed
    outcome = conn.execute("select outcome from trr_assets.reconcile_runs order by id desc limit 1").fetchone()[0]
    assert outcome == "failed"
