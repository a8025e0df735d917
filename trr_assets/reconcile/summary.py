"""A reconcile run's options and its summary: what it found and did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from trr_assets.reconcile.versions import REPAIR_COUNTS as VERSION_REPAIR_COUNTS
from trr_assets.reconcile.versions import SCAN_COUNTS as VERSION_SCAN_COUNTS

# Counters, in the order reports show them.
SCAN_COUNTS = (
    "objects_scanned",
    "rows_scanned",
    "orphaned_objects",
    "orphaned_rows",
    "mismatched",
    "skipped_recent",
    "pending_deletes",
    "failed_deletes",
    "in_quarantine",
)
REPAIR_COUNTS = (
    "imported",
    "deleted_objects",
    "quarantined",
    "deleted_rows",
    "refreshed",
    "skipped",
    "action_errors",
)


def iso(value: datetime) -> str:
    """A time as reports show it: UTC, ISO 8601, with a Z."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ReconcileOptions:
    """One run. ``None`` means "as configured"."""

    repair: bool = False
    buckets: Sequence[str] | None = None
    prefix: str | None = None
    grace_seconds: int | None = None
    force: bool = False  # override max_deletes and max_delete_fraction
    inventory: str | None = None  # s3://BUCKET/PATH/manifest.json
    run_by: str | None = None  # recorded in the history; default user@host
    versions: bool = False  # also versions, delete markers and multipart uploads (reconcile.versions)


# What trr_assets_drift_findings{bucket,kind} reads from a recorded run (see status.DRIFT_KINDS).
FINDING_COUNTS = ("orphaned_objects", "orphaned_rows", "mismatched", "failed_deletes")


@dataclass(frozen=True)
class ReconcileSummary:
    """What one run found and did. Counts cover the findings it reported."""

    dry_run: bool
    buckets: tuple[str, ...]
    prefix: str
    source: str  # "listing" or "inventory"
    objects_scanned: int = 0
    rows_scanned: int = 0
    orphaned_objects: int = 0
    orphaned_rows: int = 0
    mismatched: int = 0
    skipped_recent: int = 0
    pending_deletes: int = 0
    failed_deletes: int = 0
    in_quarantine: int = 0
    imported: int = 0
    deleted_objects: int = 0
    quarantined: int = 0
    deleted_rows: int = 0
    refreshed: int = 0
    skipped: int = 0  # repair candidates a live re-check spared, or that could not be acted on
    action_errors: int = 0
    refused: list[str] = field(default_factory=list)  # one line per bucket whose repair was refused
    failed: list[str] = field(default_factory=list)  # one line per bucket that could not be read whole
    started_at: datetime | None = None
    duration_seconds: float = 0.0
    run_id: int | None = None
    by_bucket: dict[str, dict[str, int]] = field(default_factory=dict)  # findings per bucket, recorded
    # --versions: per bucket, the counts of reconcile.versions (None without --versions)
    versions_by_bucket: dict[str, dict[str, int]] | None = None

    @property
    def drift(self) -> bool:
        """Anything an operator should look at (found, whether or not repaired)."""
        versions = self.version_counts()
        return bool(self.orphaned_objects or self.orphaned_rows or self.mismatched or self.failed_deletes
                    or versions.get("orphaned_versions") or versions.get("lone_delete_markers")
                    or versions.get("stale_uploads"))

    def version_counts(self) -> dict[str, int]:
        """The --versions counts of every bucket, added up ({} without --versions)."""
        if self.versions_by_bucket is None:
            return {}
        names = VERSION_SCAN_COUNTS + (() if self.dry_run else VERSION_REPAIR_COUNTS)
        return {name: sum(b.get(name, 0) for b in self.versions_by_bucket.values()) for name in names}

    @property
    def all_action_errors(self) -> int:
        """The failed repairs, of versions too."""
        return self.action_errors + self.version_counts().get("version_action_errors", 0)

    @property
    def failures(self) -> tuple[str, ...]:
        """The refused buckets, the buckets not read whole, and the failed repairs."""
        errors = [*self.refused, *self.failed]
        if self.all_action_errors:
            errors.append(f"{self.all_action_errors} repairs failed (see the report)")
        return tuple(errors)

    def counts(self) -> dict[str, int]:
        return {**{name: getattr(self, name) for name in (*SCAN_COUNTS, *REPAIR_COUNTS)}, **self.version_counts()}

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.versions_by_bucket is None else {"versions_by_bucket": self.versions_by_bucket}
        return {
            "dry_run": self.dry_run,
            **self.counts(),
            **extra,
            "drift": self.drift,
            "refused": list(self.refused),
            "failed": list(self.failed),
            "buckets": list(self.buckets),
            "prefix": self.prefix,
            "source": self.source,
            "started_at": iso(self.started_at) if self.started_at else None,
            "duration_seconds": round(self.duration_seconds, 3),
            "run_id": self.run_id,
        }
