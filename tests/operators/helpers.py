"""Helpers of the operator commands' tests."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from trr_assets.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err



def queue(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "insert into trr_assets.delete_queue (bucket, object_key, state, enqueued_at, last_error, attempts) values "
        "('b1', 'shows/a', 'pending', now() - interval '2 hours', null, 0), "
        "('b1', 'shows/c', 'failed', now() - interval '2 days', 'AccessDenied: Access Denied', 12)"
    )


def seed_report(conn: psycopg.Connection[Any]) -> None:
    """Three reconcile runs, queued and failed deletions, job runs."""
    queue(conn)
    for hours, orphans in ((30, 5), (20, 3), (10, 0)):
        counts = {"orphaned_objects": orphans, "orphaned_rows": 1, "mismatched": 2, "failed_deletes": 1}
        conn.execute(
            "insert into trr_assets.reconcile_runs (dry_run, buckets, prefix, run_by, outcome, counts, "
            "started_at, finished_at) values (true, '{b1}', 'shows/', 't', 'drift', %s, "
            "now() - make_interval(hours => %s), now() - make_interval(hours => %s))",
            (json.dumps(counts), hours, hours))
    conn.execute(
        "insert into trr_assets.job_runs (job, started_at, finished_at, outcome, counts, error, worker) values "
        "('sync', now() - interval '70 seconds', now() - interval '60 seconds', 'ok', '{\"inserted\": 3}', null, "
        "'worker@a'), ('deletes', now() - interval '1 second', now(), 'failed', '{}', "
        "'s3: delete objects: <script>alert(1)</script>', 'worker@b')")


