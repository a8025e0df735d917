"""The record of reconcile runs (``trr_assets.reconcile_runs``): each run's
start, its outcome and counts; ``--history`` reads them back."""

from __future__ import annotations

import getpass
import socket
from typing import Any

from psycopg.types.json import Jsonb

from trr_assets import db
from trr_assets.config import Settings
from trr_assets.reconcile.summary import ReconcileSummary, iso

HISTORY_LIMIT = 20


def default_run_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record_start(settings: Settings, dry_run: bool, buckets: list[str], prefix: str, run_by: str) -> int:
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("record the reconcile run"):
        row = conn.execute(
            db.query("reconcile_run_start"),
            {"dry_run": dry_run, "buckets": buckets, "prefix": prefix, "run_by": run_by},
        ).fetchone()
    assert row is not None
    return int(row[0])


def record_finish(settings: Settings, run_id: int, outcome: str, counts: dict[str, Any], error: str | None) -> None:
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("record the reconcile run"):
        conn.execute(
            db.query("reconcile_run_finish"),
            {"id": run_id, "outcome": outcome, "counts": Jsonb(counts), "error": error},
        )


def outcome(summary: ReconcileSummary) -> str:
    if summary.refused:
        return "refused"
    if summary.failed or summary.action_errors:
        return "failed"
    if not summary.drift:
        return "clean"
    return "drift" if summary.dry_run else "repaired"


def recent_runs(settings: Settings, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """The last recorded runs, newest first."""
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("read the reconcile history"):
        cursor = conn.execute(db.query("reconcile_history"), {"limit": limit})
        names = [c.name for c in cursor.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cursor]
    for row in rows:
        for name in ("started_at", "finished_at"):
            row[name] = iso(row[name]) if row[name] else None
    return rows
