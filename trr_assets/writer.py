"""The row writer: listed objects of one bucket into ``core.show_assets``.

``upsert_objects`` is the one write path for rows that come from S3: sync
gives it the new and changed objects of each merge, reconcile's ``import``
repair one orphaned object, an event listener the objects its notifications
name. Per batch it skips keys that name no show, HEADs the rest (content
type, ``owner-id`` metadata, current size and ETag) on a shared pool, and
writes them: COPYed straight into the table when the caller saw no row for
any of them, else through an upsert that never re-creates a row whose
deletion is queued.
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
import structlog

from trr_assets import db, ids, keys
from trr_assets.config import Settings
from trr_assets.errors import DatabaseError
from trr_assets.heads import Heads, Row
from trr_assets.records import ObjectInfo
from trr_assets.storage import S3Client
from trr_assets.storage import heads as storage_heads

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


# --- counts ----------------------------------------------------------------------


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


# --- the write path --------------------------------------------------------------


def upsert_objects(
    conn: psycopg.Connection[Any],
    client: S3Client,
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
    ``s3.head_concurrency`` worker (``Heads``); with ``head_client`` (a
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
    heads = Heads(client, bucket, pool, settings.s3.head_concurrency, head_client, from_listing)
    write = functools.partial(_write_new if absent else _write_changed, conn, heads)
    batches = (_parse(chunk, pattern) for chunk in _chunks(objects, settings.sync.batch_size))
    try:
        return _write_batches(batches, write)
    finally:
        if own_pool:
            pool.shutdown(wait=True)


# A batch being written: a generator that yields once the rest of the
# batch is the database's work alone (the rows are sent; the server checks
# foreign keys and runs triggers), and returns the batch's counts.
Writing = Generator[None, None, "UpsertCounts"]


def _write_batches(batches: Iterable[_Parsed], write: Callable[[_Parsed], Writing]) -> UpsertCounts:
    """Write each parsed batch, in order; the counts of them all.

    From the second batch on, each is written in a thread of its own, and
    the next batch is read and parsed from the moment the write yields:
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
                total += _finish(write(batch))
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


def _finish(writing: Writing, sent: Callable[[], None] = _nothing) -> UpsertCounts:
    """Run a batch's write to its end, calling ``sent`` when its rows are sent."""
    while True:
        try:
            next(writing)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        sent()


def _signalled(write: Callable[[_Parsed], Writing], batch: _Parsed, sent: threading.Event) -> UpsertCounts:
    try:
        return _finish(write(batch), sent.set)
    finally:
        sent.set()  # also when the write failed early: the reader must not wait for ever


def _chunks(objects: Iterable[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    it = iter(objects)
    while chunk := list(islice(it, size)):
        yield chunk


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
    return _Parsed(items, show_ids, counts, ids.time_ordered(len(items)))


def _known_shows(
    items: list[tuple[ObjectInfo, str]], existing: set[str]
) -> tuple[list[tuple[ObjectInfo, str]], UpsertCounts]:
    """The objects whose show exists, and the count of those whose show does not."""
    todo = [item for item in items if item[1] in existing]
    if len(todo) == len(items):
        return todo, UpsertCounts()
    unknown = [obj.key for obj, show_id in items if show_id not in existing]
    return todo, _skips(keys.SkipReason.UNKNOWN_SHOW, unknown)


def _headed(rows: list[Row], asked: int) -> UpsertCounts:
    """The counts of the HEAD answers: objects gone since the listing, bad owner ids."""
    invalid_owner = sum(1 for row in rows if row.invalid_owner)
    return UpsertCounts(vanished=asked - len(rows), invalid_owner_ids=invalid_owner)


def _existing_shows(conn: psycopg.Connection[Any], show_ids: list[str]) -> set[str]:
    with db.wrap_errors("look up shows"), conn.transaction():
        found = conn.execute(db.query("sync_existing_shows"), {"ids": show_ids}).fetchall()
    return {row[0] for row in found}


def _write(conn: psycopg.Connection[Any], bucket: str, rows: list[Row], new_ids: list[str]) -> UpsertCounts:
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
    conn: psycopg.Connection[Any], bucket: str, rows: list[Row], new_ids: list[str]
) -> tuple[int, int, int, int]:
    """COPY the batch into the staging table and upsert it, in one transaction."""
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE  # inside the caller's transaction
    with db.wrap_errors(f"upsert a batch of bucket {bucket}"), conn.transaction():
        conn.execute(db.query("sync_prepare_batch"))
        with conn.cursor().copy(db.query("sync_copy_batch")) as copy:
            for new_id, r in zip(new_ids, rows, strict=False):  # ids for every item; rows: those HEADed
                copy.write_row((new_id, r.key, r.show_id, r.size, r.etag, r.content_type, r.owner_id))
        result = conn.execute(db.query("sync_upsert_batch"), {"bucket": bucket}).fetchone()
        if nested:
            conn.execute(db.query("sync_refuse_queued_keys_off"))
    assert result is not None  # an aggregate query returns one row
    inserted, updated, unknown_show, queued = (int(v) for v in result)
    return inserted, updated, unknown_show, queued


def _write_changed(conn: psycopg.Connection[Any], heads: Heads, batch: _Parsed) -> Writing:
    """Write a batch of new or changed keys: look up their shows, HEAD them, upsert."""
    todo, unknown = _known_shows(batch.items, _existing_shows(conn, batch.show_ids))
    rows = [row for row in heads(todo) if row is not None]
    yield
    return _upserted(conn, heads.bucket, batch, rows, len(todo), unknown)


def _write_new(conn: psycopg.Connection[Any], heads: Heads, batch: _Parsed) -> Writing:
    """Write a batch of new keys: COPYed straight into the table as their
    HEAD answers come in (``_copy_new``), or upserted if that was refused."""
    bucket = heads.bucket
    todo: list[tuple[ObjectInfo, str]] = []
    unknown = UpsertCounts()
    answers: Iterator[Row | None] = iter(())
    rows: list[Row] = []
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE  # inside the caller's transaction
    try:
        with db.wrap_errors(f"copy a batch of bucket {bucket}"), conn.transaction():
            # One round trip for the show look-up and arming 0007's guard.
            begun = conn.execute(db.query("sync_begin_new_batch"), {"ids": batch.show_ids}).fetchone()
            assert begun is not None  # a SELECT without FROM returns one row
            todo, unknown = _known_shows(batch.items, set(begun[1]))
            answers = heads(todo)
            if todo:
                yield from _copy_new(conn, bucket, answers, rows, batch.ids)
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
    conn: psycopg.Connection[Any], bucket: str, batch: _Parsed, rows: list[Row], asked: int, unknown: UpsertCounts
) -> UpsertCounts:
    """Upsert a batch's rows (in key order, as ``_parse`` left them); the
    counts of it all: its unknown shows, its HEAD answers and its writes."""
    counts = unknown + _headed(rows, asked)
    return counts + _write(conn, bucket, rows, batch.ids) if rows else counts


def _copy_new(
    conn: psycopg.Connection[Any],
    bucket: str,
    answers: Iterator[Row | None],
    rows: list[Row],
    new_ids: list[str],
) -> Generator[None, None, None]:
    """COPY new keys (in key order) straight into core.show_assets, appending
    each row written to ``rows``; yields once they are all sent.

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
        yield  # what is left (the foreign keys, the triggers) is PostgreSQL's work
