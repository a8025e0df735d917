"""The shared diff engine: shards, merge-join of listing and rows, byte order end to end."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from trr_assets import db, diff, keys, scan, storage
from trr_assets.config import S3Settings
from trr_assets.diff import Kind, RowInfo
from trr_assets.storage import ObjectInfo

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
key_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=12
)


@given(st.lists(key_text.map(lambda s: "shows/" + s), max_size=60), st.integers(1, 256))
def test_shards_cover_every_key_exactly_once(all_keys, shards):
    ranges = keys.shard_ranges("shows/", shards)
    for key in all_keys:
        assert sum(key in r for r in ranges) == 1
    assert ranges[0].start_at == "shows/" and ranges[-1].stop_before == "shows0"


def test_parse_show_id_normalises_case_and_names_the_reason():
    pattern = re.compile(S3Settings().key_pattern)
    show = uuid.uuid4()
    assert keys.parse_show_id(f"shows/{str(show).upper()}/a.png", pattern) == str(show)
    assert keys.parse_show_id("shows/not-a-show/a.png", pattern) is keys.SkipReason.NO_MATCH
    assert keys.parse_show_id("shows/" + "-" * 36 + "/a", pattern) is keys.SkipReason.MALFORMED_SHOW_ID
    assert keys.parse_show_id(f"shows/{show}/a\x00b", pattern) is keys.SkipReason.INVALID_KEY


SAME = "same"  # what the oracle calls a key in both, equal; merge only counts those


def _model(objects: dict[str, tuple[int, str]], rows: dict[str, Any]) -> dict[str, Kind | str]:
    """The classification by definition, with sets: the oracle for merge()."""
    expected: dict[str, Kind | str] = {}
    for key in objects.keys() | rows.keys():
        row = rows.get(key)
        if isinstance(row, Both):  # a row and its key's queue entry count as the row
            row = row.meta
        if key not in rows:
            expected[key] = Kind.ONLY_IN_S3
        elif row is None:  # a queued deletion, no row
            if key in objects:
                expected[key] = Kind.PENDING_DELETE
        elif key not in objects:
            expected[key] = Kind.ONLY_IN_DB
        else:
            expected[key] = SAME if objects[key] == row else Kind.CHANGED
    return expected


class Both(NamedTuple):
    """A key with a row and a queue entry, the queue entry first or last in the stream."""

    meta: tuple[int, str]
    queue_first: bool


def _queue_entry(key: str) -> RowInfo:
    return RowInfo(key, None, None, None, NOW, True, "pending")


def _row(key: str, meta: tuple[int, str]) -> RowInfo:
    return RowInfo(key, str(uuid.uuid4()), meta[0], meta[1], NOW)


def _row_stream(rows: dict[str, Any]) -> list[RowInfo]:
    stream: list[RowInfo] = []
    for key, value in sorted(rows.items()):
        if value is None:
            stream.append(_queue_entry(key))
        elif isinstance(value, Both):
            pair = [_queue_entry(key), _row(key, value.meta)]
            stream += pair if value.queue_first else pair[::-1]
        else:
            stream.append(_row(key, value))
    return stream


def _outcome(batches: Iterable[diff.Batch]) -> tuple[int, dict[str, Kind]]:
    """(keys counted equal, the kind of every other key), checking each key comes once and in order."""
    same, kinds, order = 0, {}, []
    for batch in batches:
        same += batch.same
        for d in batch.diffs:
            assert d.key not in kinds, f"{d.key!r} reported twice"
            kinds[d.key] = d.kind
            order.append(d.key)
    assert order == sorted(order)
    return same, kinds


meta = st.tuples(st.integers(0, 3), st.sampled_from(["e1", "e2"]))
row_value = st.none() | meta | st.builds(Both, meta, st.booleans())


@settings(max_examples=400)
@given(
    st.dictionaries(key_text, meta, max_size=40),
    st.dictionaries(key_text, row_value, max_size=40),
    st.sampled_from([1, 2, 3, 5, 8, diff.CHUNK_SIZE]),
)
def test_merge_agrees_with_set_difference(objects, rows, chunk_size):
    """Every key classified as the set definition says, whatever the chunk size (boundaries included)."""
    obj_stream = [ObjectInfo(k, s, e, NOW) for k, (s, e) in sorted(objects.items())]
    expected = _model(objects, rows)
    same, kinds = _outcome(diff.merge(obj_stream, _row_stream(rows), chunk_size=chunk_size))
    assert same == sum(1 for kind in expected.values() if kind == SAME)
    assert kinds == {k: kind for k, kind in expected.items() if kind != SAME}


def test_merge_counts_long_equal_runs_between_differences():
    """Runs of equal keys longer than a chunk, broken by each kind of difference, are counted exactly."""
    objects = {f"k{i:05d}": (1, "e") for i in range(5000) if i % 700 != 3}
    rows: dict[str, Any] = {f"k{i:05d}": (1, "e") for i in range(5000) if i % 900 != 5}
    rows.update({f"k{i:05d}": (2, "e") for i in range(0, 5000, 1100)})
    rows.update({f"k{i:05d}": None for i in range(7, 5000, 1300)})
    rows.update({f"k{i:05d}": Both((1, "e"), i % 2 == 0) for i in range(11, 5000, 400)})
    expected = _model(objects, rows)
    for chunk_size in (7, 64, diff.CHUNK_SIZE):
        same, kinds = _outcome(diff.merge([ObjectInfo(k, s, e, NOW) for k, (s, e) in sorted(objects.items())],
                                          _row_stream(rows), chunk_size=chunk_size))
        assert same == sum(1 for kind in expected.values() if kind == SAME)
        assert kinds == {k: kind for k, kind in expected.items() if kind != SAME}


def test_merge_rejects_an_unsorted_stream():
    objs = [ObjectInfo("b", 1, "e", NOW), ObjectInfo("a", 1, "e", NOW)]
    with pytest.raises(ValueError, match="out of order"):
        list(diff.merge(objs, []))


@pytest.mark.parametrize("chunk_size", [1, 2, diff.CHUNK_SIZE])
def test_merge_rejects_disorder_across_chunks(chunk_size):
    """Disorder is found where one chunk meets the next, in either stream."""
    objs = [ObjectInfo(k, 1, "e", NOW) for k in ("a", "b", "c", "b2")]
    with pytest.raises(ValueError, match="S3 listing out of order at 'b2'"):
        list(diff.merge(objs, [], chunk_size=chunk_size))
    rows = [_row(k, (1, "e")) for k in ("a", "b", "c", "b2")]
    with pytest.raises(ValueError, match="row cursor out of order at 'b2'"):
        list(diff.merge([], rows, chunk_size=chunk_size))


@pytest.mark.parametrize("chunk_size", [1, 2, diff.CHUNK_SIZE])
@pytest.mark.parametrize("queue_first", [True, False])
def test_row_and_queue_entry_for_one_key_count_as_the_row(chunk_size, queue_first):
    pair = [_queue_entry("k"), _row("k", (1, "e"))]
    rows = pair if queue_first else pair[::-1]
    assert _outcome(diff.merge([ObjectInfo("k", 1, "e", NOW)], rows, chunk_size=chunk_size)) == (1, {})


ODD_KEYS = ["a b.png", "ünï/cødé.jpg", "plus+sign", "100%.gif", "tilde~x", "double//slash", "Z", "_", "é"]


def test_listing_and_row_cursor_agree_on_byte_order(conn, s3):
    """Keys that sort differently under a locale collation still merge as SAME."""
    show = make_show(conn)
    names = [f"shows/{show}/{k}" for k in ODD_KEYS] + [f"shows/{show}/" + "x" * (1024 - len(f"shows/{show}/"))]
    for key in names:
        s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"abc")
        etag = s3.head_object(Bucket=TEST_BUCKET, Key=key)["ETag"].strip('"')
        conn.execute(
            "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum) values (%s,%s,%s,3,%s)",
            (show, TEST_BUCKET, key, etag),
        )
    client = storage.make_client(S3Settings())
    for shards in (1, 16):
        found = []
        with conn.transaction():
            for rng in keys.shard_ranges("shows/", shards):
                found += list(scan.diff_range(client, conn, TEST_BUCKET, "shows/", rng))
        assert [d for batch in found for d in batch.diffs] == []  # no key differs, is missing or extra
        assert sum(batch.same for batch in found) == len(names)


def test_list_objects_paginates_and_honours_the_range(s3):
    for i in range(2100):
        s3.put_object(Bucket=TEST_BUCKET, Key=f"shows/{i:05d}", Body=b"")
    client = storage.make_client(S3Settings())
    everything = list(storage.list_objects(client, TEST_BUCKET, prefix="shows/"))
    assert [o.key for o in everything] == [f"shows/{i:05d}" for i in range(2100)]
    part = list(
        storage.list_objects(client, TEST_BUCKET, prefix="shows/", start_at="shows/01000", stop_before="shows/01500")
    )
    assert [o.key for o in part] == [f"shows/{i:05d}" for i in range(1000, 1500)]


def test_missing_bucket_is_a_clear_error(s3):
    client = storage.make_client(S3Settings())
    with pytest.raises(storage.BucketNotFound, match="no-such-bucket"):
        list(storage.list_objects(client, "no-such-bucket", prefix="shows/"))


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-26T08:12:56.000Z",
        "2026-11-26T08:12:56Z",
        "2026-11-26T08:12:56.123456+02:00",
        "Wed, 26 Nov 2026 08:12:56 GMT",  # HTTP date, as in a HEAD's Last-Modified
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 +0100",  # not IMF-fixdate: botocore's rules apply
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850's obsolete form: botocore's
        "Sun Nov  6 08:49:37 1994",  # asctime's: botocore's
        "1795680776",
        1795680776,
        "2026-11-26T08:12:56",  # no zone: botocore's rules apply
    ],
)
def test_fast_timestamp_parser_agrees_with_botocore(value):
    """The ISO and HTTP-date fast paths give the instant botocore's parser gives, and defer to it otherwise."""
    import botocore.utils

    ours, theirs = storage.parse_timestamp(value), botocore.utils.parse_timestamp(value)
    assert ours == theirs
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)


@pytest.mark.parametrize("value", ["Wed, 32 Nov 2026 08:12:56 GMT", "Wed, 26 Nov 2026 25:12:56 GMT"])
def test_a_bad_http_date_fails_as_botocore_fails(value):
    """An IMF-fixdate-shaped value that is no date is left to botocore, which refuses it."""
    import botocore.utils

    with pytest.raises(ValueError) as theirs:
        botocore.utils.parse_timestamp(value)
    with pytest.raises(type(theirs.value)):
        storage.parse_timestamp(value)


def test_heads_use_the_fast_timestamp_parser(s3):
    """A HEAD through a make_client client gives LastModified from the HTTP-date path (timezone.utc)."""
    from datetime import timezone

    s3.put_object(Bucket=TEST_BUCKET, Key="shows/t", Body=b"")
    head = storage.head_object(storage.make_client(S3Settings()), TEST_BUCKET, "shows/t")
    assert head is not None and head["LastModified"].tzinfo is timezone.utc  # dateutil would give tzutc()


def test_listings_use_the_fast_timestamp_parser(s3):
    """Clients from make_client parse LastModified as timezone-aware datetimes, via parse_timestamp."""
    from datetime import timezone

    s3.put_object(Bucket=TEST_BUCKET, Key="shows/t", Body=b"")
    [obj] = storage.list_objects(storage.make_client(S3Settings()), TEST_BUCKET, prefix="shows/")
    assert obj.last_modified.tzinfo is timezone.utc  # fromisoformat's; dateutil would give tzutc()


def test_sixteen_shards_have_exact_prefixes_in_the_middle():
    """With 16 shards, the ranges for digits 1-8 and a-e are exactly 'keys under shows/<digit>'."""
    ranges = keys.shard_ranges("shows/", 16)
    exact = [keys.exact_prefix(r) for r in ranges]
    assert exact[1:9] == [f"shows/{d}" for d in "12345678"]
    assert exact[10:15] == [f"shows/{d}" for d in "abcde"]
    assert exact[0] is None and exact[9] is None  # below '1' and between '9' and 'a': other keys live there


def test_sharded_listing_does_not_read_into_the_next_shard(s3):
    """Listing 16 shards fetches each key about once: no shard's last page runs on through its neighbour."""
    shows = [uuid.UUID(f"{d}" * 8 + "-0000-4000-8000-000000000000") for d in "0123456789abcdef"]
    for show in shows:
        for i in range(40):
            s3.put_object(Bucket=TEST_BUCKET, Key=f"shows/{show}/{i:03d}", Body=b"")
    client = storage.make_client(S3Settings())
    fetched = []
    client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda parsed, **_: fetched.append(len(parsed.get("Contents", ())))
    )
    listed = [
        o.key
        for r in keys.shard_ranges("shows/", 16)
        for o in storage.list_objects(client, TEST_BUCKET, prefix="shows/", start_at=r.start_at,
                                      stop_before=r.stop_before, page_size=20)
    ]
    assert listed == sorted(f"shows/{show}/{i:03d}" for show in shows for i in range(40))
    # Only the two inexact shards (below '1', and '9' up to 'a') may read one page past their end.
    assert sum(fetched) <= len(listed) + 2 * 20


def test_compare_only_stream_carries_what_sync_compares(conn):
    """The light row stream (stream_row_keys) holds key, size and ETag (no id, no timestamp); queue entries
    stay marked."""
    show = make_show(conn)
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum) "
        "values (%s, %s, 'shows/a', 3, 'e1'), (%s, %s, 'shows/b', 4, 'e2')",
        (show, TEST_BUCKET, show, TEST_BUCKET),
    )
    conn.execute("delete from core.show_assets where object_key = 'shows/b'")  # queued
    with conn.transaction():
        full = list(db.stream_rows(conn, TEST_BUCKET, keys.prefix_range("shows/")))
        light = list(db.stream_row_keys(conn, TEST_BUCKET, keys.prefix_range("shows/")))
    assert [(r.key, r.size, r.etag, r.queued) for r in light] == [(r.key, r.size, r.etag, r.queued) for r in full]
    assert [(r.key, r.queued) for r in light] == [("shows/a", False), ("shows/b", True)]
    assert light[0].asset_id is None and light[0].updated_at is None
    assert full[0].asset_id is not None and full[0].updated_at is not None


def test_merge_closes_the_row_stream_however_it_ends():
    """An open row stream holds its connection: merge closes it on an error and when stopped early."""
    closed: list[str] = []

    def rows(name: str):
        try:
            for i in range(100):
                yield _row(f"k{i:03d}", (1, "e"))
        finally:
            closed.append(name)

    # Out of order in the second chunk: the row stream has been started by then.
    out_of_order = [ObjectInfo(f"k{i:03d}", 1, "e", NOW) for i in [*range(15), 5]]
    with pytest.raises(ValueError, match="out of order"):
        list(diff.merge(out_of_order, rows("failed"), chunk_size=10))
    listing = [ObjectInfo(f"k{i:03d}", 1, "e", NOW) for i in range(100)]
    stopped = diff.merge(listing, rows("stopped"), chunk_size=10)
    assert next(stopped).same == 10
    assert closed == ["failed"]  # the stream is still open part way
    stopped.close()
    assert closed == ["failed", "stopped"]


def test_row_stream_stopped_part_way_frees_its_connection(conn):
    """A merge stopped part way cancels the streamed query: the transaction ends cleanly, the connection works."""
    show = make_show(conn)
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum) "
        "select %s, %s, 'shows/' || lpad(i::text, 5, '0'), 1, 'e' from generate_series(1, 3000) i",
        (show, TEST_BUCKET),
    )
    listing = [ObjectInfo(f"shows/{i:05d}", 1, "e", NOW) for i in range(1, 3001)]
    with conn.transaction():
        rows = db.stream_rows(conn, TEST_BUCKET, keys.prefix_range("shows/"), itersize=10)
        merged = diff.merge(listing, rows, chunk_size=10)
        assert next(merged) == (10, [])
        merged.close()
    assert conn.execute("select count(*) from core.show_assets").fetchone() == (3000,)
