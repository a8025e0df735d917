"""The S3 side of a drain's batch: delete the entries' objects (every
version of each with ``deletes.all_versions``) and read which S3 confirmed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from trr_assets import storage
from trr_assets.errors import StorageError
from trr_assets.storage import S3Client

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

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
    """A queued deletion, as a drain takes it."""

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


def delete_entries(client: S3Client, entries: Sequence[Entry], *, all_versions: bool) -> Outcome:
    """Delete the entries' objects, per bucket, and say which S3 confirmed."""
    outcome = Outcome()
    by_bucket: dict[str, list[Entry]] = {}
    for entry in entries:
        by_bucket.setdefault(entry.bucket, []).append(entry)
    for bucket, group in by_bucket.items():
        targets = _targets(client, bucket, group, outcome) if all_versions else _current(group)
        pending = {e.id for e, _ in targets}
        # Entries with nothing to delete (no version left) are done already.
        outcome.confirmed.update(e.id for e in group if e.id not in pending and e.id not in outcome.refused)
        safe = [t for t in targets if not _XML_UNSAFE.search(t[1]["Key"])]
        unsafe = [t for t in targets if _XML_UNSAFE.search(t[1]["Key"])]
        for start in range(0, len(safe), MAX_KEYS_PER_REQUEST):
            _delete_chunk(client, bucket, safe[start : start + MAX_KEYS_PER_REQUEST], outcome)
        for target in unsafe:
            _delete_one(client, bucket, target, outcome)
    return outcome


def _current(group: Sequence[Entry]) -> list[tuple[Entry, ObjectIdentifierTypeDef]]:
    """Each entry's key as it is now (an unversioned delete)."""
    return [(e, {"Key": e.key}) for e in group]


def _targets(
    client: S3Client, bucket: str, group: Sequence[Entry], outcome: Outcome
) -> list[tuple[Entry, ObjectIdentifierTypeDef]]:
    """Every version and delete marker of each entry's key (``all_versions``).

    One listing per key, a few at a time: the batch's locks are held
    meanwhile, so the listings should not take longer than they must.
    """

    def listed(entry: Entry) -> list[str] | StorageError:
        try:
            return list(storage.object_versions(client, bucket, entry.key))
        except StorageError as exc:
            return exc

    targets: list[tuple[Entry, ObjectIdentifierTypeDef]] = []
    with ThreadPoolExecutor(max_workers=_VERSION_LISTING_THREADS, thread_name_prefix="trr-versions") as pool:
        for entry, versions in zip(group, pool.map(listed, group), strict=True):
            if isinstance(versions, StorageError):
                log.warning("list_object_versions_failed", bucket=bucket, key=entry.key, error=str(versions))
                outcome.refuse([entry], str(versions), whole_call=True)
                continue
            targets.extend((entry, {"Key": entry.key, "VersionId": version}) for version in versions)
    return targets


def _delete_chunk(
    client: S3Client, bucket: str, chunk: Sequence[tuple[Entry, ObjectIdentifierTypeDef]], outcome: Outcome
) -> None:
    """One DeleteObjects request; an entry is confirmed when every object of
    it in the request is reported deleted (or already gone)."""
    by_key = {target[1]["Key"]: target[0] for target in chunk}
    outcome.requests += 1
    try:
        answer = storage.delete_objects(client, bucket, [obj for _, obj in chunk])
    except StorageError as exc:
        log.warning("delete_objects_failed", bucket=bucket, keys=len(chunk), error=str(exc))
        outcome.refuse([entry for entry, _ in chunk], str(exc), whole_call=True)
        return
    confirmed: set[tuple[str, str | None]] = set()
    for item in answer.get("Deleted", ()):
        confirmed.add((item.get("Key", ""), item.get("VersionId")))
    for error in answer.get("Errors", ()):
        key, code = error.get("Key", ""), error.get("Code", "")
        if code in _GONE_CODES:
            confirmed.add((key, error.get("VersionId")))
        elif key in by_key:
            outcome.refuse([by_key[key]], f"{code}: {error.get('Message') or code}")
    for entry, obj in chunk:
        if entry.id in outcome.refused:
            continue
        if (obj["Key"], obj.get("VersionId")) in confirmed or (obj["Key"], None) in confirmed:
            outcome.confirmed.add(entry.id)
        else:
            outcome.refuse([entry], "s3: delete objects: the response did not confirm this key")


def _delete_one(client: S3Client, bucket: str, target: tuple[Entry, ObjectIdentifierTypeDef], outcome: Outcome) -> None:
    """DeleteObject for a key that cannot travel in a DeleteObjects body."""
    entry, obj = target
    try:
        storage.delete_object(client, bucket, obj["Key"], version_id=obj.get("VersionId"))
    except StorageError as exc:
        if storage.error_code(exc.__cause__ or exc) in _GONE_CODES:
            outcome.confirmed.add(entry.id)
            return
        outcome.refuse([entry], str(exc))
        return
    if entry.id not in outcome.refused:
        outcome.confirmed.add(entry.id)
