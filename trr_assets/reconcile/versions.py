"""``reconcile --versions``: what versioned buckets and multipart uploads hold.

Beside the listing of current objects, this lists every version and delete
marker (ListObjectVersions, in the listing's shards, merged with the rows
as the listing is: memory holds a page per shard) and every incomplete
multipart upload (ListMultipartUploads, with ListParts for the bytes), and
reports per bucket:

- ``noncurrent_versions`` / ``noncurrent_bytes``: versions that are no
  longer current (billed, never listed by a plain listing);
- ``delete_markers``;
- ``incomplete_uploads`` / ``incomplete_upload_bytes``;
- findings ``orphaned_versions``: a key with versions but no row, no queued
  deletion and no current object (every byte of it is garbage), and
  ``lone_delete_marker``: a key with delete markers and no version behind
  them; ``incomplete_upload``: an upload started more than
  ``reconcile.incomplete_upload_days`` ago.

Repairs (``--repair``) follow reconcile's own rules: the first pass counts,
the bucket is judged against ``reconcile.max_deletes`` and
``max_delete_fraction`` (``--force`` overrides) and refused whole if any
listing failed part way; the second pass lists again and acts on at most
what the first counted. A key that has a row (or a queued deletion) is never
touched, checked again right before each deletion; only the version ids just
listed are deleted, so a version uploaded meanwhile survives. Every deletion
is recorded in the erasure record (``erasures``).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog

from trr_assets import db, erasures, keys
from trr_assets.errors import TrrAssetsError, one_line
from trr_assets.reconcile.scope import RunScope
from trr_assets.records import RowInfo
from trr_assets.storage import versions as storage_versions
from trr_assets.storage.versions import UploadInfo, VersionInfo

log = structlog.get_logger()


# Counters, in the order reports show them.
SCAN_COUNTS = (
    "versions_scanned",
    "noncurrent_versions",
    "noncurrent_bytes",
    "delete_markers",
    "incomplete_uploads",
    "incomplete_upload_bytes",
    "orphaned_versions",
    "orphaned_version_bytes",
    "lone_delete_markers",
    "stale_uploads",
    "skipped_recent_versions",
)
REPAIR_COUNTS = ("deleted_versions", "deleted_delete_markers", "aborted_uploads", "skipped_versions",
                 "version_action_errors")
FINDING_KINDS = ("orphaned_versions", "lone_delete_marker", "incomplete_upload")


@dataclass
class BucketVersions:
    """One bucket's counts, and what became of its repair."""

    counts: Counter[str] = field(default_factory=Counter)
    plan: Counter[str] = field(default_factory=Counter)  # the first pass of a repair
    error: str | None = None
    refusal: str | None = None
    budget: int = 0  # deletions (versions, markers, aborts) the second pass may still make


@dataclass(frozen=True, slots=True)
class _Key:
    """Every version and delete marker of one key (versions, then markers)."""

    key: str
    entries: list[VersionInfo]

    @property
    def versions(self) -> list[VersionInfo]:
        return [v for v in self.entries if not v.is_delete_marker]

    @property
    def markers(self) -> list[VersionInfo]:
        return [v for v in self.entries if v.is_delete_marker]


def _grouped(pages: Iterator[list[VersionInfo]]) -> Iterator[_Key]:
    """The listing one key at a time (a key's versions may straddle pages)."""
    held: _Key | None = None
    for page in pages:
        for key, group in itertools.groupby(page, key=_first):
            if held is not None and held.key == key:
                held.entries.extend(group)
                continue
            if held is not None:
                yield held
            held = _Key(key, list(group))
    if held is not None:
        yield held


def _first(version: VersionInfo) -> str:
    return version.key


class VersionsPass:
    """One run of ``reconcile --versions`` over some buckets."""

    def __init__(self, scope: RunScope, *, repair: bool, force: bool, now: datetime) -> None:
        settings = scope.settings
        self.scope = scope
        self.repair = repair
        self.force = force
        self.upload_cutoff = now - timedelta(days=settings.reconcile.incomplete_upload_days)
        self.states = {bucket: BucketVersions() for bucket in scope.buckets}
        self.lock = threading.Lock()
        self.pool = db.make_pool(settings.database, name="trr-assets reconcile versions", min_size=1,
                                 max_size=settings.s3.list_concurrency * (2 if repair else 1))

    def execute(self) -> dict[str, BucketVersions]:
        self.pool.open()
        try:
            if not self.repair:
                self._pass(emit=True, act=False)
            else:
                self._pass(emit=False, act=False)
                self._judge()
                self._pass(emit=True, act=True)
        finally:
            self.pool.close()
        return self.states

    # -- passes

    def _pass(self, *, emit: bool, act: bool) -> None:
        ranges = keys.shard_ranges(self.scope.prefix, self.scope.settings.s3.list_shards)
        units = [(b, r) for b in self.scope.buckets for r in ranges]
        workers = max(1, min(self.scope.settings.s3.list_concurrency, len(units)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile-versions") as pool:
            futures = [pool.submit(self._shard, bucket, key_range, emit=emit, act=act) for bucket, key_range in units]
            futures += [pool.submit(self._uploads, bucket, emit=emit, act=act) for bucket in self.scope.buckets]
            for future in futures:
                future.result()  # a bug (not a listing or query failure) stops the run

    def _fail(self, bucket: str, exc: BaseException) -> None:
        with self.lock:
            state = self.states[bucket]
            if state.error is None:
                state.error = one_line(exc)
        log.error("reconcile_versions_bucket_failed", bucket=bucket, error=state.error)

    def _skip(self, bucket: str, act: bool) -> bool:
        state = self.states[bucket]
        if self.scope.stop is not None and self.scope.stop.is_set():
            self._fail(bucket, TrrAssetsError("reconcile: stopped before the end (shutting down)"))
            return True
        return state.error is not None or (act and state.refusal is not None)

    def _shard(self, bucket: str, key_range: keys.KeyRange, *, emit: bool, act: bool) -> None:
        if self._skip(bucket, act):
            return
        counts: Counter[str] = Counter()
        try:
            with db.wrap_errors(f"reconcile versions of bucket {bucket}"), self.pool.connection() as conn:
                with conn.transaction():
                    rows = db.stream_row_keys(conn, bucket, key_range)
                    pages = storage_versions.list_versions(
                        self.scope.client, bucket, prefix=self.scope.prefix, start_at=key_range.start_at,
                        stop_before=key_range.stop_before)
                    for item, claimed in _with_rows(_grouped(pages), rows):
                        finding = self._judge_key(bucket, item, claimed, counts)
                        if finding is not None and emit:
                            self._emit(bucket, finding, item, counts, act=act)
                        if self._skip(bucket, act):
                            return
        except (TrrAssetsError, ValueError) as exc:
            self._fail(bucket, exc)
        finally:
            with self.lock:
                (self.states[bucket].counts if emit else self.states[bucket].plan).update(counts)

    def _judge_key(self, bucket: str, item: _Key, claimed: bool, counts: Counter[str]) -> str | None:
        """Count one key; the kind of its finding, if it is one."""
        versions, markers = item.versions, item.markers
        counts["versions_scanned"] += len(item.entries)
        noncurrent = [v for v in versions if not v.is_latest]
        counts["noncurrent_versions"] += len(noncurrent)
        counts["noncurrent_bytes"] += sum(v.size for v in noncurrent)
        counts["delete_markers"] += len(markers)
        if claimed or any(v.is_latest for v in versions):
            return None  # a row or a queued deletion, or a current object: the plain reconcile's business
        if max(v.last_modified for v in item.entries) > self.scope.cutoff:
            counts["skipped_recent_versions"] += 1
            return None
        if versions:
            counts["orphaned_versions"] += 1
            counts["orphaned_version_bytes"] += sum(v.size for v in versions)
            counts["planned_version_deletes"] += len(item.entries)
            return "orphaned_versions"
        counts["lone_delete_markers"] += 1
        counts["planned_marker_deletes"] += len(markers)
        return "lone_delete_marker"

    def _emit(self, bucket: str, kind: str, item: _Key, counts: Counter[str], *, act: bool) -> None:
        versions, markers = item.versions, item.markers
        finding: dict[str, Any] = {"kind": kind, "bucket": bucket, "key": item.key}
        if versions:
            finding.update(versions=len(versions), size=sum(v.size for v in versions))
        finding["delete_markers"] = len(markers)
        finding["last_modified"] = max(v.last_modified for v in item.entries).isoformat()
        action, extra = "none", dict[str, Any]()
        if act:
            action, extra = self._repair_key(bucket, kind, item, counts)
        finding["action"] = action
        finding.update(extra)
        self._sink(finding)

    def _sink(self, finding: dict[str, Any]) -> None:
        if self.scope.sink is not None:
            with self.lock:
                self.scope.sink(finding)

    # -- repairs

    def _repair_key(self, bucket: str, kind: str, item: _Key, counts: Counter[str]) -> tuple[str, dict[str, Any]]:
        policy = (self.scope.settings.reconcile.orphaned_versions if kind == "orphaned_versions"
                  else self.scope.settings.reconcile.lone_delete_markers)
        if policy != "delete":
            return "none", {}
        if not self._take_budget(bucket, len(item.entries)):
            counts["skipped_versions"] += 1
            return "skipped", {"reason": "over_counted_plan"}
        try:
            with db.wrap_errors(f"re-check {item.key}"), self.pool.connection() as conn:
                with conn.transaction():
                    row = conn.execute(db.query("reconcile_key_claimed"), {"bucket": bucket, "key": item.key})
                    claimed = row.fetchone()
                if claimed and claimed[0]:
                    counts["skipped_versions"] += 1
                    return "skipped", {"reason": "claimed"}
                deleted, refused = self._delete_entries(conn, bucket, kind, item)
        except TrrAssetsError as exc:
            counts["version_action_errors"] += 1
            log.warning("reconcile_versions_repair_failed", bucket=bucket, key=item.key, error=str(exc))
            return "failed", {"error": one_line(exc)}
        counts["deleted_versions"] += sum(1 for v in deleted if not v.is_delete_marker)
        counts["deleted_delete_markers"] += sum(1 for v in deleted if v.is_delete_marker)
        if refused:
            counts["version_action_errors"] += 1
            return "failed", {"error": refused[0].error, "deleted": len(deleted)}
        log.info("reconcile_versions_deleted", bucket=bucket, key=item.key, deleted=len(deleted))
        return "deleted", {}

    def _delete_entries(
        self, conn: psycopg.Connection[Any], bucket: str, kind: str, item: _Key
    ) -> tuple[list[VersionInfo], list[storage_versions.Refused]]:
        """Delete exactly the listed versions and markers of one key, recorded (see ``erasures``)."""
        by = erasures.BY_ORPHANED_VERSIONS if kind == "orphaned_versions" else erasures.BY_LONE_DELETE_MARKER
        items = [
            erasures.Item(bucket, v.key, "delete_marker" if v.is_delete_marker else "version", v.version_id,
                          size_bytes=None if v.is_delete_marker else v.size)
            for v in item.entries
        ]
        with conn.transaction():
            intents = erasures.intend(conn, items, deleted_by=by)
        deleted, refused = storage_versions.delete_versions(
            self.scope.client, bucket, [(v.key, v.version_id) for v in item.entries])
        done = {(d.key, d.version_id) for d in deleted}
        with conn.transaction():
            erasures.confirm(conn, [i for i, v in zip(intents, item.entries, strict=True)
                                    if (v.key, v.version_id) in done])
            erasures.drop(conn, [i for i, v in zip(intents, item.entries, strict=True)
                                 if (v.key, v.version_id) not in done])
        return [v for v in item.entries if (v.key, v.version_id) in done], refused

    def _take_budget(self, bucket: str, wanted: int) -> bool:
        with self.lock:
            state = self.states[bucket]
            if state.budget >= wanted:
                state.budget -= wanted
                return True
            return False

    # -- incomplete multipart uploads

    def _uploads(self, bucket: str, *, emit: bool, act: bool) -> None:
        if self._skip(bucket, act):
            return
        counts: Counter[str] = Counter()
        try:
            for page in storage_versions.list_uploads(self.scope.client, bucket, prefix=self.scope.prefix):
                for upload in page:
                    size = storage_versions.upload_bytes(self.scope.client, bucket, upload.key, upload.upload_id)
                    if size is None:
                        continue  # completed or aborted since it was listed
                    counts["incomplete_uploads"] += 1
                    counts["incomplete_upload_bytes"] += size
                    if upload.initiated > self.upload_cutoff:
                        continue
                    counts["stale_uploads"] += 1
                    if emit:
                        self._emit_upload(bucket, upload, size, counts, act=act)
                    if self._skip(bucket, act):
                        return
        except TrrAssetsError as exc:
            self._fail(bucket, exc)
        finally:
            with self.lock:
                (self.states[bucket].counts if emit else self.states[bucket].plan).update(counts)

    def _emit_upload(self, bucket: str, upload: UploadInfo, size: int, counts: Counter[str], *, act: bool) -> None:
        finding: dict[str, Any] = {"kind": "incomplete_upload", "bucket": bucket, "key": upload.key,
                                   "upload_id": upload.upload_id, "initiated": upload.initiated.isoformat(),
                                   "size": size}
        action, extra = "none", dict[str, Any]()
        if act and self.scope.settings.reconcile.incomplete_uploads == "abort":
            action, extra = self._abort(bucket, upload, size, counts)
        finding["action"] = action
        finding.update(extra)
        self._sink(finding)

    def _abort(self, bucket: str, upload: UploadInfo, size: int, counts: Counter[str]) -> tuple[str, dict[str, Any]]:
        if not self._take_budget(bucket, 1):
            counts["skipped_versions"] += 1
            return "skipped", {"reason": "over_counted_plan"}
        item = erasures.Item(bucket, upload.key, "upload", upload_id=upload.upload_id, size_bytes=size)
        try:
            with db.wrap_errors(f"abort upload of {upload.key}"), self.pool.connection() as conn:
                aborted = erasures.erase(
                    conn, item, deleted_by=erasures.BY_INCOMPLETE_UPLOAD,
                    delete=lambda: (storage_versions.abort_upload(self.scope.client, bucket, upload.key,
                                                                  upload.upload_id), None))
        except TrrAssetsError as exc:
            counts["version_action_errors"] += 1
            return "failed", {"error": one_line(exc)}
        if not aborted:
            counts["skipped_versions"] += 1
            return "skipped", {"reason": "gone"}
        counts["aborted_uploads"] += 1
        log.info("reconcile_upload_aborted", bucket=bucket, key=upload.key, upload_id=upload.upload_id)
        return "aborted", {}

    # -- judging a bucket before repair

    def _judge(self) -> None:
        rc = self.scope.settings.reconcile
        for bucket, state in self.states.items():
            if state.error is not None:
                state.refusal = (f"bucket {bucket}: versions repair refused, a listing or query failed part way "
                                 f"({state.error}); nothing was changed")
                continue
            plan = state.plan
            versions = plan["planned_version_deletes"] if rc.orphaned_versions == "delete" else 0
            versions += plan["planned_marker_deletes"] if rc.lone_delete_markers == "delete" else 0
            wanted = versions + (plan["stale_uploads"] if rc.incomplete_uploads == "abort" else 0)
            state.budget = wanted
            problems = []
            if wanted > rc.max_deletes:
                problems.append(f"{wanted} deletions of versions, markers and uploads exceed "
                                f"reconcile.max_deletes {rc.max_deletes} by {wanted - rc.max_deletes}")
            scanned = plan["versions_scanned"]
            if scanned and versions / scanned > rc.max_delete_fraction:
                problems.append(f"{versions} of {scanned} versions and markers, above "
                                f"reconcile.max_delete_fraction {rc.max_delete_fraction:g}")
            if problems and not self.force:
                state.refusal = (f"bucket {bucket}: versions repair refused, " + "; ".join(problems)
                                 + " (--force overrides)")
            if state.refusal:
                log.warning("reconcile_bucket_refused", bucket=bucket, reason=state.refusal)


def _with_rows(groups: Iterator[_Key], rows: Iterator[RowInfo]) -> Iterator[tuple[_Key, bool]]:
    """Each key's versions, and whether it has a row or a queued deletion
    (both streams in key order; the row stream is closed at the end)."""
    row = next(rows, None)
    try:
        for group in groups:
            while row is not None and row.key < group.key:
                row = next(rows, None)
            yield group, row is not None and row.key == group.key
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
