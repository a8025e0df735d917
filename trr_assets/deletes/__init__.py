"""Paired deletes: the S3 side of the delete outbox.

Deleting a ``core.show_assets`` row, by any path, enqueues its object in
``trr_assets.delete_queue`` in the same transaction (triggers in
``sql/0005_delete_queue.sql``). ``drain`` works the queue off:

1. In one transaction, lock a batch of due entries (``FOR UPDATE SKIP
   LOCKED``: concurrent drains take disjoint batches).
2. Complete, without touching S3, any entry whose key has a row again
   (defence in depth: the cancel triggers should already have removed it).
3. Per bucket, call ``DeleteObjects`` with at most 1,000 keys and
   ``Quiet=False``, and read which keys S3 confirmed and which it refused.
4. Delete the confirmed entries; give the refused ones one more attempt
   with exponential backoff (stored in the row), or mark them ``failed`` at
   ``deletes.max_attempts``. Commit.

Crash safety: the entries leave the queue only in the commit that follows
S3's confirmation. A drain killed before the commit leaves them in place,
and the next drain deletes the keys again, which S3 accepts (deleting a
missing key succeeds).

The re-upload race: the entries' row locks are held across the S3 call. A
new row for the same key (a re-upload) fires the cancel trigger, whose
DELETE of the entry waits on that lock, so the INSERT cannot commit until
the drain has. The order is therefore always: old object deleted, drain
commits, new row commits, then the uploader PUTs the new object (the
presigned upload flow hands out the URL only after the row exists), which
survives. A new row that commits before the drain takes the entry has
already deleted the entry: nothing is deleted. No lock on a
``core.show_assets`` row is ever held during an S3 call.

The drain (claiming a batch, recording S3's answer, rescheduling what S3
refused, the reports) is here; the S3 side of a batch (its objects, or
every version of them, deleted and their erasure intents settled) is in
``deletes.objects``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import structlog

from trr_assets import db, erasures, storage
from trr_assets.config import DeletesSettings, Settings
from trr_assets.deletes.objects import MAX_KEYS_PER_REQUEST as MAX_KEYS_PER_REQUEST
from trr_assets.deletes.objects import Entry, Outcome, Side, delete_entries
from trr_assets.storage import S3Client

log = structlog.get_logger()

# application_name of the drain's connection (visible in pg_stat_activity).
DRAIN_APPLICATION_NAME = "trr-assets deletes"


@dataclass(frozen=True)
class DrainReport:
    """What one drain did, and what it left in the queue.

    ``deleted``: entries completed because S3 confirmed their deletion.
    ``failed``/``pending``: entries left in those states after the run (of
    the whole queue, or of the requested keys). ``retried``: entries S3
    refused this run, rescheduled with backoff. ``gave_up``: entries that
    reached ``deletes.max_attempts`` this run and are now ``failed``.
    ``skipped``: entries completed without an S3 call because a row for the
    key exists again. ``requests``: ``DeleteObjects`` calls made.
    """

    deleted: int = 0
    failed: int = 0
    pending: int = 0
    requests: int = 0
    retried: int = 0
    gave_up: int = 0
    skipped: int = 0
    duration_seconds: float = 0.0

    @property
    def errors(self) -> int:
        """Deletions S3 refused during this run."""
        return self.retried + self.gave_up

    @property
    def failures(self) -> tuple[str, ...]:
        """The deletions S3 refused this run, as one line (they stay queued)."""
        if not self.errors:
            return ()
        return (f"S3 refused {self.errors} deletion(s) this run ({self.gave_up} given up); see the logs",)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeleteReport:
    """What ``delete_assets`` did. ``pending``: deletions still queued (for a
    retry by the worker); ``failed``: of those, given up on; ``not_found``:
    the ids given that named no row (or were no UUID), as given."""

    deleted_rows: int
    deleted_objects: int
    pending: int
    not_found: list[str]
    failed: int = 0

    @property
    def failures(self) -> tuple[str, ...]:
        """The object deletions not done yet, as one line (they stay queued)."""
        left = self.pending + self.failed
        if not left:
            return ()
        return (f"{left} object deletion(s) not done yet; they stay queued for the worker",)

    def as_dict(self) -> dict[str, Any]:
        return {
            "deleted_rows": self.deleted_rows,
            "deleted_objects": self.deleted_objects,
            "pending": self.pending,
            "failed": self.failed,
            "not_found": list(self.not_found),
        }


@dataclass
class _Tally:
    taken: int = 0
    deleted: int = 0
    retried: int = 0
    gave_up: int = 0
    skipped: int = 0
    requests: int = 0


@dataclass(frozen=True)
class _Scope:
    """The keys a drain is limited to (``keys=``), as two parallel arrays."""

    buckets: list[str]
    keys: list[str]


# --- public API ----------------------------------------------------------------


def drain(
    settings: Settings,
    *,
    client: S3Client | None = None,
    keys: Sequence[tuple[str, str]] | None = None,
    limit: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DrainReport:
    """Run the queued S3 deletions once; return what happened.

    ``keys``: only the pending entries of these ``(bucket, object_key)``
    pairs, due or not (entries another drain holds are left to it).
    ``limit``: take at most this many entries. ``should_stop``: asked
    between batches (the worker's shutdown flag); a batch once taken is
    always finished. A whole ``DeleteObjects`` request that fails (network,
    a 503 after botocore's retries, a missing bucket) counts as an attempt
    for each of its keys, and ends the run after that batch: the rest of
    the queue waits for the next run rather than spend attempts on an S3
    that is not answering.
    """
    started = time.monotonic()
    scope = _scope(keys)
    tally = _Tally()
    if scope is not None and not scope.keys:
        return DrainReport()
    if client is None:
        client = storage.make_client(settings.s3)
    seen: list[int] = []  # ids refused in this run
    side = Side(settings, application_name=DRAIN_APPLICATION_NAME)
    with (
        contextlib.closing(side),
        db.connect(settings.database, autocommit=True, application_name=DRAIN_APPLICATION_NAME) as conn,
    ):
        erasures.settle(conn, client, older_than_seconds=settings.deletes.settle_after_seconds)
        while limit is None or tally.taken < limit:
            if should_stop is not None and should_stop():
                break
            room = settings.deletes.batch_size
            if limit is not None:
                room = min(room, limit - tally.taken)
            taken, call_failed = _drain_batch(conn, side, client, settings.deletes, scope, seen, room, tally)
            if not taken or call_failed:
                break
        pending, failed = _queue_counts(conn, scope)
    report = DrainReport(
        deleted=tally.deleted,
        failed=failed,
        pending=pending,
        requests=tally.requests,
        retried=tally.retried,
        gave_up=tally.gave_up,
        skipped=tally.skipped,
        duration_seconds=round(time.monotonic() - started, 3),
    )
    if tally.taken:
        log.info("deletes_drained", **report.as_dict())
    else:
        log.debug("deletes_drained", **report.as_dict())
    return report


def delete_assets(
    settings: Settings, asset_ids: Sequence[str], *, client: S3Client | None = None
) -> DeleteReport:
    """Delete these asset rows, then drain their queued objects at once.

    The rows go in one transaction (the trigger enqueues their objects in
    it); an id that is no UUID or names no row is reported in
    ``not_found`` and does not stop the others. Objects S3 refuses stay
    queued for the worker's retries (``pending``).
    """
    parsed: dict[str, uuid.UUID | None] = {}
    for given in asset_ids:
        parsed.setdefault(given, _parse_uuid(given))
    wanted = sorted({value for value in parsed.values() if value is not None})
    rows: list[tuple[uuid.UUID, str, str]] = []
    if wanted:
        with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("delete: cannot delete the rows"):
            with conn.transaction():
                rows = conn.execute(db.query("delete_asset_rows"), {"ids": wanted}).fetchall()
    found = {row[0] for row in rows}
    not_found = [given for given, value in parsed.items() if value not in found]
    log.info("asset_rows_deleted", rows=len(rows), not_found=len(not_found))
    if not rows:
        return DeleteReport(deleted_rows=0, deleted_objects=0, pending=0, not_found=not_found)
    drained = drain(settings, client=client, keys=[(bucket, key) for _, bucket, key in rows])
    return DeleteReport(
        deleted_rows=len(rows),
        deleted_objects=drained.deleted,
        pending=drained.pending,
        failed=drained.failed,
        not_found=not_found,
    )


def requeue_failed(settings: Settings, *, bucket: str | None = None) -> int:
    """Make failed entries pending again, due now, attempts from zero.

    The operator's way back after fixing what made S3 refuse (a policy, a
    missing bucket). Returns how many entries were requeued.
    """
    with (
        db.connect(settings.database, autocommit=True) as conn,
        db.wrap_errors("deletes: cannot requeue failed entries"),
    ):
        count = conn.execute(db.query("requeue_failed_deletes"), {"bucket": bucket}).rowcount
    log.info("deletes_requeued", count=count, bucket=bucket)
    return max(count, 0)


# --- one batch -----------------------------------------------------------------


def _drain_batch(
    conn: psycopg.Connection[Any],
    side: Side,
    client: S3Client,
    config: DeletesSettings,
    scope: _Scope | None,
    seen: list[int],
    room: int,
    tally: _Tally,
) -> tuple[int, bool]:
    """Lock up to ``room`` entries, delete their objects, record the outcome
    in the same transaction. Returns (entries taken, whether a whole S3
    request failed)."""
    with db.wrap_errors("deletes: drain"), conn.transaction():
        entries = _take(conn, scope, seen, room)
        if not entries:
            return 0, False
        live = {row[0] for row in conn.execute(db.query("live_rows_of_entries"), {"ids": [e.id for e in entries]})}
        for entry in entries:
            if entry.id in live:
                log.warning("delete_skipped_live_row", bucket=entry.bucket, key=entry.key)
        outcome = delete_entries(client, [e for e in entries if e.id not in live],
                                 all_versions=config.all_versions, side=side)
        # Only now, with S3's answer in hand, do entries leave the queue and
        # the deletions become erasures; if this transaction never commits,
        # the entries are all still there and the intents still open.
        done = sorted(outcome.confirmed | live)
        if done:
            conn.execute(db.query("complete_deletes"), {"ids": done})
        erasures.confirm(conn, [i for i, _ in outcome.erased], [m for _, m in outcome.erased])
        erasures.drop(conn, outcome.not_erased)
        erasures.record_checks(conn, outcome.checks, deleted_by=erasures.BY_DRAIN)
        rescheduled = _reschedule(conn, config, outcome.refused)
    # Rescheduled entries may be due again at once (no backoff configured):
    # they wait for the next run. Completed ones are gone from the table.
    seen.extend(outcome.refused)
    tally.taken += len(entries)
    tally.deleted += len(outcome.confirmed)
    tally.skipped += len(live)
    tally.requests += outcome.requests
    _report_refused(rescheduled, outcome, tally)
    return len(entries), outcome.call_failed


def _take(conn: psycopg.Connection[Any], scope: _Scope | None, seen: list[int], room: int) -> list[Entry]:
    """Lock the next entries (due ones, or those of ``scope``)."""
    if scope is None:
        params: dict[str, Any] = {"seen": seen, "limit": room}
        rows = conn.execute(db.query("take_due_deletes"), params).fetchall()
    else:
        params = {"buckets": scope.buckets, "keys": scope.keys, "seen": seen, "limit": room}
        rows = conn.execute(db.query("take_key_deletes"), params).fetchall()
    return [Entry(*row) for row in rows]


def _reschedule(
    conn: psycopg.Connection[Any], config: DeletesSettings, refused: dict[int, str]
) -> list[tuple[Any, ...]]:
    """One more attempt for each refused entry: backoff, or 'failed'."""
    if not refused:
        return []
    ids = sorted(refused)
    params = {
        "ids": ids,
        "errors": [refused[i] for i in ids],
        "max_attempts": config.max_attempts,
        "base": config.backoff_base_seconds,
        "max": config.backoff_max_seconds,
    }
    return conn.execute(db.query("reschedule_deletes"), params).fetchall()


def _report_refused(rescheduled: Sequence[tuple[Any, ...]], outcome: Outcome, tally: _Tally) -> None:
    for entry_id, bucket, key, attempts, state, next_attempt_at in rescheduled:
        error = outcome.refused[entry_id]
        if state == "failed":
            tally.gave_up += 1
            log.error("delete_gave_up", bucket=bucket, key=key, attempts=attempts, error=error)
        else:
            tally.retried += 1
            # A failed request is logged once (delete_objects_failed), not per key.
            emit = log.debug if entry_id in outcome.in_failed_call else log.warning
            emit("delete_retry_scheduled", bucket=bucket, key=key, attempts=attempts,
                 next_attempt_at=next_attempt_at.isoformat(), error=error)


# --- helpers ---------------------------------------------------------------------


def _queue_counts(conn: psycopg.Connection[Any], scope: _Scope | None) -> tuple[int, int]:
    params = {"buckets": None, "keys": None} if scope is None else {"buckets": scope.buckets, "keys": scope.keys}
    with db.wrap_errors("deletes: cannot count the queue"):
        row = conn.execute(db.query("queue_counts"), params).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _scope(keys: Sequence[tuple[str, str]] | None) -> _Scope | None:
    if keys is None:
        return None
    unique = sorted(set(keys))
    return _Scope([bucket for bucket, _ in unique], [key for _, key in unique])


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None
