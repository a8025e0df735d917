"""What operators read about the system's state, from PostgreSQL.

The delete queue (``deletes status``, ``/metrics``, ``report``), the
recorded job and reconcile runs (``report``), and the worker's record of
each job run. Read-only except ``record_job_run``. The SQL is in
``sql/queries/operators.sql``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from trr_assets import db
from trr_assets.config import DatabaseSettings
from trr_assets.errors import DatabaseError

log = structlog.get_logger()

# Finding kinds as reconcile's JSON lines name them, with the summary count of each.
DRIFT_KINDS = {
    "orphaned_object": "orphaned_objects",
    "orphaned_row": "orphaned_rows",
    "mismatch": "mismatched",
    "failed_delete": "failed_deletes",
}


@dataclass(frozen=True)
class FailedDelete:
    bucket: str
    key: str
    asset_id: str | None
    attempts: int
    last_error: str | None
    enqueued_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "asset_id": self.asset_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "enqueued_at": self.enqueued_at.isoformat(),
            "failed_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Snapshot:
    """The database side of ``/metrics``: one query's worth."""

    pending: int
    failed: int
    oldest_age_seconds: float  # of the oldest pending entry; 0 when none is pending
    last_reconcile_finished_at: float | None  # Unix time
    drift: dict[tuple[str, str], int] = field(default_factory=dict)  # (bucket, kind) -> findings


@dataclass(frozen=True)
class QueueStatus:
    pending: int
    failed: int
    oldest_age_seconds: float
    failed_entries: tuple[FailedDelete, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "failed": self.failed,
            "oldest_age_seconds": round(self.oldest_age_seconds, 3),
            "failed_deletes": [entry.as_dict() for entry in self.failed_entries],
        }


def drift_by_bucket(buckets: list[str], counts: dict[str, Any]) -> dict[tuple[str, str], int]:
    """``{(bucket, kind): n}`` from a recorded run's counts.

    Runs record per-bucket counts under ``by_bucket``; a run recorded
    without them (older versions) is attributed whole to its bucket when it
    had one, else to the bucket ``"*"``.
    """
    per_bucket = counts.get("by_bucket")
    if not isinstance(per_bucket, dict):
        per_bucket = {buckets[0] if len(buckets) == 1 else "*": counts}
    return {
        (bucket, kind): int(values.get(count, 0) or 0)
        for bucket, values in per_bucket.items()
        if isinstance(values, dict)
        for kind, count in DRIFT_KINDS.items()
    }


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    with db.wrap_errors("cannot read the delete queue and the last reconcile"):
        row = conn.execute(db.query("metrics_snapshot")).fetchone()
    assert row is not None
    pending, failed, oldest, last = row
    drift: dict[tuple[str, str], int] = {}
    finished_at = None
    if last:
        drift = drift_by_bucket(list(last.get("buckets") or []), dict(last.get("counts") or {}))
        finished_at = last.get("finished_at")
    return Snapshot(int(pending), int(failed), float(oldest or 0.0), finished_at, drift)


def failed_deletes(conn: psycopg.Connection[Any], *, limit: int = 100) -> list[FailedDelete]:
    with db.wrap_errors("cannot read the failed deletions"):
        rows = conn.execute(db.query("failed_deletes"), {"limit": limit}).fetchall()
    return [
        FailedDelete(bucket, key, str(asset_id) if asset_id else None, attempts, error, enqueued, updated)
        for bucket, key, asset_id, attempts, error, enqueued, updated in rows
    ]


def queue_status(settings: DatabaseSettings, *, limit: int = 100) -> QueueStatus:
    """``trr-assets deletes status``: counts, the oldest age, the failed entries."""
    with db.connect(settings, autocommit=True, application_name="trr-assets status") as conn:
        snap = snapshot(conn)
        entries = failed_deletes(conn, limit=limit)
    return QueueStatus(snap.pending, snap.failed, snap.oldest_age_seconds, tuple(entries))


def database_answers(settings: DatabaseSettings, *, timeout_seconds: float) -> str | None:
    """None when the database answers a query within the timeout, else why not."""
    quick = DatabaseSettings(url=settings.url, connect_timeout_seconds=max(1.0, timeout_seconds))
    try:
        with db.connect(quick, autocommit=True, application_name="trr-assets health") as conn:
            with db.wrap_errors("health check"):
                conn.execute(db.query("health_check")).fetchone()
    except DatabaseError as exc:
        return str(exc)
    return None


def warn_if_schema_old(settings: DatabaseSettings) -> None:
    """Log a warning when the database lacks migrations of this version (the
    worker, at start: its jobs would fail on what is missing)."""
    try:
        with db.connect(settings, autocommit=True, application_name="trr-assets worker") as conn:
            pending = db.pending_migrations(conn)
    except DatabaseError:
        return  # the jobs say what is wrong with the database, run by run
    if pending:
        log.warning("schema_older_than_code", pending=pending, hint="run `trr-assets migrate`")


def worker_name() -> str:
    return f"worker@{socket.gethostname()}"


def record_job_run(
    settings: DatabaseSettings,
    *,
    job: str,
    started_at: datetime,
    outcome: str,
    counts: dict[str, Any],
    error: str | None,
) -> None:
    """Record one job run; a database that cannot take it is logged, not raised."""
    try:
        with db.connect(settings, autocommit=True, application_name="trr-assets worker") as conn:
            with db.wrap_errors("cannot record the job run"):
                conn.execute(db.query("record_job_run"), {
                    "job": job, "started_at": started_at, "outcome": outcome,
                    "counts": Jsonb(counts), "error": error, "worker": worker_name(),
                })
    except DatabaseError as exc:
        log.warning("job_run_not_recorded", job=job, error=str(exc))


def recent_job_runs(conn: psycopg.Connection[Any], *, limit: int = 50) -> list[dict[str, Any]]:
    with db.wrap_errors("cannot read trr_assets.job_runs"):
        rows = conn.execute(db.query("recent_job_runs"), {"limit": limit}).fetchall()
    return [
        {"job": job, "started_at": started, "finished_at": finished, "outcome": outcome,
         "counts": counts or {}, "error": error, "worker": worker}
        for job, started, finished, outcome, counts, error, worker in rows
    ]


def reconcile_runs(conn: psycopg.Connection[Any], *, limit: int = 200) -> list[dict[str, Any]]:
    """The last ``limit`` finished reconcile runs, oldest first."""
    with db.wrap_errors("cannot read trr_assets.reconcile_runs"):
        rows = conn.execute(db.query("reconcile_runs_for_report"), {"limit": limit}).fetchall()
    return [
        {"id": run_id, "started_at": started, "finished_at": finished, "dry_run": dry_run,
         "buckets": list(buckets), "outcome": outcome, "counts": counts or {}, "error": error}
        for run_id, started, finished, dry_run, buckets, outcome, counts, error in rows
    ]


@dataclass(frozen=True)
class ReportData:
    runs: list[dict[str, Any]]
    queue: QueueStatus
    jobs: list[dict[str, Any]]


def report_data(settings: DatabaseSettings) -> ReportData:
    """What ``trr-assets report`` shows, read on one connection."""
    with db.connect(settings, autocommit=True, application_name="trr-assets report") as conn:
        snap = snapshot(conn)
        queue = QueueStatus(snap.pending, snap.failed, snap.oldest_age_seconds, tuple(failed_deletes(conn)))
        return ReportData(reconcile_runs(conn), queue, recent_job_runs(conn))
