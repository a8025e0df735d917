"""Repairs: each acts on one finding of the repair pass, only after
re-checking it live (HEAD the object, re-read the row), because a listing is
stale the moment it is read; deletions never exceed what the counting pass
counted (the bucket's budget)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

from trr_assets import db, erasures, storage, writer
from trr_assets.config import Settings
from trr_assets.diff import Diff
from trr_assets.errors import TrrAssetsError, one_line
from trr_assets.keys import SkipReason
from trr_assets.reconcile.limits import Judgement
from trr_assets.records import ObjectInfo
from trr_assets.storage import S3Client

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class _Head:
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None


def _head(client: S3Client, bucket: str, key: str) -> _Head | None:
    """The object as S3 has it now, or None when it is gone."""
    reply = storage.head_object(client, bucket, key)
    if reply is None:
        return None
    return _Head(
        int(reply["ContentLength"]),
        storage.strip_etag(reply.get("ETag")),
        reply["LastModified"],
        reply.get("ContentType"),
    )


def import_object(
    conn: psycopg.Connection[Any], client: S3Client, bucket: str, obj: ObjectInfo, *, settings: Settings
) -> str:
    """Make a row for one orphaned object; return the outcome.

    ``"imported"``, or why not: ``"no_show_in_key"`` (the key does not name a
    show), ``"unknown_show"``, ``"gone"`` (deleted since the listing),
    ``"claimed"`` (a row or a queued deletion for the key appeared: importing
    would resurrect a deleted asset).

    Rows from S3 have one write path, ``writer.upsert_objects``: the HEAD for
    content type and owner, the show check, and the guard that never
    re-creates a row whose deletion is queued, even against a delete that
    commits while the insert waits.
    """
    counts = writer.upsert_objects(conn, client, bucket, [obj], settings=settings)
    if counts.inserted:
        return "imported"
    if counts.vanished:
        return "gone"
    if counts.skipped_by_reason:
        reason = next(iter(counts.skipped_by_reason))
        return "unknown_show" if reason == SkipReason.UNKNOWN_SHOW.value else "no_show_in_key"
    return "claimed"  # queued for deletion, or a row appeared meanwhile


class Repairs:
    """The repair pass's actions, shared by its threads."""

    def __init__(
        self, settings: Settings, client: S3Client, cutoff: datetime, judgements: dict[str, Judgement]
    ) -> None:
        self.settings = settings
        self.client = client
        self.cutoff = cutoff
        self._judgements = judgements
        self._budgets = {b: {"object": j.object_budget, "row": j.row_budget} for b, j in judgements.items()}
        self._lock = threading.Lock()

    def repair(
        self, verdict: str, bucket: str, d: Diff, conn: psycopg.Connection[Any]
    ) -> tuple[str, dict[str, Any]]:
        """(action, extra fields) for one finding in the repair pass."""
        if self._judgements[bucket].refusal is not None:
            return "refused", {}
        try:
            if verdict == "orphaned_object":
                return self._repair_object(bucket, d, conn)
            if verdict == "orphaned_row":
                return self._repair_row(bucket, d, conn)
            return self._refresh(bucket, d, conn)
        except TrrAssetsError as exc:
            log.warning("reconcile_repair_failed", bucket=bucket, key=d.key, error=one_line(exc))
            return "failed", {"error": one_line(exc)}

    def _take_budget(self, bucket: str, kind: str) -> bool:
        with self._lock:
            budget = self._budgets[bucket]
            if budget[kind] > 0:
                budget[kind] -= 1
                return True
            return False

    def _repair_object(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.obj is not None
        policy = self.settings.reconcile.orphaned_objects
        if policy == "report":
            return "none", {}
        if policy == "import":
            outcome = import_object(conn, self.client, bucket, d.obj, settings=self.settings)
            if outcome == "imported":
                log.info("reconcile_object_imported", bucket=bucket, key=d.key)
                return "imported", {}
            return "skipped", {"reason": outcome}
        if not self._take_budget(bucket, "object"):
            return "skipped", {"reason": "over_counted_plan"}
        head = _head(self.client, bucket, d.key)
        if head is None:
            return "skipped", {"reason": "gone"}
        if head.etag != d.obj.etag or head.last_modified > self.cutoff:
            return "skipped", {"reason": "changed"}
        with db.wrap_errors(f"re-check {d.key}"), conn.transaction():
            claimed = conn.execute(db.query("reconcile_key_claimed"), {"bucket": bucket, "key": d.key}).fetchone()
        if claimed and claimed[0]:
            return "skipped", {"reason": "claimed"}
        if policy == "quarantine":
            target = self.settings.reconcile.quarantine_prefix + d.key
            if not storage.copy_if_unchanged(self.client, bucket, d.key, target, etag=head.etag, size=head.size):
                return "skipped", {"reason": "changed"}
            self._delete_object(bucket, d, conn, erasures.BY_QUARANTINE)
            log.info("reconcile_object_quarantined", bucket=bucket, key=d.key, quarantine_key=target)
            return "quarantined", {"quarantine_key": target}
        self._delete_object(bucket, d, conn, erasures.BY_ORPHANED_OBJECT)
        log.info("reconcile_object_deleted", bucket=bucket, key=d.key)
        return "deleted", {}

    def _delete_object(self, bucket: str, d: Diff, conn: psycopg.Connection[Any], deleted_by: str) -> None:
        """Delete the object, recorded in the erasure record (see ``erasures``)."""

        def delete() -> tuple[bool, str | None]:
            answer = storage.delete_object(self.client, bucket, d.key)
            return True, answer.get("VersionId") if answer.get("DeleteMarker") else None

        size = d.obj.size if d.obj is not None else None
        with db.wrap_errors(f"record the deletion of {d.key}"):
            erasures.erase(conn, erasures.Item(bucket, d.key, "object", size_bytes=size),
                           deleted_by=deleted_by, delete=delete)

    def _repair_row(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.row is not None
        if self.settings.reconcile.orphaned_rows == "report":
            return "none", {}
        if not self._take_budget(bucket, "row"):
            return "skipped", {"reason": "over_counted_plan"}
        with db.wrap_errors(f"delete orphaned row {d.row.asset_id}"), conn.transaction():
            # The row lock holds off an upsert of this row until we are done:
            # re-read, check S3, delete, all under it.
            current = conn.execute(db.query("reconcile_lock_row"), {"id": d.row.asset_id}).fetchone()
            if current is None:
                return "skipped", {"reason": "gone"}
            if current[0] != d.row.updated_at:
                return "skipped", {"reason": "changed"}
            if _head(self.client, bucket, d.key) is not None:
                return "skipped", {"reason": "object_exists"}
            conn.execute(db.query("reconcile_delete_row"), {"id": d.row.asset_id})
        log.info("reconcile_row_deleted", bucket=bucket, key=d.key, asset_id=str(d.row.asset_id))
        return "deleted", {}

    def _refresh(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.row is not None
        head = _head(self.client, bucket, d.key)
        if head is None:
            return "skipped", {"reason": "gone"}
        params = {"id": d.row.asset_id, "size": head.size, "etag": head.etag, "content_type": head.content_type}
        with db.wrap_errors(f"refresh row {d.row.asset_id}"), conn.transaction():
            updated = conn.execute(db.query("reconcile_refresh_row"), params).fetchone()
        if updated is None:
            return "skipped", {"reason": "gone_or_current"}
        log.info("reconcile_row_refreshed", bucket=bucket, key=d.key, asset_id=str(d.row.asset_id))
        return "refreshed", {}
