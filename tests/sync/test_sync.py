"""sync: S3 listings into core.show_assets (real PostgreSQL, moto S3)."""

from __future__ import annotations

import sys
import threading
import uuid

import structlog

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.sync.helpers import HeadCounter, put, rows, run, show_key, sync_settings, versions
from trr_assets import sync
from trr_assets.cli.render import SyncBar
from trr_assets.ids import time_ordered


def test_first_sync_inserts_rows_with_object_metadata(conn, db_url, s3):
    """A first sync inserts one row per object with show, size, ETag checksum, content type and owner."""
    show_a, show_b = make_show(conn), make_show(conn)
    owner = uuid.uuid4()
    etag_1 = put(s3, show_key(show_a, "poster.jpg"), b"x" * 10, content_type="image/jpeg", owner=str(owner))
    etag_2 = put(s3, show_key(show_b, "clip.mp4"), b"y" * 25, content_type="video/mp4")

    report = run(sync_settings(db_url), s3)

    assert rows(conn) == {
        show_key(show_a, "poster.jpg"): (show_a, 10, etag_1, "image/jpeg", owner),
        show_key(show_b, "clip.mp4"): (show_b, 25, etag_2, "video/mp4", None),
    }
    assert '"' not in etag_1 and len(etag_1) == 32
    assert (report.scanned, report.inserted, report.updated, report.unchanged, report.skipped) == (2, 2, 0, 0, 0)
    assert report.failed == []


def test_second_sync_writes_nothing_and_sends_no_head(conn, db_url, s3):
    """Re-syncing an unchanged bucket reports all unchanged, leaves every row (and updated_at) untouched, no HEAD."""
    show = make_show(conn)
    for i in range(7):
        put(s3, show_key(show, f"img-{i}.jpg"), bytes([i]) * (i + 1))
    settings = sync_settings(db_url)
    run(settings, s3)
    before = versions(conn)
    heads = HeadCounter(s3)

    report = run(settings, s3)

    assert versions(conn) == before
    assert heads.count == 0
    assert (report.scanned, report.inserted, report.updated, report.unchanged) == (7, 0, 0, 7)


def test_changed_object_updates_only_its_row(conn, db_url, s3):
    """An overwritten object (new size/ETag) updates its row's metadata; the other rows stay untouched."""
    show = make_show(conn)
    owner = uuid.uuid4()
    put(s3, show_key(show, "a.jpg"), b"old", owner=str(owner))
    put(s3, show_key(show, "b.jpg"), b"same")
    settings = sync_settings(db_url)
    run(settings, s3)
    before = versions(conn)
    new_etag = put(s3, show_key(show, "a.jpg"), b"new and longer", content_type="image/png")
    heads = HeadCounter(s3)

    report = run(settings, s3)

    after = versions(conn)
    assert rows(conn)[show_key(show, "a.jpg")] == (show, 14, new_etag, "image/png", owner)
    assert after[show_key(show, "b.jpg")] == before[show_key(show, "b.jpg")]
    assert after[show_key(show, "a.jpg")][1] > before[show_key(show, "a.jpg")][1]
    assert (report.updated, report.unchanged, report.inserted, heads.count) == (1, 1, 0, 1)


def test_owner_id_is_kept_when_a_changed_object_has_no_owner_metadata(conn, db_url, s3):
    """A row's owner_id is not erased by an object version without `owner-id` metadata."""
    show = make_show(conn)
    owner = uuid.uuid4()
    key = show_key(show, "a.jpg")
    put(s3, key, b"v1", owner=str(owner))
    settings = sync_settings(db_url)
    run(settings, s3)
    put(s3, key, b"v2 without owner")

    run(settings, s3)

    assert rows(conn)[key][4] == owner


def test_keys_of_no_show_are_skipped_counted_by_reason_and_logged_once(conn, db_url, s3):
    """No-match, malformed-uuid and unknown-show keys are skipped per reason; an upper-case id names its show."""
    show = make_show(conn)
    keep = show_key(show, "ok.jpg")
    upper = f"shows/{str(show).upper()}/upper.jpg"
    skipped = {
        "shows/not-a-show/x.jpg": "no_match",
        "shows/readme.txt": "no_match",
        "shows/0123456789abcdef0123456789abcdef0123/x.jpg": "malformed_show_id",
        "shows/------------------------------------/x.jpg": "malformed_show_id",
        show_key(uuid.uuid4(), "orphan.jpg"): "unknown_show",
    }
    for key in [keep, upper, *skipped]:
        put(s3, key)

    heads = HeadCounter(s3)
    with structlog.testing.capture_logs() as logs:
        report = run(sync_settings(db_url), s3)

    assert heads.count == 2  # skipped keys cost no HEAD request
    assert set(rows(conn)) == {keep, upper}
    assert rows(conn)[upper][0] == show
    assert (report.scanned, report.inserted, report.skipped) == (7, 2, 5)
    assert report.skipped_by_reason == {"no_match": 2, "malformed_show_id": 2, "unknown_show": 1}
    skip_logs = [e for e in logs if e["event"] == "sync_keys_skipped"]
    assert len(skip_logs) == 1
    assert skip_logs[0]["by_reason"] == report.skipped_by_reason
    logged = {key for found in skip_logs[0]["samples"].values() for key in found}
    assert logged <= set(skipped) and len(logged) == 5


def test_unusual_keys_round_trip_exactly(conn, db_url, s3):
    """Keys with spaces, unicode, +, %, ~, // and 1,024 bytes are stored byte for byte, then found unchanged."""
    show = make_show(conn)
    base = f"shows/{show}/"
    names = [
        "with space.jpg", "ünïcödé/日本語.png", "emoji 🎬.mp4", "a+b.jpg", "100%25 sure %41.jpg",
        "tilde~x.jpg", "double//slash.jpg", "/leading.jpg", "trailing-dot.", "Z-upper.jpg", "\u00e9-e-acute.jpg",
    ]
    keys = [base + name for name in names]
    longest = base + "L" * (1024 - len(base.encode()) - 4) + ".jpg"
    assert len(longest.encode()) == 1024
    keys.append(longest)
    for key in keys:
        put(s3, key)
    settings = sync_settings(db_url, list_shards=1)

    first = run(settings, s3)
    second = run(settings, s3)

    assert set(rows(conn)) == set(keys)
    assert (first.inserted, first.skipped) == (len(keys), 0)
    assert (second.unchanged, second.inserted, second.updated) == (len(keys), 0, 0)


def test_queued_deletion_is_not_resurrected(conn, db_url, s3):
    """A row deleted by SQL (deletion queued, object still in S3) is not re-created by sync."""
    show = make_show(conn)
    gone, kept = show_key(show, "gone.jpg"), show_key(show, "kept.jpg")
    put(s3, gone)
    put(s3, kept)
    settings = sync_settings(db_url)
    run(settings, s3)
    conn.execute("delete from core.show_assets where object_key = %s", (gone,))
    assert conn.execute("select count(*) from trr_assets.delete_queue").fetchone()[0] == 1

    report = run(settings, s3)

    assert set(rows(conn)) == {kept}
    assert conn.execute("select object_key from trr_assets.delete_queue").fetchall() == [(gone,)]
    assert (report.pending_deletes, report.inserted, report.unchanged) == (1, 0, 1)


def test_listing_over_1000_keys_gives_the_same_rows_with_1_or_16_shards(conn, db_url, s3):
    """Paginated listings (>1,000 keys) sharded 1 or 16 ways produce identical rows."""
    shows = [make_show(conn) for _ in range(30)]
    for n, show in enumerate(shows):
        for i in range(35):
            put(s3, show_key(show, f"{i:03d}.jpg"), bytes([n, i]))
    run(sync_settings(db_url, list_shards=1, batch_size=400), s3)
    single = rows(conn)
    # TRUNCATE enqueues the objects' deletion (0005's truncate trigger); drop
    # those entries too, so the second pass starts from no rows at all.
    conn.execute("truncate core.show_assets")
    conn.execute("delete from trr_assets.delete_queue")

    report = run(sync_settings(db_url, list_shards=16, list_concurrency=4, batch_size=400), s3)

    assert len(single) == 1050
    assert rows(conn) == single
    assert (report.scanned, report.inserted) == (1050, 1050)


def test_report_dict_starts_with_the_spec_keys(conn, db_url, s3):
    """The JSON report leads with scanned, inserted, updated, unchanged, skipped, duration_seconds."""
    report = run(sync_settings(db_url), s3)

    assert list(report.as_dict())[:6] == ["scanned", "inserted", "updated", "unchanged", "skipped", "duration_seconds"]
    assert report.as_dict()["buckets"][TEST_BUCKET]["scanned"] == 0


def test_progress_goes_to_stderr_only_when_wanted(conn, db_url, s3, capsys):
    """Progress is drawn on stderr when asked (a terminal), not otherwise, and never on stdout."""
    put(s3, show_key(make_show(conn), "a.jpg"))
    settings = sync_settings(db_url)

    sync.run(settings, client=s3, progress=None)  # what the CLI passes when stderr is no terminal
    quiet = capsys.readouterr()
    sync.run(settings, client=s3, progress=SyncBar(sys.stderr))
    drawn = capsys.readouterr()

    assert "keys scanned" not in quiet.err
    assert "sync: 1 keys scanned, 0 rows written" in drawn.err
    assert "keys scanned" not in quiet.out + drawn.out


def test_stop_request_ends_the_pass_without_writing(conn, db_url, s3):
    """A pass asked to stop before it starts writes nothing and says it stopped."""
    put(s3, show_key(make_show(conn), "a.jpg"))
    stop = threading.Event()
    stop.set()

    report = run(sync_settings(db_url), s3, stop=stop)

    assert rows(conn) == {}
    assert report.stopped and report.scanned == 0


def test_new_rows_get_time_ordered_ids_in_key_order(conn, db_url, s3):
    """Rows sync inserts get UUIDv7 ids, increasing with the key within a batch; an updated row keeps its id."""
    show = make_show(conn)
    keys = [show_key(show, f"{i:02d}.jpg") for i in range(5)]
    for key in keys:
        put(s3, key)
    settings = sync_settings(db_url, list_shards=1)
    run(settings, s3)
    ids = [row[0] for row in conn.execute("select id from core.show_assets order by object_key").fetchall()]
    put(s3, keys[0], b"changed")

    report = run(settings, s3)

    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert report.updated == 1
    assert [r[0] for r in conn.execute("select id from core.show_assets order by object_key").fetchall()] == ids


def test_time_ordered_ids_stay_ordered_past_the_counters_low_half():
    """The 24-bit counter carries from its low 12 bits into rand_a: 5,000 ids still sort in order, all distinct."""
    ids = [uuid.UUID(text) for text in time_ordered(5000)]

    assert ids == sorted(ids) and len(set(ids)) == 5000
    assert {(i.version, i.variant) for i in ids} == {(7, uuid.RFC_4122)}
