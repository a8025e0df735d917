"""The worker's jobs: what each run does, when it fires, and which lock it takes.

``default_jobs`` are sync, queued deletes and reconcile. ``sync`` and
``reconcile`` each run under a PostgreSQL advisory lock of their own
(``SYNC_LOCK_KEY``, ``RECONCILE_LOCK_KEY``), so that one replica runs a tick
and the others skip it; ``deletes`` takes none (every replica drains, and
the drain's ``FOR UPDATE SKIP LOCKED`` hands each queued entry to one of
them).

Interval triggers are anchored at the Unix epoch, not at start-up, so every
replica fires on the same instants (cron schedules are wall-clock anyway) and
their runs meet at the lock. A run keeps its lock through the first half of
its period (at most ``MAX_TICK_HOLD_SECONDS``) even when it finishes sooner:
otherwise a replica that fired a few milliseconds late would find the lock
free again and run the same tick a second time. The worker
(``trr_assets.worker``) runs them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from trr_assets import deletes, reconcile, sync
from trr_assets.config import Settings
from trr_assets.storage import S3Client

# Advisory lock keys (bigint, the same key space as db.MIGRATE_LOCK_KEY).
SYNC_LOCK_KEY = 0x7472725F73796E  # "trr_syn"
RECONCILE_LOCK_KEY = 0x7472725F726563  # "trr_rec"

MAX_TICK_HOLD_SECONDS = 60.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class JobContext:
    """What a run gets: the settings, the worker's S3 client, the stop flag."""

    settings: Settings
    s3: S3Client  # one boto3 client per worker, shared by its jobs (clients are thread-safe)
    stop: threading.Event  # set once the worker is asked to stop


@dataclass(frozen=True)
class JobResult:
    counts: Mapping[str, Any]
    errors: tuple[str, ...] = ()  # non-empty: the run failed, in part (one bucket of several)


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[JobContext], JobResult]
    trigger: BaseTrigger
    lock_key: int | None  # None: runs in every replica at once
    hold_seconds: float = 0.0  # keep the lock this long after the run started
    misfire_grace_seconds: int = 1  # a run this late still runs (coalesced into one)


def run_sync(ctx: JobContext) -> JobResult:
    # ``stop`` ends the pass after the batches in flight.
    report = sync.run(ctx.settings, client=ctx.s3, stop=ctx.stop)
    return JobResult(report.as_dict(), report.failures)


def run_deletes(ctx: JobContext) -> JobResult:
    # Asked between batches; a batch once taken is always finished.
    return JobResult(deletes.drain(ctx.settings, client=ctx.s3, should_stop=ctx.stop.is_set).as_dict())


def repairs(settings: Settings) -> bool:
    """The worker repairs when a repair policy asks for more than a report."""
    r = settings.reconcile
    return r.orphaned_objects != "report" or r.orphaned_rows != "report"


def run_reconcile(ctx: JobContext) -> JobResult:
    # Refused and incomplete runs raise PartialFailure, carrying their
    # summary (the worker logs and records its counts).
    options = reconcile.ReconcileOptions(repair=repairs(ctx.settings), run_by=f"worker@{socket.gethostname()}")
    return JobResult(reconcile.run(ctx.settings, options, client=ctx.s3, stop=ctx.stop).as_dict())


def every(seconds: float) -> IntervalTrigger:
    """An interval trigger anchored at the epoch: replicas fire together."""
    return IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=timezone.utc)


def period_seconds(trigger: BaseTrigger, now: datetime | None = None) -> float:
    """The shortest gap between the trigger's next few fire times."""
    fire = trigger.get_next_fire_time(None, now or datetime.now(timezone.utc))
    gaps: list[float] = []
    for _ in range(8):
        if fire is None:
            break
        following = trigger.get_next_fire_time(fire, fire)
        if following is None:
            break
        gaps.append((following - fire).total_seconds())
        fire = following
    return min(gaps, default=0.0)


def make_job(
    name: str, run: Callable[[JobContext], JobResult], trigger: BaseTrigger, lock_key: int | None
) -> Job:
    """A job whose lock hold and misfire grace follow from its period."""
    period = period_seconds(trigger)
    return Job(
        name=name,
        run=run,
        trigger=trigger,
        lock_key=lock_key,
        hold_seconds=min(period / 2, MAX_TICK_HOLD_SECONDS) if lock_key is not None else 0.0,
        # Late, but before the next tick is due: still worth running.
        misfire_grace_seconds=max(1, int(period)),
    )


def default_jobs(settings: Settings) -> list[Job]:
    """sync, deletes and reconcile, in the order ``--once`` runs them."""
    every_n = settings.worker.reconcile_interval_seconds
    reconcile_trigger: BaseTrigger = (
        every(every_n) if every_n else CronTrigger.from_crontab(settings.reconcile.schedule, timezone="UTC")
    )
    return [
        make_job("sync", run_sync, every(settings.sync.interval_seconds), SYNC_LOCK_KEY),
        make_job("deletes", run_deletes, every(settings.deletes.interval_seconds), None),
        make_job("reconcile", run_reconcile, reconcile_trigger, RECONCILE_LOCK_KEY),
    ]
