"""S3 Inventory reports, read instead of a listing: by reconcile
(``--inventory``) and by sync (``--inventory``, to bootstrap an import).

A report is a ``manifest.json`` naming its data files, all in one format:
CSV (gzip, no header, columns named by the manifest's ``fileSchema``, keys
URL-encoded), Apache Parquet or Apache ORC (columns named in the file:
``bucket``, ``key``, ``size``, ``last_modified_date``, ``e_tag``, ... keys
as they are). Parquet and ORC are read with pyarrow (the ``inventory``
extra). Only current objects count, as in a listing (a versioned report's
older versions and delete markers are left out), of the manifest's source
bucket, under the prefix asked for.

The report is unsorted and may be large: it is COPYed into a session
temporary table, and PostgreSQL sorts it (``inventory_objects``). A data
file that cannot be read (truncated, not in its format, a required column
missing) is a one-line ``StorageError`` raised while loading, before the
caller has written anything.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import tempfile
import urllib.parse
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

import psycopg
import structlog

from trr_assets import db, storage
from trr_assets.errors import StorageError, UsageError
from trr_assets.keys import KeyRange
from trr_assets.storage import ObjectInfo, S3Client

if TYPE_CHECKING:
    from botocore.response import StreamingBody

log = structlog.get_logger()

FORMATS = ("CSV", "PARQUET", "ORC")
_CSV_REQUIRED = ("Key", "Size", "LastModifiedDate", "ETag")
# The columns of a Parquet or ORC report, by the names S3 gives them.
_COLUMNAR_REQUIRED = ("key", "size", "last_modified_date", "e_tag")
_COLUMNAR_FILTERS = ("bucket", "is_latest", "is_delete_marker")
_BATCH_ROWS = 65536

Entry = tuple[str, int, str, "str | datetime"]  # (key, size, etag, last modified)


@dataclass(frozen=True)
class InventoryManifest:
    """What ``manifest.json`` of an S3 Inventory report says."""

    url: str
    source_bucket: str
    files_bucket: str
    files: tuple[str, ...]
    columns: tuple[str, ...]  # a CSV report's columns (fileSchema); empty for Parquet and ORC
    created_at: datetime | None
    file_format: str = "CSV"  # one of FORMATS


def parse_s3_url(url: str, *, command: str = "reconcile") -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/(.+)", url)
    if not match:
        raise UsageError(f"{command}: --inventory must be s3://BUCKET/PATH/manifest.json, got {url!r}")
    return match.group(1), match.group(2)


def read_manifest(client: S3Client, url: str, *, command: str = "reconcile") -> InventoryManifest:
    """Fetch and check an S3 Inventory ``manifest.json``."""
    bucket, key = parse_s3_url(url, command=command)
    body = storage.get_object_bytes(client, bucket, key, action="read inventory manifest")
    return parse_manifest(body, url, bucket, command=command)


def parse_manifest(body: bytes, url: str, bucket: str, *, command: str = "reconcile") -> InventoryManifest:
    """The manifest in ``body`` (fetched from ``url``, in ``bucket``), checked."""
    try:
        data = json.loads(body)
    except ValueError:
        raise UsageError(f"{command}: {url} is not JSON, so not an S3 Inventory manifest") from None
    if not isinstance(data, dict) or not data.get("files") or not data.get("sourceBucket"):
        raise UsageError(f"{command}: {url} is not an S3 Inventory manifest (no sourceBucket or files)")
    file_format = str(data.get("fileFormat", "CSV")).upper()
    if file_format not in FORMATS:
        raise UsageError(f"{command}: {url}: inventory reports in CSV, Parquet or ORC are supported, "
                         f"not {data['fileFormat']}")
    columns: tuple[str, ...] = ()
    if file_format == "CSV":
        columns = tuple(c.strip() for c in str(data.get("fileSchema", "")).split(","))
        missing = [c for c in _CSV_REQUIRED if c not in columns]
        if missing:
            raise UsageError(f"{command}: {url}: the report has no {missing[0]} column (fileSchema)")
    try:
        files = tuple(str(f["key"]) for f in data["files"])
        created = data.get("creationTimestamp")
        created_at = datetime.fromtimestamp(int(created) / 1000, timezone.utc) if created else None
    except (TypeError, KeyError, ValueError, OverflowError):
        raise UsageError(f"{command}: {url} is not an S3 Inventory manifest (files or creationTimestamp)") from None
    destination = str(data.get("destinationBucket") or "")
    return InventoryManifest(
        url=url,
        source_bucket=str(data["sourceBucket"]),
        files_bucket=destination.rsplit(":", 1)[-1] if destination else bucket,
        files=files,
        columns=columns,
        created_at=created_at,
        file_format=file_format,
    )


def entries(client: S3Client, manifest: InventoryManifest, file_key: str, prefix: str) -> Iterator[Entry]:
    """(key, size, etag, last modified) of the current objects under ``prefix`` in one data file."""
    action = f"read inventory file {file_key}"
    if manifest.file_format == "CSV":
        body = storage.get_object_body(client, manifest.files_bucket, file_key, action=action)
        yield from _csv_entries(body, manifest, file_key, prefix)
        return
    with tempfile.TemporaryFile(prefix="trr-inventory-") as spool:  # both formats need to seek
        body = storage.get_object_body(client, manifest.files_bucket, file_key, action=action)
        with storage.wrap_errors(action, manifest.files_bucket):
            shutil.copyfileobj(body, spool, 1 << 20)
        spool.seek(0)
        yield from _columnar_entries(spool, manifest, file_key, prefix)


def _csv_entries(
    body: IO[bytes] | StreamingBody, manifest: InventoryManifest, file_key: str, prefix: str
) -> Iterator[Entry]:
    at = {name: i for i, name in enumerate(manifest.columns)}
    key_at, size_at, date_at, etag_at = (at[c] for c in _CSV_REQUIRED)
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
            key = urllib.parse.unquote_plus(record[key_at])  # a CSV report URL-encodes keys
            if not key.startswith(prefix):
                continue
            size = record[size_at]
            if not record[date_at]:
                raise ValueError(f"no LastModifiedDate for {key!r}")
            yield key, int(size) if size else 0, storage.strip_etag(record[etag_at]), record[date_at]
    except (OSError, EOFError, zlib.error, csv.Error, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise StorageError(f"s3: inventory file {file_key} is not a readable gzip CSV report ({_short(exc)})") from exc


def _columnar_entries(spool: IO[bytes], manifest: InventoryManifest, file_key: str, prefix: str) -> Iterator[Entry]:
    kind = "Parquet" if manifest.file_format == "PARQUET" else "ORC"
    try:
        import pyarrow  # type: ignore[import-untyped]
    except ImportError:
        raise StorageError(f"s3: inventory file {file_key}: reading {kind} reports needs pyarrow "
                           f"(pip install 'trr-assets[inventory]')") from None
    try:
        for batch in _batches(spool, manifest.file_format, file_key):
            columns = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
            buckets = columns.get("bucket")
            latest = columns.get("is_latest")
            markers = columns.get("is_delete_marker")
            keys, sizes, dates, etags = (columns[c] for c in _COLUMNAR_REQUIRED)
            for i, key in enumerate(keys):
                if buckets is not None and buckets[i] != manifest.source_bucket:
                    continue
                if (latest is not None and latest[i] is False) or (markers is not None and markers[i]):
                    continue
                if key is None or not key.startswith(prefix):
                    continue
                date = dates[i]
                if not isinstance(date, datetime):
                    raise ValueError(f"no last_modified_date for {key!r}")
                if date.tzinfo is None:  # S3 writes UTC instants without a zone
                    date = date.replace(tzinfo=timezone.utc)
                yield key, int(sizes[i] or 0), storage.strip_etag(etags[i]), date
    except (pyarrow.ArrowException, OSError, ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"s3: inventory file {file_key} is not a readable {kind} report ({_short(exc)})") from exc


def _batches(spool: IO[bytes], file_format: str, file_key: str) -> Iterator[Any]:
    """The file's record batches, only the columns inventory reads."""
    if file_format == "PARQUET":
        import pyarrow.parquet  # type: ignore[import-untyped]

        parquet = pyarrow.parquet.ParquetFile(spool)
        wanted = _wanted(parquet.schema_arrow.names, file_key)
        yield from parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted)
        return
    import pyarrow.orc  # type: ignore[import-untyped]

    orc = pyarrow.orc.ORCFile(spool)
    wanted = _wanted(orc.schema.names, file_key)
    for stripe in range(orc.nstripes):
        yield orc.read_stripe(stripe, columns=wanted)


def _wanted(names: list[str], file_key: str) -> list[str]:
    missing = [c for c in _COLUMNAR_REQUIRED if c not in names]
    if missing:
        raise KeyError(f"no {missing[0]} column in {file_key}")
    return [*_COLUMNAR_REQUIRED, *(c for c in _COLUMNAR_FILTERS if c in names)]


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_inventory(conn: psycopg.Connection[Any], client: S3Client, manifest: InventoryManifest, prefix: str) -> int:
    """COPY the report into a session temp table; return how many entries it holds.

    One transaction: a file that cannot be read leaves the table empty.
    """
    loaded = 0
    with db.wrap_errors("load the inventory report"), conn.transaction():
        conn.execute(db.query("reconcile_inventory_create"))
        with conn.cursor().copy(db.query("reconcile_inventory_copy")) as copy:
            for file_key in manifest.files:
                for entry in entries(client, manifest, file_key, prefix):
                    copy.write_row(entry)
                    loaded += 1
    log.info("inventory_loaded", manifest=manifest.url, format=manifest.file_format, entries=loaded)
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
