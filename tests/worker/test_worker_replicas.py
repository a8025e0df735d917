"""The worker as real processes: replicas, SIGTERM mid-sync, a PostgreSQL restart.

Each test runs ``python -m trr_assets worker`` against a database of its own
and a moto S3 server, with one-second intervals, and reads the workers' JSON
logs and the database to see what happened.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from itertools import pairwise
from typing import Any

import psycopg
import pytest

from tests.support.moto_server import MotoServer, moto_server, s3_client
from tests.support.postgres import make_show
from tests.support.processes import Process, worker_env
from tests.support.waiting import wait_for
from trr_assets import db
from trr_assets.config import DatabaseSettings

pytestmark = pytest.mark.slow

RECONCILE_EVERY = 3  # seconds, worker.reconcile_interval_seconds in these tests


@pytest.fixture(autouse=True)
def _fake_aws(aws_env: None) -> None:
    """The test's own S3 client signs with the same fake credentials as the workers."""


def _upload(s3: Any, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=f"body of {key}".encode(), ContentType="image/jpeg")


def _plant(conn: psycopg.Connection[Any], s3: Any, bucket: str, *, objects: int,
           doomed: int = 0) -> tuple[set[str], set[str]]:
    """``objects`` objects of one show to sync, and ``doomed`` rows deleted with
    their objects still in S3 (queued deletions for the drain)."""
    s3.create_bucket(Bucket=bucket)
    show = make_show(conn)
    keys = [f"shows/{show}/img-{i:03}.jpg" for i in range(objects)]
    doomed_keys = [f"shows/{show}/doomed-{i:03}.jpg" for i in range(doomed)]
    _upload(s3, bucket, keys + doomed_keys)
    for key in doomed_keys:
        conn.execute(
            "insert into core.show_assets (show_id, bucket, object_key, size_bytes) values (%s, %s, %s, 1)",
            (show, bucket, key),
        )
    conn.execute("delete from core.show_assets where object_key like %s", (f"shows/{show}/doomed-%",))
    return set(keys), set(doomed_keys)


def _row_keys(conn: psycopg.Connection[Any], bucket: str) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from core.show_assets where bucket = %s", (bucket,))}


def _queued(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("select count(*) from trr_assets.delete_queue").fetchone()[0]


def _object_keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def _reconcile_runs(conn: psycopg.Connection[Any]) -> list[tuple[datetime, datetime | None, str, str | None]]:
    return conn.execute(
        "select started_at, finished_at, outcome, error from trr_assets.reconcile_runs"
        " where run_by like 'worker@%%' order by started_at"
    ).fetchall()


def _blocked_backends(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and application_name like 'trr-assets%%' and wait_event_type = 'Lock'"
    ).fetchone()[0]


def _span(event: dict[str, Any]) -> tuple[float, float]:
    end = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    return end - event["duration_seconds"], end


# --- replicas --------------------------------------------------------------------------


def test_two_workers_run_each_job_once_per_tick_and_drain_deletes_together(db_url, conn, tmp_path):
    bucket = "trr-replicas"
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        expected, doomed = _plant(conn, s3, bucket, objects=12, doomed=4)
        env = worker_env(db_url, endpoint, bucket, worker_reconcile_interval_seconds=RECONCILE_EVERY)
        workers = [Process(["worker"], env, tmp_path / f"worker-{name}.log") for name in "ab"]
        try:
            wait_for(
                lambda: _row_keys(conn, bucket) == expected and _queued(conn) == 0
                and not _object_keys(s3, bucket) & doomed and len(_reconcile_runs(conn)) >= 3,
                what="sync, deletes and three reconcile runs", watch=workers,
            )
            for w in workers:
                w.signal()
            codes = [w.wait(10) for w in workers]
        finally:
            for w in workers:
                w.stop()
    assert codes == [0, 0]
    events = [e for w in workers for e in w.events()]

    # Every object synced exactly once; the queued deletions never came back.
    assert _row_keys(conn, bucket) == expected
    syncs = [e for e in events if e["event"] == "job_finished" and e["job"] == "sync"]
    assert sum(e["counts"]["inserted"] for e in syncs) == len(expected)
    # Sync runs never overlapped, though both workers fired it every second.
    spans = sorted(_span(e) for e in syncs)
    for (_, end), (start, _) in pairwise(spans):
        assert start >= end - 0.05, "two sync runs overlapped"
    assert [e for e in events if e["event"] == "job_skipped" and e["reason"] == "locked"], \
        "the workers never met at a lock"

    # Deletes drained: each queued deletion completed once, in either worker.
    drains = [e for e in events if e["event"] == "job_finished" and e["job"] == "deletes"]
    assert sum(e["counts"]["deleted"] for e in drains) == len(doomed)

    # Reconcile: one recorded run per tick, and never two at once.
    runs = _reconcile_runs(conn)
    reconciles = [e for e in events if e["event"] in ("job_finished", "job_failed") and e["job"] == "reconcile"]
    assert len(runs) == len(reconciles)
    # The shutdown may land in the last run (a tick every 3 s): that run is
    # then recorded as failed, stopped, never as clean. Every other run is whole.
    *whole, last = runs
    assert all(outcome in ("clean", "drift") for _, _, outcome, _ in whole), runs
    stopped = last[2] == "failed" and "stopped before the end" in (last[3] or "")
    assert last[2] in ("clean", "drift") or stopped, runs
    ticks = [int(started.timestamp()) // RECONCILE_EVERY for started, *_ in runs]
    assert len(ticks) == len(set(ticks)), f"a tick ran reconcile twice: {runs}"
    for (_, finished, *_), (started, *_) in pairwise(runs):
        assert finished is not None and started >= finished
    failed = [e for e in events if e["event"] == "job_failed"]
    assert failed == ([e for e in failed if e["job"] == "reconcile"][-1:] if stopped else []), failed
    assert all(w.events("heartbeat") for w in workers)


# --- SIGTERM ---------------------------------------------------------------------------


def test_sigterm_during_a_sync_lets_its_batch_finish_exits_0_and_the_next_run_completes(db_url, conn, tmp_path):
    bucket = "trr-sigterm"
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        expected, _ = _plant(conn, s3, bucket, objects=10)
        env = worker_env(db_url, endpoint, bucket, deletes_interval_seconds=3600,
                         worker_reconcile_interval_seconds=3600)
        with psycopg.connect(db_url) as blocker:
            # The sync's first query waits for this lock: a sync in progress
            # for as long as the test wants.
            blocker.execute("lock table core.show_assets in access exclusive mode")
            worker = Process(["worker"], env, tmp_path / "worker.log")
            try:
                wait_for(lambda: _blocked_backends(conn) > 0, what="a sync waiting on the table", watch=[worker])
                worker.signal()
                signalled = time.monotonic()
                wait_for(lambda: worker.events("worker_stopping"), what="the worker to take the signal",
                         timeout_seconds=10, watch=[worker])
                assert worker.alive(), "the worker exited before its sync finished"
                blocker.rollback()
                code = worker.wait(10 - (time.monotonic() - signalled))
            finally:
                worker.stop()
        assert code == 0
        names = [e["event"] for e in worker.events() if e["event"] in
                 ("worker_stopping", "job_finished", "job_failed", "worker_stopped")]
        assert names == ["worker_stopping", "job_finished", "worker_stopped"]
        assert worker.events("worker_stopping")[0]["signal"] == "SIGTERM"
        assert worker.events("job_finished")[0]["job"] == "sync"

        nxt = Process(["worker", "--once"], env, tmp_path / "once.log")
        try:
            assert nxt.wait(60) == 0
        finally:
            nxt.stop()
    assert _row_keys(conn, bucket) == expected


def test_sigterm_with_a_sync_stuck_past_the_timeout_still_exits_0_and_releases_the_lock(db_url, conn, tmp_path):
    bucket = "trr-stuck"
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        expected, _ = _plant(conn, s3, bucket, objects=10)
        env = worker_env(db_url, endpoint, bucket, deletes_interval_seconds=3600,
                         worker_reconcile_interval_seconds=3600, worker_shutdown_timeout_seconds=1)
        with psycopg.connect(db_url) as blocker:
            blocker.execute("lock table core.show_assets in access exclusive mode")
            worker = Process(["worker"], env, tmp_path / "worker.log")
            try:
                wait_for(lambda: _blocked_backends(conn) > 0, what="a sync waiting on the table", watch=[worker])
                worker.signal()
                code = worker.wait(10)
            finally:
                worker.stop()
            assert code == 0
            [timeout] = worker.events("shutdown_timeout")
            assert timeout["running"] == ["sync"]
            # The exited worker's session ended, and its sync lock with it.
            wait_for(lambda: not conn.execute(
                "select 1 from pg_locks where locktype = 'advisory' and database ="
                " (select oid from pg_database where datname = current_database())").fetchall(),
                what="the advisory lock to go")
            blocker.rollback()

        nxt = Process(["worker", "--once"], env, tmp_path / "once.log")
        try:
            assert nxt.wait(60) == 0
        finally:
            nxt.stop()
    assert _row_keys(conn, bucket) == expected


def test_sigterm_during_once_finishes_the_running_job_skips_the_rest_and_exits_0(db_url, conn, tmp_path):
    bucket = "trr-once-stop"
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        _plant(conn, s3, bucket, objects=3)
        env = worker_env(db_url, endpoint, bucket)
        with psycopg.connect(db_url) as blocker:
            blocker.execute("lock table core.show_assets in access exclusive mode")
            once = Process(["worker", "--once"], env, tmp_path / "once.log")
            try:
                wait_for(lambda: _blocked_backends(conn) > 0, what="a sync waiting on the table", watch=[once])
                once.signal()
                wait_for(lambda: once.events("worker_stopping"), what="--once to take the signal",
                         timeout_seconds=10, watch=[once])
                blocker.rollback()
                code = once.wait(10)
            finally:
                once.stop()
    assert code == 0
    assert [e["job"] for e in once.events("job_finished")] == ["sync"]
    assert [(e["job"], e["reason"]) for e in once.events("job_skipped")] == [
        ("deletes", "stopping"), ("reconcile", "stopping")]


# --- a PostgreSQL restart ----------------------------------------------------------------


@pytest.fixture
def own_server() -> Any:
    """A PostgreSQL server of this test's own, which the test may stop and start."""
    import pgserver
    from pgserver import _commands

    # Not under pytest's tmp_path: its folders are private to this user, and
    # pgserver runs the server as a user of its own, which must reach the data.
    server = pgserver.get_server(tempfile.mkdtemp(prefix="trr-assets-pg-restart-"), cleanup_mode="delete")
    socket_dir = server.get_postmaster_info().socket_dir

    def pg_ctl(*args: str) -> None:
        _commands.pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=60)

    def stop() -> None:
        pg_ctl("-w", "-m", "fast", "stop")

    def start() -> None:
        # The options pgserver itself starts the server with: no TCP, the same socket.
        pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start")

    server.test_stop, server.test_start = stop, start
    try:
        yield server
    finally:
        try:
            stop()
        except Exception:  # already stopped by the test
            pass
        server.cleanup()


def test_the_worker_survives_a_postgresql_restart_and_resumes(own_server, tmp_path):
    url = own_server.get_uri()
    db.migrate(DatabaseSettings(url=url))
    bucket = "trr-restart"
    with moto_server() as endpoint, psycopg.connect(url, autocommit=True) as conn:
        s3 = s3_client(endpoint)
        first, _ = _plant(conn, s3, bucket, objects=5)
        show = next(iter(first)).split("/")[1]
        conn.close()
        worker = Process(["worker"], worker_env(url, endpoint, bucket), tmp_path / "worker.log")
        try:
            wait_for(lambda: _row_keys_at(url, bucket) == first, what="the first sync", watch=[worker])
            own_server.test_stop()
            stopped_at = len(worker.events())
            later = {f"shows/{show}/after-restart-{i}.jpg" for i in range(3)}
            _upload(s3, bucket, sorted(later))
            wait_for(lambda: [e for e in worker.events()[stopped_at:]
                                if e["event"] == "job_failed" and e["job"] == "sync"],
                       what="a sync to fail while the server is down", watch=[worker])
            beats = len(worker.events("heartbeat"))
            wait_for(lambda: len(worker.events("heartbeat")) > beats, what="a heartbeat during the outage",
                       watch=[worker])
            own_server.test_start()
            wait_for(lambda: _row_keys_at(url, bucket) == first | later, what="a sync after the restart",
                       watch=[worker])
            worker.signal()
            code = worker.wait(10)
        finally:
            worker.stop()
    assert code == 0
    failed = [e for e in worker.events("job_failed") if e["job"] == "sync"]
    assert all(e["error"].startswith("database: ") for e in failed), failed
    assert "Traceback" not in worker.stderr_text()


def _row_keys_at(url: str, bucket: str) -> set[str]:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            return _row_keys(conn, bucket)
    except psycopg.OperationalError:
        return set()


def test_the_worker_survives_an_s3_outage_and_resumes(db_url, conn, tmp_path):
    bucket = "trr-s3-outage"
    s3_server = MotoServer()
    s3_server.start()
    try:
        s3 = s3_client(s3_server.endpoint)
        first, _ = _plant(conn, s3, bucket, objects=4)
        show = next(iter(first)).split("/")[1]
        env = worker_env(db_url, s3_server.endpoint, bucket, s3_max_attempts=1,
                         worker_reconcile_interval_seconds=3600)
        worker = Process(["worker"], env, tmp_path / "worker.log")
        try:
            wait_for(lambda: _row_keys(conn, bucket) == first, what="the first sync", watch=[worker])
            s3_server.stop()
            seen = len(worker.events())
            wait_for(lambda: [e for e in worker.events()[seen:]
                                if e["event"] == "job_failed" and e["job"] == "sync"],
                       what="a sync to fail while S3 is down", watch=[worker])
            s3_server.start()  # same port, same objects
            later = {f"shows/{show}/after-outage-{i}.jpg" for i in range(2)}
            _upload(s3, bucket, sorted(later))
            wait_for(lambda: _row_keys(conn, bucket) == first | later, what="a sync after the outage",
                       watch=[worker])
            worker.signal()
            code = worker.wait(10)
        finally:
            worker.stop()
    finally:
        s3_server.stop()
    assert code == 0
    failed = [e for e in worker.events("job_failed") if e["job"] == "sync"]
    assert all("s3: " in e["error"] for e in failed), [e["error"] for e in failed]
    assert "Traceback" not in worker.stderr_text()
