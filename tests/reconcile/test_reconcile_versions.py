"""reconcile --versions: versions, delete markers and multipart uploads of a versioned bucket (moto)."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.reconcile.helpers import add_row, enqueue, put, run, write_config
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import cli, db, erasures, errors, reconcile
from trr_assets.errors import StorageError
from trr_assets.storage import versions as storage_versions

LOOSE = {"max_delete_fraction": 1.0, "incomplete_upload_days": 0}
REPAIR_ALL = {**LOOSE, "orphaned_versions": "delete", "lone_delete_markers": "delete", "incomplete_uploads": "abort"}


@pytest.fixture
def versioned(s3: Any) -> Any:
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


@dataclass
class Bucket:
    """A versioned bucket with one key of each kind (see ``plant``)."""

    live: str = ""  # a row; a noncurrent version under the current one
    row_marker: str = ""  # a row; its object deleted (a marker over a version)
    orphan: str = ""  # no row: two versions under a delete marker
    lone: str = ""  # no row: a delete marker alone
    extra: str = ""  # no row, a current object (the plain reconcile's orphan) over a noncurrent version
    queued: str = ""  # no row, a queued deletion: a version under a marker
    uploads: dict[str, int] = field(default_factory=dict)  # upload id -> bytes of its parts
    orphan_bytes: int = 0
    noncurrent_bytes: int = 0

    def untouchable(self) -> list[str]:
        return [self.live, self.row_marker, self.extra, self.queued]


# moto drops the first version listed after a KeyMarker given alone (S3 does
# not). Of the 16 shards, those of keys starting "shows/9" and "shows/f" are
# the ones not listed as an exact prefix, so they start with a KeyMarker:
# planted keys stay out of them.
SHOW = uuid.UUID("12345678-0000-4000-8000-000000000000")


def plant(conn: Any, s3: Any) -> Bucket:
    conn.execute("insert into core.shows (id, title) values (%s, 'a show')", (SHOW,))
    show = SHOW
    b = Bucket(*(f"shows/{show}/{name}" for name in ("live", "row-marker", "orphan", "lone", "extra", "queued")))
    put(s3, b.live, b"1" * 10)
    etag = put(s3, b.live, b"2" * 20)
    add_row(conn, show, b.live, size=20, etag=etag)
    put(s3, b.row_marker, b"3" * 30)
    add_row(conn, show, b.row_marker, size=30, etag="gone")
    s3.delete_object(Bucket=TEST_BUCKET, Key=b.row_marker)
    put(s3, b.orphan, b"4" * 40)
    put(s3, b.orphan, b"5" * 50)
    s3.delete_object(Bucket=TEST_BUCKET, Key=b.orphan)
    first = s3.put_object(Bucket=TEST_BUCKET, Key=b.lone, Body=b"9")["VersionId"]
    s3.delete_object(Bucket=TEST_BUCKET, Key=b.lone)
    s3.delete_object(Bucket=TEST_BUCKET, Key=b.lone, VersionId=first)  # the marker is left alone
    put(s3, b.extra, b"6" * 60)
    put(s3, b.extra, b"7" * 70)
    put(s3, b.queued, b"8" * 80)
    s3.delete_object(Bucket=TEST_BUCKET, Key=b.queued)
    enqueue(conn, b.queued)
    b.orphan_bytes = 40 + 50
    b.noncurrent_bytes = 10 + 30 + 40 + 50 + 60 + 80
    for name, parts in (("up1.mov", [b"a" * 100, b"b" * 23]), ("up2.mov", [b"c" * 7])):
        key = f"shows/{show}/{name}"
        upload = s3.create_multipart_upload(Bucket=TEST_BUCKET, Key=key)["UploadId"]
        for number, body in enumerate(parts, start=1):
            s3.upload_part(Bucket=TEST_BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body)
        b.uploads[upload] = sum(len(p) for p in parts)
    return b


def versions_of(s3: Any, key: str) -> list[tuple[str, bool]]:
    return sorted((v.version_id, v.is_delete_marker) for v in storage_versions.versions_of(s3, TEST_BUCKET, key))


def uploads(s3: Any) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=TEST_BUCKET).get("Uploads", [])}


def recorded(settings: Any) -> list[dict[str, Any]]:
    with db.connect(settings.database, autocommit=True) as conn:
        return list(erasures.listed(conn))


def test_dry_run_counts_and_finds_exactly(conn, versioned, db_url):
    b = plant(conn, versioned)
    settings = make_settings(db_url, reconcile=LOOSE)

    findings, summary = run(settings, versions=True)

    found = {(f["kind"], f["key"]): f for f in findings if f["kind"] in reconcile.versions.FINDING_KINDS}
    orphan = found.pop(("orphaned_versions", b.orphan))
    assert (orphan["versions"], orphan["delete_markers"], orphan["size"], orphan["action"]) == (2, 1, 90, "none")
    lone = found.pop(("lone_delete_marker", b.lone))
    assert (lone["delete_markers"], lone["action"]) == (1, "none") and "versions" not in lone
    assert {(f["upload_id"], f["size"]) for f in found.values()} == set(b.uploads.items())
    counts = summary.version_counts()
    assert counts["noncurrent_versions"] == 6 and counts["noncurrent_bytes"] == b.noncurrent_bytes
    assert counts["delete_markers"] == 4
    assert counts["incomplete_uploads"] == 2 and counts["incomplete_upload_bytes"] == 130
    assert (counts["orphaned_versions"], counts["orphaned_version_bytes"], counts["lone_delete_markers"]) == (1, 90, 1)
    assert summary.versions_by_bucket == {TEST_BUCKET: counts}
    assert summary.drift
    out = summary.as_dict()
    for name in ("noncurrent_versions", "noncurrent_bytes", "delete_markers", "incomplete_uploads",
                 "incomplete_upload_bytes"):
        assert out[name] == counts[name]


def test_young_uploads_are_counted_not_found(conn, versioned, db_url):
    """incomplete_upload_days = 7. moto reports every upload as started on
    2010-11-10 20:48:33 UTC, so the run's clock is set a day after it."""
    plant(conn, versioned)
    settings = make_settings(db_url, reconcile={**REPAIR_ALL, "incomplete_upload_days": 7})
    a_day_later = datetime(2010, 11, 11, 20, 48, 33, tzinfo=timezone.utc)
    findings: list[dict[str, Any]] = []

    summary = reconcile.run(settings, reconcile.ReconcileOptions(versions=True, repair=True), sink=findings.append,
                            clock=lambda: a_day_later)

    assert [f for f in findings if f["kind"] == "incomplete_upload"] == []
    assert summary.version_counts()["incomplete_uploads"] == 2 and len(uploads(versioned)) == 2
    assert summary.version_counts()["stale_uploads"] == 0


def test_repair_removes_exactly_the_orphans_and_records_each_once(conn, versioned, db_url):
    b = plant(conn, versioned)
    before = {key: versions_of(versioned, key) for key in b.untouchable()}
    doomed = versions_of(versioned, b.orphan) + versions_of(versioned, b.lone)
    settings = make_settings(db_url, reconcile=REPAIR_ALL)

    findings, summary = run(settings, versions=True, repair=True)

    actions = {(f["kind"], f["key"]): f["action"] for f in findings if f["kind"] in ("orphaned_versions",
                                                                                     "lone_delete_marker")}
    assert actions == {("orphaned_versions", b.orphan): "deleted", ("lone_delete_marker", b.lone): "deleted"}
    assert versions_of(versioned, b.orphan) == [] and versions_of(versioned, b.lone) == []
    assert {key: versions_of(versioned, key) for key in b.untouchable()} == before
    assert uploads(versioned) == set()
    counts = summary.version_counts()
    assert (counts["deleted_versions"], counts["deleted_delete_markers"], counts["aborted_uploads"]) == (2, 2, 2)
    rows = recorded(settings)
    assert sorted((r["version_id"], r["kind"] == "delete_marker") for r in rows if r["kind"] != "upload") == sorted(
        doomed)
    assert sorted((r["upload_id"], r["size"]) for r in rows if r["kind"] == "upload") == sorted(b.uploads.items())
    assert {r["deleted_by"] for r in rows} == {"reconcile_orphaned_versions", "reconcile_lone_delete_marker",
                                               "reconcile_incomplete_upload"}
    assert sum(r["size"] for r in rows if r["kind"] == "version") == b.orphan_bytes

    again, _ = run(settings, versions=True, repair=True)  # nothing left to do, nothing recorded twice
    assert [f for f in again if f["kind"] in reconcile.versions.FINDING_KINDS] == []
    assert len(recorded(settings)) == len(rows)


def test_report_policies_change_nothing(conn, versioned, db_url):
    b = plant(conn, versioned)
    every = {key: versions_of(versioned, key) for key in [*b.untouchable(), b.orphan, b.lone]}
    settings = make_settings(db_url, reconcile=LOOSE)

    findings, _ = run(settings, versions=True, repair=True)

    assert {f["action"] for f in findings if f["kind"] in reconcile.versions.FINDING_KINDS} == {"none"}
    assert {key: versions_of(versioned, key) for key in every} == every
    assert len(uploads(versioned)) == 2 and recorded(settings) == []


def test_a_row_that_appears_before_the_repair_saves_the_versions(conn, versioned, db_url, monkeypatch):
    """The key gains a row between the count and the deletion: its versions stay."""
    b = plant(conn, versioned)
    kept = versions_of(versioned, b.orphan)
    settings = make_settings(db_url, reconcile=REPAIR_ALL)
    real = storage_versions.list_versions
    listed: set[tuple[Any, Any]] = set()  # the shards the counting pass listed
    added: list[bool] = []
    lock = threading.Lock()

    def row_before_the_repair_lists(client: Any, bucket: str, **kw: Any) -> Any:
        # The repair pass lists every shard again: the first shard listed twice
        # marks its start, before any of its listings or row queries.
        with lock:
            shard = (kw.get("start_at"), kw.get("stop_before"))
            if shard in listed and not added:
                add_row(conn, make_show(conn), b.orphan, size=50, etag="x")
                added.append(True)
            listed.add(shard)
        return real(client, bucket, **kw)

    monkeypatch.setattr(storage_versions, "list_versions", row_before_the_repair_lists)
    findings, _ = run(settings, versions=True, repair=True)

    assert added  # the repair pass ran, after the counting pass

    assert versions_of(versioned, b.orphan) == kept
    assert not any(f["key"] == b.orphan and f["kind"] == "orphaned_versions" for f in findings)


def test_caps_refuse_the_bucket_and_nothing_is_deleted(conn, versioned, db_url):
    b = plant(conn, versioned)
    settings = make_settings(db_url, reconcile={**REPAIR_ALL, "max_deletes": 3})

    with pytest.raises(errors.ReconcileRefused) as refused:
        run(settings, versions=True, repair=True)

    assert "6 deletions of versions, markers and uploads exceed reconcile.max_deletes 3 by 3" in str(refused.value)
    assert versions_of(versioned, b.orphan) != [] and len(uploads(versioned)) == 2
    assert recorded(settings) == []

    forced, _ = run(settings, versions=True, repair=True, force=True)
    assert versions_of(versioned, b.orphan) == []


def test_fraction_cap_counts_versions_and_markers(conn, versioned, db_url):
    plant(conn, versioned)
    settings = make_settings(db_url, reconcile={**REPAIR_ALL, "max_delete_fraction": 0.2})

    with pytest.raises(errors.ReconcileRefused) as refused:
        run(settings, versions=True, repair=True)

    assert "4 of 12 versions and markers, above reconcile.max_delete_fraction 0.2" in str(refused.value)


def test_a_listing_failing_part_way_refuses_and_deletes_nothing(conn, versioned, db_url, monkeypatch):
    b = plant(conn, versioned)
    settings = make_settings(db_url, reconcile=REPAIR_ALL)
    real = storage_versions.list_versions

    def failing(client: Any, bucket: str, **kw: Any) -> Any:
        if kw.get("start_at", "") >= "shows/8":
            raise StorageError("s3: list object versions: InternalError: injected")
        yield from real(client, bucket, **kw)

    monkeypatch.setattr(storage_versions, "list_versions", failing)
    with pytest.raises(errors.ReconcileRefused) as refused:
        run(settings, versions=True, repair=True)

    assert "a listing or query failed part way" in str(refused.value) and "injected" in str(refused.value)
    assert versions_of(versioned, b.orphan) != [] and versions_of(versioned, b.lone) != []
    assert len(uploads(versioned)) == 2 and recorded(settings) == []


def test_listing_across_pages_and_shards_matches_a_plain_listing(versioned):
    keys = [f"shows/{uuid.UUID(int=((i + 1) * 0x9E3779B97F4A7C15 << 64) % 2**128)}/k{i}" for i in range(60)]
    keys = [k for k in keys if k[6] not in "9f"]  # see SHOW above
    for i, key in enumerate(keys):
        for n in range(i % 3 + 1):
            versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x" * n)
        if i % 4 == 0:
            versioned.delete_object(Bucket=TEST_BUCKET, Key=key)
    want = sorted((v.key, v.version_id) for key in keys for v in storage_versions.versions_of(versioned, TEST_BUCKET,
                                                                                               key))
    from trr_assets.keys import shard_ranges

    got = [
        (v.key, v.version_id)
        for r in shard_ranges("shows/", 16)
        for page in storage_versions.list_versions(versioned, TEST_BUCKET, prefix="shows/", start_at=r.start_at,
                                                   stop_before=r.stop_before, page_size=4)
        for v in page
    ]
    assert sorted(got) == want and len(got) == len(set(got))
    assert [k for k, _ in got] == sorted(k for k, _ in got)


def test_cli_versions_jsonl_summary_and_text(conn, versioned, db_url, tmp_path, capsys):
    plant(conn, versioned)
    config = str(write_config(tmp_path / "config.toml", db_url, reconcile=LOOSE))

    assert cli.main(["--config", config, "reconcile", "--versions", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["kind"] == "summary" and summary["noncurrent_versions"] == 6
    assert summary["incomplete_upload_bytes"] == 130 and summary["delete_markers"] == 4
    assert {line["kind"] for line in lines[:-1]} >= {"orphaned_versions", "lone_delete_marker", "incomplete_upload"}

    assert cli.main(["--config", config, "reconcile", "--versions"]) == 0
    text = capsys.readouterr().out
    assert "noncurrent versions" in text and "orphaned_versions" in text

    assert cli.main(["--config", config, "reconcile", "--versions", "--inventory", "s3://b/m.json"]) == 2
    assert "--versions" in capsys.readouterr().err
