"""S3 Inventory reports: reconcile reads one instead of listing (``--inventory``).

Only CSV reports. The report is unsorted and may be large: it is COPYed into
a session temp table and PostgreSQL sorts it (``inventory_objects``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import urllib.parse
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
import structlog

from trr_assets import db, storage
from trr_assets.errors import StorageError, UsageError, one_line
from trr_assets.keys import KeyRange
from trr_assets.records import ObjectInfo
from trr_assets.storage import S3Client

log = structlog.get_logger()

_REQUIRED_COLUMNS = ("Key", "Size", "LastModifiedDate", "ETag")


@dataclass(frozen=True)
class InventoryManifest:
    """What ``manifest.json`` of an S3 Inventory report says."""

    url: str
    source_bucket: str
    files_bucket: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    created_at: datetime | None


def parse_s3_url(url: str) -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/(.+)", url)
    if not match:
        raise UsageError(f"reconcile: --inventory must be s3://BUCKET/PATH/manifest.json, got {url!r}")
    return match.group(1), match.group(2)


def read_manifest(client: S3Client, url: str) -> InventoryManifest:
    """Fetch and check an S3 Inventory ``manifest.json`` (CSV reports only)."""
    bucket, key = parse_s3_url(url)
    with storage.wrap_errors("read inventory manifest", bucket):
        body = storage.get_object_body(client, bucket, key, action="read inventory manifest").read()
    try:
        data = json.loads(body)
    except ValueError:
        raise UsageError(f"reconcile: {url} is not JSON, so not an S3 Inventory manifest") from None
    if not isinstance(data, dict) or not data.get("files") or not data.get("sourceBucket"):
        raise UsageError(f"reconcile: {url} is not an S3 Inventory manifest (no sourceBucket or files)")
    if str(data.get("fileFormat", "CSV")).upper() != "CSV":
        raise UsageError(f"reconcile: {url}: only CSV inventory reports are supported, not {data['fileFormat']}")
    columns = tuple(c.strip() for c in str(data.get("fileSchema", "")).split(","))
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UsageError(f"reconcile: {url}: the report has no {missing[0]} column (fileSchema)")
    destination = str(data.get("destinationBucket") or "")
    created = data.get("creationTimestamp")
    return InventoryManifest(
        url=url,
        source_bucket=str(data["sourceBucket"]),
        files_bucket=destination.rsplit(":", 1)[-1] if destination else bucket,
        files=tuple(str(f["key"]) for f in data["files"]),
        columns=columns,
        created_at=datetime.fromtimestamp(int(created) / 1000, timezone.utc) if created else None,
    )


def _inventory_rows(
    client: S3Client, manifest: InventoryManifest, file_key: str, prefix: str
) -> Iterator[tuple[str, int, str, str]]:
    """(key, size, etag, last modified) of current objects under ``prefix`` in one report file."""
    at = {name: i for i, name in enumerate(manifest.columns)}
    action = f"read inventory file {file_key}"
    with storage.wrap_errors(action, manifest.files_bucket):
        body = storage.get_object_body(client, manifest.files_bucket, file_key, action=action)
        try:
            text = io.TextIOWrapper(gzip.GzipFile(fileobj=body), encoding="utf-8", newline="")
            for record in csv.reader(text):
                if not record:
                    continue
                if "Bucket" in at and record[at["Bucket"]] != manifest.source_bucket:
                    continue
                # Versioned reports list every version: keep what a listing shows.
                if "IsLatest" in at and record[at["IsLatest"]].lower() != "true":
                    continue
                if "IsDeleteMarker" in at and record[at["IsDeleteMarker"]].lower() == "true":
                    continue
                key = urllib.parse.unquote_plus(record[at["Key"]])  # the report URL-encodes keys
                if not key.startswith(prefix):
                    continue
                size = record[at["Size"]]
                yield key, int(size) if size else 0, storage.strip_etag(record[at["ETag"]]), record[
                    at["LastModifiedDate"]
                ]
        except (OSError, EOFError, zlib.error, csv.Error, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise StorageError(
                f"s3: inventory file {file_key} is not a readable gzip CSV report ({one_line(exc)})"
            ) from exc


def load_inventory(
    conn: psycopg.Connection[Any], client: S3Client, manifest: InventoryManifest, prefix: str
) -> int:
    """COPY the report into a session temp table; return how many entries it holds.

    The report is unsorted and may be large: PostgreSQL sorts it (see the
    ``reconcile_inventory_objects`` query), not this process.
    """
    loaded = 0
    with db.wrap_errors("load the inventory report"), conn.transaction():
        conn.execute(db.query("reconcile_inventory_create"))
        with conn.cursor().copy(db.query("reconcile_inventory_copy")) as copy:
            for file_key in manifest.files:
                for row in _inventory_rows(client, manifest, file_key, prefix):
                    copy.write_row(row)
                    loaded += 1
    log.info("reconcile_inventory_loaded", manifest=manifest.url, entries=loaded)
    return loaded


def inventory_objects(conn: psycopg.Connection[Any], key_range: KeyRange) -> Iterator[ObjectInfo]:
    """The loaded report in key order (server-side cursor; inside a transaction)."""
    cursor = conn.cursor(name=f"trr_inventory_{uuid.uuid4().hex[:12]}")
    cursor.itersize = 5000
    params = {"start_at": key_range.start_at, "stop_before": key_range.stop_before}
    with db.wrap_errors("read the inventory report"):
        cursor.execute(db.query("reconcile_inventory_objects"), params)
        for key, size, etag, last_modified in cursor:
            yield ObjectInfo(key, size or 0, etag or "", last_modified)
    cursor.close()
