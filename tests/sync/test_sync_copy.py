"""sync's write path for new keys: COPY straight into core.show_assets, every
way the database can refuse it, and the batches written while the next is read."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import structlog

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
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
from trr_assets import sync
from trr_assets.errors import StorageError
from trr_assets.storage import ObjectInfo
from trr_assets.writer import upsert_objects


def _objects(s3: Any, show: uuid.UUID, count: int) -> list[ObjectInfo]:
    keys = [show_key(show, f"{i:03d}.jpg") for i in range(count)]
    for i, key in enumerate(keys):
        put(s3, key, bytes([i % 256]) * (i + 1))
    return [object_info(s3, key) for key in keys]


def _staging_table(conn: psycopg.Connection[Any]) -> Any:
    """The writer session's staging table of the upsert path, or None if the session never made one."""
    return conn.execute("select to_regclass('pg_temp.trr_sync_batch')").fetchone()[0]


def _refusals(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "sync_batch_copy_refused"]


def test_new_keys_are_copied_straight_into_the_table(conn, db_url, s3):
    """absent=True writes every new key with its metadata by COPY alone: no staging table, no refusal."""
    show = make_show(conn)
    owner = str(uuid.uuid4())
    objects = _objects(s3, show, 5)
    put(s3, show_key(show, "owned.png"), b"png", content_type="image/png", owner=owner)
    objects.append(object_info(s3, show_key(show, "owned.png")))
    settings = sync_settings(db_url)

    with structlog.testing.capture_logs() as logs, psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(writer, s3, TEST_BUCKET, objects, settings=settings, absent=True)
        staging = _staging_table(writer)

    assert (counts.inserted, counts.updated, counts.skipped) == (6, 0, 0)
    assert staging is None and _refusals(logs) == []
    found = rows(conn)
    assert found[show_key(show, "owned.png")] == (show, 3, objects[-1].etag, "image/png", uuid.UUID(owner))
    assert all(found[o.key][1:4] == (o.size, o.etag, "image/jpeg") for o in objects[:5])


def test_a_row_that_appeared_since_the_merge_sends_the_batch_through_the_upsert(conn, db_url, s3):
    """A key said absent that has a row by now: the unique index refuses the COPY, the upsert updates that row."""
    show = make_show(conn)
    objects = _objects(s3, show, 4)
    taken = objects[2]
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum)"
        " values (%s, %s, %s, 1, 'old')",
        (show, TEST_BUCKET, taken.key),
    )
    settings = sync_settings(db_url)

    with structlog.testing.capture_logs() as logs, psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(writer, s3, TEST_BUCKET, objects, settings=settings, absent=True)

    assert (counts.inserted, counts.updated) == (3, 1)
    assert rows(conn)[taken.key][1:3] == (taken.size, taken.etag)
    assert len(rows(conn)) == 4
    refused = _refusals(logs)
    assert len(refused) == 1 and "duplicate key" in refused[0]["reason"]


@pytest.mark.parametrize("nested", [False, True], ids=["own transaction", "caller's transaction"])
def test_copy_never_re_creates_a_key_whose_deletion_is_queued(conn, db_url, s3, nested):
    """A queued key said absent: 0007's guard refuses the COPY, the upsert skips the key, the deletion stays queued."""
    show = make_show(conn)
    objects = _objects(s3, show, 3)
    queued = objects[1]
    settings = sync_settings(db_url)
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)",
        (show, TEST_BUCKET, queued.key),
    )
    conn.execute("delete from core.show_assets where object_key = %s", (queued.key,))  # queues its deletion

    with structlog.testing.capture_logs() as logs, psycopg.connect(db_url, autocommit=not nested) as writer:
        if nested:
            with writer.transaction():
                counts = upsert_objects(writer, s3, TEST_BUCKET, objects, settings=settings, absent=True)
                guard = writer.execute("select current_setting('trr_assets.refuse_queued_keys', true)").fetchone()
            assert guard == ("off",)
        else:
            counts = upsert_objects(writer, s3, TEST_BUCKET, objects, settings=settings, absent=True)

    assert set(rows(conn)) == {objects[0].key, objects[2].key}
    assert conn.execute("select object_key, state from trr_assets.delete_queue").fetchall() == [(queued.key, "pending")]
    assert (counts.inserted, counts.pending_deletes) == (2, 1)
    assert "deletion is queued" in _refusals(logs)[0]["reason"]


class _DeletesShowOnFirstHead:
    """An S3 client that deletes a show (committed, from another session) at its first HEAD:
    after sync looked the show up, before its rows are checked against it."""

    def __init__(self, client: Any, db_url: str, show: uuid.UUID) -> None:
        self._client, self._db_url, self._show = client, db_url, show
        self._done = False

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if not self._done:
            self._done = True
            with psycopg.connect(self._db_url, autocommit=True) as other:
                other.execute("delete from core.shows where id = %s", (self._show,))
        return self._client.head_object(Bucket=Bucket, Key=Key)  # type: ignore[no-any-return]


def test_a_show_deleted_after_the_look_up_is_counted_unknown_not_fatal(conn, db_url, s3):
    """The foreign key refuses the COPY; the upsert skips the deleted show's keys and writes the others."""
    doomed, kept = make_show(conn), make_show(conn)
    objects = sorted(_objects(s3, doomed, 2) + _objects(s3, kept, 2), key=lambda o: o.key)
    settings = sync_settings(db_url)

    with structlog.testing.capture_logs() as logs, psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(
            writer, _DeletesShowOnFirstHead(s3, db_url, doomed), TEST_BUCKET, objects, settings=settings, absent=True
        )

    assert {row[0] for row in rows(conn).values()} == {kept}
    assert (counts.inserted, counts.skipped, counts.skipped_by_reason) == (2, 2, {"unknown_show": 2})
    assert "foreign key" in _refusals(logs)[0]["reason"]


def test_copy_waits_for_an_uncommitted_row_of_the_same_key_then_upserts(conn, db_url, s3):
    """A row for the key inserted but not yet committed: the COPY waits for it, then the upsert updates it."""
    show = make_show(conn)
    objects = _objects(s3, show, 2)
    settings = sync_settings(db_url)

    with psycopg.connect(db_url) as other:
        other.execute(
            "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum)"
            " values (%s, %s, %s, 1, 'x')",
            (show, TEST_BUCKET, objects[0].key),
        )
        counts = upsert_blocked_until_commit(conn, other, db_url, lambda writer: upsert_objects(
            writer, s3, TEST_BUCKET, objects, settings=settings, absent=True))

    assert (counts.inserted, counts.updated) == (1, 1)
    assert {key: row[1:3] for key, row in rows(conn).items()} == {o.key: (o.size, o.etag) for o in objects}


@pytest.mark.parametrize("absent", [False, True], ids=["upsert", "copy"])
def test_many_batches_are_written_in_order_each_once_with_the_callers_log_context(conn, db_url, s3, absent):
    """Seven batches (written while the next is read): every key once, counts summed, the worker's log context kept."""
    show = make_show(conn)
    objects = _objects(s3, show, 20)
    refused_key = objects[17].key  # in the sixth batch: refused by the unique index when COPYed
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum) values (%s, %s, %s, 1, 'x')",
        (show, TEST_BUCKET, refused_key),
    )
    settings = sync_settings(db_url, batch_size=3)

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with structlog.contextvars.bound_contextvars(job="sync"), psycopg.connect(db_url, autocommit=True) as writer:
            counts = upsert_objects(writer, s3, TEST_BUCKET, objects, settings=settings, absent=absent)

    assert (counts.inserted, counts.updated) == (19, 1)
    assert {key: row[1:3] for key, row in rows(conn).items()} == {o.key: (o.size, o.etag) for o in objects}
    refused = _refusals(logs)
    assert [(e["job"], e["rows"]) for e in refused] == ([("sync", 3)] if absent else [])


@pytest.mark.parametrize("failing", [1, 7], ids=["first batch", "third batch"])
def test_an_s3_error_mid_copy_keeps_the_batches_before_it_and_nothing_of_its_own(conn, db_url, s3, failing):
    """A HEAD failing while its batch is being COPYed: earlier batches committed whole, nothing of the rest."""
    show = make_show(conn)
    objects = _objects(s3, show, 10)
    settings = sync_settings(db_url, batch_size=3)

    with psycopg.connect(db_url, autocommit=True) as writer:
        with pytest.raises(StorageError, match="boom"):
            upsert_objects(writer, FailingHeads(s3, objects[failing].key), TEST_BUCKET, objects,
                                settings=settings, absent=True)
        status = writer.info.transaction_status

    assert set(rows(conn)) == {o.key for o in objects[: failing // 3 * 3]}
    assert status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize("absent", [False, True], ids=["upsert", "copy"])
def test_unsorted_and_repeated_keys_are_written_once_each_in_key_order(conn, db_url, s3, absent):
    """Either path sorts and deduplicates the batch: time-ordered ids follow the keys, each key once."""
    show = make_show(conn)
    objects = _objects(s3, show, 6)
    listing = [*reversed(objects), objects[2], objects[0]]

    with psycopg.connect(db_url, autocommit=True) as writer:
        counts = upsert_objects(writer, s3, TEST_BUCKET, listing, settings=sync_settings(db_url), absent=absent)

    ids = [r[0] for r in conn.execute("select id from core.show_assets order by object_key").fetchall()]
    assert counts.inserted == 6 and len(ids) == 6
    assert ids == sorted(ids)


def test_sync_copies_new_objects_and_upserts_changed_ones(conn, db_url, s3, monkeypatch):
    """sync.run hands new objects to upsert_objects as absent, changed ones not."""
    show = make_show(conn)
    objects = _objects(s3, show, 4)
    settings = sync_settings(db_url, list_shards=1)
    calls: list[tuple[bool, list[str]]] = []
    upsert = sync.upsert_objects

    def spy(conn: Any, client: Any, bucket: str, objects: list[ObjectInfo], **kwargs: Any) -> Any:
        calls.append((kwargs["absent"], [o.key for o in objects]))
        return upsert(conn, client, bucket, objects, **kwargs)

    monkeypatch.setattr(sync, "upsert_objects", spy)
    first = run(settings, s3)
    put(s3, objects[1].key, b"changed")
    put(s3, show_key(show, "new.jpg"))
    second = run(settings, s3)

    assert (first.inserted, second.inserted, second.updated, second.unchanged) == (4, 1, 1, 3)
    assert calls == [
        (True, [o.key for o in objects]),
        (True, [show_key(show, "new.jpg")]),
        (False, [objects[1].key]),
    ]
