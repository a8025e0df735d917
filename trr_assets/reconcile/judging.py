"""What each difference the scan finds is, and how a report shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trr_assets.diff import Diff, Kind
from trr_assets.reconcile.summary import iso


def verdict(d: Diff, cutoff: datetime, quarantine_prefix: str) -> str | None:
    """What one key is: a finding kind, or a counter name, or None (in sync)."""
    if d.kind is Kind.ONLY_IN_S3:
        assert d.obj is not None
        if d.key.startswith(quarantine_prefix):
            return "in_quarantine"
        return "skipped_recent" if d.obj.last_modified > cutoff else "orphaned_object"
    if d.kind is Kind.ONLY_IN_DB:
        assert d.row is not None
        return "skipped_recent" if d.row.updated_at > cutoff else "orphaned_row"
    if d.kind is Kind.CHANGED:
        assert d.row is not None
        # A row with no checksum yet was written by upload_url and has not been
        # synced since its object landed: an upload finishing, within grace.
        if d.row.etag is None and d.row.updated_at > cutoff:
            return "skipped_recent"
        return "mismatch"
    if d.kind is Kind.PENDING_DELETE:
        return "pending_deletes"
    return None


COUNTER_OF = {"orphaned_object": "orphaned_objects", "orphaned_row": "orphaned_rows", "mismatch": "mismatched"}


def finding(kind: str, bucket: str, d: Diff, action: str, **extra: Any) -> dict[str, Any]:
    """One finding as reports show it (SPEC: reconcile, jsonl)."""
    out: dict[str, Any] = {"kind": kind, "bucket": bucket, "key": d.key}
    if d.obj is not None:
        out.update(size=d.obj.size, etag=d.obj.etag, last_modified=iso(d.obj.last_modified))
    if d.row is not None:
        out["asset_id"] = str(d.row.asset_id)
        if d.obj is None:
            out.update(size=d.row.size, etag=d.row.etag)
        else:
            out.update(row_size=d.row.size, row_etag=d.row.etag)
        out["updated_at"] = iso(d.row.updated_at)
    out["action"] = action
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def repair_counter(verdict: str, action: str) -> str | None:
    """The counter a repair's action adds to."""
    if action == "deleted":
        return "deleted_objects" if verdict == "orphaned_object" else "deleted_rows"
    return {
        "imported": "imported",
        "quarantined": "quarantined",
        "refreshed": "refreshed",
        "skipped": "skipped",
        "failed": "action_errors",
    }.get(action)
