"""Reconcile: find drift between S3 and ``core.show_assets``; repair it on request.

Every key of the configured buckets under the prefix is classified with the
diff engine, one (bucket, shard) unit per thread of the shared pass
(``scan``), each merging a listing with a streamed query over the rows, so
memory stays flat (``judging``):

- ``orphaned_object``: an object with no row, older than the grace period;
- ``orphaned_row``: a row with no object, not updated within the grace period;
- ``mismatch``: both, but size or ETag differ;
- objects whose deletion is queued are ``pending_deletes``, never orphans;
  younger would-be orphans are ``skipped_recent``; deletions that gave up
  (``delete_queue.state = 'failed'``) are counted as ``failed_deletes``.

A dry run (the default) makes one pass and touches nothing. ``repair`` makes
two: the first only counts, so each bucket can be judged as a whole before
anything is changed (a listing or query that failed, or deletions above
``max_deletes`` / ``max_delete_fraction``, refuse that bucket: ``limits``);
the second lists again and acts on each candidate only after re-checking it
live (``repairs``). The second pass never deletes more in a bucket than the
first counted. ``inventory`` reads an S3 Inventory report instead of
listing; ``history`` records each run; ``versions`` (``--versions``) looks at
versions, delete markers and multipart uploads too.

Keys under ``reconcile.quarantine_prefix`` are where quarantine puts
orphaned objects: they are counted as ``in_quarantine``, never as orphans.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import structlog

from trr_assets import db, diff, erasures, inventory, keys, scan, storage
from trr_assets.config import Settings
from trr_assets.diff import Batch, Diff
from trr_assets.errors import (
    ReconcileIncomplete,
    ReconcileRefused,
    TrrAssetsError,
    UsageError,
    one_line,
)
from trr_assets.inventory import (
    InventoryManifest,
    load_inventory,
    parse_s3_url,
    read_manifest,
)
from trr_assets.reconcile import history, judging, limits, versions
from trr_assets.reconcile.history import HISTORY_LIMIT, default_run_by
from trr_assets.reconcile.judging import finding
from trr_assets.reconcile.limits import Judgement, limit_problems
from trr_assets.reconcile.repairs import Repairs, import_object
from trr_assets.reconcile.scope import RunScope, Sink
from trr_assets.reconcile.summary import (
    FINDING_COUNTS,
    REPAIR_COUNTS,
    SCAN_COUNTS,
    ReconcileOptions,
    ReconcileSummary,
)
from trr_assets.scan import Progress, Scan, Unit
from trr_assets.storage import S3Client

__all__ = [
    "HISTORY_LIMIT", "LIST_PAGE_SIZE", "REPAIR_COUNTS", "SCAN_COUNTS", "InventoryManifest", "ReconcileOptions",
    "ReconcileSummary", "default_run_by", "finding", "history", "import_object", "limit_problems",
    "load_inventory", "parse_s3_url", "read_manifest", "run",
]

log = structlog.get_logger()

LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)
_STOPPED = "reconcile: stopped before the end (shutting down)"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Reconciler:
    """The state of one run, shared by the shard threads (through ``scan``)."""

    def __init__(
        self, scope: RunScope, options: ReconcileOptions, progress: Progress | None, manifest: InventoryManifest | None
    ) -> None:
        self.scope = scope
        self.options = options
        self.manifest = manifest
        self.plans: dict[str, Counter[str]] = {bucket: Counter() for bucket in scope.buckets}  # the counting pass
        self.counts: dict[str, Counter[str]] = {bucket: Counter() for bucket in scope.buckets}  # the reporting pass
        self._failures_logged: set[str] = set()  # a bucket's failure is logged once, not once per shard
        self._log_lock = threading.Lock()
        self.judgements: dict[str, Judgement] = {}
        self.repairs: Repairs | None = None
        self.lock = threading.Lock()  # guards the counts and the sink
        # Each running unit holds its connections (a reader, and with
        # --repair a writer) from its start.
        per_unit = 2 if options.repair else 1
        self.scan = Scan(
            scope.settings, name="trr-assets reconcile", buckets=scope.buckets,
            unit_count=1 if manifest else len(scope.buckets) * scope.settings.s3.list_shards,
            workers=1 if manifest else scope.settings.s3.list_concurrency,
            per_unit=per_unit, eager_per_unit=per_unit, stop=scope.stop, progress=progress,
        )
        self.inventory_conn: psycopg.Connection[Any] | None = None

    # -- orchestration

    def execute(self) -> None:
        with ExitStack() as stack:
            stack.enter_context(self.scan)
            units = self._units(stack)
            if not self.options.repair:
                self._pass(units, phase="scan", emit=True, act=False)
                return
            self._pass(units, phase="count", emit=False, act=False)
            rc, force = self.scope.settings.reconcile, self.options.force
            for bucket in self.scope.buckets:
                judged = limits.judge(bucket, self.plans[bucket], self.scan.error(bucket), rc, force=force)
                self.judgements[bucket] = judged
                if judged.refusal:
                    log.warning("reconcile_bucket_refused", bucket=bucket, reason=judged.refusal)
            self.repairs = Repairs(self.scope.settings, self.scope.client, self.scope.cutoff, self.judgements)
            wanted = [u for u in units if not self.scan.failed(u.bucket)]
            self._pass(wanted, phase="repair", emit=True, act=True)

    def _units(self, stack: ExitStack) -> list[Unit]:
        if self.manifest is None:
            return scan.units(self.scope.buckets, self.scope.prefix, self.scope.settings.s3.list_shards)
        bucket = self.scope.buckets[0]
        conn = db.connect(self.scope.settings.database, application_name="trr-assets reconcile inventory")
        stack.callback(conn.close)
        try:
            load_inventory(conn, self.scope.client, self.manifest, self.scope.prefix)
        except TrrAssetsError as exc:
            self.scan.fail(bucket, self._describe(bucket, exc))
        self.inventory_conn = conn
        return [Unit(bucket, keys.prefix_range(self.scope.prefix))]

    def _pass(self, units: list[Unit], *, phase: str, emit: bool, act: bool) -> None:
        def work(unit: Unit) -> None:
            self._run_unit(unit, emit=emit, act=act)

        # A listing or query failure fails its bucket (ValueError: a stream
        # out of order); anything else is a bug, and stops the run.
        self.scan.run(units, work, phase=phase, fails_bucket=(TrrAssetsError, ValueError),
                      describe=self._describe, when_stopped=lambda unit: self._stopped(unit.bucket))
        if emit:
            for bucket in dict.fromkeys(u.bucket for u in units):
                self._count_failed_deletes(bucket)

    def _describe(self, bucket: str, exc: BaseException) -> str:
        with self._log_lock:
            first = bucket not in self._failures_logged
            self._failures_logged.add(bucket)
        if first:
            log.error("reconcile_bucket_failed", bucket=bucket, error=one_line(exc))
        return one_line(exc)

    def _stopped(self, bucket: str) -> bool:
        """A stop was requested: the bucket's run is incomplete, never reported clean."""
        if not self.scan.stopping():
            return False
        self.scan.fail(bucket, self._describe(bucket, TrrAssetsError(_STOPPED)))
        return True

    # -- one unit: merge, classify, report, act

    def _run_unit(self, unit: Unit, *, emit: bool, act: bool) -> None:
        counts: Counter[str] = Counter()
        in_sync = 0
        try:
            with db.wrap_errors(f"reconcile bucket {unit.bucket}"), ExitStack() as stack:
                conn = self.scan.connect(stack, unit.bucket)
                act_conn = self.scan.connect(stack, unit.bucket) if act else None
                stack.enter_context(conn.transaction())
                for batch in self._diffs(stack, conn, unit):
                    in_sync += batch.same  # the common case: only counted
                    for d in batch.diffs:
                        if act and self.scan.failed(unit.bucket):
                            return  # another shard of this bucket failed: stop repairing it
                        self._handle(d, unit.bucket, counts, emit=emit, act_conn=act_conn)
                    self.scan.progress.advance(keys=batch.same + len(batch.diffs))
                    if self._stopped(unit.bucket):
                        return
        finally:
            counts["objects_scanned"] += in_sync
            counts["rows_scanned"] += in_sync
            with self.lock:
                (self.counts if emit else self.plans)[unit.bucket].update(counts)

    def _diffs(self, stack: ExitStack, conn: psycopg.Connection[Any], unit: Unit) -> Iterator[Batch]:
        if self.inventory_conn is not None:
            stack.enter_context(self.inventory_conn.transaction())
            rows = db.stream_rows(conn, unit.bucket, unit.key_range)
            return diff.merge(inventory.inventory_objects(self.inventory_conn, unit.key_range), rows)
        return scan.diff_range(self.scope.client, conn, unit.bucket, self.scope.prefix, unit.key_range,
                               self.scan.splits, rows=db.stream_rows, page_size=LIST_PAGE_SIZE)

    def _handle(
        self,
        d: Diff,
        bucket: str,
        counts: Counter[str],
        *,
        emit: bool,
        act_conn: psycopg.Connection[Any] | None,
    ) -> None:
        verdict = judging.verdict(d, self.scope.cutoff, self.scope.settings.reconcile.quarantine_prefix)
        if d.obj is not None and verdict != "in_quarantine":
            counts["objects_scanned"] += 1
        if d.row is not None and d.row.asset_id is not None:
            counts["rows_scanned"] += 1
        if verdict is None:
            return
        if verdict not in judging.COUNTER_OF:
            counts[verdict] += 1
            return
        counts[judging.COUNTER_OF[verdict]] += 1
        if not emit:
            return
        extra: dict[str, Any] = {}
        action = "none"
        if act_conn is not None and self.repairs is not None:
            action, extra = self.repairs.repair(verdict, bucket, d, act_conn)
            counter = judging.repair_counter(verdict, action)
            if counter:
                counts[counter] += 1
        if self.scope.sink is not None:
            item = finding(verdict, bucket, d, action, **extra)
            with self.lock:
                self.scope.sink(item)

    def _count_failed_deletes(self, bucket: str) -> None:
        if self.scan.failed(bucket):
            return
        r = keys.prefix_range(self.scope.prefix)
        try:
            with ExitStack() as stack, db.wrap_errors(f"count failed deletions of bucket {bucket}"):
                conn = stack.enter_context(self.scan.pool.connection())
                row = conn.execute(
                    db.query("reconcile_count_failed_deletes"),
                    {"bucket": bucket, "start_at": r.start_at, "stop_before": r.stop_before},
                ).fetchone()
        except TrrAssetsError as exc:
            self.scan.fail(bucket, self._describe(bucket, exc))
            return
        with self.lock:
            self.counts[bucket]["failed_deletes"] += int(row[0]) if row else 0

    # -- the result

    def summary(self, started_at: datetime, duration: float, run_id: int | None) -> ReconcileSummary:
        total: Counter[str] = Counter()
        refused, failed = [], []
        for bucket in self.scope.buckets:
            total.update(self.counts[bucket])
            judged = self.judgements.get(bucket)
            error = self.scan.error(bucket)
            if self.options.repair and judged is not None and judged.refusal:
                refused.append(judged.refusal)
            elif error is not None:
                failed.append(f"bucket {bucket}: {error}")
        counts: dict[str, Any] = {name: total[name] for name in (*SCAN_COUNTS, *REPAIR_COUNTS)}
        return ReconcileSummary(
            dry_run=not self.options.repair,
            buckets=tuple(self.scope.buckets),
            prefix=self.scope.prefix,
            source="inventory" if self.manifest else "listing",
            **counts,
            refused=refused,
            failed=failed,
            started_at=started_at,
            duration_seconds=duration,
            run_id=run_id,
            by_bucket={bucket: {name: self.counts[bucket][name] for name in FINDING_COUNTS}
                       for bucket in self.scope.buckets if self.scan.error(bucket) is None},
        )


def run(
    settings: Settings,
    options: ReconcileOptions,
    *,
    sink: Sink | None = None,
    client: S3Client | None = None,
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
    manifest = inventory.read_manifest(client, options.inventory) if options.inventory else None
    buckets = _buckets(settings, options, manifest)
    started_at = clock()
    # Grace is judged against the report's date when reading an inventory:
    # anything newer than the report cannot be judged from it.
    reference = min(started_at, manifest.created_at) if manifest and manifest.created_at else started_at
    cutoff = reference - timedelta(seconds=grace)
    run_by = options.run_by or history.default_run_by()
    if options.repair:  # deletions a crashed run left half-recorded
        with db.connect(settings.database, autocommit=True) as conn:
            erasures.settle(conn, client, older_than_seconds=settings.deletes.settle_after_seconds)
    run_id = history.record_start(settings, not options.repair, buckets, prefix, run_by)
    log.info("reconcile_started", run_id=run_id, buckets=buckets, prefix=prefix, repair=options.repair,
             grace_seconds=grace, source="inventory" if manifest else "listing")
    began = time.monotonic()
    scope = RunScope(settings, client, buckets, prefix, cutoff, sink, stop)
    reconciler = _Reconciler(scope, options, progress, manifest)
    try:
        reconciler.execute()
    except BaseException as exc:
        history.record_finish(settings, run_id, "failed", {}, one_line(exc))
        raise
    summary = reconciler.summary(started_at, time.monotonic() - began, run_id)
    if options.versions:
        summary = _with_versions(summary, scope, options, started_at, run_id_=run_id)
        summary = dataclasses.replace(summary, duration_seconds=time.monotonic() - began)
    errors = [*summary.refused, *summary.failed]
    recorded = {**summary.counts(), "by_bucket": summary.by_bucket}
    history.record_finish(settings, run_id, history.outcome(summary), recorded, "; ".join(errors) or None)
    log.info("reconcile_finished", run_id=run_id, drift=summary.drift, **summary.counts())
    if summary.refused:
        raise ReconcileRefused("reconcile: " + "; ".join(summary.refused), summary)
    if summary.failed:
        raise ReconcileIncomplete("reconcile: " + "; ".join(summary.failed), summary)
    if summary.all_action_errors:
        raise ReconcileIncomplete(f"reconcile: {summary.all_action_errors} repairs failed (see the report)", summary)
    return summary


def _with_versions(
    summary: ReconcileSummary, scope: RunScope, options: ReconcileOptions, now: datetime, *, run_id_: int | None
) -> ReconcileSummary:
    """``--versions``: run ``versions`` over the same buckets; its
    counts, refusals and failures join the summary."""
    try:
        states = versions.VersionsPass(scope, repair=options.repair, force=options.force, now=now).execute()
    except BaseException as exc:
        if run_id_ is not None:
            history.record_finish(scope.settings, run_id_, "failed", {}, one_line(exc))
        raise
    refused, failed = list(summary.refused), list(summary.failed)
    for bucket, state in states.items():
        if options.repair and state.refusal:
            refused.append(state.refusal)
        elif state.error is not None:
            failed.append(f"bucket {bucket} (versions): {state.error}")
    names = versions.SCAN_COUNTS + (versions.REPAIR_COUNTS if options.repair else ())
    by_bucket = {bucket: {name: state.counts[name] for name in names} for bucket, state in states.items()}
    return dataclasses.replace(summary, refused=refused, failed=failed, versions_by_bucket=by_bucket)


def _buckets(settings: Settings, options: ReconcileOptions, manifest: inventory.InventoryManifest | None) -> list[str]:
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
