"""S3 calls on object versions, delete markers and multipart uploads.

Part of the storage layer (see ``storage``): every such call trr-assets makes
is here, every botocore error leaves as ``StorageError``. Listings are
generators of pages, so memory holds a page whatever the bucket's size.
"""

from __future__ import annotations

import functools
import heapq
import operator
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import botocore.exceptions
import structlog

from trr_assets.errors import StorageError
from trr_assets.storage.listing import clip, just_below, narrowed, strip_etag
from trr_assets.storage.wrapping import error_code, wrap_errors, wrapped

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a test extra: annotations only
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = structlog.get_logger()

# DeleteObjects takes at most this many keys (or versions) per request.
MAX_KEYS_PER_REQUEST = 1000
_GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
_NO_UPLOAD_CODES = frozenset({"NoSuchUpload", "404"})


class VersionInfo(NamedTuple):
    """One listed version or delete marker (``size`` 0 and ``etag`` "" for a marker)."""

    key: str
    version_id: str
    is_latest: bool
    is_delete_marker: bool
    size: int
    etag: str
    last_modified: datetime


# A VersionInfo built by tuple.__new__ in C (NamedTuple's own __new__ is a
# Python function): one per listed version.
version_info: Callable[[tuple[str, str, bool, bool, int, str, datetime]], VersionInfo] = functools.partial(
    tuple.__new__, VersionInfo
)


class UploadInfo(NamedTuple):
    """One multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


class Deleted(NamedTuple):
    """A version (or delete marker) S3 confirmed removed, or found already gone."""

    key: str
    version_id: str | None
    marker_version_id: str | None  # a plain delete on a versioned bucket: the marker S3 placed


class Refused(NamedTuple):
    key: str
    version_id: str | None
    error: str


_key = operator.itemgetter(0)


def list_versions(
    client: S3Client,
    bucket: str,
    *,
    prefix: str = "",
    start_at: str | None = None,
    stop_before: str | None = None,
    page_size: int = 1000,
) -> Iterator[list[VersionInfo]]:
    """The versions and delete markers of ``bucket`` under ``prefix`` with
    ``start_at <= key < stop_before``, a page at a time.

    In key order; within a key, its versions (newest first), then its delete
    markers. The versions of one key may straddle two pages. A failed page raises
    ``StorageError``: a listing is never silently cut short. Ranges are
    those of ``keys.shard_ranges``, so a shard's versions list the way its
    objects do.
    """
    prefix, start_at, stop_before = narrowed(prefix, start_at, stop_before)
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if start_at is not None and start_at > prefix:
        # KeyMarker is exclusive (of every version of that key): start just
        # below start_at, as storage.list_objects does with StartAfter.
        params["KeyMarker"] = just_below(start_at)
    while True:
        with wrap_errors("list object versions", bucket):
            page = client.list_object_versions(**params)
        # One comprehension for the page, each VersionInfo made in C (as
        # storage.object_info is): a Python frame per version would cost
        # more than the parsing.
        versions = [
            version_info((v["Key"], v.get("VersionId", "null"), v.get("IsLatest", False), False, v.get("Size", 0),
                          v.get("ETag", "").strip('"'), v["LastModified"]))
            for v in page.get("Versions", ())
        ]
        markers = page.get("DeleteMarkers")
        if markers:
            marks = [
                version_info((m["Key"], m.get("VersionId", "null"), m.get("IsLatest", False), True, 0, "",
                              m["LastModified"]))
                for m in markers
            ]
            # Both lists are in key order: merged, a key's versions come
            # before its delete markers.
            versions = list(heapq.merge(versions, marks, key=_key))
        versions, ended = clip(versions, start_at, stop_before)
        if versions:
            yield versions
        if ended or not page.get("IsTruncated"):
            return
        params["KeyMarker"] = page["NextKeyMarker"]
        params["VersionIdMarker"] = page["NextVersionIdMarker"]


def versions_of(client: S3Client, bucket: str, key: str) -> list[VersionInfo]:
    """Every version and delete marker of exactly ``key`` (versions, then markers)."""
    found: list[VersionInfo] = []
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        with wrap_errors("list object versions", bucket):
            page = client.list_object_versions(**params)
        for item in page.get("Versions", ()):
            if item["Key"] == key:
                found.append(VersionInfo(key, item.get("VersionId") or "null", bool(item.get("IsLatest")), False,
                                         item.get("Size") or 0, strip_etag(item.get("ETag")),
                                         item["LastModified"]))
        for marker in page.get("DeleteMarkers", ()):
            if marker["Key"] == key:
                found.append(VersionInfo(key, marker.get("VersionId") or "null", bool(marker.get("IsLatest")), True,
                                         0, "", marker["LastModified"]))
        # Listings are in key order and ``key`` sorts first among the keys it
        # prefixes: once the listing has moved past it, it is done.
        if not page.get("IsTruncated") or page.get("NextKeyMarker") != key:
            break
        params["KeyMarker"] = page["NextKeyMarker"]
        params["VersionIdMarker"] = page["NextVersionIdMarker"]
    return found


def delete_versions(
    client: S3Client, bucket: str, targets: Sequence[tuple[str, str | None]]
) -> tuple[list[Deleted], list[Refused]]:
    """Delete ``(key, version_id)`` pairs (``None``: the current object, which
    on a versioned bucket places a delete marker), 1,000 per request.

    Returns what S3 confirmed (a version already gone counts as deleted) and
    what it refused, with why. A whole request that fails refuses all of it.
    """
    deleted: list[Deleted] = []
    refused: list[Refused] = []
    for start in range(0, len(targets), MAX_KEYS_PER_REQUEST):
        chunk = targets[start : start + MAX_KEYS_PER_REQUEST]
        objects: list[ObjectIdentifierTypeDef] = [
            {"Key": k, "VersionId": v} if v is not None else {"Key": k} for k, v in chunk
        ]
        try:
            with wrap_errors("delete objects", bucket):
                answer = client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": False})
        except StorageError as exc:
            refused.extend(Refused(k, v, str(exc)) for k, v in chunk)
            continue
        confirmed: dict[tuple[str, str | None], str | None] = {}
        for item in answer.get("Deleted", ()):
            marker = item.get("DeleteMarkerVersionId") if item.get("DeleteMarker") else None
            confirmed[(item.get("Key", ""), item.get("VersionId"))] = marker
        errors: dict[tuple[str, str | None], str] = {}
        for error in answer.get("Errors", ()):
            pair = (error.get("Key", ""), error.get("VersionId"))
            if error.get("Code") in _GONE_CODES:
                confirmed[pair] = None
            else:
                errors[pair] = f"{error.get('Code', '')}: {error.get('Message') or error.get('Code', '')}"
        for k, v in chunk:
            if (k, v) in confirmed:
                deleted.append(Deleted(k, v, None if v is not None else confirmed[(k, v)]))
            else:
                refused.append(Refused(k, v, errors.get((k, v), "s3: delete objects: not confirmed")))
    return deleted, refused


def version_exists(client: S3Client, bucket: str, key: str, version_id: str) -> bool:
    """Whether this version (or delete marker) of ``key`` is still listed."""
    return any(v.version_id == version_id for v in versions_of(client, bucket, key))


# --- multipart uploads -----------------------------------------------------------


def list_uploads(client: S3Client, bucket: str, *, prefix: str = "") -> Iterator[list[UploadInfo]]:
    """The incomplete multipart uploads under ``prefix``, a page at a time."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        with wrap_errors("list multipart uploads", bucket):
            page = client.list_multipart_uploads(**params)
        uploads = [UploadInfo(u["Key"], u["UploadId"], u["Initiated"]) for u in page.get("Uploads", ())]
        if uploads:
            yield uploads
        if not page.get("IsTruncated"):
            return
        params["KeyMarker"] = page.get("NextKeyMarker", "")
        params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")


def upload_bytes(client: S3Client, bucket: str, key: str, upload_id: str) -> int | None:
    """The bytes of an upload's parts so far (ListParts); None when the
    upload is gone (completed or aborted since it was listed)."""
    total: int = 0
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    while True:
        try:
            page = client.list_parts(**params)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if error_code(exc) in _NO_UPLOAD_CODES:
                return None
            raise wrapped(exc, "list parts", bucket) from exc
        total += sum(int(part.get("Size", 0)) for part in page.get("Parts", ()))
        if not page.get("IsTruncated"):
            return total
        params["PartNumberMarker"] = page["NextPartNumberMarker"]


def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> bool:
    """Abort a multipart upload (its parts are deleted): True; False when it
    was already gone (aborted, or completed since it was listed)."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        if error_code(exc) in _NO_UPLOAD_CODES:
            return False
        raise wrapped(exc, "abort multipart upload", bucket) from exc
    return True


def upload_exists(client: S3Client, bucket: str, key: str, upload_id: str) -> bool:
    return upload_bytes(client, bucket, key, upload_id) is not None
