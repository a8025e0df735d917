"""The worker process SIGKILLed mid-sync, mid-drain (between S3's answer and
the commit) and mid-repair; a restarted worker converges with no lost
deletion and no duplicate row. And two workers plus an operator's `delete`
over 1,000 assets: every object whose row is gone is deleted exactly once.

``trr-assets worker`` runs as a real process against the test's database
and moto's S3 server, with one-second intervals for the job under test (the
others far away). To die at a precise point, the first worker is started
through test code that SIGKILLs it from a botocore event handler
(``tests.support.processes.run_cli_killed_at``). A worker restarted after a PostgreSQL
restart is tests/worker/test_worker_replicas.py's.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.helpers import add_asset, queue, row_keys, thousand_assets
from tests.support.moto_server import S3Server
from tests.support.postgres import make_show
from tests.support.processes import (
    Process,
    child_env,
    killed,
    run_cli,
    run_cli_killed_at,
    stdout_json,
    wait_for_sessions_to_end,
)
from tests.support.s3 import TEST_BUCKET
from tests.support.s3_faults import ServerDeletes
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

FAR = "3600"  # seconds: a job that must not run during the test


def _env(db_url: str, server: S3Server, *, sync: str = FAR, deletes: str = FAR, reconcile: str = FAR,
         **extra: str) -> dict[str, str]:
    return child_env(
        db_url, server.endpoint,
        TRR_ASSETS_SYNC_INTERVAL_SECONDS=sync,
        TRR_ASSETS_DELETES_INTERVAL_SECONDS=deletes,
        TRR_ASSETS_WORKER_RECONCILE_INTERVAL_SECONDS=reconcile,
        TRR_ASSETS_WORKER_HEARTBEAT_SECONDS="1",
        **extra,
    )


def _until(worker: Process, condition: Any, what: str) -> None:
    wait_for(condition, what=what, watch=[worker])


def _stop(worker: Process) -> int:
    worker.signal()
    try:
        return worker.wait(15)
    finally:
        worker.stop()


def test_worker_killed_mid_sync_restarts_and_converges(conn, db_url, s3_server, tmp_path):
    """SIGKILL at the 25th HEAD of the worker's sync (batches of 10): two whole batches stay; a restarted worker
    syncs the rest, never re-creates the queued deletions, drains them, and duplicates no row."""
    show = make_show(conn)
    keys = [f"shows/{show}/{i:03d}.jpg" for i in range(50)]
    for key in keys:
        s3_server.put(key, key.encode())
    deleted = [add_asset(conn, s3_server, show, f"deleted-{i}.jpg") for i in range(3)]
    conn.execute("delete from core.show_assets")
    tuning = dict(TRR_ASSETS_S3_LIST_SHARDS="1", TRR_ASSETS_S3_LIST_CONCURRENCY="1",
                  TRR_ASSETS_S3_HEAD_CONCURRENCY="1", TRR_ASSETS_SYNC_BATCH_SIZE="10")

    first = run_cli_killed_at("HeadObject", 25, "worker", env=_env(db_url, s3_server, sync="1", **tuning))

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    assert row_keys(conn) == keys[:20]
    assert set(queue(conn)) == set(deleted)

    worker = Process(["worker"], _env(db_url, s3_server, sync="1", deletes="1", **tuning), tmp_path / "w.log")
    try:
        _until(worker, lambda: row_keys(conn) == keys and not queue(conn), "the sync and the drain")
    finally:
        assert _stop(worker) == 0
    assert conn.execute("select count(*), count(distinct object_key) from core.show_assets").fetchone() == (50, 50)
    assert s3_server.keys() == set(keys)
    assert not worker.events("job_failed")


def test_worker_killed_between_s3_and_the_drains_commit_loses_no_deletion(
    conn, db_url, s3_server, tmp_path, monkeypatch
):
    """SIGKILL after S3 answered the worker's 2nd DeleteObjects, before its commit: those entries are still
    queued; a restarted worker deletes every queued object (each removed from S3 once), and no other."""
    server_deletes = ServerDeletes(monkeypatch)
    show = make_show(conn)
    gone = [add_asset(conn, s3_server, show, f"{i:03d}.jpg") for i in range(30)]
    kept = [add_asset(conn, s3_server, show, f"kept-{i}.jpg") for i in range(3)]
    conn.execute("delete from core.show_assets where object_key = any(%s)", (gone,))
    env = _env(db_url, s3_server, deletes="1", TRR_ASSETS_DELETES_BATCH_SIZE="10")

    first = run_cli_killed_at("DeleteObjects", 2, "worker", env=env)

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    queued = queue(conn)
    assert len(queued) == 20 and set(queued.values()) == {("pending", 0)}
    assert len(set(server_deletes.per_key())) == 20  # S3 did delete the second batch

    worker = Process(["worker"], env, tmp_path / "w.log")
    try:
        _until(worker, lambda: not queue(conn), "the queue to empty")
    finally:
        assert _stop(worker) == 0
    assert s3_server.keys() == set(kept)
    assert set(server_deletes.per_key()) == set(gone)
    assert set(server_deletes.removed().values()) == {1} and set(server_deletes.removed()) == set(gone)
    assert row_keys(conn) == sorted(kept)


def test_worker_killed_mid_repair_restarts_and_converges(conn, db_url, s3_server, tmp_path):
    """SIGKILL between the copy and the delete of the worker's 3rd quarantine: no orphaned object is lost; a
    restarted worker quarantines the rest and deletes the orphaned rows, and its next reconcile finds no drift."""
    show = make_show(conn)
    in_sync = [add_asset(conn, s3_server, show, f"ok-{i}.jpg") for i in range(10)]
    orphans = {}
    for i in range(6):
        key = f"shows/{show}/orphan-{i}.jpg"
        orphans[key] = f"orphan {i}".encode()
        s3_server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=orphans[key])
    row_only = [add_asset(conn, s3_server, show, f"row-only-{i}.jpg") for i in range(3)]
    for key in row_only:
        s3_server.client.delete_object(Bucket=TEST_BUCKET, Key=key)
    policy = dict(TRR_ASSETS_RECONCILE_ORPHANED_OBJECTS="quarantine", TRR_ASSETS_RECONCILE_ORPHANED_ROWS="delete",
                  TRR_ASSETS_RECONCILE_MAX_DELETE_FRACTION="1", TRR_ASSETS_S3_LIST_SHARDS="1")
    quarantined = {f"quarantine/{key}" for key in orphans}

    first = run_cli_killed_at("CopyObject", 3, "worker", env=_env(db_url, s3_server, reconcile="1", **policy))

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    present = s3_server.keys()
    assert all(key in present or f"quarantine/{key}" in present for key in orphans)
    assert len(present & quarantined) == 3

    env = _env(db_url, s3_server, reconcile="1", deletes="1", **policy)
    worker = Process(["worker"], env, tmp_path / "w.log")
    try:
        _until(worker, lambda: s3_server.keys() == set(in_sync) | quarantined
               and row_keys(conn) == sorted(in_sync) and not queue(conn), "the repair")
        runs = len(worker.events("job_finished", job="reconcile"))
        _until(worker, lambda: len(worker.events("job_finished", job="reconcile")) > runs, "one more reconcile")
    finally:
        assert _stop(worker) == 0
    assert all(s3_server.body(f"quarantine/{key}") == body for key, body in orphans.items())
    assert worker.events("job_finished", job="reconcile")[-1]["counts"]["orphaned_objects"] == 0
    assert run_cli("reconcile", "--exit-code", env=env).returncode == 0


def test_two_workers_and_an_operators_delete_delete_each_object_exactly_once(
    conn, db_url, s3_server, tmp_path, monkeypatch
):
    """1,000 assets: 600 rows deleted by SQL for two running workers to drain, while an operator runs
    `trr-assets delete` on 200 more. Every one of the 800 objects is deleted by S3 exactly once, whoever asked;
    the 200 assets left alone keep their objects, never sent for deletion."""
    server_deletes = ServerDeletes(monkeypatch)
    keys, ids = thousand_assets(conn, s3_server)
    by_sql, by_operator, survivors = keys[:600], keys[600:800], keys[800:]
    env = _env(db_url, s3_server, deletes="1", TRR_ASSETS_DELETES_BATCH_SIZE="5")
    workers = [Process(["worker"], env, tmp_path / f"w{n}.log") for n in (1, 2)]
    try:
        wait_for(lambda: all(w.events("heartbeat") for w in workers), what="both workers up", watch=workers)
        conn.execute("delete from core.show_assets where object_key = any(%s)", (by_sql,))
        wait_for(lambda: len(queue(conn)) < 600, what="the workers to start draining", watch=workers)
        operator = run_cli("delete", *(str(ids[k]) for k in by_operator), env=env)
        assert operator.returncode in (0, 1), operator.stderr  # 1: some were being deleted by a worker
        assert stdout_json(operator)["deleted_rows"] == 200
        wait_for(lambda: not queue(conn), what="the queue to empty", watch=workers)
    finally:
        codes = [_stop(w) for w in workers]
    assert codes == [0, 0]
    sent = server_deletes.per_key()
    assert set(sent) == set(by_sql) | set(by_operator)
    assert set(sent.values()) == {1}
    assert server_deletes.removed() == sent
    assert s3_server.keys() == set(survivors)
    assert set(row_keys(conn)) == set(survivors)
    drained = sum(e["counts"]["deleted"] for w in workers for e in w.events("job_finished", job="deletes"))
    assert drained + stdout_json(operator)["deleted_objects"] == 800
    assert all(w.events("job_finished", job="deletes") for w in workers)  # both workers took part
