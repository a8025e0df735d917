"""The sharded pass that sync and reconcile share.

A pass walks units, one (bucket, key range) each (``keys.shard_ranges``),
``s3.list_concurrency`` at a time in threads. ``Scan`` holds what every unit
of a pass shares: the connection pool, sized for the units that run at once
and opened before the first starts (``db.open_pool``); the listing splits
(``storage.ListingSplits``); each bucket's first error, after which the
bucket's other units are skipped; the stop request; and the progress
reporter. ``Scan.run`` runs a job's work over the units; ``diff_range``
gives a unit's differences (its listing merged with its rows). What a job
does with the differences is the job's own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import psycopg

from trr_assets import db, diff, keys, storage
from trr_assets.config import Settings
from trr_assets.diff import Batch
from trr_assets.keys import KeyRange
from trr_assets.records import RowInfo
from trr_assets.storage import S3Client


class Progress(Protocol):
    """How a pass reports its progress; the CLI draws it, the worker passes none.

    Called from the pass's threads, not one at a time: an implementation
    takes its own lock.
    """

    def start(self, phase: str, units: int) -> None:
        """A pass (``phase``: "sync", "scan", "count", "repair") of ``units`` units begins."""

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        """``keys`` more keys looked at, ``written`` more rows written, ``units_done`` more units ended."""

    def finish(self) -> None:
        """The pass ended."""


class NoProgress:
    """Reports nothing (the default)."""

    def start(self, phase: str, units: int) -> None:
        pass

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class Unit:
    """One bucket's key range: what one thread of a pass works through."""

    bucket: str
    key_range: KeyRange


def units(buckets: Sequence[str], prefix: str, shards: int) -> list[Unit]:
    """Every bucket's prefix in ``shards`` ranges, bucket by bucket."""
    ranges = keys.shard_ranges(prefix, shards)
    return [Unit(bucket, r) for bucket in buckets for r in ranges]


RowStream = Callable[[psycopg.Connection[Any], str, KeyRange], Iterator[RowInfo]]


def diff_range(
    client: S3Client,
    conn: psycopg.Connection[Any],
    bucket: str,
    prefix: str,
    key_range: KeyRange,
    splits: storage.ListingSplits | None = None,
    *,
    rows: RowStream = db.stream_rows,
    page_size: int = 1000,
) -> Iterator[Batch]:
    """List ``key_range`` of ``bucket`` and merge it with its ``rows`` (a
    ``db`` row stream; run inside a transaction on ``conn``)."""
    objects = storage.list_objects(
        client, bucket, prefix=prefix, start_at=key_range.start_at, stop_before=key_range.stop_before,
        page_size=page_size, splits=splits,
    )
    return diff.merge(objects, rows(conn, bucket, key_range))


class Scan:
    """One pass's shared state; a context manager that opens and closes its pool.

    ``workers`` units run at once. Each holds up to ``per_unit`` pooled
    connections, ``eager_per_unit`` of them from its start: those open with
    the pool, side by side, for the units that start at once (against a
    distant server each costs round trips and a TLS handshake); the rest as
    units ask for them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        buckets: Sequence[str],
        unit_count: int,
        workers: int,
        per_unit: int,
        eager_per_unit: int,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.workers = max(1, workers)
        self.stop = stop or threading.Event()
        self.progress: Progress = progress or NoProgress()
        # A shard found to hold more than its share is split while the
        # pass's listings are doubled at most (see storage.ListingSplits).
        self.splits = storage.ListingSplits(extra_listings=settings.s3.list_concurrency)
        self._connections = max(1, min(self.workers, unit_count)) * eager_per_unit
        self.pool = db.make_pool(settings.database, name=name, min_size=1, max_size=self.workers * per_unit,
                                 connect_workers=self._connections)
        self._errors: dict[str, str] = {}
        self._failed = {bucket: threading.Event() for bucket in buckets}
        self._lock = threading.Lock()
        self._halt = threading.Event()  # Ctrl-C or a bug: the running units end early

    def __enter__(self) -> Scan:
        """The pool, open, the eager connections on their way; a database
        that does not answer fails the whole pass (``DatabaseError``)."""
        try:
            db.open_pool(self.pool, connections=self._connections,
                         timeout_seconds=self.settings.database.connect_timeout_seconds)
        except BaseException:
            self.pool.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.pool.close()

    # -- each bucket's first error, the stop request

    def fail(self, bucket: str, message: str) -> None:
        """Record ``bucket``'s failure; its first one is the one kept."""
        with self._lock:
            self._errors.setdefault(bucket, message)
        self._failed[bucket].set()

    def error(self, bucket: str) -> str | None:
        with self._lock:
            return self._errors.get(bucket)

    def failed(self, bucket: str) -> bool:
        return self._failed[bucket].is_set()

    def stopping(self) -> bool:
        """A stop was requested, or the pass is ending on an interrupt or a bug."""
        return self.stop.is_set() or self._halt.is_set()

    def connect(self, stack: ExitStack, bucket: str) -> psycopg.Connection[Any]:
        """A pooled connection for work on ``bucket``, given back when ``stack`` closes."""
        with db.wrap_errors(f"connect for bucket {bucket}"):
            return stack.enter_context(self.pool.connection())

    # -- the pass

    def run(
        self,
        units: Sequence[Unit],
        work: Callable[[Unit], None],
        *,
        phase: str,
        fails_bucket: tuple[type[BaseException], ...],
        describe: Callable[[str, BaseException], str],
        when_stopped: Callable[[Unit], object] | None = None,
    ) -> None:
        """Run ``work`` over ``units``, ``workers`` at a time.

        A unit of a failed bucket is skipped, and so is every unit once a
        stop is requested (``when_stopped`` hears of each). An exception of
        ``fails_bucket`` raised by ``work`` fails its bucket (``describe(bucket,
        exc)`` makes the line kept for it); any other ends the pass: the running
        units stop early and it is raised here.
        """
        self.progress.start(phase, len(units))
        with ThreadPoolExecutor(max(1, min(self.workers, len(units))), thread_name_prefix=f"trr-{phase}") as pool:
            futures = [pool.submit(self._run_unit, unit, work, fails_bucket, describe, when_stopped)
                       for unit in units]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                self._halt.set()
                raise
        self.progress.finish()

    def _run_unit(
        self,
        unit: Unit,
        work: Callable[[Unit], None],
        fails_bucket: tuple[type[BaseException], ...],
        describe: Callable[[str, BaseException], str],
        when_stopped: Callable[[Unit], object] | None,
    ) -> None:
        if self.failed(unit.bucket):
            return
        if self.stopping():
            if when_stopped is not None:
                when_stopped(unit)
            return
        try:
            work(unit)
        except fails_bucket as exc:  # one bucket's failure must not stop the others
            self.fail(unit.bucket, describe(unit.bucket, exc))
        except BaseException:  # a bug: the units not started yet are skipped
            self._halt.set()
            raise
        finally:
            self.progress.advance(units_done=1)
