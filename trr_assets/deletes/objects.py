"""The S3 side of a drain's batch: each entry's object (or, with
``deletes.all_versions``, each of its versions and delete markers) deleted,
and what S3 confirmed or refused said per entry.

What is about to be deleted is first recorded as intended in the erasure
record (on the drain's second connection, ``Side``, committed at once);
what S3 confirms is handed back in ``Outcome.erased`` for the batch's
transaction to confirm (see ``erasures``). Every S3 call goes through
``storage``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from trr_assets import db, erasures, storage
from trr_assets.config import Settings
from trr_assets.errors import StorageError
from trr_assets.storage import S3Client
from trr_assets.storage import versions as storage_versions

log = structlog.get_logger()

# DeleteObjects takes at most this many keys per request.
MAX_KEYS_PER_REQUEST = 1000
# all_versions: ListObjectVersions calls in flight at once.
_VERSION_LISTING_THREADS = 8
# Per-key error codes that mean the object (or version) is already gone.
_GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
# Characters XML 1.0 cannot carry: a key holding one cannot travel in a
# DeleteObjects body (S3 would refuse the whole request as MalformedXML,
# failing the other 999 keys with it), so it goes alone through DeleteObject.
# A carriage return too: the answer echoes the key in XML, whose parser reads
# it back as a newline, so the key would never be seen confirmed.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued deletion (a row of ``trr_assets.delete_queue``) taken by the drain."""

    id: int
    bucket: str
    key: str
    attempts: int


@dataclass
class Outcome:
    """S3's answer for a set of entries: confirmed ids, refused ids with why."""

    confirmed: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)
    in_failed_call: set[int] = field(default_factory=set)  # refused because a whole request failed
    requests: int = 0
    erased: list[tuple[int, str | None]] = field(default_factory=list)  # (intent, delete marker placed)
    not_erased: list[int] = field(default_factory=list)  # intents S3 did not confirm
    checks: list[tuple[str, str, int]] = field(default_factory=list)  # all_versions: versions left per key

    @property
    def call_failed(self) -> bool:
        """Whether a whole request failed (network, 5xx, missing bucket)."""
        return bool(self.in_failed_call)

    def refuse(self, entries: Sequence[Entry], error: str, *, whole_call: bool = False) -> None:
        for entry in entries:
            self.confirmed.discard(entry.id)
            self.refused.setdefault(entry.id, error)
            if whole_call:
                self.in_failed_call.add(entry.id)




@dataclass(frozen=True, slots=True)
class _Target:
    """One object (or, with ``all_versions``, one version) to delete, and its intent in the erasure record."""

    entry: Entry
    obj: dict[str, str]  # {"Key": ...} or {"Key": ..., "VersionId": ...}
    intent: int = 0


def delete_entries(client: S3Client, entries: Sequence[Entry], *, all_versions: bool, side: Side) -> Outcome:
    """Delete the entries' objects, per bucket, and say which S3 confirmed.

    What is about to be deleted is first recorded as intended (on ``side``,
    committed); what S3 confirms is then in ``outcome.erased`` for the
    batch's transaction to confirm (see ``erasures``).
    """
    outcome = Outcome()
    by_bucket: dict[str, list[Entry]] = {}
    for entry in entries:
        by_bucket.setdefault(entry.bucket, []).append(entry)
    for bucket, group in by_bucket.items():
        if all_versions:
            listed = _targets(client, bucket, group, outcome)
        else:
            listed = [(e, {"Key": e.key}, None) for e in group]
        pending = {e.id for e, _, _ in listed}
        # Entries with nothing to delete (no version left) are done already.
        outcome.confirmed.update(e.id for e in group if e.id not in pending and e.id not in outcome.refused)
        items = [
            erasures.Item(bucket, obj["Key"], _kind(obj, size), obj.get("VersionId"), size_bytes=size)
            for _, obj, size in listed
        ]
        intents = erasures.intend(side.conn(), items, deleted_by=erasures.BY_DRAIN)
        targets = [_Target(e, obj, intent) for (e, obj, _), intent in zip(listed, intents, strict=True)]
        safe = [t for t in targets if not _XML_UNSAFE.search(t.obj["Key"])]
        unsafe = [t for t in targets if _XML_UNSAFE.search(t.obj["Key"])]
        for start in range(0, len(safe), MAX_KEYS_PER_REQUEST):
            _delete_chunk(client, bucket, safe[start : start + MAX_KEYS_PER_REQUEST], outcome)
        for target in unsafe:
            _delete_one(client, bucket, target, outcome)
        if all_versions:
            _check_none_remain(client, bucket, group, outcome)
    return outcome


def _kind(obj: dict[str, str], size: int | None) -> str:
    if "VersionId" not in obj:
        return "object"
    return "delete_marker" if size is None else "version"


def _targets(
    client: S3Client, bucket: str, group: Sequence[Entry], outcome: Outcome
) -> list[tuple[Entry, dict[str, str], int | None]]:
    """Every version and delete marker of each entry's key (``all_versions``),
    with the version's size (None for a delete marker).

    One listing per key, a few at a time: the batch's locks are held
    meanwhile, so the listings should not take longer than they must.
    """
    targets: list[tuple[Entry, dict[str, str], int | None]] = []
    for entry, versions in _listed_versions(client, bucket, group):
        if isinstance(versions, StorageError):
            log.warning("list_object_versions_failed", bucket=bucket, key=entry.key, error=str(versions))
            outcome.refuse([entry], str(versions), whole_call=True)
            continue
        targets.extend(
            (entry, {"Key": entry.key, "VersionId": v.version_id}, None if v.is_delete_marker else v.size)
            for v in versions
        )
    return targets


def _listed_versions(
    client: S3Client, bucket: str, group: Sequence[Entry]
) -> Iterator[tuple[Entry, list[storage_versions.VersionInfo] | StorageError]]:
    """Each entry's versions (or why they could not be listed), a few listings at a time."""

    def listed(entry: Entry) -> list[storage_versions.VersionInfo] | StorageError:
        try:
            return storage_versions.versions_of(client, bucket, entry.key)
        except StorageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=_VERSION_LISTING_THREADS, thread_name_prefix="trr-versions") as pool:
        yield from zip(group, pool.map(listed, group), strict=True)


def _check_none_remain(client: S3Client, bucket: str, group: Sequence[Entry], outcome: Outcome) -> None:
    """The follow-up check of an all_versions delete: list each confirmed key
    again and note how many versions are left (0 is the proof)."""
    done = [e for e in group if e.id in outcome.confirmed]
    for entry, versions in _listed_versions(client, bucket, done):
        if isinstance(versions, StorageError):
            log.warning("erasure_check_failed", bucket=bucket, key=entry.key, error=str(versions))
            continue
        if versions:
            log.warning("versions_remain_after_delete", bucket=bucket, key=entry.key, versions=len(versions))
        outcome.checks.append((bucket, entry.key, len(versions)))


def _delete_chunk(client: S3Client, bucket: str, chunk: Sequence[_Target], outcome: Outcome) -> None:
    """One DeleteObjects request; an entry is confirmed when every object of
    it in the request is reported deleted (or already gone)."""
    by_key = {target.obj["Key"]: target.entry for target in chunk}
    outcome.requests += 1
    try:
        answer = storage.delete_objects(client, bucket, [t.obj for t in chunk])  # type: ignore[misc]
    except StorageError as exc:
        log.warning("delete_objects_failed", bucket=bucket, keys=len(chunk), error=str(exc))
        outcome.refuse([t.entry for t in chunk], str(exc), whole_call=True)
        outcome.not_erased.extend(t.intent for t in chunk)
        return
    confirmed: dict[tuple[str, str | None], str | None] = {}  # -> the delete marker placed, if any
    for item in answer.get("Deleted", ()):
        marker = item.get("DeleteMarkerVersionId") if item.get("DeleteMarker") and "VersionId" not in item else None
        confirmed[(item.get("Key", ""), item.get("VersionId"))] = marker
    for error in answer.get("Errors", ()):
        key, code = error.get("Key", ""), error.get("Code", "")
        if code in _GONE_CODES:
            confirmed[(key, error.get("VersionId"))] = None
        elif key in by_key:
            outcome.refuse([by_key[key]], f"{code}: {error.get('Message') or code}")
    for target in chunk:
        pair = (target.obj["Key"], target.obj.get("VersionId"))
        if pair in confirmed:
            outcome.erased.append((target.intent, confirmed[pair]))
        else:
            outcome.not_erased.append(target.intent)
    for target in chunk:
        entry, obj = target.entry, target.obj
        if entry.id in outcome.refused:
            continue
        if (obj["Key"], obj.get("VersionId")) in confirmed or (obj["Key"], None) in confirmed:
            outcome.confirmed.add(entry.id)
        else:
            outcome.refuse([entry], "s3: delete objects: the response did not confirm this key")


def _delete_one(client: S3Client, bucket: str, target: _Target, outcome: Outcome) -> None:
    """DeleteObject for a key that cannot travel in a DeleteObjects body."""
    entry, obj = target.entry, target.obj
    try:
        answer = storage.delete_object(client, bucket, obj["Key"], version_id=obj.get("VersionId"))
    except StorageError as exc:
        if storage.error_code(exc.__cause__ or exc) in _GONE_CODES:
            outcome.confirmed.add(entry.id)
            outcome.erased.append((target.intent, None))
            return
        outcome.refuse([entry], str(exc))
        outcome.not_erased.append(target.intent)
        return
    marker = answer.get("VersionId") if answer.get("DeleteMarker") and "VersionId" not in obj else None
    outcome.erased.append((target.intent, marker))
    if entry.id not in outcome.refused:
        outcome.confirmed.add(entry.id)


class Side:
    """The drain's second connection, opened on first use: intents are
    committed on it while the batch's transaction holds the queue's locks."""

    def __init__(self, settings: Settings, *, application_name: str) -> None:
        self._settings = settings
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            self._conn = db.connect(self._settings.database, autocommit=True,
                                    application_name=self._application_name)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


