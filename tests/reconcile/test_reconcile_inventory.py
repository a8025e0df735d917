"""reconcile --inventory: an S3 Inventory report (CSV, gzip) instead of a listing."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.reconcile.helpers import add_row, keys_of, object_keys, plant, put, row_keys, run
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import errors
from trr_assets.errors import UsageError

INVENTORY_BUCKET = "trr-inventory-reports"
SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"


def _csv_gz(records: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(records)
    return gzip.compress(text.getvalue().encode())


def build_inventory(
    s3: Any, *, extra: list[list[str]] | None = None, created: datetime | None = None, files: int = 2
) -> str:
    """Write an inventory report of TEST_BUCKET as S3 does (shuffled, split, keys URL-encoded); return its URL."""
    s3.create_bucket(Bucket=INVENTORY_BUCKET)
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=TEST_BUCKET):
        for item in page.get("Contents", ()):
            records.append([
                TEST_BUCKET,
                urllib.parse.quote_plus(item["Key"], safe="/"),
                str(item["Size"]),
                item["LastModified"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                item["ETag"].strip('"'),
                "STANDARD",
            ])
    records.extend(extra or [])
    random.Random(7).shuffle(records)
    base = f"{TEST_BUCKET}/daily/2026-11-25T01-00Z"
    file_keys = []
    for i in range(files):
        key = f"{TEST_BUCKET}/daily/data/part-{i}.csv.gz"
        s3.put_object(Bucket=INVENTORY_BUCKET, Key=key, Body=_csv_gz(records[i::files]))
        file_keys.append({"key": key, "size": 1, "MD5checksum": "x"})
    created = created or datetime.now(timezone.utc)
    manifest = {
        "sourceBucket": TEST_BUCKET,
        "destinationBucket": f"arn:aws:s3:::{INVENTORY_BUCKET}",
        "version": "2016-11-30",
        "creationTimestamp": str(int(created.timestamp() * 1000)),
        "fileFormat": "CSV",
        "fileSchema": SCHEMA,
        "files": file_keys,
    }
    s3.put_object(Bucket=INVENTORY_BUCKET, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{INVENTORY_BUCKET}/{base}/manifest.json"


def _comparable(findings: list[dict]) -> set[tuple]:
    return {(f["kind"], f["key"], f.get("size"), f.get("etag"), f.get("asset_id"), f["action"]) for f in findings}


def test_inventory_gives_the_same_findings_as_the_listing(conn, s3, db_url):
    """A shuffled, split, URL-encoded report yields exactly the findings and counts of a listing."""
    p = plant(conn, s3)
    put(s3, "elsewhere/outside-the-prefix.jpg")
    url = build_inventory(
        s3, extra=[["another-bucket", "shows/not-ours.jpg", "1", "2026-01-01T00:00:00.000Z", "e", "STANDARD"]]
    )
    settings = make_settings(db_url)

    listed, listed_summary = run(settings)
    from_report, report_summary = run(settings, inventory=url)

    assert _comparable(from_report) == _comparable(listed)
    assert keys_of(from_report, "orphaned_object") == set(p.orphaned_objects)
    assert any(" " in k and "+" in k for k in p.in_sync)  # the report's URL encoding was undone
    names = ("objects_scanned", "rows_scanned", "orphaned_objects", "orphaned_rows", "mismatched",
             "pending_deletes", "failed_deletes")
    assert {n: getattr(report_summary, n) for n in names} == {n: getattr(listed_summary, n) for n in names}
    assert report_summary.source == "inventory" and report_summary.buckets == (TEST_BUCKET,)


def test_inventory_judges_grace_from_the_report_date(conn, s3, db_url):
    """A row made after the report was taken is not an orphan of that report, whatever the grace."""
    show = plant(conn, s3).show_id
    url = build_inventory(s3, created=datetime.now(timezone.utc) - timedelta(hours=6))
    add_row(conn, show, f"shows/{show}/uploaded-after-the-report.jpg", size=1, etag="e",
            updated_at=datetime.now(timezone.utc) - timedelta(hours=1))

    findings, summary = run(make_settings(db_url), inventory=url, grace_seconds=600)

    assert f"shows/{show}/uploaded-after-the-report.jpg" not in keys_of(findings, "orphaned_row")
    assert summary.skipped_recent >= 1


def test_inventory_repair_rechecks_each_candidate_live(conn, s3, db_url):
    """A day-old report lists an object since deleted: repair HEADs it and skips it instead of acting."""
    show = plant(conn, s3).show_id
    gone = f"shows/{show}/orphan.jpg"
    url = build_inventory(s3)
    s3.delete_object(Bucket=TEST_BUCKET, Key=gone)  # after the report was taken
    settings = make_settings(db_url, reconcile={"orphaned_objects": "quarantine", "max_delete_fraction": 1.0})

    findings, _ = run(settings, inventory=url, repair=True)

    by_key = {f["key"]: f for f in findings if f["kind"] == "orphaned_object"}
    assert (by_key[gone]["action"], by_key[gone]["reason"]) == ("skipped", "gone")
    assert by_key["shows/not-a-show/stray.jpg"]["action"] == "quarantined"
    assert "quarantine/" + gone not in object_keys(s3)


def test_inventory_of_another_bucket_is_a_usage_error(conn, s3, db_url):
    """--bucket that is not the report's source bucket is refused before anything runs (exit 2)."""
    url = build_inventory(s3)
    with pytest.raises(UsageError):
        run(make_settings(db_url), inventory=url, buckets=["some-other-bucket"])


def test_a_report_in_another_format_is_refused(conn, s3, db_url):
    """CSV, Parquet and ORC reports are read; a manifest of any other format is a clear usage error."""
    s3.create_bucket(Bucket=INVENTORY_BUCKET)
    manifest = {"sourceBucket": TEST_BUCKET, "fileFormat": "JSON", "fileSchema": "x", "files": [{"key": "x"}]}
    s3.put_object(Bucket=INVENTORY_BUCKET, Key="m/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(UsageError, match="CSV, Parquet or ORC are supported, not JSON"):
        run(make_settings(db_url), inventory=f"s3://{INVENTORY_BUCKET}/m/manifest.json")


def test_unreadable_report_file_refuses_repair(conn, s3, db_url):
    """A report file that is not gzip fails closed: repair refused (exit 4), nothing changed."""
    plant(conn, s3)
    url = build_inventory(s3)
    manifest = json.loads(s3.get_object(Bucket=INVENTORY_BUCKET, Key=url.split("/", 3)[3])["Body"].read())
    s3.put_object(Bucket=INVENTORY_BUCKET, Key=manifest["files"][1]["key"], Body=b"not gzip at all")
    settings = make_settings(db_url, reconcile={"orphaned_rows": "delete", "max_delete_fraction": 1.0})
    before = row_keys(conn)
    with pytest.raises(errors.ReconcileRefused, match="not a readable gzip CSV report"):
        run(settings, inventory=url, repair=True)
    assert row_keys(conn) == before
