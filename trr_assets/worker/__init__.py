"""The worker daemon: sync, queued deletes and reconcile on their schedules,
and, when ``events.queue_urls`` is set, the event listener all the time
(``listen``; the scheduled sync stays as the safety net).

Scheduling is APScheduler 3: a ``BackgroundScheduler`` in UTC with one thread
per job, ``max_instances=1`` and coalesced misfires, so a job never overlaps
itself inside one process. Across processes (replicas against one database)
PostgreSQL decides, with session-level advisory locks:

- ``sync`` and ``reconcile`` each take ``pg_try_advisory_lock`` on a
  connection of their own for the run (keys ``SYNC_LOCK_KEY`` and
  ``RECONCILE_LOCK_KEY``). A worker that cannot take the lock skips that run
  and logs ``job_skipped`` with ``reason="locked"``.
- ``deletes`` takes no lock: every replica drains, and the drain's
  ``FOR UPDATE SKIP LOCKED`` hands each queued entry to exactly one of them,
  so more replicas drain a backlog faster.

The jobs themselves (what each run does, its trigger anchored at the epoch,
its lock key and how long a tick holds the lock) are ``worker.jobs``.

A stop (SIGTERM, SIGINT or ``Worker.request_stop``) sets ``Worker.stop_event``:
no new run starts, the running ones finish, their locks are released and the
worker exits 0. Runs still going after ``worker.shutdown_timeout_seconds`` are
abandoned: the process exits 0 anyway and PostgreSQL rolls back their open
transactions and releases their locks when the sessions end; every job is
safe to interrupt and the next run completes its work.

A failing run (database or S3 down, a refused repair) is logged as
``job_failed`` and the worker carries on: each run opens its connections
afresh, so the next one recovers on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import psycopg
import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from trr_assets import db, listen, status, storage
from trr_assets.config import Settings
from trr_assets.errors import PartialFailure, RepairRefused, TrrAssetsError, one_line
from trr_assets.metrics import Metrics, MetricsServer
from trr_assets.storage import S3Client
from trr_assets.worker.jobs import Job, JobContext, default_jobs

log = structlog.get_logger()

_POLL_SECONDS = 0.2  # how often the main thread looks at the stop flag
LISTEN_RETRY_SECONDS = 30.0  # a listener that could not start (queue, database) tries again after this


class Worker:
    """Runs jobs on their schedules (``serve``) or each once (``run_once``)."""

    def __init__(self, settings: Settings, *, jobs: Sequence[Job] | None = None, s3: S3Client | None = None) -> None:
        self.settings = settings
        self.jobs = list(default_jobs(settings) if jobs is None else jobs)
        self.stop_event = threading.Event()
        self._s3 = s3
        self._s3_lock = threading.Lock()
        self._running: dict[str, float] = {}  # job name -> time.monotonic() at start
        self._idle = threading.Condition()
        self._signal: str | None = None
        self._started = time.monotonic()
        self.metrics = Metrics(settings.database)
        self._scheduling: BackgroundScheduler | None = None  # serve's, while it runs

    # -- stopping

    def request_stop(self) -> None:
        """Ask the worker to stop: no new runs; running ones finish."""
        self.stop_event.set()

    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes. The main thread never
        # waits on stop_event itself (it polls is_set), so set() cannot find
        # the event's lock held by the very thread it interrupted.
        self._signal = signal.Signals(signum).name
        self.stop_event.set()

    def running(self) -> list[str]:
        with self._idle:
            return sorted(self._running)

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- one run

    @property
    def s3(self) -> S3Client:
        with self._s3_lock:
            if self._s3 is None:
                # One client for every job (its pool has room for a job's listings and HEADs).
                self._s3 = storage.make_client(self.settings.s3)
                storage.observe_requests(self._s3, self.metrics.observe_s3)
            return self._s3

    def run_job(self, job: Job, *, hold: bool = False) -> str:
        """Run ``job`` once under its lock; returns ok, failed, refused or skipped.

        Never raises for a failed run: the failure is logged and the outcome
        returned. ``hold`` keeps the lock for ``job.hold_seconds`` after the
        start (scheduled ticks; see the module's docstring).
        """
        if self.stop_event.is_set():
            log.info("job_skipped", job=job.name, outcome="skipped", reason="stopping")
            self.metrics.observe_job(job.name, "skipped", 0.0)
            return "skipped"
        with self._idle:
            self._running[job.name] = time.monotonic()
        try:
            with structlog.contextvars.bound_contextvars(job=job.name):
                return self._run_locked(job, hold_seconds=job.hold_seconds if hold else 0.0)
        finally:
            with self._idle:
                self._running.pop(job.name, None)
                self._idle.notify_all()

    def _run_locked(self, job: Job, *, hold_seconds: float) -> str:
        started = time.monotonic()
        try:
            with self._job_lock(job) as held:
                if not held:
                    log.info("job_skipped", job=job.name, outcome="skipped", reason="locked",
                             detail="another worker is running it")
                    self.metrics.observe_job(job.name, "skipped", 0.0)
                    return "skipped"
                outcome = self._execute(job)
                remaining = hold_seconds - (time.monotonic() - started)
                if remaining > 0:
                    self.stop_event.wait(remaining)  # a stop releases the lock at once
                return outcome
        except TrrAssetsError as exc:  # the lock's connection: the database is down
            log.error("job_failed", job=job.name, outcome="failed", duration_seconds=_since(started),
                      error=one_line(exc))
            self.metrics.observe_job(job.name, "failed", time.monotonic() - started)
            return "failed"

    @contextmanager
    def _job_lock(self, job: Job) -> Iterator[bool]:
        """Yields whether this worker holds the job's advisory lock."""
        if job.lock_key is None:
            yield True
            return
        conn = db.connect(self.settings.database, autocommit=True,
                          application_name=f"trr-assets worker {job.name}")
        held = False
        try:
            with db.wrap_errors(f"worker: cannot take the {job.name} lock"):
                row = conn.execute(db.query("worker_try_lock"), {"key": job.lock_key}).fetchone()
            held = bool(row and row[0])
            yield held
        finally:
            if held:
                try:
                    conn.execute(db.query("worker_unlock"), {"key": job.lock_key})
                except psycopg.Error as exc:
                    # The session is gone (a restarted server): so is its lock.
                    log.warning("job_lock_release_failed", job=job.name, error=one_line(exc))
            conn.close()

    def _execute(self, job: Job) -> str:
        log.debug("job_started", job=job.name)
        started, started_at = time.monotonic(), datetime.now(timezone.utc)
        outcome, counts, error = self._outcome_of(job, started)
        self.metrics.observe_job(job.name, outcome, time.monotonic() - started, counts)
        if not _idle(job.name, outcome, counts):
            status.record_job_run(self.settings.database, job=job.name, started_at=started_at,
                                  outcome=outcome, counts=counts, error=error)
        return outcome

    def _outcome_of(self, job: Job, started: float) -> tuple[str, dict[str, Any], str | None]:
        """Run ``job``: (outcome, counts, error), the run logged."""
        try:
            result = job.run(JobContext(self.settings, self.s3, self.stop_event))
        except RepairRefused as exc:
            carried = _carried_counts(exc)
            log.error("job_failed", job=job.name, outcome="refused", duration_seconds=_since(started),
                      error=one_line(exc), **carried)
            return "refused", carried.get("counts", {}), one_line(exc)
        except TrrAssetsError as exc:
            carried = _carried_counts(exc)
            log.error("job_failed", job=job.name, outcome="failed", duration_seconds=_since(started),
                      error=one_line(exc), **carried)
            return "failed", carried.get("counts", {}), one_line(exc)
        except Exception as exc:  # a bug: keep the traceback, keep the worker
            error = f"internal error: {type(exc).__name__}: {one_line(exc)}"
            log.error("job_failed", job=job.name, outcome="failed", duration_seconds=_since(started),
                      error=error, exc_info=True)
            return "failed", {}, error
        counts = dict(result.counts)
        if result.errors:
            log.error("job_failed", job=job.name, outcome="failed", duration_seconds=_since(started),
                      counts=counts, error=result.errors[0], errors=list(result.errors))
            return "failed", counts, result.errors[0]
        log.info("job_finished", job=job.name, outcome="ok", duration_seconds=_since(started), counts=counts)
        return "ok", counts, None

    # -- health

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: healthy while the scheduler runs and the database answers."""
        scheduler = self._scheduling
        scheduling = scheduler is not None and scheduler.running and not self.stop_event.is_set()
        problem = status.database_answers(self.settings.database, timeout_seconds=2.0)
        details: dict[str, Any] = {
            "scheduler": "running" if scheduling else "stopped",
            "database": "ok" if problem is None else problem,
            "running": self.running(),
        }
        return scheduling and problem is None, details

    # -- the daemon

    def build_scheduler(self) -> BackgroundScheduler:
        """The scheduler ``serve`` runs, not yet started: each job on its
        trigger, never overlapping itself (``max_instances=1``), missed runs
        coalesced into one, a run still started up to the job's
        ``misfire_grace_seconds`` late."""
        # APScheduler's own warnings (a missed run, a run skipped because the
        # last one is still going) come through the listener as structlog
        # lines; its stdlib logger would print plain text to stderr.
        ap_logger = logging.getLogger("apscheduler")
        ap_logger.propagate = False
        if not ap_logger.handlers:
            ap_logger.addHandler(logging.NullHandler())
        scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(self.jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        for job in self.jobs:
            scheduler.add_job(self.run_job, job.trigger, args=[job], kwargs={"hold": True}, id=job.name,
                              name=job.name, misfire_grace_time=job.misfire_grace_seconds)
        scheduler.add_listener(self._on_scheduler_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        return scheduler

    def _on_scheduler_event(self, event: JobEvent) -> None:
        reason = "still_running" if event.code == EVENT_JOB_MAX_INSTANCES else "missed"
        log.info("job_skipped", job=event.job_id, outcome="skipped", reason=reason)

    def serve(self) -> int:
        """Run the jobs on their schedules until stopped; returns 0."""
        scheduler = self.build_scheduler()
        heartbeat = self.settings.worker.heartbeat_seconds
        status.warn_if_schema_old(self.settings.database)
        server = self._metrics_server()
        with handling_signals(self._on_signal), contextlib.closing(server) if server else nullcontext():
            scheduler.start()
            self._scheduling = scheduler
            self._start_listener()
            log.info("worker_started", pid=os.getpid(), heartbeat_seconds=heartbeat,
                     jobs={job.name: str(job.trigger) for job in self.jobs})
            next_beat = time.monotonic() + heartbeat
            while not self.stop_event.is_set():
                time.sleep(_POLL_SECONDS)
                if time.monotonic() >= next_beat:
                    self._heartbeat(scheduler)
                    next_beat += heartbeat
            log.info("worker_stopping", signal=self._signal, running=self.running())
            self._scheduling = None
            scheduler.shutdown(wait=False)  # no new runs from here on
            self._finish_or_abandon()
        log.info("worker_stopped", uptime_seconds=_since(self._started))
        return 0

    def _metrics_server(self) -> MetricsServer | None:
        """The /metrics and /healthz server when ``metrics.port`` is set, started."""
        port = self.settings.metrics.port
        if not port:
            return None
        return MetricsServer(self.metrics, self.health, host=self.settings.metrics.host, port=port).start()

    # -- the listener (events.queue_urls)

    def _start_listener(self) -> None:
        """With queues configured, listen all the time in a thread of its own,
        counted as a running job "listen" so that a stop waits for its batch."""
        if not self.settings.events.queue_urls:
            return
        with self._idle:
            self._running["listen"] = time.monotonic()
        threading.Thread(target=self._listen, name="trr-assets-listen", daemon=True).start()

    def _listen(self) -> None:
        try:
            with structlog.contextvars.bound_contextvars(job="listen"):
                while not self.stop_event.is_set():
                    try:
                        listen.Listener(self.settings, stop=self.stop_event, s3=self.s3,
                                        observe_event=self.metrics.observe_event).run()
                    except TrrAssetsError as exc:  # a queue or the database is missing: try again later
                        log.error("job_failed", job="listen", outcome="failed", error=one_line(exc))
                        self.stop_event.wait(LISTEN_RETRY_SECONDS)
                    except Exception as exc:  # a bug: keep the traceback, keep the worker
                        log.error("job_failed", job="listen", outcome="failed",
                                  error=f"internal error: {type(exc).__name__}: {one_line(exc)}", exc_info=True)
                        self.stop_event.wait(LISTEN_RETRY_SECONDS)
        finally:
            with self._idle:
                self._running.pop("listen", None)
                self._idle.notify_all()

    def _heartbeat(self, scheduler: BackgroundScheduler) -> None:
        next_runs = {
            job.id: job.next_run_time.isoformat() for job in scheduler.get_jobs() if job.next_run_time
        }
        log.info("heartbeat", uptime_seconds=_since(self._started), running=self.running(),
                 next_runs=next_runs)

    def _finish_or_abandon(self) -> None:
        timeout = self.settings.worker.shutdown_timeout_seconds
        if self._wait_idle(timeout):
            return
        # Exit 0 as promised; the server rolls back what the abandoned runs
        # left open and drops their locks with their sessions. os._exit, since
        # a normal exit would wait for the job threads (and the thread pools
        # the jobs themselves started).
        log.warning("shutdown_timeout", running=self.running(), timeout_seconds=timeout,
                    detail="abandoning the running jobs; their next run completes them")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def run_once(self) -> int:
        """Every job once, in order; 1 if any failed, else 0."""
        outcomes: dict[str, str] = {}
        status.warn_if_schema_old(self.settings.database)
        with handling_signals(self._on_signal):
            for job in self.jobs:
                outcomes[job.name] = self._run_in_thread(job)
        failed = sorted(name for name, outcome in outcomes.items() if outcome in ("failed", "refused"))
        log.info("worker_once_finished", outcomes=outcomes, failed=failed)
        return 1 if failed else 0

    def _run_in_thread(self, job: Job) -> str:
        # In a thread, so that the main thread stays free to notice a signal
        # and to give up after the shutdown timeout.
        outcome: list[str] = []
        thread = threading.Thread(target=lambda: outcome.append(self.run_job(job)),
                                  name=f"trr-assets-{job.name}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(_POLL_SECONDS)
            if self.stop_event.is_set() and thread.is_alive():
                log.info("worker_stopping", signal=self._signal, running=self.running())
                self._finish_or_abandon()
                thread.join()
        return outcome[0] if outcome else "failed"


@contextmanager
def handling_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``handler`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _carried_counts(exc: BaseException) -> dict[str, Any]:
    """``{"counts": ...}`` when the run failed in part (``PartialFailure`` carries its report)."""
    return {"counts": dict(exc.summary.as_dict())} if isinstance(exc, PartialFailure) else {}


def _idle(job: str, outcome: str, counts: Mapping[str, Any]) -> bool:
    """A drain that found nothing to do: not worth a row in job_runs."""
    busy = ("deleted", "retried", "gave_up", "skipped")
    return job == "deletes" and outcome == "ok" and not any(counts.get(name) for name in busy)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def run(settings: Settings, *, once: bool = False) -> int:
    """``trr-assets worker [--once]``: the exit code."""
    worker = Worker(settings)
    return worker.run_once() if once else worker.serve()
