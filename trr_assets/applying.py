"""Apply a batch of S3 events to ``core.show_assets`` in one transaction.

The listener (``listen``) hands over the events of the messages it received;
this module decides what each one does, writes it, and records the
sequencers, all in one transaction that the listener commits before it
deletes the messages. Redelivering a batch whose transaction committed
changes nothing: every event of it is then stale.

- Per (bucket, key) only the newest event of the batch counts; the others
  are ``stale``. Its sequencer is claimed in ``trr_assets.event_sequencers``
  (query ``events_claim``): not newer than the one on record, it is
  ``stale`` too. A record without a sequencer (some S3-compatible stores
  send none) is never stale and records nothing; its effect is read from
  the object's live state, so applying it late is harmless.
- ``ObjectCreated:*``: when the row already holds the event's size and ETag,
  nothing is done (no HEAD: sync's SAME). Otherwise the object is written by
  the row writer (``writer.upsert_objects``: HEAD for content type and
  ``owner-id``, same columns, same skips, never a key whose deletion is
  queued). With ``sync.metadata = "listing"`` an event that gives size and
  ETag is written as sync writes a listed object in that mode, without a
  HEAD (content type from the key, the key put on the list for a later
  ``"head"`` pass); an event without them is HEADed as before.
- ``ObjectRemoved:*``: with ``reconcile.orphaned_rows = "report"`` the row
  is left (reconcile reports it). With ``"delete"`` the row is locked, S3 is
  asked whether the object is really gone, and only then the row is deleted,
  and the S3 delete that the outbox trigger queues for it is taken out again
  in the same transaction. *The removal/re-upload race*: an object removed,
  then uploaded again under the same key, with the removal applied after the
  new upload reached S3 but before its creation event. Had the delete been
  queued, the drain would remove the new object; as it is not, the new
  object stays, and its creation event (a greater sequencer) brings the row
  back. A removal whose object is there again leaves the row (for an
  unordered record: refreshes it from the object).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
import structlog

from trr_assets import db, keys, metadata, storage, writer
from trr_assets.config import Settings
from trr_assets.events import Event, Kind, newest_per_key
from trr_assets.storage import ObjectInfo
from trr_assets.storage import heads as storage_heads

log = structlog.get_logger()

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Heads:
    """How creations are HEADed: threads of ``pool`` through botocore, or
    ``native`` (``storage.heads``) when the client allows it, as sync does."""

    pool: Executor
    native: storage_heads.HeadClient | None = None


@dataclass(frozen=True)
class Outcome:
    """What one batch's events came to. Each event is counted in exactly one
    of applied, stale, ignored and skipped; ``rows`` says what applied ones did."""

    applied: int = 0
    stale: int = 0
    ignored: int = 0  # s3:TestEvent, other buckets, keys outside the prefix, events that change no row
    skipped: int = 0  # keys that name no show (sync's skips)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # inserted, updated, unchanged, deleted, left, ...
    lags: tuple[float, ...] = ()  # seconds from eventTime to now (the commit), one per applied event

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            applied=self.applied + other.applied,
            stale=self.stale + other.stale,
            ignored=self.ignored + other.ignored,
            skipped=self.skipped + other.skipped,
            skipped_by_reason=dict(Counter(self.skipped_by_reason) + Counter(other.skipped_by_reason)),
            rows=dict(Counter(self.rows) + Counter(other.rows)),
            lags=self.lags + other.lags,
        )


def apply(
    conn: psycopg.Connection[Any],
    s3: Any,
    events: Sequence[Event],
    *,
    settings: Settings,
    heads: Heads,
) -> Outcome:
    """Apply ``events`` in one transaction on ``conn`` (committed on return)."""
    relevant, outcome = _sorted_out(events, settings)
    newest, dropped = newest_per_key(relevant)
    outcome += Outcome(stale=dropped)
    with db.wrap_errors("apply a batch of events"), conn.transaction():
        todo = _claim(conn, newest)
        outcome += Outcome(stale=len(newest) - len(todo))
        for bucket in sorted({event.bucket for event in todo}):
            of_bucket = [event for event in todo if event.bucket == bucket]
            outcome += _apply_bucket(conn, s3, bucket, of_bucket, settings=settings, heads=heads)
    now = datetime.now(timezone.utc)
    lags = tuple((now - e.event_time).total_seconds() for e in todo if e.event_time is not None)
    return outcome + Outcome(lags=lags)


def _sorted_out(events: Sequence[Event], settings: Settings) -> tuple[list[Event], Outcome]:
    """The events that can change a row, and the counts of the rest."""
    buckets = set(settings.s3.buckets)
    prefix = settings.s3.prefix
    pattern = re.compile(settings.s3.key_pattern)
    relevant: list[Event] = []
    ignored = 0
    skipped: Counter[str] = Counter()
    for event in events:
        if event.kind is Kind.OTHER or event.bucket not in buckets or not event.key.startswith(prefix):
            ignored += 1
            continue
        parsed = keys.parse_show_id(event.key, pattern)
        if isinstance(parsed, keys.SkipReason):
            skipped[parsed.value] += 1
            continue
        relevant.append(event)
    return relevant, Outcome(ignored=ignored, skipped=sum(skipped.values()), skipped_by_reason=dict(skipped))


def _claim(conn: psycopg.Connection[Any], newest: list[Event]) -> list[Event]:
    """The events to apply: unordered ones, and those whose sequencer is newer than the recorded one."""
    ordered = [e for e in newest if e.sequencer]
    unordered = [e for e in newest if not e.sequencer]
    if not ordered:
        return unordered
    claimed = conn.execute(db.query("events_claim"), {
        "buckets": [e.bucket for e in ordered],
        "keys": [e.key for e in ordered],
        "sequencers": [e.sequencer for e in ordered],
        "names": [e.name for e in ordered],
        "times": [e.event_time for e in ordered],
    }).fetchall()
    won = {(bucket, key) for bucket, key in claimed}
    return [e for e in ordered if (e.bucket, e.key) in won] + unordered


def _apply_bucket(
    conn: psycopg.Connection[Any], s3: Any, bucket: str, todo: list[Event], *, settings: Settings, heads: Heads
) -> Outcome:
    created = [e for e in todo if e.kind is Kind.CREATED]
    removed = [e for e in todo if e.kind is Kind.REMOVED]
    rows: Counter[str] = Counter()
    refresh: list[Event] = []
    if removed:
        refresh = _remove(conn, s3, bucket, removed, settings.reconcile.orphaned_rows, rows)
    outcome = Outcome()
    if created or refresh:
        outcome = _create(conn, s3, bucket, created + refresh, settings=settings, heads=heads, rows=rows)
    applied = len(todo) - outcome.skipped
    return outcome + Outcome(applied=applied, rows=dict(rows))


def _create(
    conn: psycopg.Connection[Any],
    s3: Any,
    bucket: str,
    created: list[Event],
    *,
    settings: Settings,
    heads: Heads,
    rows: Counter[str],
) -> Outcome:
    """Write the rows of created objects with the row writer; HEAD only
    those whose row does not already hold the event's size and ETag."""
    current = {
        key: (size, checksum)
        for key, size, checksum in conn.execute(
            db.query("events_current_rows"), {"bucket": bucket, "keys": [e.key for e in created]}
        ).fetchall()
    }
    by_head: list[ObjectInfo] = []
    by_event: list[ObjectInfo] = []  # sync.metadata = "listing": the event says all a listing would
    from_events = settings.sync.metadata == metadata.LISTING
    for event in sorted(created, key=lambda e: e.key):
        known = event.size is not None and event.etag is not None
        if known and current.get(event.key) == (event.size, event.etag):
            rows["unchanged"] += 1
            continue
        # size and ETag as the event says (a HEAD's answer replaces them)
        obj = ObjectInfo(event.key, event.size or 0, event.etag or "", event.event_time or _EPOCH)
        (by_event if known and from_events else by_head).append(obj)
    counts = writer.UpsertCounts()
    if by_head:
        counts += writer.upsert_objects(conn, s3, bucket, by_head, settings=settings, head_pool=heads.pool,
                                        head_client=heads.native)
    if by_event:
        counts += writer.upsert_objects(conn, s3, bucket, by_event, settings=settings, head_pool=heads.pool,
                                        from_listing=True)
        metadata.mark_pending(conn, bucket, [obj.key for obj in by_event])
    for name in ("inserted", "updated", "unchanged", "pending_deletes", "vanished"):
        rows[name] += getattr(counts, name)
    return Outcome(skipped=counts.skipped, skipped_by_reason=dict(counts.skipped_by_reason))


def _remove(
    conn: psycopg.Connection[Any], s3: Any, bucket: str, removed: list[Event], policy: str, rows: Counter[str]
) -> list[Event]:
    """Apply removals under ``policy``; returns the unordered removals whose
    object is there (to be refreshed as creations)."""
    found = conn.execute(
        db.query("events_lock_rows"), {"bucket": bucket, "keys": [e.key for e in removed]}
    ).fetchall()
    rows["absent"] += len(removed) - len(found)
    if policy == "report":
        rows["left"] += len(found)
        return []
    by_key = {e.key: e for e in removed}
    gone: list[Any] = []
    refresh: list[Event] = []
    for asset_id, key in found:
        # The live check, under the row's lock.
        if storage.head_object(s3, bucket, key) is None:
            gone.append(asset_id)
        elif not by_key[key].sequencer:
            refresh.append(by_key[key])
        else:
            rows["left"] += 1  # there again: its creation event is newer and brings its metadata
    if gone:
        conn.execute(db.query("events_delete_rows"), {"ids": gone})
        # No queued S3 delete: the object is gone, and another one may take its key any moment now.
        conn.execute(db.query("events_unqueue"), {"bucket": bucket, "ids": gone})
        rows["deleted"] += len(gone)
        log.info("events_rows_deleted", bucket=bucket, count=len(gone))
    return refresh


PRUNE_BATCH = 10_000  # entries deleted per transaction while pruning


def prune_sequencers(conn: psycopg.Connection[Any], *, retention_days: int) -> int:
    """Delete the sequencer entries applied more than ``retention_days`` ago,
    in transactions of ``PRUNE_BATCH``; how many went.

    Safe once the retention exceeds how long an event can wait in a queue:
    an event older than an entry's is older than the retention too, so it
    can no longer arrive for the entry to make stale."""
    pruned = 0
    while True:
        with db.wrap_errors("prune event sequencers"), conn.transaction():
            deleted = conn.execute(db.query("events_prune_sequencers"),
                                   {"days": retention_days, "limit": PRUNE_BATCH}).rowcount
        pruned += deleted
        if deleted < PRUNE_BATCH:
            return pruned
