"""Proof of erasure: the record of everything trr-assets deletes in S3.

Every object, object version, delete marker and incomplete multipart upload
that trr-assets deletes (the delete queue's drain, reconcile's repairs) gets
one row in ``trr_assets.erasures`` (``sql/0010_erasures.sql``), and a key
deleted with ``deletes.all_versions`` gets the follow-up check that no
version of it remains.

How a deletion is recorded exactly once, whatever happens in between:

1. ``intend``: before the S3 call, an intent per item is committed on a
   connection of its own. An open intent for the same item (left by an
   attempt that died) is taken over, not duplicated.
2. S3 deletes; ``confirm`` turns the confirmed intents into erasures
   (``drop`` removes those S3 refused), in the caller's transaction: for the
   drain, the one that takes the entries off the queue.
3. A process killed between 1 and 2 leaves intents behind. ``settle`` (run
   at the start of each drain and repair) looks each one up in S3 once it
   is older than any run could still be working on it: gone, it is an
   erasure (with the time it was settled); still there, the intent is
   dropped and the thing will be found and deleted again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

from trr_assets import db, storage
from trr_assets.errors import StorageError
from trr_assets.storage import versions as storage_versions

log = structlog.get_logger()

# Who deleted it (the deleted_by column).
BY_DRAIN = "drain"
BY_ORPHANED_OBJECT = "reconcile_orphaned_object"
BY_QUARANTINE = "reconcile_quarantine"
BY_ORPHANED_VERSIONS = "reconcile_orphaned_versions"
BY_LONE_DELETE_MARKER = "reconcile_lone_delete_marker"
BY_INCOMPLETE_UPLOAD = "reconcile_incomplete_upload"

SETTLE_BATCH = 500


@dataclass(frozen=True, slots=True)
class Item:
    """One thing about to be deleted. ``kind``: ``object`` (a plain delete, no
    version named), ``version``, ``delete_marker`` or ``upload``."""

    bucket: str
    key: str
    kind: str
    version_id: str | None = None
    upload_id: str | None = None
    size_bytes: int | None = None


def intend(conn: psycopg.Connection[Any], items: Sequence[Item], *, deleted_by: str) -> list[int]:
    """Commit an intent per item, in order; returns their ids.

    ``conn`` must be an autocommit connection outside any transaction: the
    intents must be on disk before the S3 call.
    """
    if not items:
        return []
    params = {
        "buckets": [i.bucket for i in items],
        "keys": [i.key for i in items],
        "kinds": [i.kind for i in items],
        "version_ids": [i.version_id for i in items],
        "upload_ids": [i.upload_id for i in items],
        "sizes": [i.size_bytes for i in items],
        "deleted_by": [deleted_by] * len(items),
    }
    with db.wrap_errors("erasures: cannot record the intended deletions"):
        rows = conn.execute(db.query("erasures_intend"), params).fetchall()
    return [row[0] for row in rows]


def confirm(conn: psycopg.Connection[Any], ids: Sequence[int], markers: Sequence[str | None] | None = None) -> None:
    """S3 confirmed these intents: they are erasures now. ``markers``: per id,
    the delete marker a plain delete placed on a versioned bucket."""
    if not ids:
        return
    with db.wrap_errors("erasures: cannot record the deletions"):
        conn.execute(db.query("erasures_confirm"),
                     {"ids": list(ids), "markers": list(markers) if markers is not None else [None] * len(ids)})


def drop(conn: psycopg.Connection[Any], ids: Sequence[int]) -> None:
    """These intents did not happen (S3 refused)."""
    if ids:
        with db.wrap_errors("erasures: cannot drop intents"):
            conn.execute(db.query("erasures_drop"), {"ids": list(ids)})


def record_checks(conn: psycopg.Connection[Any], checks: Sequence[tuple[str, str, int]], *, deleted_by: str) -> None:
    """The follow-up checks of all_versions deletes: (bucket, key, versions still listed)."""
    if not checks:
        return
    params = {
        "buckets": [c[0] for c in checks],
        "keys": [c[1] for c in checks],
        "remaining": [c[2] for c in checks],
        "deleted_by": deleted_by,
    }
    with db.wrap_errors("erasures: cannot record the follow-up checks"):
        conn.execute(db.query("erasures_record_check"), params)


def erase(
    conn: psycopg.Connection[Any], item: Item, *, deleted_by: str, delete: Callable[[], tuple[bool, str | None]]
) -> bool:
    """Delete one thing through ``delete`` and record it (intend, call, confirm).

    ``conn``: a connection with no transaction open. ``delete`` returns
    (whether it deleted, the delete marker a plain delete placed); an
    exception from it drops the intent and goes on up. Returns whether the
    thing was deleted.
    """
    with conn.transaction():
        [intent] = intend(conn, [item], deleted_by=deleted_by)
    try:
        deleted, marker = delete()
    except BaseException:
        with conn.transaction():
            drop(conn, [intent])
        raise
    with conn.transaction():
        if deleted:
            confirm(conn, [intent], [marker])
        else:
            drop(conn, [intent])
    return deleted


def settle(conn: psycopg.Connection[Any], client: Any, *, older_than_seconds: float) -> tuple[int, int]:
    """Resolve intents left by a process that died mid-deletion (see above).

    Returns (confirmed, dropped). An intent S3 cannot be asked about now is
    left for the next settle.
    """
    confirmed = dropped = 0
    while True:
        with db.wrap_errors("erasures: cannot settle intents"), conn.transaction():
            rows = conn.execute(db.query("erasures_to_settle"),
                                {"older_than_seconds": older_than_seconds, "limit": SETTLE_BATCH}).fetchall()
            gone: list[int] = []
            there: list[int] = []
            for row_id, bucket, key, kind, version_id, upload_id in rows:
                try:
                    (gone if _gone(client, bucket, key, kind, version_id, upload_id) else there).append(row_id)
                except StorageError as exc:
                    log.warning("erasure_settle_failed", bucket=bucket, key=key, error=str(exc))
            confirm(conn, gone)
            drop(conn, there)
        confirmed += len(gone)
        dropped += len(there)
        if len(rows) < SETTLE_BATCH or not (gone or there):
            break
    if confirmed or dropped:
        log.info("erasures_settled", confirmed=confirmed, dropped=dropped)
    return confirmed, dropped


def _gone(client: Any, bucket: str, key: str, kind: str, version_id: str | None, upload_id: str | None) -> bool:
    if kind == "upload" and upload_id is not None:
        return not storage_versions.upload_exists(client, bucket, key, upload_id)
    if version_id is not None:
        return not storage_versions.version_exists(client, bucket, key, version_id)
    return storage.head_object(client, bucket, key) is None


def listed(
    conn: psycopg.Connection[Any],
    *,
    bucket: str | None = None,
    key: str | None = None,
    since: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """The erasures, oldest first, streamed; each filter optional.

    Each is ``{"bucket", "key", "version_id", "deleted_at", "kind",
    "deleted_by"}`` plus, when known, ``size``, ``upload_id``,
    ``delete_marker_version_id`` and (a follow-up check)
    ``versions_remaining``.
    """
    params = {"bucket": bucket, "key": key, "since": since}
    with db.wrap_errors("erasures: cannot read the record"), conn.transaction():
        cursor = conn.cursor()
        for row in cursor.stream(db.query("erasures_list"), params):
            (bucket_, key_, kind, version_id, upload_id, marker, size, remaining, deleted_by, deleted_at) = row
            item: dict[str, Any] = {
                "bucket": bucket_,
                "key": key_,
                "version_id": version_id,
                "deleted_at": deleted_at.isoformat(),
                "kind": kind,
                "deleted_by": deleted_by,
            }
            for name, value in (("size", size), ("upload_id", upload_id),
                                ("delete_marker_version_id", marker), ("versions_remaining", remaining)):
                if value is not None:
                    item[name] = value
            yield item
