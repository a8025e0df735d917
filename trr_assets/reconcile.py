"""Reconcile: find drift between S3 and ``core.show_assets``; repair it on request.

Every key of the configured buckets under the prefix is classified with the
diff engine (``diff``), one (bucket, shard) unit per thread, each merging a
listing with a streamed query over the rows, so memory stays flat:

- ``orphaned_object``: an object with no row, older than the grace period;
- ``orphaned_row``: a row with no object, not updated within the grace period;
- ``mismatch``: both, but size or ETag differ;
- objects whose deletion is queued are ``pending_deletes``, never orphans;
  younger would-be orphans are ``skipped_recent``; deletions that gave up
  (``delete_queue.state = 'failed'``) are counted as ``failed_deletes``.

A dry run (the default) makes one pass and touches nothing. ``repair`` makes
two: the first only counts, so each bucket can be judged as a whole before
anything is changed (a listing or query that failed, or deletions above
``max_deletes`` / ``max_delete_fraction``, refuse that bucket); the second
lists again and acts on each candidate only after re-checking it live (HEAD
the object, re-read the row), because a listing is stale the moment it is
read. The second pass never deletes more in a bucket than the first counted.

Keys under ``reconcile.quarantine_prefix`` are where quarantine puts
orphaned objects: they are counted as ``in_quarantine``, never as orphans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from trr_assets import db, diff, erasures, keys, reconcile_versions, storage, sync
from trr_assets.config import Settings
from trr_assets.diff import Batch, Diff, Kind
from trr_assets.errors import (
    ReconcileIncomplete,
    ReconcileRefused,
    StorageError,
    TrrAssetsError,
    UsageError,
    one_line,
)
from trr_assets.inventory import InventoryManifest, inventory_objects, load_inventory, read_manifest
from trr_assets.keys import KeyRange, SkipReason
from trr_assets.scan import NoProgress, Progress
from trr_assets.storage import ObjectInfo

log = structlog.get_logger()

Sink = Callable[[dict[str, Any]], None]

HISTORY_LIMIT = 20
LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)
OBJECT_POLICIES_THAT_DELETE = ("delete", "quarantine")
_SINGLE_COPY_LIMIT = 5 * 1024**3  # CopyObject's limit; larger objects need a multipart copy
_PRECONDITION_CODES = {"412", "PreconditionFailed"}

# Counters, in the order reports show them.
SCAN_COUNTS = (
    "objects_scanned",
    "rows_scanned",
    "orphaned_objects",
    "orphaned_rows",
    "mismatched",
    "skipped_recent",
    "pending_deletes",
    "failed_deletes",
    "in_quarantine",
)
REPAIR_COUNTS = (
    "imported",
    "deleted_objects",
    "quarantined",
    "deleted_rows",
    "refreshed",
    "skipped",
    "action_errors",
)


# --- public records --------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileOptions:
    """One run. ``None`` means "as configured"."""

    repair: bool = False
    buckets: Sequence[str] | None = None
    prefix: str | None = None
    grace_seconds: int | None = None
    force: bool = False  # override max_deletes and max_delete_fraction
    inventory: str | None = None  # s3://BUCKET/PATH/manifest.json
    run_by: str | None = None  # recorded in the history; default user@host
    versions: bool = False  # also versions, delete markers and multipart uploads (reconcile_versions)


@dataclass(frozen=True)
class ReconcileSummary:
    """What one run found and did. Counts cover the findings it reported."""

    dry_run: bool
    buckets: tuple[str, ...]
    prefix: str
    source: str  # "listing" or "inventory"
    objects_scanned: int = 0
    rows_scanned: int = 0
    orphaned_objects: int = 0
    orphaned_rows: int = 0
    mismatched: int = 0
    skipped_recent: int = 0
    pending_deletes: int = 0
    failed_deletes: int = 0
    in_quarantine: int = 0
    imported: int = 0
    deleted_objects: int = 0
    quarantined: int = 0
    deleted_rows: int = 0
    refreshed: int = 0
    skipped: int = 0  # repair candidates a live re-check spared, or that could not be acted on
    action_errors: int = 0
    refused: list[str] = field(default_factory=list)  # one line per bucket whose repair was refused
    failed: list[str] = field(default_factory=list)  # one line per bucket that could not be read whole
    started_at: datetime | None = None
    duration_seconds: float = 0.0
    run_id: int | None = None
    # --versions: per bucket, the counts of reconcile_versions (None without --versions)
    versions_by_bucket: dict[str, dict[str, int]] | None = None

    @property
    def drift(self) -> bool:
        """Anything an operator should look at (found, whether or not repaired)."""
        versions = self.version_counts()
        return bool(self.orphaned_objects or self.orphaned_rows or self.mismatched or self.failed_deletes
                    or versions.get("orphaned_versions") or versions.get("lone_delete_markers")
                    or versions.get("stale_uploads"))

    def version_counts(self) -> dict[str, int]:
        """The --versions counts of every bucket, added up ({} without --versions)."""
        if self.versions_by_bucket is None:
            return {}
        names = reconcile_versions.SCAN_COUNTS + (() if self.dry_run else reconcile_versions.REPAIR_COUNTS)
        return {name: sum(b.get(name, 0) for b in self.versions_by_bucket.values()) for name in names}

    @property
    def failures(self) -> tuple[str, ...]:
        """The refused buckets, the buckets not read whole, and the failed repairs."""
        errors = [*self.refused, *self.failed]
        action_errors = self.action_errors + self.version_counts().get("version_action_errors", 0)
        if action_errors:
            errors.append(f"{action_errors} repairs failed (see the report)")
        return tuple(errors)

    def counts(self) -> dict[str, int]:
        return {**{name: getattr(self, name) for name in (*SCAN_COUNTS, *REPAIR_COUNTS)}, **self.version_counts()}

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.versions_by_bucket is None else {"versions_by_bucket": self.versions_by_bucket}
        return {
            "dry_run": self.dry_run,
            **self.counts(),
            **extra,
            "drift": self.drift,
            "refused": list(self.refused),
            "failed": list(self.failed),
            "buckets": list(self.buckets),
            "prefix": self.prefix,
            "source": self.source,
            "started_at": _iso(self.started_at) if self.started_at else None,
            "duration_seconds": round(self.duration_seconds, 3),
            "run_id": self.run_id,
        }


# --- small helpers ---------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_run_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class _Head:
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None


def _head(client: Any, bucket: str, key: str) -> _Head | None:
    """The object as S3 has it now, or None when it is gone."""
    reply = storage.head_object(client, bucket, key)
    if reply is None:
        return None
    return _Head(
        int(reply["ContentLength"]),
        storage.strip_etag(reply.get("ETag")),
        reply["LastModified"],
        reply.get("ContentType"),
    )


# --- the import policy -------------------------------------------------------------


def import_object(
    conn: psycopg.Connection[Any], client: Any, bucket: str, obj: ObjectInfo, *, settings: Settings
) -> str:
    """Make a row for one orphaned object; return the outcome.

    ``"imported"``, or why not: ``"no_show_in_key"`` (the key does not name a
    show), ``"unknown_show"``, ``"gone"`` (deleted since the listing),
    ``"claimed"`` (a row or a queued deletion for the key appeared: importing
    would resurrect a deleted asset).

    Rows from S3 have one write path, sync's ``upsert_objects``: the HEAD for
    content type and owner, the show check, and the guard that never
    re-creates a row whose deletion is queued, even against a delete that
    commits while the insert waits.
    """
    counts = sync.upsert_objects(conn, client, bucket, [obj], settings=settings)
    if counts.inserted:
        return "imported"
    if counts.vanished:
        return "gone"
    if counts.skipped_by_reason:
        reason = next(iter(counts.skipped_by_reason))
        return "unknown_show" if reason == SkipReason.UNKNOWN_SHOW.value else "no_show_in_key"
    return "claimed"  # queued for deletion, or a row appeared meanwhile


# --- S3 Inventory: trr_assets/inventory.py -------------------------------------------

_inventory_objects = inventory_objects


# --- the run -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    bucket: str
    key_range: KeyRange


@dataclass
class _BucketState:
    plan: Counter[str] = field(default_factory=Counter)  # the counting pass (repair)
    counts: Counter[str] = field(default_factory=Counter)  # the reporting pass
    error: str | None = None  # the first listing or query failure
    refusal: str | None = None
    object_budget: int = 0  # deletions the second pass may make, at most what the first counted
    row_budget: int = 0


def _verdict(d: Diff, cutoff: datetime, quarantine_prefix: str) -> str | None:
    """What one key is: a finding kind, or a counter name, or None (in sync)."""
    if d.kind is Kind.ONLY_IN_S3:
        assert d.obj is not None
        if d.key.startswith(quarantine_prefix):
            return "in_quarantine"
        return "skipped_recent" if d.obj.last_modified > cutoff else "orphaned_object"
    if d.kind is Kind.ONLY_IN_DB:
        assert d.row is not None
        return "skipped_recent" if d.row.updated_at > cutoff else "orphaned_row"
    if d.kind is Kind.CHANGED:
        assert d.row is not None
        # A row with no checksum yet was written by upload_url and has not been
        # synced since its object landed: an upload finishing, within grace.
        if d.row.etag is None and d.row.updated_at > cutoff:
            return "skipped_recent"
        return "mismatch"
    if d.kind is Kind.PENDING_DELETE:
        return "pending_deletes"
    return None


_COUNTER_OF = {"orphaned_object": "orphaned_objects", "orphaned_row": "orphaned_rows", "mismatch": "mismatched"}


def finding(kind: str, bucket: str, d: Diff, action: str, **extra: Any) -> dict[str, Any]:
    """One finding as reports show it (SPEC: reconcile, jsonl)."""
    out: dict[str, Any] = {"kind": kind, "bucket": bucket, "key": d.key}
    if d.obj is not None:
        out.update(size=d.obj.size, etag=d.obj.etag, last_modified=_iso(d.obj.last_modified))
    if d.row is not None:
        out["asset_id"] = str(d.row.asset_id)
        if d.obj is None:
            out.update(size=d.row.size, etag=d.row.etag)
        else:
            out.update(row_size=d.row.size, row_etag=d.row.etag)
        out["updated_at"] = _iso(d.row.updated_at)
    out["action"] = action
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


class _Reconciler:
    """The state of one run, shared by the shard threads."""

    def __init__(
        self,
        settings: Settings,
        options: ReconcileOptions,
        client: Any,
        buckets: list[str],
        prefix: str,
        cutoff: datetime,
        sink: Sink | None,
        progress: Progress | None,
        inventory: InventoryManifest | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.options = options
        self.client = client
        self.buckets = buckets
        self.prefix = prefix
        self.cutoff = cutoff
        self.sink = sink
        self.progress = progress or NoProgress()
        self.inventory = inventory
        self.states = {bucket: _BucketState() for bucket in buckets}
        self.lock = threading.Lock()  # guards states, budgets and the sink
        self.workers = 1 if inventory else settings.s3.list_concurrency
        # A shard found to hold more than its share is split while the
        # run's listings are doubled at most (see storage.ListingSplits).
        self.splits = storage.ListingSplits(extra_listings=settings.s3.list_concurrency)
        # Each running unit holds its connections (a reader, and with
        # --repair a writer) from its start: they open with the pool, side
        # by side (db.open_pool).
        per_unit = 2 if options.repair else 1
        units = 1 if inventory else len(buckets) * settings.s3.list_shards
        self.connections = max(1, min(self.workers, units)) * per_unit
        self.pool = db.make_pool(
            settings.database,
            name="trr-assets reconcile",
            min_size=1,
            max_size=self.workers * per_unit,
            connect_workers=self.connections,
        )
        self.inventory_conn: psycopg.Connection[Any] | None = None

    # -- orchestration

    def execute(self) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(self.pool.close)
            db.open_pool(self.pool, connections=self.connections,
                         timeout_seconds=self.settings.database.connect_timeout_seconds)
            units = self._units(stack)
            if not self.options.repair:
                self._pass(units, phase="scan", emit=True, act=False)
                return
            self._pass(units, phase="count", emit=False, act=False)
            self._judge()
            wanted = [u for u in units if self.states[u.bucket].error is None]
            self._pass(wanted, phase="repair", emit=True, act=True)

    def _units(self, stack: contextlib.ExitStack) -> list[_Unit]:
        if self.inventory is None:
            ranges = keys.shard_ranges(self.prefix, self.settings.s3.list_shards)
            return [_Unit(bucket, r) for bucket in self.buckets for r in ranges]
        bucket = self.buckets[0]
        conn = db.connect(self.settings.database, application_name="trr-assets reconcile inventory")
        stack.callback(conn.close)
        try:
            load_inventory(conn, self.client, self.inventory, self.prefix)
        except TrrAssetsError as exc:
            self._fail(bucket, exc)
        self.inventory_conn = conn
        return [_Unit(bucket, diff.prefix_range(self.prefix))]

    def _pass(self, units: list[_Unit], *, phase: str, emit: bool, act: bool) -> None:
        self.progress.start(phase, len(units))
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(units))),
                                thread_name_prefix="reconcile") as pool:
            futures = [pool.submit(self._run_unit, unit, emit=emit, act=act) for unit in units]
            for future in futures:
                future.result()  # a bug (not a listing or query failure) stops the run
        if emit:
            for bucket in dict.fromkeys(u.bucket for u in units):
                self._count_failed_deletes(bucket)
        self.progress.finish()

    def _fail(self, bucket: str, exc: BaseException) -> None:
        with self.lock:
            state = self.states[bucket]
            if state.error is None:
                state.error = one_line(exc)
        log.error("reconcile_bucket_failed", bucket=bucket, error=one_line(exc))

    # -- one unit: merge, classify, report, act

    def _stopped(self, bucket: str) -> bool:
        """A stop was requested: the bucket's run is incomplete, never reported clean."""
        if self.stop is None or not self.stop.is_set():
            return False
        self._fail(bucket, TrrAssetsError("reconcile: stopped before the end (shutting down)"))
        return True

    def _run_unit(self, unit: _Unit, *, emit: bool, act: bool) -> None:
        state = self.states[unit.bucket]
        if state.error is not None or self._stopped(unit.bucket):
            return
        counts: Counter[str] = Counter()
        in_sync = 0
        try:
            with db.wrap_errors(f"reconcile bucket {unit.bucket}"), contextlib.ExitStack() as stack:
                conn = stack.enter_context(self.pool.connection())
                act_conn = stack.enter_context(self.pool.connection()) if act else None
                stack.enter_context(conn.transaction())
                for batch in self._diffs(stack, conn, unit):
                    in_sync += batch.same  # the common case: only counted
                    for d in batch.diffs:
                        if act and state.error is not None:
                            return  # another shard of this bucket failed: stop repairing it
                        self._handle(d, unit.bucket, counts, emit=emit, act_conn=act_conn)
                    self.progress.advance(keys=batch.same + len(batch.diffs))
                    if self._stopped(unit.bucket):
                        return
        except (TrrAssetsError, ValueError) as exc:  # ValueError: a stream out of order
            self._fail(unit.bucket, exc)
        finally:
            counts["objects_scanned"] += in_sync
            counts["rows_scanned"] += in_sync
            with self.lock:
                (state.counts if emit else state.plan).update(counts)
            self.progress.advance(units_done=1)

    def _diffs(self, stack: contextlib.ExitStack, conn: psycopg.Connection[Any], unit: _Unit) -> Iterator[Batch]:
        if self.inventory_conn is not None:
            stack.enter_context(self.inventory_conn.transaction())
            rows = diff.stream_rows(conn, unit.bucket, unit.key_range)
            return diff.merge(_inventory_objects(self.inventory_conn, unit.key_range), rows)
        return diff.diff_range(self.client, conn, unit.bucket, self.prefix, unit.key_range, self.splits,
                               page_size=LIST_PAGE_SIZE)

    def _handle(
        self,
        d: Diff,
        bucket: str,
        counts: Counter[str],
        *,
        emit: bool,
        act_conn: psycopg.Connection[Any] | None,
    ) -> None:
        verdict = _verdict(d, self.cutoff, self.settings.reconcile.quarantine_prefix)
        if d.obj is not None and verdict != "in_quarantine":
            counts["objects_scanned"] += 1
        if d.row is not None and d.row.asset_id is not None:
            counts["rows_scanned"] += 1
        if verdict is None:
            return
        if verdict not in _COUNTER_OF:
            counts[verdict] += 1
            return
        counts[_COUNTER_OF[verdict]] += 1
        if not emit:
            return
        extra: dict[str, Any] = {}
        action = "none"
        if act_conn is not None:
            action, extra = self._repair(verdict, bucket, d, act_conn)
            counter = self._repair_counter(verdict, action)
            if counter:
                counts[counter] += 1
        if self.sink is not None:
            item = finding(verdict, bucket, d, action, **extra)
            with self.lock:
                self.sink(item)

    @staticmethod
    def _repair_counter(verdict: str, action: str) -> str | None:
        if action == "deleted":
            return "deleted_objects" if verdict == "orphaned_object" else "deleted_rows"
        return {
            "imported": "imported",
            "quarantined": "quarantined",
            "refreshed": "refreshed",
            "skipped": "skipped",
            "failed": "action_errors",
        }.get(action)

    # -- repairs: each re-checks its candidate live first

    def _repair(
        self, verdict: str, bucket: str, d: Diff, conn: psycopg.Connection[Any]
    ) -> tuple[str, dict[str, Any]]:
        """(action, extra fields) for one finding in the repair pass."""
        state = self.states[bucket]
        if state.refusal is not None:
            return "refused", {}
        try:
            if verdict == "orphaned_object":
                return self._repair_object(bucket, d, conn)
            if verdict == "orphaned_row":
                return self._repair_row(bucket, d, conn)
            return self._refresh(bucket, d, conn)
        except TrrAssetsError as exc:
            log.warning("reconcile_repair_failed", bucket=bucket, key=d.key, error=one_line(exc))
            return "failed", {"error": one_line(exc)}

    def _take_budget(self, bucket: str, kind: str) -> bool:
        with self.lock:
            state = self.states[bucket]
            if kind == "object" and state.object_budget > 0:
                state.object_budget -= 1
                return True
            if kind == "row" and state.row_budget > 0:
                state.row_budget -= 1
                return True
            return False

    def _repair_object(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.obj is not None
        policy = self.settings.reconcile.orphaned_objects
        if policy == "report":
            return "none", {}
        if policy == "import":
            outcome = import_object(conn, self.client, bucket, d.obj, settings=self.settings)
            if outcome == "imported":
                log.info("reconcile_object_imported", bucket=bucket, key=d.key)
                return "imported", {}
            return "skipped", {"reason": outcome}
        if not self._take_budget(bucket, "object"):
            return "skipped", {"reason": "over_counted_plan"}
        head = _head(self.client, bucket, d.key)
        if head is None:
            return "skipped", {"reason": "gone"}
        if head.etag != d.obj.etag or head.last_modified > self.cutoff:
            return "skipped", {"reason": "changed"}
        with db.wrap_errors(f"re-check {d.key}"), conn.transaction():
            claimed = conn.execute(db.query("reconcile_key_claimed"), {"bucket": bucket, "key": d.key}).fetchone()
        if claimed and claimed[0]:
            return "skipped", {"reason": "claimed"}
        if policy == "quarantine":
            target = self.settings.reconcile.quarantine_prefix + d.key
            if not self._copy_aside(bucket, d.key, target, head):
                return "skipped", {"reason": "changed"}
            self._delete_object(bucket, d, conn, erasures.BY_QUARANTINE)
            log.info("reconcile_object_quarantined", bucket=bucket, key=d.key, quarantine_key=target)
            return "quarantined", {"quarantine_key": target}
        self._delete_object(bucket, d, conn, erasures.BY_ORPHANED_OBJECT)
        log.info("reconcile_object_deleted", bucket=bucket, key=d.key)
        return "deleted", {}

    def _copy_aside(self, bucket: str, key: str, target: str, head: _Head) -> bool:
        """Copy the object (the version just checked) to ``target``; False if it changed."""
        source = {"Bucket": bucket, "Key": key}
        try:
            with storage.wrap_errors("copy object to quarantine", bucket):
                if head.size <= _SINGLE_COPY_LIMIT:
                    self.client.copy_object(
                        Bucket=bucket, Key=target, CopySource=source,
                        CopySourceIfMatch=f'"{head.etag}"', MetadataDirective="COPY",
                    )
                else:
                    self.client.copy(source, bucket, target, ExtraArgs={"CopySourceIfMatch": f'"{head.etag}"'})
        except StorageError as exc:
            if storage.error_code(exc.__cause__ or exc) in _PRECONDITION_CODES:
                return False
            raise
        return True

    def _delete_object(self, bucket: str, d: Diff, conn: psycopg.Connection[Any], deleted_by: str) -> None:
        """Delete the object, recorded in the erasure record (see ``erasures``)."""

        def delete() -> tuple[bool, str | None]:
            with storage.wrap_errors("delete object", bucket):
                answer = self.client.delete_object(Bucket=bucket, Key=d.key)
            return True, answer.get("VersionId") if answer.get("DeleteMarker") else None

        size = d.obj.size if d.obj is not None else None
        with db.wrap_errors(f"record the deletion of {d.key}"):
            erasures.erase(conn, erasures.Item(bucket, d.key, "object", size_bytes=size),
                           deleted_by=deleted_by, delete=delete)

    def _repair_row(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.row is not None
        if self.settings.reconcile.orphaned_rows == "report":
            return "none", {}
        if not self._take_budget(bucket, "row"):
            return "skipped", {"reason": "over_counted_plan"}
        with db.wrap_errors(f"delete orphaned row {d.row.asset_id}"), conn.transaction():
            # The row lock holds off an upsert of this row until we are done:
            # re-read, check S3, delete, all under it.
            current = conn.execute(db.query("reconcile_lock_row"), {"id": d.row.asset_id}).fetchone()
            if current is None:
                return "skipped", {"reason": "gone"}
            if current[0] != d.row.updated_at:
                return "skipped", {"reason": "changed"}
            if _head(self.client, bucket, d.key) is not None:
                return "skipped", {"reason": "object_exists"}
            conn.execute(db.query("reconcile_delete_row"), {"id": d.row.asset_id})
        log.info("reconcile_row_deleted", bucket=bucket, key=d.key, asset_id=str(d.row.asset_id))
        return "deleted", {}

    def _refresh(self, bucket: str, d: Diff, conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
        assert d.row is not None
        head = _head(self.client, bucket, d.key)
        if head is None:
            return "skipped", {"reason": "gone"}
        params = {"id": d.row.asset_id, "size": head.size, "etag": head.etag, "content_type": head.content_type}
        with db.wrap_errors(f"refresh row {d.row.asset_id}"), conn.transaction():
            updated = conn.execute(db.query("reconcile_refresh_row"), params).fetchone()
        if updated is None:
            return "skipped", {"reason": "gone_or_current"}
        log.info("reconcile_row_refreshed", bucket=bucket, key=d.key, asset_id=str(d.row.asset_id))
        return "refreshed", {}

    # -- judging a bucket before repair

    def _judge(self) -> None:
        rc = self.settings.reconcile
        for bucket, state in self.states.items():
            if state.error is not None:
                state.refusal = (
                    f"bucket {bucket}: repair refused, its listing or a query failed part way "
                    f"({state.error}); nothing was changed"
                )
            else:
                plan = state.plan
                deletes_objects = rc.orphaned_objects in OBJECT_POLICIES_THAT_DELETE
                state.object_budget = plan["orphaned_objects"] if deletes_objects else 0
                state.row_budget = plan["orphaned_rows"] if rc.orphaned_rows == "delete" else 0
                problems = limit_problems(
                    state.object_budget, state.row_budget, plan["objects_scanned"], plan["rows_scanned"],
                    max_deletes=rc.max_deletes, max_fraction=rc.max_delete_fraction,
                )
                if problems and not self.options.force:
                    state.refusal = f"bucket {bucket}: repair refused, " + "; ".join(problems) + " (--force overrides)"
            if state.refusal:
                log.warning("reconcile_bucket_refused", bucket=bucket, reason=state.refusal)

    def _count_failed_deletes(self, bucket: str) -> None:
        state = self.states[bucket]
        if state.error is not None:
            return
        r = diff.prefix_range(self.prefix)
        try:
            with db.wrap_errors(f"count failed deletions of bucket {bucket}"), self.pool.connection() as conn:
                row = conn.execute(
                    db.query("reconcile_count_failed_deletes"),
                    {"bucket": bucket, "start_at": r.start_at, "stop_before": r.stop_before},
                ).fetchone()
        except TrrAssetsError as exc:
            self._fail(bucket, exc)
            return
        with self.lock:
            state.counts["failed_deletes"] += int(row[0]) if row else 0

    # -- the result

    def summary(self, started_at: datetime, duration: float, run_id: int | None) -> ReconcileSummary:
        total: Counter[str] = Counter()
        refused, failed = [], []
        for bucket, state in self.states.items():
            total.update(state.counts)
            if self.options.repair and state.refusal:
                refused.append(state.refusal)
            elif state.error is not None:
                failed.append(f"bucket {bucket}: {state.error}")
        counts: dict[str, Any] = {name: total[name] for name in (*SCAN_COUNTS, *REPAIR_COUNTS)}
        return ReconcileSummary(
            dry_run=not self.options.repair,
            buckets=tuple(self.buckets),
            prefix=self.prefix,
            source="inventory" if self.inventory else "listing",
            **counts,
            refused=refused,
            failed=failed,
            started_at=started_at,
            duration_seconds=duration,
            run_id=run_id,
        )


def limit_problems(
    object_deletes: int, row_deletes: int, objects: int, rows: int, *, max_deletes: int, max_fraction: float
) -> list[str]:
    """Which safety limit the planned deletions of one bucket break, and by how much."""
    problems = []
    total = object_deletes + row_deletes
    if total > max_deletes:
        problems.append(
            f"{_count(total, 'deletion')} {'exceeds' if total == 1 else 'exceed'} "
            f"reconcile.max_deletes {max_deletes} by {total - max_deletes}"
        )
    for what, wanted, of in (("object", object_deletes, objects), ("row", row_deletes, rows)):
        limit = math.floor(max_fraction * of)
        if wanted > max_fraction * of:
            problems.append(
                f"{_count(wanted, what + ' deletion')} would be {wanted / max(of, 1):.1%} of its "
                f"{_count(of, what)}, above reconcile.max_delete_fraction {max_fraction:g} "
                f"(limit {limit}, over by {wanted - limit})"
            )
    return problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- history -----------------------------------------------------------------------


def _record_start(settings: Settings, dry_run: bool, buckets: list[str], prefix: str, run_by: str) -> int:
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("record the reconcile run"):
        row = conn.execute(
            db.query("reconcile_run_start"),
            {"dry_run": dry_run, "buckets": buckets, "prefix": prefix, "run_by": run_by},
        ).fetchone()
    assert row is not None
    return int(row[0])


def _record_finish(settings: Settings, run_id: int, outcome: str, counts: dict[str, Any], error: str | None) -> None:
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("record the reconcile run"):
        conn.execute(
            db.query("reconcile_run_finish"),
            {"id": run_id, "outcome": outcome, "counts": Jsonb(counts), "error": error},
        )


def _outcome(summary: ReconcileSummary) -> str:
    if summary.refused:
        return "refused"
    if summary.failed or summary.action_errors:
        return "failed"
    if not summary.drift:
        return "clean"
    return "drift" if summary.dry_run else "repaired"


def history(settings: Settings, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """The last recorded runs, newest first."""
    with db.connect(settings.database, autocommit=True) as conn, db.wrap_errors("read the reconcile history"):
        cursor = conn.execute(db.query("reconcile_history"), {"limit": limit})
        names = [c.name for c in cursor.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cursor]
    for row in rows:
        for name in ("started_at", "finished_at"):
            row[name] = _iso(row[name]) if row[name] else None
    return rows


# --- the entry points --------------------------------------------------------------


def run(
    settings: Settings,
    options: ReconcileOptions,
    *,
    sink: Sink | None = None,
    client: Any = None,
    clock: Callable[[], datetime] = _utcnow,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> ReconcileSummary:
    """Classify every key, report each finding to ``sink`` as it is found, repair on request.

    ``sink`` is called from several threads, one call at a time. ``stop``
    (the worker's shutdown) ends the run early, between shards or every
    1,000 keys: the buckets it cut short are failed, so the run is
    incomplete, never a clean bill (each repair action is re-checked on its
    own, so stopping between two is safe). Raises
    ``ReconcileRefused`` (exit 4) after all buckets were processed if any
    bucket's repair was refused, ``ReconcileIncomplete`` (exit 1) if a
    bucket could not be read whole or a repair failed; both carry the summary.
    """
    client = client or storage.make_client(settings.s3)
    prefix = settings.s3.prefix if options.prefix is None else options.prefix
    grace = settings.reconcile.grace_seconds if options.grace_seconds is None else options.grace_seconds
    manifest = read_manifest(client, options.inventory) if options.inventory else None
    buckets = _buckets(settings, options, manifest)
    started_at = clock()
    # Grace is judged against the report's date when reading an inventory:
    # anything newer than the report cannot be judged from it.
    reference = min(started_at, manifest.created_at) if manifest and manifest.created_at else started_at
    cutoff = reference - timedelta(seconds=grace)
    run_by = options.run_by or default_run_by()
    if options.repair:  # deletions a crashed run left half-recorded
        with db.connect(settings.database, autocommit=True) as conn:
            erasures.settle(conn, client, older_than_seconds=settings.deletes.settle_after_seconds)
    run_id = _record_start(settings, not options.repair, buckets, prefix, run_by)
    log.info("reconcile_started", run_id=run_id, buckets=buckets, prefix=prefix, repair=options.repair,
             grace_seconds=grace, source="inventory" if manifest else "listing")
    began = time.monotonic()
    reconciler = _Reconciler(settings, options, client, buckets, prefix, cutoff, sink, progress, manifest, stop)
    try:
        reconciler.execute()
    except BaseException as exc:
        _record_finish(settings, run_id, "failed", {}, one_line(exc))
        raise
    summary = reconciler.summary(started_at, time.monotonic() - began, run_id)
    if options.versions:
        summary = _with_versions(summary, settings, options, client, buckets, prefix, cutoff, sink, started_at,
                                 stop, run_id_=run_id)
        summary = dataclasses.replace(summary, duration_seconds=time.monotonic() - began)
    errors = [*summary.refused, *summary.failed]
    _record_finish(settings, run_id, _outcome(summary), summary.counts(), "; ".join(errors) or None)
    log.info("reconcile_finished", run_id=run_id, drift=summary.drift, **summary.counts())
    if summary.refused:
        raise ReconcileRefused("reconcile: " + "; ".join(summary.refused), summary)
    if summary.failed:
        raise ReconcileIncomplete("reconcile: " + "; ".join(summary.failed), summary)
    action_errors = summary.action_errors + summary.version_counts().get("version_action_errors", 0)
    if action_errors:
        raise ReconcileIncomplete(f"reconcile: {action_errors} repairs failed (see the report)", summary)
    return summary


def _with_versions(
    summary: ReconcileSummary,
    settings: Settings,
    options: ReconcileOptions,
    client: Any,
    buckets: list[str],
    prefix: str,
    cutoff: datetime,
    sink: Sink | None,
    now: datetime,
    stop: threading.Event | None,
    *,
    run_id_: int | None,
) -> ReconcileSummary:
    """``--versions``: run reconcile_versions over the same buckets; its
    counts, refusals and failures join the summary."""
    try:
        states = reconcile_versions.VersionsPass(
            settings, client, buckets, prefix, cutoff, repair=options.repair, force=options.force, sink=sink,
            now=now, stop=stop,
        ).execute()
    except BaseException as exc:
        if run_id_ is not None:
            _record_finish(settings, run_id_, "failed", {}, one_line(exc))
        raise
    refused, failed = list(summary.refused), list(summary.failed)
    for bucket, state in states.items():
        if options.repair and state.refusal:
            refused.append(state.refusal)
        elif state.error is not None:
            failed.append(f"bucket {bucket} (versions): {state.error}")
    names = reconcile_versions.SCAN_COUNTS + (reconcile_versions.REPAIR_COUNTS if options.repair else ())
    by_bucket = {bucket: {name: state.counts[name] for name in names} for bucket, state in states.items()}
    return dataclasses.replace(summary, refused=refused, failed=failed, versions_by_bucket=by_bucket)


def _buckets(settings: Settings, options: ReconcileOptions, manifest: InventoryManifest | None) -> list[str]:
    buckets = list(dict.fromkeys(options.buckets or settings.s3.buckets))
    if manifest is not None:
        if options.buckets and list(options.buckets) != [manifest.source_bucket]:
            raise UsageError(
                f"reconcile: the inventory report is of bucket {manifest.source_bucket}, "
                f"not {', '.join(options.buckets)}"
            )
        return [manifest.source_bucket]
    if not buckets:
        raise UsageError("reconcile: no bucket to reconcile (set s3.buckets or pass --bucket)")
    return buckets
