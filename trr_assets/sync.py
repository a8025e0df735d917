"""Sync: make ``core.show_assets`` match the S3 listing of every bucket.

Each bucket's prefix is split into key ranges (``keys.shard_ranges``); each
(bucket, range) unit runs in a thread with two pooled connections: a reader
whose transaction holds the diff engine's streamed query over the rows,
and a writer that commits one batch at a time, so a failure mid-run keeps
every batch already written and the next run picks up the rest. Memory holds
one batch per unit, whatever the size of the bucket.

The diff engine says what each listed key is. Sync acts on two kinds: a new
object (``ONLY_IN_S3``) and a changed one (``CHANGED``, size or ETag differ);
both go through ``upsert_objects``, the write path reconcile's ``import``
repair reuses: new objects with ``absent=True`` (COPYed straight into the
table), changed ones through the upsert statement. ``SAME`` keys cost
nothing (no HEAD, no write), and ``PENDING_DELETE`` keys (deletion queued)
are never re-created.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
import structlog
from psycopg_pool import ConnectionPool

from trr_assets import db, diff, keys, logs, metadata, storage, storage_heads
from trr_assets import inventory as inventory_reports
from trr_assets.config import Settings
from trr_assets.errors import DatabaseError, TrrAssetsError, UsageError, one_line
from trr_assets.scan import NoProgress, Progress
from trr_assets.storage import ObjectInfo

log = structlog.get_logger()

SAMPLE_KEYS = 3  # sample keys kept per skip reason for the log
WRITE_ATTEMPTS = 5  # a batch refused by a concurrent delete is retried this often
_RETRYABLE = (
    psycopg.errors.SerializationFailure,  # the 0007 guard: a key's deletion got queued meanwhile
    psycopg.errors.ForeignKeyViolation,  # the key's show was deleted meanwhile
    psycopg.errors.DeadlockDetected,
)
_COPY_REFUSED = (
    *_RETRYABLE,
    psycopg.errors.UniqueViolation,  # a row for one of the keys appeared since the merge
    psycopg.errors.FeatureNotSupported,  # COPY FROM into a table whose RLS applies to this role
)


# --- counts --------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertCounts:
    """What ``upsert_objects`` did with the objects it was given."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # the row already held these values (no write)
    skipped: int = 0
    pending_deletes: int = 0  # not inserted: the key's deletion is queued
    vanished: int = 0  # deleted from S3 between the listing and the HEAD
    invalid_owner_ids: int = 0  # `owner-id` metadata that is not a UUID (stored as null)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_samples: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        reasons = dict(self.skipped_by_reason)
        for reason, count in other.skipped_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
        samples = dict(self.skipped_samples)
        for reason, found in other.skipped_samples.items():
            samples[reason] = (samples.get(reason, ()) + found)[:SAMPLE_KEYS]
        return UpsertCounts(
            inserted=self.inserted + other.inserted,
            updated=self.updated + other.updated,
            unchanged=self.unchanged + other.unchanged,
            skipped=self.skipped + other.skipped,
            pending_deletes=self.pending_deletes + other.pending_deletes,
            vanished=self.vanished + other.vanished,
            invalid_owner_ids=self.invalid_owner_ids + other.invalid_owner_ids,
            skipped_by_reason=reasons,
            skipped_samples=samples,
        )


def _skips(reason: keys.SkipReason, found: Sequence[str]) -> UpsertCounts:
    return UpsertCounts(
        skipped=len(found),
        skipped_by_reason={reason.value: len(found)},
        skipped_samples={reason.value: tuple(found[:SAMPLE_KEYS])},
    )


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


# --- the write path ------------------------------------------------------------


def upsert_objects(
    conn: psycopg.Connection[Any],
    client: Any,
    bucket: str,
    objects: Iterable[ObjectInfo],
    *,
    settings: Settings,
    head_pool: Executor | None = None,
    head_client: storage_heads.HeadClient | None = None,
    absent: bool = False,
    from_listing: bool = False,
) -> UpsertCounts:
    """Insert or refresh the rows of ``objects`` (new or changed objects of ``bucket``).

    Per batch of ``sync.batch_size``: keys that name no show (pattern, UUID,
    no ``core.shows`` row) are skipped and counted; the rest are HEADed in
    parallel (content type, ``owner-id`` metadata, current size and ETag),
    COPYed into a temporary table and upserted by one statement that never
    inserts a key whose deletion is queued. Each batch is its own
    ``conn.transaction()``: committed per batch on an idle connection, a
    savepoint inside a transaction the caller holds. ``head_pool`` runs the
    HEAD requests (default: a pool of ``s3.head_concurrency`` for this call),
    a run of consecutive objects per task, sized for about four runs per
    ``s3.head_concurrency`` worker (``_Heads``); with ``head_client`` (a
    ``storage_heads.HeadClient``), that client sends them instead. With
    ``from_listing``, nothing is HEADed: each row is made from the listing
    alone (``metadata``: the content type guessed from the key, no owner id).

    ``absent=True`` says the keys had no row and no queued deletion when the
    caller last looked (sync's new objects): each batch is then first COPYed
    straight into ``core.show_assets`` (PostgreSQL spends about 40 % less
    time per row than on the upsert), and written by the upsert instead when
    anything refuses it (a row or a queued deletion that appeared since, a
    deleted show, RLS). The result is the same either way; only the speed
    differs. From the second batch on, a batch is written while the next is
    read and parsed (``_write_batches``).
    """
    pattern = re.compile(settings.s3.key_pattern)
    own_pool = head_pool is None
    pool = head_pool or ThreadPoolExecutor(settings.s3.head_concurrency, thread_name_prefix="trr-head")
    heads = _Heads(client, bucket, pool, settings.s3.head_concurrency, head_client, from_listing)
    write = functools.partial(_write_new if absent else _write_changed, conn, heads)
    batches = (_parse(chunk, pattern) for chunk in _chunks(objects, settings.sync.batch_size))
    try:
        return _write_batches(batches, write)
    finally:
        if own_pool:
            pool.shutdown(wait=True)


def _write_batches(
    batches: Iterable[_Parsed],
    write: Callable[[_Parsed, Callable[[], None]], UpsertCounts],
) -> UpsertCounts:
    """Write each parsed batch, in order; the counts of them all.

    ``write(batch, sent)`` calls ``sent()`` once the rest of the batch is the
    database's work alone (the rows are sent, the server checks foreign keys
    and runs triggers). From the second batch on, each is written in a thread
    of its own, and the next batch is read and parsed from that moment on:
    Python prepares the next batch while PostgreSQL finishes this one,
    instead of the two taking turns. (Parsing any earlier would compete for
    the interpreter with the thread still sending rows.) One batch is written
    at a time, so the connection is never used by two threads at once, and
    an error or Ctrl-C lets the batch being written finish first.
    """
    total = UpsertCounts()
    context = contextvars.copy_context()  # the caller's log context (the worker's job), for the writer's events
    with ExitStack() as stack:
        writer: ThreadPoolExecutor | None = None
        pending: Future[UpsertCounts] | None = None
        for batch in batches:
            total += batch.counts
            if pending is not None:
                total += pending.result()
                pending = None
            if not batch.items:
                continue
            if writer is None:  # the first batch: no next one read yet to overlap with
                total += write(batch, _nothing)
                writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="trr-write"))
                continue
            sent = threading.Event()
            pending = writer.submit(context.run, _signalled, write, batch, sent)
            sent.wait()
        if pending is not None:
            total += pending.result()
    return total


def _nothing() -> None:
    pass


def _signalled(
    write: Callable[[_Parsed, Callable[[], None]], UpsertCounts],
    batch: _Parsed,
    sent: threading.Event,
) -> UpsertCounts:
    try:
        return write(batch, sent.set)
    finally:
        sent.set()  # also when the write failed early: the reader must not wait for ever


def _chunks(objects: Iterable[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    it = iter(objects)
    while chunk := list(islice(it, size)):
        yield chunk


class _Row(NamedTuple):  # immutable; a NamedTuple is built 4x faster (see diff)
    key: str
    show_id: str  # canonical text (keys.parse_show_id)
    size: int
    etag: str
    content_type: str | None
    owner_id: uuid.UUID | None
    invalid_owner: bool = False  # `owner-id` metadata was there but not a UUID


class _Parsed(NamedTuple):
    """A batch read from the listing: the objects whose key names a show."""

    items: list[tuple[ObjectInfo, str]]  # (object, show id), one per key, in key order
    show_ids: list[str]  # the distinct show ids of ``items``
    counts: UpsertCounts  # the keys that name no show
    ids: list[str]  # time-ordered ids for new rows, one per item (both write paths), made off the writer's path


def _parse(objects: list[ObjectInfo], pattern: re.Pattern[str]) -> _Parsed:
    """The batch deduplicated (the last listing wins) and in key order, with
    each key's show, and the counts of the keys that name no show."""
    wanted: dict[str, tuple[ObjectInfo, str]] = {}
    rejected: dict[keys.SkipReason, list[str]] = {}
    parse = keys.parse_show_id
    for obj in objects:
        parsed = parse(obj.key, pattern)
        if isinstance(parsed, keys.SkipReason):
            rejected.setdefault(parsed, []).append(obj.key)
        else:
            wanted[obj.key] = (obj, parsed)
    counts = UpsertCounts()
    for reason, found in rejected.items():
        counts += _skips(reason, found)
    in_order = list(wanted)
    ordered = sorted(in_order)  # a listing comes sorted: one pass of comparisons
    items = list(wanted.values()) if ordered == in_order else [wanted[key] for key in ordered]
    show_ids = list(dict.fromkeys(show_id for _, show_id in items))
    return _Parsed(items, show_ids, counts, _time_ordered_ids(len(items)))


def _known_shows(
    items: list[tuple[ObjectInfo, str]], existing: set[str]
) -> tuple[list[tuple[ObjectInfo, str]], UpsertCounts]:
    """The objects whose show exists, and the count of those whose show does not."""
    todo = [item for item in items if item[1] in existing]
    if len(todo) == len(items):
        return todo, UpsertCounts()
    unknown = [obj.key for obj, show_id in items if show_id not in existing]
    return todo, _skips(keys.SkipReason.UNKNOWN_SHOW, unknown)


HEAD_RUN_MAX = 64  # objects HEADed one after another by one pool task, at most


@dataclass(frozen=True)
class _Heads:
    """HEADs the objects of one bucket on ``pool``, sized for ``workers``
    threads, or with ``native`` (a ``storage_heads.HeadClient``) when given."""

    client: Any
    bucket: str
    pool: Executor
    workers: int
    native: storage_heads.HeadClient | None = None
    from_listing: bool = False  # no HEADs: rows from the listing alone (sync.metadata = "listing")

    def __call__(self, todo: list[tuple[ObjectInfo, str]]) -> Iterator[_Row | None]:
        """Each object's HEAD answer as a row (None: gone), in order, as they come.

        One pool task HEADs a run of consecutive objects, not one each: a
        task's hand-over costs a lock or two, and with every unit of a sync
        submitting to the one shared pool, those locks, not the HEADs, were
        what the threads spent their time on (measured: see docs/benchmarks.md,
        import row). Runs stay short enough that each of the ``workers``
        gets about four of them, so a small batch is still HEADed with all
        the parallelism it can use.
        """
        client, bucket = self.client, self.bucket
        if self.from_listing:
            guess = metadata.guess_content_type
            return (_Row(obj.key, show_id, obj.size, obj.etag, guess(obj.key), None) for obj, show_id in todo)
        if self.native is not None:
            answers = self.native.heads(bucket, [obj.key for obj, _ in todo])
            return (_row(obj, show_id, answer) for (obj, show_id), answer in zip(todo, answers, strict=False))
        size = max(1, min(HEAD_RUN_MAX, len(todo) // (4 * self.workers)))
        if size == 1:
            return self.pool.map(lambda item: _head(client, bucket, item[0], item[1]), todo)
        runs = [todo[start : start + size] for start in range(0, len(todo), size)]
        run_rows = self.pool.map(lambda run: [_head(client, bucket, obj, show_id) for obj, show_id in run], runs)
        return (row for run in run_rows for row in run)


def _headed(rows: list[_Row], asked: int) -> UpsertCounts:
    """The counts of the HEAD answers: objects gone since the listing, bad owner ids."""
    invalid_owner = sum(1 for row in rows if row.invalid_owner)
    return UpsertCounts(vanished=asked - len(rows), invalid_owner_ids=invalid_owner)


def _existing_shows(conn: psycopg.Connection[Any], show_ids: list[str]) -> set[str]:
    with db.wrap_errors("look up shows"), conn.transaction():
        found = conn.execute(db.query("sync_existing_shows"), {"ids": show_ids}).fetchall()
    return {row[0] for row in found}


def _head(client: Any, bucket: str, obj: ObjectInfo, show_id: str) -> _Row | None:
    """The object's current metadata, or None when it is gone."""
    return _row(obj, show_id, storage.head_object(client, bucket, obj.key))


def _row(obj: ObjectInfo, show_id: str, response: dict[str, Any] | None) -> _Row | None:
    """The row of a HEAD answer (None: the object is gone)."""
    if response is None:
        return None
    owner: uuid.UUID | None = None
    invalid_owner = False
    metadata = response.get("Metadata")
    raw_owner = metadata.get("owner-id") if metadata else None
    if raw_owner:
        try:
            owner = uuid.UUID(raw_owner.strip())
        except ValueError:
            invalid_owner = True
    return _Row(
        obj.key,
        show_id,
        int(response.get("ContentLength", obj.size)),
        storage.strip_etag(response.get("ETag")) or obj.etag,
        response.get("ContentType"),
        owner,
        invalid_owner,
    )


def _write(conn: psycopg.Connection[Any], bucket: str, rows: list[_Row], new_ids: list[str]) -> UpsertCounts:
    """Upsert one batch (rows in key order, ``new_ids`` for those that turn
    out new); retried whole when a concurrent change refused it.

    A batch is refused when, while it was being written, one of its keys got
    its deletion queued (0007's guard) or its show deleted (the foreign key):
    the retry's snapshot sees the queue entry or the missing show, and skips
    the key.
    """
    attempt = 1
    while True:
        try:
            inserted, updated, unknown_show, queued = _write_once(conn, bucket, rows, new_ids)
            break
        except DatabaseError as exc:
            if not isinstance(exc.__cause__, _RETRYABLE) or attempt >= WRITE_ATTEMPTS:
                raise
            log.info("sync_batch_retry", bucket=bucket, attempt=attempt, reason=str(exc))
            attempt += 1
    counts = UpsertCounts(
        inserted=inserted,
        updated=updated,
        unchanged=len(rows) - inserted - updated - unknown_show - queued,
        pending_deletes=queued,
    )
    if unknown_show:  # the show was deleted after the look-up
        reason = keys.SkipReason.UNKNOWN_SHOW.value
        counts += UpsertCounts(skipped=unknown_show, skipped_by_reason={reason: unknown_show})
    return counts


def _write_once(
    conn: psycopg.Connection[Any], bucket: str, rows: list[_Row], new_ids: list[str]
) -> tuple[int, int, int, int]:
    """COPY the batch into the staging table and upsert it, in one transaction."""
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE  # inside the caller's transaction
    with db.wrap_errors(f"upsert a batch of bucket {bucket}"), conn.transaction():
        conn.execute(db.query("sync_prepare_batch"))
        with conn.cursor().copy(db.query("sync_copy_batch")) as copy:
            for new_id, r in zip(new_ids, rows, strict=False):
                copy.write_row((new_id, r.key, r.show_id, r.size, r.etag, r.content_type, r.owner_id))
        result = conn.execute(db.query("sync_upsert_batch"), {"bucket": bucket}).fetchone()
        if nested:
            conn.execute(db.query("sync_refuse_queued_keys_off"))
    assert result is not None  # an aggregate query returns one row
    inserted, updated, unknown_show, queued = (int(v) for v in result)
    return inserted, updated, unknown_show, queued


def _write_changed(
    conn: psycopg.Connection[Any], heads: _Heads, batch: _Parsed, sent: Callable[[], None]
) -> UpsertCounts:
    """Write a batch of new or changed keys: look up their shows, HEAD them, upsert."""
    todo, unknown = _known_shows(batch.items, _existing_shows(conn, batch.show_ids))
    rows = [row for row in heads(todo) if row is not None]
    sent()
    return _upserted(conn, heads.bucket, batch, rows, len(todo), unknown)


def _write_new(conn: psycopg.Connection[Any], heads: _Heads, batch: _Parsed, sent: Callable[[], None]) -> UpsertCounts:
    """Write a batch of new keys: COPYed straight into the table as their
    HEAD answers come in (``_copy_new``), or upserted if that was refused."""
    bucket = heads.bucket
    todo: list[tuple[ObjectInfo, str]] = []
    unknown = UpsertCounts()
    answers: Iterator[_Row | None] = iter(())
    rows: list[_Row] = []
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE  # inside the caller's transaction
    try:
        with db.wrap_errors(f"copy a batch of bucket {bucket}"), conn.transaction():
            # One round trip for the show look-up and arming 0007's guard.
            begun = conn.execute(db.query("sync_begin_new_batch"), {"ids": batch.show_ids}).fetchone()
            assert begun is not None  # a SELECT without FROM returns one row
            todo, unknown = _known_shows(batch.items, set(begun[1]))
            answers = heads(todo)
            if todo:
                _copy_new(conn, bucket, answers, rows, batch.ids, sent)
            if nested:
                conn.execute(db.query("sync_refuse_queued_keys_off"))
    except DatabaseError as exc:
        if not isinstance(exc.__cause__, _COPY_REFUSED):
            raise
        log.info("sync_batch_copy_refused", bucket=bucket, rows=len(rows), reason=str(exc))
        rows.extend(row for row in answers if row is not None)  # the answers the COPY had not reached
        return _upserted(conn, bucket, batch, rows, len(todo), unknown)
    return unknown + _headed(rows, len(todo)) + UpsertCounts(inserted=len(rows))


def _upserted(
    conn: psycopg.Connection[Any], bucket: str, batch: _Parsed, rows: list[_Row], asked: int, unknown: UpsertCounts
) -> UpsertCounts:
    """Upsert a batch's rows (in key order, as ``_parse`` left them); the
    counts of it all: its unknown shows, its HEAD answers and its writes."""
    counts = unknown + _headed(rows, asked)
    return counts + _write(conn, bucket, rows, batch.ids) if rows else counts


def _copy_new(
    conn: psycopg.Connection[Any],
    bucket: str,
    answers: Iterator[_Row | None],
    rows: list[_Row],
    new_ids: list[str],
    sent: Callable[[], None],
) -> None:
    """COPY new keys (in key order) straight into core.show_assets, appending
    each row written to ``rows``.

    Each row is sent as its HEAD answer comes, so PostgreSQL inserts rows
    while the next answers are read. What the upsert statement checks one key
    at a time, the table's own constraints check here, and any of them
    refuses the whole batch: the unique index (a row for the key appeared
    since the merge; COPY waits for an uncommitted one, as the upsert would),
    the foreign key (a show deleted since the look-up) and 0007's guard,
    armed by the caller (a deletion queued meanwhile, even one that committed
    while the COPY waited). The caller then writes the batch through the
    upsert, which sorts each key out.
    """
    ids = iter(new_ids)
    with conn.cursor().copy(db.query("sync_copy_new_rows")) as copy:
        for r in answers:
            if r is not None:
                rows.append(r)
                copy.write_row((next(ids), r.key, r.show_id, r.size, r.etag, r.content_type, r.owner_id, bucket))
        sent()  # what is left (the foreign keys, the triggers) is PostgreSQL's work


def _time_ordered_ids(count: int) -> list[str]:
    """``count`` ids for new rows: UUIDv7 (RFC 9562), as 32 hex digits.

    48 bits of Unix milliseconds, version 7, a 24-bit counter (the RFC's
    method 1: monotonic within the batch; its low half after the variant
    nibble) and 48 random bits. Rows inserted in this order go to the right
    edge of the primary key's index instead of a random page each: measured,
    the upsert's server time drops by a fifth (fewer pages touched, no
    random-number call per row). The column's default, gen_random_uuid(),
    still serves every other writer.
    """
    millis = f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"
    randomness = os.urandom(6 * count).hex()
    counters = _counters(count)
    return [millis + counters[i] + randomness[12 * i : 12 * i + 12] for i in range(count)]


_counter_texts: list[str] = []  # "7xxx8yyy" of 0, 1, 2, ...: the same in every batch, made once


def _counters(count: int) -> list[str]:
    global _counter_texts
    texts = _counter_texts
    if len(texts) < count:  # replaced whole, never changed in place: a racing thread makes the same list
        texts = [f"7{i >> 12 & 0xFFF:03x}8{i & 0xFFF:03x}" for i in range(count)]
        _counter_texts = texts
    return texts


# --- one pass ------------------------------------------------------------------


class _BucketTally:
    """Counts of one bucket, added to by its units (threads)."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.lock = threading.Lock()
        self.failed = threading.Event()
        self.error: str | None = None
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

    def fail(self, message: str) -> None:
        with self.lock:
            if self.error is None:
                self.error = message
        self.failed.set()

    def report(self) -> BucketReport:
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
            error=self.error,
            filled=self.filled,
        )


@dataclass(frozen=True)
class _Context:
    settings: Settings
    client: Any
    pool: ConnectionPool
    heads: Executor
    native: storage_heads.HeadClient | None
    splits: storage.ListingSplits
    prefix: str
    progress: Progress
    stop: threading.Event
    report: psycopg.Connection[Any] | None = None  # holds the inventory report read instead of listing


def run(
    settings: Settings,
    *,
    buckets: Sequence[str] | None = None,
    prefix: str | None = None,
    client: Any = None,
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
    stop = stop or threading.Event()
    progress_line = progress or NoProgress()
    if not names:
        log.warning("sync_no_buckets", hint="set s3.buckets or pass --bucket")
    tallies = {name: _BucketTally(name) for name in names}
    # A report is read on one connection: one unit, the whole prefix.
    shards = [diff.prefix_range(prefix)] if manifest else keys.shard_ranges(prefix, s3.list_shards)
    units = [(tallies[name], shard) for name in names for shard in shards]
    # Two connections per running unit: the reader's row stream and the
    # writer. The readers, which every running unit takes at once, open with
    # the pool, side by side (db.open_pool); writers, which a pass with
    # nothing to change never takes, open as units ask for them.
    readers = min(s3.list_concurrency, len(units))
    pool = db.make_pool(settings.database, name="trr-assets sync", min_size=1,
                        max_size=2 * s3.list_concurrency, connect_workers=readers)
    opened = _open(pool, readers, settings.database.connect_timeout_seconds)
    progress_line.start("sync", len(units))
    with opened, ThreadPoolExecutor(s3.head_concurrency, thread_name_prefix="trr-head") as heads, \
            storage_heads.for_client(client, s3) as native, _loaded(settings, client, manifest, prefix) as report:
        # A shard found to hold more than its share is split while the
        # run's listings are doubled at most (see storage.ListingSplits).
        splits = storage.ListingSplits(extra_listings=s3.list_concurrency)
        ctx = _Context(settings, client, pool, heads, native, splits, prefix, progress_line, stop, report)
        _run_units(ctx, units)
        if settings.sync.metadata == metadata.HEAD:
            for tally in tallies.values():
                _complete_listing_rows(ctx, tally)
    progress_line.finish()
    reports = {name: tally.report() for name, tally in tallies.items()}
    for name, tally in tallies.items():
        _log_bucket(reports[name], tally.upserts)
    total = _total(reports, time.monotonic() - started, stop.is_set())
    log.info("sync_done", **{k: v for k, v in total.as_dict().items() if k != "buckets"})
    return total


def _run_units(ctx: _Context, units: list[tuple[_BucketTally, keys.KeyRange]]) -> None:
    with ThreadPoolExecutor(ctx.settings.s3.list_concurrency, thread_name_prefix="trr-sync") as executor:
        futures = [executor.submit(_run_unit, ctx, tally, shard) for tally, shard in units]
        try:
            for future in futures:
                future.result()
        except BaseException:  # Ctrl-C: the running units end after their batch
            ctx.stop.set()
            raise


@contextmanager
def _open(pool: ConnectionPool, readers: int, timeout_seconds: float) -> Iterator[None]:
    """The pool, open, the readers on their way; a database that does not
    answer fails the whole pass."""
    try:
        db.open_pool(pool, connections=readers, timeout_seconds=timeout_seconds)
        yield
    finally:
        pool.close()


def _run_unit(ctx: _Context, tally: _BucketTally, shard: keys.KeyRange) -> None:
    """Sync one key range of one bucket; a failure marks the bucket failed."""
    if tally.failed.is_set() or ctx.stop.is_set():
        return
    try:
        _sync_range(ctx, tally, shard)
    except Exception as exc:  # one bucket's failure must not stop the others
        tally.fail(_describe(tally.bucket, exc))


def _describe(bucket: str, exc: BaseException) -> str:
    """The line kept for a failed bucket."""
    text = one_line(exc)
    if not isinstance(exc, TrrAssetsError):
        log.error("sync_unit_crashed", bucket=bucket, exc_info=exc)
        text = f"internal error: {type(exc).__name__}: {text}"
    return logs.scrub(text)


def _sync_range(ctx: _Context, tally: _BucketTally, shard: keys.KeyRange) -> None:
    bucket = tally.bucket
    with ExitStack() as stack:
        with db.wrap_errors(f"connect for bucket {bucket}"):
            reader = stack.enter_context(ctx.pool.connection())

        @functools.cache
        def writer() -> psycopg.Connection[Any]:
            # Taken at the first batch to write: a range with nothing to
            # change (every range of a no-op pass) needs one connection, not two.
            with db.wrap_errors(f"connect for bucket {bucket}"):
                conn = stack.enter_context(ctx.pool.connection())
            conn.autocommit = True  # each batch commits on its own
            return conn

        with db.wrap_errors(f"sync bucket {bucket}"), reader.transaction():  # holds the rows' stream
            _merge_and_write(ctx, tally, bucket, shard, reader, writer)


def _merge_and_write(
    ctx: _Context,
    tally: _BucketTally,
    bucket: str,
    shard: keys.KeyRange,
    reader: psycopg.Connection[Any],
    writer: Callable[[], psycopg.Connection[Any]],
) -> None:
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
        ctx.progress.advance(keys=scanned, written=counts.inserted + counts.updated)
        new, changed, scanned, same, pending = [], [], 0, 0, 0

    for found in _differences(ctx, reader, bucket, shard):
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
            if tally.failed.is_set() or ctx.stop.is_set():
                return
    flush()


_UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a pending row's ObjectInfo: the write never reads it


def _complete_listing_rows(ctx: _Context, tally: _BucketTally) -> None:
    """HEAD the rows of a bucket that were written from the listing alone
    (``trr_assets.heads_pending``, under the pass's prefix) and complete
    them: a row whose content type or owner id differs from the HEAD's is
    rewritten, the others are left as they are; each leaves the list in the
    transaction that wrote it. Rows not on the list are never HEADed."""
    if tally.failed.is_set() or ctx.stop.is_set():
        return
    bucket, after = tally.bucket, ""
    try:
        with ExitStack() as stack:
            with db.wrap_errors(f"connect for bucket {bucket}"):
                conn = stack.enter_context(ctx.pool.connection())
            conn.autocommit = True
            metadata.drop_orphans(conn, bucket)
            while not ctx.stop.is_set():
                found = metadata.pending(conn, bucket, prefix=ctx.prefix, after=after,
                                         limit=ctx.settings.sync.batch_size)
                if not found:
                    return
                objects = [storage.object_info((key, size, etag, _UNKNOWN_TIME)) for key, size, etag in found]
                with db.wrap_errors(f"sync bucket {bucket}"), conn.transaction():
                    counts = upsert_objects(conn, ctx.client, bucket, objects, settings=ctx.settings,
                                            head_pool=ctx.heads, head_client=ctx.native)
                    metadata.done(conn, bucket, [key for key, _, _ in found])
                tally.add(0, 0, 0, UpsertCounts(invalid_owner_ids=counts.invalid_owner_ids))
                with tally.lock:
                    tally.filled += len(found)
                ctx.progress.advance(written=counts.updated)
                after = found[-1][0]
    except Exception as exc:  # as a unit's failure: the bucket is reported failed
        tally.fail(_describe(bucket, exc))


@contextmanager
def _loaded(
    settings: Settings, client: Any, manifest: inventory_reports.InventoryManifest | None, prefix: str
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


def _differences(
    ctx: _Context, reader: psycopg.Connection[Any], bucket: str, shard: keys.KeyRange
) -> Iterator[diff.Batch]:
    """The range's objects (listed, or from the inventory report) merged with its rows."""
    # Sync compares size and ETag only: the lighter row stream will do.
    if ctx.report is None:
        yield from diff.diff_range(ctx.client, reader, bucket, ctx.prefix, shard, ctx.splits, compare_only=True)
        return
    with ctx.report.transaction():  # the report's cursor lives in it
        objects = inventory_reports.inventory_objects(ctx.report, shard)
        yield from diff.merge(objects, diff.stream_rows(reader, bucket, shard, compare_only=True))


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
