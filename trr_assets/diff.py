"""The diff engine that sync and reconcile share.

S3 lists keys in byte order, and ``core.show_assets.object_key`` is collated
"C", so the listing and a server-side cursor over the rows are two sorted
streams that merge-join in one pass, holding one item of each at a time:
memory does not grow with the bucket. Each key comes out as one ``Diff``:

- ``ONLY_IN_S3``: an object with no row (sync inserts it; reconcile: orphaned object)
- ``ONLY_IN_DB``: a row with no object (reconcile: orphaned row)
- ``SAME``: both, size and ETag equal
- ``CHANGED``: both, size or ETag differ (sync updates; reconcile: mismatch)
- ``PENDING_DELETE``: no row, and the key's deletion is queued in the outbox
  (neither an orphan nor something to re-create)
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from trr_assets import db, storage
from trr_assets.keys import KeyRange, prefix_end
from trr_assets.storage import ObjectInfo


class Kind(enum.Enum):
    ONLY_IN_S3 = "only_in_s3"
    ONLY_IN_DB = "only_in_db"
    SAME = "same"
    CHANGED = "changed"
    PENDING_DELETE = "pending_delete"


@dataclass(frozen=True, slots=True)
class RowInfo:
    """A row of ``core.show_assets``, or (``queued``) a queued deletion."""

    key: str
    asset_id: uuid.UUID | None
    size: int | None
    etag: str | None
    updated_at: datetime
    queued: bool = False  # the key's deletion is in trr_assets.delete_queue
    queue_state: str | None = None  # 'pending' or 'failed' when queued


@dataclass(frozen=True, slots=True)
class Diff:
    kind: Kind
    key: str
    obj: ObjectInfo | None
    row: RowInfo | None


def _collapse(rows: Iterable[RowInfo]) -> Iterator[RowInfo]:
    """One item per key: a real row wins over a queue entry for the same key."""
    held: RowInfo | None = None
    for row in rows:
        if held is not None and row.key == held.key:
            if held.asset_id is None:  # held is the queue entry; keep the row
                held = row
            continue
        if held is not None:
            yield held
        held = row
    if held is not None:
        yield held


def merge(objects: Iterable[ObjectInfo], rows: Iterable[RowInfo]) -> Iterator[Diff]:
    """Merge-join two key-ordered streams into one ``Diff`` per key.

    Both inputs must be sorted by key (code-point order). A stream out of
    order raises ``ValueError``, since a silent misorder would report live
    objects as orphans.
    """
    obj_iter = iter(objects)
    row_iter = _collapse(rows)
    obj = next(obj_iter, None)
    row = next(row_iter, None)
    last_obj = last_row = ""
    while obj is not None or row is not None:
        if obj is not None and (row is None or obj.key < row.key):
            if obj.key < last_obj:
                raise ValueError(f"S3 listing out of order at {obj.key!r}")
            last_obj = obj.key
            yield Diff(Kind.ONLY_IN_S3, obj.key, obj, None)
            obj = next(obj_iter, None)
        elif obj is None or (row is not None and row.key < obj.key):
            assert row is not None
            if row.key < last_row:
                raise ValueError(f"row cursor out of order at {row.key!r}")
            last_row = row.key
            if row.asset_id is not None:
                yield Diff(Kind.ONLY_IN_DB, row.key, None, row)
            # else a queued deletion whose object is already gone: nothing to report
            row = next(row_iter, None)
        else:
            assert obj is not None and row is not None
            last_obj = last_row = obj.key
            if row.asset_id is None:
                kind = Kind.PENDING_DELETE
            elif row.size == obj.size and row.etag == obj.etag:
                kind = Kind.SAME
            else:
                kind = Kind.CHANGED
            yield Diff(kind, obj.key, obj, row)
            obj = next(obj_iter, None)
            row = next(row_iter, None)


def stream_rows(
    conn: psycopg.Connection[Any], bucket: str, key_range: KeyRange, *, itersize: int = 5000
) -> Iterator[RowInfo]:
    """Rows and queued deletions of ``bucket`` in ``key_range``, in key order.

    A server-side cursor: rows arrive ``itersize`` at a time. Must run inside a
    transaction (the cursor lives as long as it).
    """
    params = {"bucket": bucket, "start_at": key_range.start_at, "stop_before": key_range.stop_before}
    cursor = conn.cursor(name=f"trr_rows_{uuid.uuid4().hex[:12]}")
    cursor.itersize = itersize
    with db.wrap_errors(f"read rows of bucket {bucket}"):
        cursor.execute(db.query("stream_rows_in_range"), params)
        for key, asset_id, size, etag, updated_at, queue_state in cursor:
            if asset_id is None:
                yield RowInfo(key, None, None, None, updated_at, True, queue_state)
            else:
                yield RowInfo(key, asset_id, size, etag, updated_at)
    cursor.close()


def prefix_range(prefix: str) -> KeyRange:
    """The whole prefix as one range."""
    return KeyRange(prefix, prefix_end(prefix))


def diff_range(
    client: Any, conn: psycopg.Connection[Any], bucket: str, prefix: str, key_range: KeyRange
) -> Iterator[Diff]:
    """List ``key_range`` of ``bucket`` and merge it with its rows."""
    objects = storage.list_objects(
        client, bucket, prefix=prefix, start_at=key_range.start_at, stop_before=key_range.stop_before
    )
    return merge(objects, stream_rows(conn, bucket, key_range))
