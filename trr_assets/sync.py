"""Sync: make ``core.show_assets`` match the S3 listing of every bucket.

Each bucket's prefix is split into key ranges; each (bucket, range) unit
runs in a thread of the shared pass (``scan``) with two pooled connections: a reader
whose transaction holds the diff engine's streamed query over the rows,
and a writer that commits one batch at a time, so a failure mid-run keeps
every batch already written and the next run picks up the rest. Memory holds
one batch per unit, whatever the size of the bucket.

The diff engine says what each listed key is. Sync acts on two kinds: a new
object (``ONLY_IN_S3``) and a changed one (``CHANGED``, size or ETag differ);
both go to the row writer (``writer.upsert_objects``), the write path
reconcile's ``import`` repair uses too: new objects with ``absent=True``
(COPYed straight into the table), changed ones through the upsert statement. ``SAME`` keys cost
nothing (no HEAD, no write), and ``PENDING_DELETE`` keys (deletion queued)
are never re-created.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
import structlog

from trr_assets import db, diff, keys, logs, metadata, scan, storage
from trr_assets import inventory as inventory_reports
from trr_assets.config import Settings
from trr_assets.errors import TrrAssetsError, UsageError, one_line
from trr_assets.records import ObjectInfo, object_info
from trr_assets.scan import Progress, Scan, Unit
from trr_assets.storage import S3Client
from trr_assets.storage import heads as storage_heads
from trr_assets.writer import UpsertCounts, upsert_objects

log = structlog.get_logger()


# --- reports -------------------------------------------------------------------


@dataclass(frozen=True)
class BucketReport:
    """One bucket's part of a sync run."""

    bucket: str
    scanned: int
    inserted: int
    updated: int
    unchanged: int
    skipped: int
    pending_deletes: int
    vanished: int
    skipped_by_reason: dict[str, int]
    error: str | None = None
    filled: int = 0  # rows written from the listing alone that this pass HEADed (sync.metadata)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "pending_deletes": self.pending_deletes,
            "vanished": self.vanished,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "error": self.error,
            "filled": self.filled,
        }


@dataclass(frozen=True)
class SyncReport:
    """The result of one sync pass over every bucket.

    ``scanned`` counts every listed key; each ends up in exactly one of
    inserted, updated, unchanged, skipped, pending_deletes or vanished (of the
    buckets that completed).
    """

    scanned: int
    inserted: int
    updated: int
    unchanged: int
    skipped: int
    pending_deletes: int
    duration_seconds: float
    skipped_by_reason: dict[str, int]
    failed: list[str]  # one line per failed bucket
    vanished: int = 0
    buckets: dict[str, BucketReport] = field(default_factory=dict)
    stopped: bool = False  # a stop was requested; the pass ended early
    filled: int = 0  # rows written from the listing alone that this pass HEADed (sync.metadata)

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per failed bucket (``failed``)."""
        return tuple(self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "duration_seconds": self.duration_seconds,
            "pending_deletes": self.pending_deletes,
            "vanished": self.vanished,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "failed": list(self.failed),
            "stopped": self.stopped,
            "filled": self.filled,
            "buckets": {name: report.as_dict() for name, report in self.buckets.items()},
        }


# --- one pass ------------------------------------------------------------------


class _BucketTally:
    """Counts of one bucket, added to by its units (threads)."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.lock = threading.Lock()
        self.scanned = 0
        self.same = 0
        self.pending = 0
        self.upserts = UpsertCounts()
        self.filled = 0  # rows written from the listing alone, HEADed by this pass

    def add(self, scanned: int, same: int, pending: int, upserts: UpsertCounts) -> None:
        with self.lock:
            self.scanned += scanned
            self.same += same
            self.pending += pending
            self.upserts += upserts

    def report(self, error: str | None) -> BucketReport:
        u = self.upserts
        return BucketReport(
            bucket=self.bucket,
            scanned=self.scanned,
            inserted=u.inserted,
            updated=u.updated,
            unchanged=self.same + u.unchanged,
            skipped=u.skipped,
            pending_deletes=self.pending + u.pending_deletes,
            vanished=u.vanished,
            skipped_by_reason=dict(u.skipped_by_reason),
            error=error,
            filled=self.filled,
        )


@dataclass(frozen=True)
class _Context:
    settings: Settings
    client: S3Client
    scan: Scan
    heads: Executor
    native: storage_heads.HeadClient | None
    prefix: str
    tallies: dict[str, _BucketTally]
    report: psycopg.Connection[Any] | None = None  # holds the inventory report read instead of listing


def run(
    settings: Settings,
    *,
    buckets: Sequence[str] | None = None,
    prefix: str | None = None,
    client: S3Client | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    inventory: str | None = None,
) -> SyncReport:
    """One sync pass over ``buckets`` (default ``s3.buckets``) under ``prefix``.

    With ``inventory`` (``s3://BUCKET/PATH/manifest.json``), the pass reads
    that S3 Inventory report instead of listing its source bucket (the one
    bucket synced; ``buckets``, when given, must name it): the report is
    loaded whole first, so one that cannot be read raises ``StorageError``
    with nothing written; new and changed objects are then HEADed live as
    usual (with ``sync.metadata = "listing"``, the report's entries are
    trusted as a listing's would be).

    A bucket that fails (missing, S3 or database error) is reported in
    ``failed`` and does not stop the others. ``progress`` hears of the keys
    scanned and rows written as the pass goes. Setting ``stop`` ends the
    pass after the batches in flight (for the worker's shutdown). A database
    that cannot be reached at all raises ``DatabaseError``.
    """
    started = time.monotonic()
    s3 = settings.s3
    names = list(dict.fromkeys(buckets if buckets is not None else s3.buckets))
    prefix = s3.prefix if prefix is None else prefix
    client = client or storage.make_client(s3)
    manifest = inventory_reports.read_manifest(client, inventory, command="sync") if inventory else None
    if manifest is not None:
        if buckets and manifest.source_bucket not in names:
            raise UsageError(f"sync: the inventory report is of bucket {manifest.source_bucket}, "
                             f"not of {', '.join(names)}")
        names = [manifest.source_bucket]
    if not names:
        log.warning("sync_no_buckets", hint="set s3.buckets or pass --bucket")
    # A report is read on one connection: one unit, the whole prefix.
    units = [Unit(names[0], keys.prefix_range(prefix))] if manifest else scan.units(names, prefix, s3.list_shards)
    # Two connections per running unit: the reader's row stream and the
    # writer. Readers open with the pool; writers, which a pass with nothing
    # to change never takes, as units ask for them.
    pass_ = Scan(settings, name="trr-assets sync", buckets=names, unit_count=len(units),
                 workers=s3.list_concurrency, per_unit=2, eager_per_unit=1, stop=stop, progress=progress)
    tallies = {name: _BucketTally(name) for name in names}
    with pass_, ThreadPoolExecutor(s3.head_concurrency, thread_name_prefix="trr-head") as heads, \
            storage_heads.for_client(client, s3) as native, _loaded(settings, client, manifest, prefix) as loaded:
        ctx = _Context(settings, client, pass_, heads, native, prefix, tallies, loaded)
        pass_.run(units, functools.partial(_sync_range, ctx), phase="sync", fails_bucket=(Exception,),
                  describe=_describe)
        if settings.sync.metadata == metadata.HEAD:
            for tally in tallies.values():
                _complete_listing_rows(ctx, tally)
    reports = {name: tally.report(pass_.error(name)) for name, tally in tallies.items()}
    for name, tally in tallies.items():
        _log_bucket(reports[name], tally.upserts)
    report = _total(reports, time.monotonic() - started, pass_.stop.is_set())
    log.info("sync_done", **{k: v for k, v in report.as_dict().items() if k != "buckets"})
    return report


def _describe(bucket: str, exc: BaseException) -> str:
    """The line kept for a failed bucket."""
    text = one_line(exc)
    if not isinstance(exc, TrrAssetsError):
        log.error("sync_unit_crashed", bucket=bucket, exc_info=exc)
        text = f"internal error: {type(exc).__name__}: {text}"
    return logs.scrub(text)


def _sync_range(ctx: _Context, unit: Unit) -> None:
    """Sync one key range of one bucket."""
    bucket = unit.bucket
    with ExitStack() as stack:
        reader = ctx.scan.connect(stack, bucket)

        @functools.cache
        def writer() -> psycopg.Connection[Any]:
            # Taken at the first batch to write: a range with nothing to
            # change (every range of a no-op pass) needs one connection, not two.
            conn = ctx.scan.connect(stack, bucket)
            conn.autocommit = True  # each batch commits on its own
            return conn

        with db.wrap_errors(f"sync bucket {bucket}"), reader.transaction():  # holds the rows' stream
            _merge_and_write(ctx, ctx.tallies[bucket], unit, reader, writer)


def _merge_and_write(
    ctx: _Context,
    tally: _BucketTally,
    unit: Unit,
    reader: psycopg.Connection[Any],
    writer: Callable[[], psycopg.Connection[Any]],
) -> None:
    bucket = unit.bucket
    batch_size = ctx.settings.sync.batch_size
    new: list[ObjectInfo] = []  # no row, no queued deletion in the merge's snapshot
    changed: list[ObjectInfo] = []
    scanned = same = pending = 0

    from_listing = ctx.settings.sync.metadata == metadata.LISTING

    def write(objects: list[ObjectInfo], absent: bool) -> UpsertCounts:
        if not objects:
            return UpsertCounts()
        if not from_listing:
            return upsert_objects(writer(), ctx.client, bucket, objects, settings=ctx.settings,
                                  head_pool=ctx.heads, head_client=ctx.native, absent=absent)
        conn = writer()
        # The rows and their place on the list of rows to HEAD later, in one transaction.
        with db.wrap_errors(f"sync bucket {bucket}"), conn.transaction():
            counts = upsert_objects(conn, ctx.client, bucket, objects, settings=ctx.settings,
                                    head_pool=ctx.heads, absent=absent, from_listing=True)
            metadata.mark_pending(conn, bucket, [obj.key for obj in objects])
        return counts

    def flush() -> None:
        nonlocal new, changed, scanned, same, pending
        counts = write(new, True) + write(changed, False)
        tally.add(scanned, same, pending, counts)
        ctx.scan.progress.advance(keys=scanned, written=counts.inserted + counts.updated)
        new, changed, scanned, same, pending = [], [], 0, 0, 0

    for found in _differences(ctx, reader, unit):
        same += found.same
        scanned += found.same
        for item in found.diffs:
            if item.obj is None:  # a row with no object: reconcile's business
                continue
            scanned += 1
            if item.kind is diff.Kind.ONLY_IN_S3:
                new.append(item.obj)
            elif item.kind is diff.Kind.CHANGED:
                changed.append(item.obj)
            else:
                pending += 1
        # Also flush the counts now and then when nothing changes, so that
        # progress moves and a stop request is seen during a no-op pass.
        if len(new) + len(changed) >= batch_size or scanned >= 4 * batch_size:
            flush()
            if ctx.scan.failed(bucket) or ctx.scan.stopping():
                return
    flush()


@contextmanager
def _loaded(
    settings: Settings, client: S3Client, manifest: inventory_reports.InventoryManifest | None, prefix: str
) -> Iterator[psycopg.Connection[Any] | None]:
    """A connection holding ``manifest``'s report, loaded whole (None without one)."""
    if manifest is None:
        yield None
        return
    with db.wrap_errors("connect for the inventory report"):
        conn = db.connect(settings.database, application_name="trr-assets sync inventory")
    with conn:
        inventory_reports.load_inventory(conn, client, manifest, prefix)
        yield conn


def _differences(ctx: _Context, reader: psycopg.Connection[Any], unit: Unit) -> Iterator[diff.Batch]:
    """The range's objects (listed, or from the inventory report) merged with its rows."""
    # Sync compares size and ETag only: the lighter row stream will do.
    if ctx.report is None:
        yield from scan.diff_range(ctx.client, reader, unit.bucket, ctx.prefix, unit.key_range, ctx.scan.splits,
                                   rows=db.stream_row_keys)
        return
    with ctx.report.transaction():  # the report's cursor lives in it
        objects = inventory_reports.inventory_objects(ctx.report, unit.key_range)
        yield from diff.merge(objects, db.stream_row_keys(reader, unit.bucket, unit.key_range))


_UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a pending row's ObjectInfo: the write never reads it


def _complete_listing_rows(ctx: _Context, tally: _BucketTally) -> None:
    """HEAD the rows of a bucket that were written from the listing alone
    (``trr_assets.heads_pending``, under the pass's prefix) and complete
    them: a row whose content type or owner id differs from the HEAD's is
    rewritten, the others are left as they are; each leaves the list in the
    transaction that wrote it. Rows not on the list are never HEADed."""
    bucket, after = tally.bucket, ""
    if ctx.scan.failed(bucket) or ctx.scan.stopping():
        return
    try:
        with ExitStack() as stack:
            conn = ctx.scan.connect(stack, bucket)
            conn.autocommit = True
            metadata.drop_orphans(conn, bucket)
            while not ctx.scan.stopping():
                found = metadata.pending(conn, bucket, prefix=ctx.prefix, after=after,
                                         limit=ctx.settings.sync.batch_size)
                if not found:
                    return
                objects = [object_info((key, size, etag, _UNKNOWN_TIME)) for key, size, etag in found]
                with db.wrap_errors(f"sync bucket {bucket}"), conn.transaction():
                    counts = upsert_objects(conn, ctx.client, bucket, objects, settings=ctx.settings,
                                            head_pool=ctx.heads, head_client=ctx.native)
                    metadata.done(conn, bucket, [key for key, _, _ in found])
                tally.add(0, 0, 0, UpsertCounts(invalid_owner_ids=counts.invalid_owner_ids))
                with tally.lock:
                    tally.filled += len(found)
                ctx.scan.progress.advance(written=counts.updated)
                after = found[-1][0]
    except Exception as exc:  # as a unit's failure: the bucket is reported failed
        ctx.scan.fail(bucket, _describe(bucket, exc))


def _log_bucket(report: BucketReport, upserts: UpsertCounts) -> None:
    fields = report.as_dict()
    if report.error:
        log.error("sync_bucket_failed", bucket=report.bucket, **fields)
    else:
        log.info("sync_bucket_done", bucket=report.bucket, **{k: v for k, v in fields.items() if k != "error"})
    if report.skipped:
        # One line per bucket, however many keys were skipped.
        log.warning(
            "sync_keys_skipped",
            bucket=report.bucket,
            skipped=report.skipped,
            by_reason=dict(report.skipped_by_reason),
            samples={reason: list(found) for reason, found in upserts.skipped_samples.items()},
        )
    if upserts.invalid_owner_ids:
        log.warning("sync_invalid_owner_ids", bucket=report.bucket, count=upserts.invalid_owner_ids)


def _total(reports: dict[str, BucketReport], duration: float, stopped: bool) -> SyncReport:
    values = list(reports.values())
    reasons: dict[str, int] = {}
    for r in values:
        for reason, count in r.skipped_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return SyncReport(
        scanned=sum(r.scanned for r in values),
        inserted=sum(r.inserted for r in values),
        updated=sum(r.updated for r in values),
        unchanged=sum(r.unchanged for r in values),
        skipped=sum(r.skipped for r in values),
        pending_deletes=sum(r.pending_deletes for r in values),
        duration_seconds=round(duration, 3),
        skipped_by_reason=reasons,
        failed=[f"{r.bucket}: {r.error}" for r in values if r.error],
        vanished=sum(r.vanished for r in values),
        buckets=reports,
        stopped=stopped,
        filled=sum(r.filled for r in values),
    )
