"""The worker in-process: locks between replicas, failures, --once, scheduling, stopping.

The jobs here are small stand-ins so that each behaviour of the worker is
seen on its own; the real jobs run in tests/worker/test_worker_replicas.py. The
advisory locks are real PostgreSQL locks in this test's own database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import structlog
from apscheduler.triggers.cron import CronTrigger

from tests.support.s3 import make_settings
from tests.support.waiting import wait_for
from trr_assets.config import Settings
from trr_assets.errors import DatabaseError, ReconcileRefused
from trr_assets.worker import Worker
from trr_assets.worker import jobs as worker_jobs
from trr_assets.worker.jobs import Job, JobContext, JobResult

LOCK_KEY = 4242


@pytest.fixture
def fast_settings(db_url: str, aws_env: None) -> Settings:
    return make_settings(db_url, worker={"heartbeat_seconds": 1, "shutdown_timeout_seconds": 5.0})


def _job(run: Callable[[JobContext], JobResult], *, name: str = "test", lock_key: int | None = LOCK_KEY,
         seconds: float = 1, hold_seconds: float = 0.0) -> Job:
    return Job(name=name, run=run, trigger=worker_jobs.every(seconds), lock_key=lock_key, hold_seconds=hold_seconds)


def _ok(ctx: JobContext) -> JobResult:
    return JobResult({"done": 1})


def _blocking(started: threading.Event, release: threading.Event) -> Callable[[JobContext], JobResult]:
    def run(ctx: JobContext) -> JobResult:
        started.set()
        assert release.wait(30), "the test never released the job"
        return JobResult({"done": 1})

    return run


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def _events(logs: list[dict[str, Any]], name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


# --- locks between replicas -------------------------------------------------------


def test_a_second_worker_skips_a_run_while_another_holds_the_job_lock(fast_settings):
    started, release = threading.Event(), threading.Event()
    job = _job(_blocking(started, release))
    a, b = Worker(fast_settings, jobs=[job]), Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        thread, outcome_a = _in_thread(lambda: a.run_job(job))
        assert started.wait(20)
        assert b.run_job(job) == "skipped"
        release.set()
        thread.join(20)
        assert outcome_a == ["ok"]
        assert b.run_job(job) == "ok", "the lock was not released after the run"
    assert _events(logs, "job_skipped", job="test", reason="locked", outcome="skipped")


def test_a_scheduled_run_keeps_its_lock_through_the_first_half_of_its_tick(fast_settings):
    """A replica firing a moment late must not run the same tick again."""
    finished = threading.Event()

    def quick(ctx: JobContext) -> JobResult:
        finished.set()
        return JobResult({"done": 1})

    job = _job(quick, hold_seconds=5.0)
    a, b = Worker(fast_settings, jobs=[job]), Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        thread, outcome_a = _in_thread(lambda: a.run_job(job, hold=True))
        assert finished.wait(20)
        # a's run is over (logged as finished); without the hold, a would
        # release its lock right after that line, before b can even connect.
        wait_for(lambda: _events(logs, "job_finished", job="test"), what="a's run to finish", timeout_seconds=20)
        assert thread.is_alive(), "a's run_job returned before its tick was over"
        assert b.run_job(job) == "skipped"  # a's run is over, its tick is not
    thread.join(20)
    assert outcome_a == ["ok"]
    assert b.run_job(job) == "ok"


def test_a_stop_request_releases_a_held_lock_at_once(fast_settings):
    finished = threading.Event()

    def quick(ctx: JobContext) -> JobResult:
        finished.set()
        return JobResult({"done": 1})

    job = _job(quick, hold_seconds=600.0)
    a, b = Worker(fast_settings, jobs=[job]), Worker(fast_settings, jobs=[job])
    thread, outcome_a = _in_thread(lambda: a.run_job(job, hold=True))
    assert finished.wait(20)
    a.request_stop()
    thread.join(20)
    assert not thread.is_alive(), "the stopped worker kept holding its lock"
    assert outcome_a == ["ok"]
    assert b.run_job(job) == "ok"


def test_a_job_without_a_lock_key_runs_in_several_workers_at_once(fast_settings):
    both_inside = threading.Barrier(2, timeout=20)  # breaks (and the run fails) unless both are in

    def meet(ctx: JobContext) -> JobResult:
        both_inside.wait()
        return JobResult({"done": 1})

    job = _job(meet, lock_key=None)
    a, b = Worker(fast_settings, jobs=[job]), Worker(fast_settings, jobs=[job])
    thread_a, outcome_a = _in_thread(lambda: a.run_job(job))
    thread_b, outcome_b = _in_thread(lambda: b.run_job(job))
    thread_a.join(30)
    thread_b.join(30)
    assert outcome_a == outcome_b == ["ok"]


def test_default_jobs_lock_sync_and_reconcile_but_let_every_replica_drain_deletes(fast_settings):
    jobs = {job.name: job for job in worker_jobs.default_jobs(fast_settings)}
    assert list(jobs) == ["sync", "deletes", "reconcile"]
    assert jobs["sync"].lock_key == worker_jobs.SYNC_LOCK_KEY
    assert jobs["reconcile"].lock_key == worker_jobs.RECONCILE_LOCK_KEY
    assert worker_jobs.SYNC_LOCK_KEY != worker_jobs.RECONCILE_LOCK_KEY
    assert jobs["deletes"].lock_key is None


# --- failures ----------------------------------------------------------------------


def test_a_failed_run_is_logged_with_its_error_and_the_next_run_recovers(fast_settings):
    calls: list[int] = []

    def flaky(ctx: JobContext) -> JobResult:
        calls.append(1)
        if len(calls) == 1:
            raise DatabaseError("database: cannot connect: connection refused")
        return JobResult({"inserted": 3})

    job = _job(flaky)
    w = Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        assert w.run_job(job) == "failed"
        assert w.run_job(job) == "ok"
    [failed] = _events(logs, "job_failed", job="test")
    assert failed["error"] == "database: cannot connect: connection refused"
    assert failed["outcome"] == "failed"
    assert isinstance(failed["duration_seconds"], float)
    [finished] = _events(logs, "job_finished", job="test")
    assert finished["counts"] == {"inserted": 3}
    assert finished["outcome"] == "ok"


def test_an_unreachable_database_fails_the_run_and_never_runs_the_job_unlocked(aws_env, unused_port):
    settings = make_settings(f"postgresql://postgres@127.0.0.1:{unused_port}/x",
                             database={"connect_timeout_seconds": 1.0})
    ran: list[int] = []
    job = _job(lambda ctx: ran.append(1) or JobResult({}))
    with structlog.testing.capture_logs() as logs:
        assert Worker(settings, jobs=[job]).run_job(job) == "failed"
    assert ran == []
    [failed] = _events(logs, "job_failed", job="test")
    assert failed["error"].startswith("database: cannot connect")


def test_a_bug_in_a_job_fails_the_run_with_its_traceback_not_the_worker(fast_settings):
    def buggy(ctx: JobContext) -> JobResult:
        raise KeyError("oops")

    job = _job(buggy)
    with structlog.testing.capture_logs() as logs:
        assert Worker(fast_settings, jobs=[job]).run_job(job) == "failed"
    [failed] = _events(logs, "job_failed", job="test")
    assert failed["error"].startswith("internal error: KeyError")
    assert failed["exc_info"] is True


def test_a_run_that_failed_for_one_bucket_is_a_failed_run_with_its_counts(fast_settings):
    job = _job(lambda ctx: JobResult({"inserted": 2}, ("s3: bucket b2 does not exist or is not visible",)))
    with structlog.testing.capture_logs() as logs:
        assert Worker(fast_settings, jobs=[job]).run_job(job) == "failed"
    [failed] = _events(logs, "job_failed", job="test")
    assert failed["counts"] == {"inserted": 2}
    assert failed["errors"] == ["s3: bucket b2 does not exist or is not visible"]


class _Summary:
    failures = ("bucket b: would delete 200 rows, max_deletes is 100",)

    def as_dict(self) -> dict[str, Any]:
        return {"orphaned_rows": 200}


def test_a_refused_repair_is_its_own_outcome_and_keeps_the_runs_counts(fast_settings):
    def refused(ctx: JobContext) -> JobResult:
        raise ReconcileRefused("reconcile: bucket b: would delete 200 rows, max_deletes is 100", _Summary())

    job = _job(refused)
    with structlog.testing.capture_logs() as logs:
        assert Worker(fast_settings, jobs=[job]).run_job(job) == "refused"
    [failed] = _events(logs, "job_failed", job="test", outcome="refused")
    assert failed["counts"] == {"orphaned_rows": 200}
    assert failed["error"] == "reconcile: bucket b: would delete 200 rows, max_deletes is 100"


# --- --once --------------------------------------------------------------------------


def test_once_runs_every_job_once_in_order_and_exits_1_when_one_failed(fast_settings):
    order: list[str] = []

    def step(name: str, fail: bool = False) -> Callable[[JobContext], JobResult]:
        def run(ctx: JobContext) -> JobResult:
            order.append(name)
            if fail:
                raise DatabaseError("database: boom")
            return JobResult({})

        return run

    jobs = [
        _job(step("sync"), name="sync", lock_key=1),
        _job(step("deletes", fail=True), name="deletes", lock_key=None),
        _job(step("reconcile"), name="reconcile", lock_key=2),
    ]
    assert Worker(fast_settings, jobs=jobs).run_once() == 1
    assert order == ["sync", "deletes", "reconcile"]
    order.clear()
    jobs[1] = _job(step("deletes"), name="deletes", lock_key=None)
    assert Worker(fast_settings, jobs=jobs).run_once() == 0
    assert order == ["sync", "deletes", "reconcile"]


def test_once_counts_a_run_skipped_for_another_workers_lock_as_no_failure(fast_settings):
    started, release = threading.Event(), threading.Event()
    job = _job(_blocking(started, release))
    thread, _ = _in_thread(lambda: Worker(fast_settings, jobs=[job]).run_job(job))
    try:
        assert started.wait(20)
        assert Worker(fast_settings, jobs=[job]).run_once() == 0
    finally:
        release.set()
        thread.join(20)


# --- scheduling ----------------------------------------------------------------------


def test_interval_ticks_are_anchored_at_the_epoch_so_replicas_fire_together():
    base = datetime(2024, 5, 1, 12, 0, 0, 300000, tzinfo=timezone.utc)
    fires = {worker_jobs.every(7).get_next_fire_time(None, base + timedelta(seconds=s)) for s in (0, 0.5, 1.9)}
    assert len(fires) == 1
    assert fires.pop().timestamp() % 7 == 0


def test_reconcile_follows_its_cron_schedule_in_utc_unless_an_interval_is_set(db_url, aws_env):
    cron_settings = make_settings(db_url, reconcile={"schedule": "*/5 * * * *"})
    cron = {job.name: job for job in worker_jobs.default_jobs(cron_settings)}
    trigger = cron["reconcile"].trigger
    assert isinstance(trigger, CronTrigger)
    assert str(trigger.timezone) == "UTC"
    assert cron["reconcile"].hold_seconds == worker_jobs.MAX_TICK_HOLD_SECONDS
    assert cron["reconcile"].misfire_grace_seconds == 300
    interval = {job.name: job for job in worker_jobs.default_jobs(
        make_settings(db_url, worker={"reconcile_interval_seconds": 2}, sync={"interval_seconds": 3}))}
    assert interval["reconcile"].trigger.interval_length == 2
    assert interval["reconcile"].hold_seconds == 1.0
    assert interval["sync"].trigger.interval_length == 3
    assert interval["deletes"].hold_seconds == 0.0


def test_the_scheduler_never_overlaps_a_job_and_coalesces_missed_runs(fast_settings):
    w = Worker(fast_settings, jobs=[_job(_ok, name="a"), _job(_ok, name="b", seconds=5)])
    scheduler = w.build_scheduler()
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {"a", "b"}
        assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
        assert jobs["b"].misfire_grace_time == 1
    finally:
        scheduler.shutdown(wait=False)


def test_the_worker_repairs_only_when_a_repair_policy_asks_for_more_than_a_report(db_url, aws_env):
    assert not worker_jobs.repairs(make_settings(db_url))
    assert worker_jobs.repairs(make_settings(db_url, reconcile={"orphaned_objects": "import"}))
    assert worker_jobs.repairs(make_settings(db_url, reconcile={"orphaned_rows": "delete"}))


# --- the daemon ------------------------------------------------------------------------


@pytest.fixture
def serving() -> Iterator[Callable[[Worker], tuple[threading.Thread, list[Any]]]]:
    """Runs ``serve`` in a thread (signals are the main thread's; the tests stop it)."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(w: Worker) -> tuple[threading.Thread, list[Any]]:
        thread, result = _in_thread(w.serve)
        started.append((w, thread))
        return thread, result

    yield start
    for w, thread in started:
        w.request_stop()
        thread.join(20)


def test_serve_runs_jobs_on_schedule_beats_and_stops_cleanly(fast_settings, serving):
    runs: list[float] = []
    job = _job(lambda ctx: runs.append(time.monotonic()) or JobResult({"n": len(runs)}), seconds=1)
    w = Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        thread, result = serving(w)
        wait_for(lambda: len(runs) >= 2 and _events(logs, "heartbeat"), what="two runs and a heartbeat")
        w.request_stop()
        thread.join(20)
        assert result == [0]
        ran = len(runs)
        # The next tick after the stop (every second, anchored at the epoch)
        # comes and goes; a scheduler still running would run the job then.
        next_tick = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        wait_for(lambda: datetime.now(timezone.utc) > next_tick + timedelta(seconds=0.5),
                 what="the first tick after the stop to pass", timeout_seconds=5)
        assert len(runs) == ran, "a job ran after the worker stopped"
    assert _events(logs, "worker_started")
    assert len(_events(logs, "job_finished", job="test")) == ran
    [beat, *_] = _events(logs, "heartbeat")
    assert set(beat) >= {"uptime_seconds", "running", "next_runs"}
    assert _events(logs, "worker_stopped")


def test_a_stop_lets_the_running_job_finish_before_the_worker_returns(fast_settings, serving):
    started, release = threading.Event(), threading.Event()
    job = _job(_blocking(started, release), seconds=1)
    w = Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        thread, result = serving(w)
        assert started.wait(20)
        w.request_stop()
        wait_for(lambda: _events(logs, "worker_stopping"), what="the worker to start stopping")
        assert thread.is_alive(), "the worker returned with a job still running"
        release.set()
        thread.join(20)
    assert result == [0]
    names = [e["event"] for e in logs if e["event"] in ("worker_stopping", "job_finished", "worker_stopped")]
    assert names == ["worker_stopping", "job_finished", "worker_stopped"]


def test_a_job_still_running_when_its_last_run_was_due_is_skipped_and_logged(fast_settings, serving):
    started, release = threading.Event(), threading.Event()
    job = _job(_blocking(started, release), seconds=1, lock_key=None)
    w = Worker(fast_settings, jobs=[job])
    with structlog.testing.capture_logs() as logs:
        serving(w)
        assert started.wait(20)
        wait_for(lambda: _events(logs, "job_skipped", reason="still_running"), what="a skipped tick")
        release.set()
    assert _events(logs, "job_skipped", job="test", reason="still_running", outcome="skipped")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
