"""S3 Inventory reports in CSV, Parquet and ORC: `sync --inventory` writes
the rows a listing would, reconcile reads them as before, and a report that
cannot be read is a one-line error, exit 1, with nothing written.

The reports are written here as S3 writes them: several data files, the
entries shuffled, other buckets' entries, older versions and delete markers
among them, keys URL-encoded in CSV (and only there)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import urllib.parse
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.orc
import pyarrow.parquet
import pytest
import structlog

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from tests.sync.helpers import put, rows
from trr_assets import cli, inventory, reconcile, sync
from trr_assets.reconcile import ReconcileOptions

REPORTS = "trr-inventory-reports"
FORMATS = ["CSV", "Parquet", "ORC"]
CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"
COLUMNAR = [("bucket", pa.string()), ("key", pa.string()), ("version_id", pa.string()), ("is_latest", pa.bool_()),
            ("is_delete_marker", pa.bool_()), ("size", pa.int64()), ("last_modified_date", pa.timestamp("ms")),
            ("e_tag", pa.string()), ("storage_class", pa.string())]


def _plant(conn: Any, s3: Any) -> list[str]:
    """Objects of two shows, keys that need URL-encoding among them, and keys sync skips."""
    keys = []
    for show in (make_show(conn), make_show(conn)):
        for name in ("a.jpg", "with space+plus.png", "ünï/日本.gif", "%41literal percent.jpg", "q?&=#.webp"):
            key = f"shows/{show}/{name}"
            put(s3, key, f"{key} body".encode(), content_type="image/test")
            keys.append(key)
    put(s3, "shows/not-a-show/x.jpg")
    put(s3, "elsewhere/outside-the-prefix.jpg")
    return keys


def _records(s3: Any) -> list[tuple[Any, ...]]:
    """(bucket, key, version, latest, marker, size, last modified, etag, class) of the bucket, as S3 reports
    them, plus entries a listing would not show."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=TEST_BUCKET):
        for item in page.get("Contents", ()):
            found.append((TEST_BUCKET, item["Key"], "v2", True, False, item["Size"],
                          item["LastModified"].astimezone(timezone.utc), item["ETag"].strip('"'), "STANDARD"))
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = found[0][1]
    found += [
        ("another-bucket", "shows/not-ours.jpg", "v1", True, False, 1, old, "e1", "STANDARD"),
        (TEST_BUCKET, first, "v1", False, False, 3, old, "older-version", "STANDARD"),
        (TEST_BUCKET, "shows/deleted-since.jpg", "v3", True, True, None, old, None, None),
    ]
    random.Random(7).shuffle(found)
    return found


def _csv(records: list[tuple[Any, ...]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for bucket, key, version, latest, marker, size, modified, etag, storage_class in records:
        writer.writerow([bucket, urllib.parse.quote_plus(key, safe="/"), version, str(latest).lower(),
                         str(marker).lower(), "" if size is None else str(size),
                         modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"), etag or "", storage_class or ""])
    return gzip.compress(text.getvalue().encode())


def _columnar(records: list[tuple[Any, ...]], file_format: str) -> bytes:
    columns = list(zip(*records, strict=True)) if records else [[] for _ in COLUMNAR]
    values = [list(c) for c in columns]
    values[6] = [m.replace(tzinfo=None) for m in values[6]]  # S3 writes UTC instants without a zone
    table = pa.table({name: pa.array(v, type=t) for (name, t), v in zip(COLUMNAR, values, strict=True)})
    out = io.BytesIO()
    if file_format == "Parquet":
        pyarrow.parquet.write_table(table, out)
    else:
        pyarrow.orc.write_table(table, out)
    return out.getvalue()


def write_report(s3: Any, file_format: str, *, files: int = 3, tamper: Any = None) -> str:
    """A report of TEST_BUCKET in ``file_format``, split into ``files`` data files; returns the manifest's URL.
    ``tamper(index, body)`` may change a data file's bytes."""
    s3.create_bucket(Bucket=REPORTS)
    records = _records(s3)
    base = f"{TEST_BUCKET}/daily/2026-11-25T01-00Z"
    listed = []
    for i in range(files):
        part = records[i::files]
        body = _csv(part) if file_format == "CSV" else _columnar(part, file_format)
        if tamper is not None:
            body = tamper(i, body)
        key = f"{TEST_BUCKET}/daily/data/part-{i}.{file_format.lower()}"
        s3.put_object(Bucket=REPORTS, Key=key, Body=body)
        listed.append({"key": key, "size": len(body), "MD5checksum": "x"})
    schema = CSV_SCHEMA if file_format == "CSV" else "message s3.inventory { ... }"
    manifest = {"sourceBucket": TEST_BUCKET, "destinationBucket": f"arn:aws:s3:::{REPORTS}",
                "version": "2016-11-30", "creationTimestamp": str(int(datetime.now(timezone.utc).timestamp() * 1000)),
                "fileFormat": file_format, "fileSchema": schema, "files": listed}
    s3.put_object(Bucket=REPORTS, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{REPORTS}/{base}/manifest.json"


def _settings(db_url: str) -> Any:
    return make_settings(db_url, s3={"list_shards": 4, "list_concurrency": 2, "head_concurrency": 4},
                         sync={"batch_size": 4})


def _clear(conn: Any) -> None:
    conn.execute("delete from core.show_assets")
    conn.execute("delete from trr_assets.delete_queue")


@pytest.mark.parametrize("file_format", FORMATS)
def test_sync_from_an_inventory_writes_the_rows_of_a_listing(conn: Any, s3: Any, db_url: str, file_format: str) -> None:
    """A report in several files, shuffled, with other buckets' entries, an older version and a delete marker,
    its keys URL-encoded in CSV: sync --inventory writes exactly the rows (and counts) a listing's sync does."""
    _plant(conn, s3)
    url = write_report(s3, file_format)
    settings = _settings(db_url)
    listed = sync.run(settings, client=s3)
    by_listing = rows(conn)
    _clear(conn)

    from_report = sync.run(settings, client=s3, inventory=url)

    assert rows(conn) == by_listing and len(by_listing) == 10
    counts = ("scanned", "inserted", "updated", "unchanged", "skipped", "failed")
    assert {k: from_report.as_dict()[k] for k in counts} == {k: listed.as_dict()[k] for k in counts}
    again = sync.run(settings, client=s3, inventory=url)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 10)


@pytest.mark.parametrize("file_format", FORMATS)
def test_reconcile_reads_each_format_as_a_listing(conn: Any, s3: Any, db_url: str, file_format: str) -> None:
    """reconcile --inventory finds, from a report in any of the three formats, what the listing finds."""
    keys = _plant(conn, s3)
    settings = _settings(db_url)
    sync.run(settings, client=s3)
    conn.execute("delete from core.show_assets where object_key = %s", (keys[0],))  # an orphaned object
    conn.execute("delete from trr_assets.delete_queue")
    url = write_report(s3, file_format)

    def findings(**options: Any) -> set[tuple[str, str]]:
        found: list[dict[str, Any]] = []
        reconcile.run(settings, ReconcileOptions(**options), sink=found.append)
        return {(f["kind"], f["key"]) for f in found}

    expected = {("orphaned_object", keys[0]), ("orphaned_object", "shows/not-a-show/x.jpg")}
    assert findings(inventory=url) == findings() == expected


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_report_is_one_line_exit_1_and_nothing_written(
    conn: Any, s3: Any, db_url: str, file_format: str, damage: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Any,
) -> None:
    """The last data file cut in half, or not in its format at all: `trr-assets sync --inventory` prints one
    line naming the file, exits 1, and writes no row (the files before it were fine)."""
    _plant(conn, s3)

    def tamper(index: int, body: bytes) -> bytes:
        if index < 2:
            return body
        return body[: len(body) // 2] if damage == "truncated" else b"PAR1 not a report at all " * 8

    url = write_report(s3, file_format, tamper=tamper)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TRR_ASSETS_S3_BUCKETS", TEST_BUCKET)
    monkeypatch.setenv("TRR_ASSETS_LOGGING_FORMAT", "json")
    saved = structlog.get_config()
    try:
        code = cli.main(["sync", "--inventory", url])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "inventory file" in line]
    assert code == 1
    assert len(errors) == 1 and "Traceback" not in err
    assert f"part-2.{file_format.lower()}" in errors[0] and "not a readable" in errors[0]
    assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0


def test_an_inventory_of_another_bucket_than_asked_is_a_usage_error(conn: Any, s3: Any, db_url: str) -> None:
    _plant(conn, s3)
    url = write_report(s3, "CSV", files=1)
    with pytest.raises(inventory.UsageError, match="sync: the inventory report is of bucket"):
        sync.run(_settings(db_url), client=s3, inventory=url, buckets=["some-other-bucket"])
