"""Operator commands: doctor, deletes status, report (the command and its data;
the page in a real browser is tests/test_report_browser.py)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.operators.helpers import queue, run, seed_report
from tests.support.s3 import TEST_BUCKET
from trr_assets import doctor
from trr_assets.config import Settings


def _lifecycle(s3: Any, **rule: Any) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=TEST_BUCKET, LifecycleConfiguration={"Rules": [
        {"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}, **rule}]})


# --- doctor -------------------------------------------------------------------------


def test_doctor_on_a_ready_installation_exits_0_and_says_nothing_needs_action(cli_env, s3, capsys) -> None:
    _lifecycle(s3, AbortIncompleteMultipartUpload={"DaysAfterInitiation": 7})
    code, out, _ = run(capsys, "doctor", "--format", "text")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "Nothing needs action."
    assert re.search(r"^ok +database: migrations: all \d+ applied$", out, re.M)
    assert f"ok    bucket {TEST_BUCKET}: exists and is reachable" in out


def test_doctor_says_what_to_do_about_versions_billed_forever_and_incomplete_uploads(cli_env, s3, capsys) -> None:
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    code, out, _ = run(capsys, "doctor", "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    by_name = {c["check"]: c for c in report["checks"]}
    versions = by_name[f"bucket {TEST_BUCKET}: noncurrent versions"]
    assert versions["status"] == "warn"
    assert "old versions are billed forever" in versions["detail"]
    assert "NoncurrentVersionExpiration" in versions["fix"]
    assert "AbortIncompleteMultipartUpload" in by_name[f"bucket {TEST_BUCKET}: incomplete uploads"]["fix"]

    _lifecycle(s3, NoncurrentVersionExpiration={"NoncurrentDays": 30},
               AbortIncompleteMultipartUpload={"DaysAfterInitiation": 7})
    code, out, _ = run(capsys, "doctor", "--format", "json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_doctor_on_an_unmigrated_database_and_a_missing_bucket(
    empty_db_url: str, aws_env: None, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    monkeypatch.setenv("TRR_ASSETS_S3_BUCKETS", "no-such-bucket-here")
    code, out, _ = run(capsys, "doctor", "--format", "text")
    assert code == 1
    assert re.search(r"^FAIL  database: migrations: \d+ of \d+ not applied", out, re.M)
    assert "-> run `trr-assets migrate`" in out
    assert "FAIL  bucket no-such-bucket-here: s3: bucket no-such-bucket-here does not exist" in out
    assert out.strip().endswith("2 problems to act on.")


def test_doctor_with_no_database_still_checks_the_buckets(aws_env, s3, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/x")
    monkeypatch.setenv("TRR_ASSETS_DATABASE_CONNECT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("TRR_ASSETS_S3_BUCKETS", TEST_BUCKET)
    code, out, _ = run(capsys, "doctor", "--format", "json")
    assert code == 1
    by_name = {c["check"]: c for c in json.loads(out)["checks"]}
    assert by_name["database"]["status"] == "fail" and "database.url" in by_name["database"]["fix"]
    assert by_name[f"bucket {TEST_BUCKET}"]["status"] == "ok"


def test_doctor_checks_that_the_buckets_send_events_to_the_configured_queue(s3: Any, settings: Settings) -> None:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="trr-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    with_queue = settings.replace(events={"queue_urls": [url]})

    def notifications_check() -> doctor.Check:
        (check,) = [c for c in doctor.check_bucket(s3, TEST_BUCKET, with_queue)
                    if c.name == f"bucket {TEST_BUCKET}: event notifications"]
        return check

    check = notifications_check()
    assert check.status == "fail" and "s3:ObjectCreated:*" in check.fix
    s3.put_bucket_notification_configuration(Bucket=TEST_BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    check = notifications_check()
    assert check.status == "fail" and "s3:ObjectRemoved:*" in check.detail
    s3.put_bucket_notification_configuration(Bucket=TEST_BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    assert notifications_check().status == "ok"


def test_queue_arn_from_an_sqs_url() -> None:
    assert doctor.queue_arn("https://sqs.eu-west-1.amazonaws.com/123456789012/q") == \
        "arn:aws:sqs:eu-west-1:123456789012:q"
    assert doctor.queue_arn("not a url") == ""


# --- deletes status ------------------------------------------------------------------


def test_deletes_status_as_text_and_json(cli_env, conn, capsys) -> None:
    code, out, _ = run(capsys, "deletes", "status", "--format", "text")
    assert (code, out) == (0, "Delete queue: 0 pending, 0 failed\n")
    queue(conn)
    code, out, _ = run(capsys, "deletes", "status", "--format", "text")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "Delete queue: 1 pending (oldest 2 h 0 min), 1 failed"
    assert "b1  shows/c  after 12 attempts" in lines[2] and lines[2].endswith("AccessDenied: Access Denied")
    assert lines[-1] == "Retry them: trr-assets process-deletes --requeue-failed"
    code, out, _ = run(capsys, "deletes", "status")  # piped: JSON
    status = json.loads(out)
    assert (status["pending"], status["failed"]) == (1, 1)
    assert 7190 < status["oldest_age_seconds"] < 7300
    assert status["failed_deletes"][0]["last_error"] == "AccessDenied: Access Denied"


# --- report ----------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fetches: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.fetches.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_writes_one_self_contained_page(cli_env, conn, capsys, tmp_path: Path) -> None:
    seed_report(conn)
    target = tmp_path / "drift.html"
    code, out, _ = run(capsys, "report", "--output", str(target))
    assert code == 0
    assert out.strip() == f"wrote {target}: 3 reconcile runs, 1 pending and 1 failed deletions, 2 job runs"
    page = target.read_text()
    parser = _Page()
    parser.feed(page)
    assert parser.fetches == [], "the page fetches something"
    assert "script" not in parser.tags and "link" not in parser.tags
    assert parser.tags.count("svg") == 1 and parser.tags.count("polyline") == 4
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # values from the database are escaped
    text = " ".join(parser.text)
    for heading in ("Drift by kind over the recorded reconcile runs", "Failed deletions", "Recent job runs"):
        assert heading in text
    assert "AccessDenied: Access Denied" in text and "inserted 3" in text


def test_report_on_an_empty_database_says_so(cli_env, capsys, tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    assert run(capsys, "report", "--output", str(target))[0] == 0
    page = target.read_text()
    assert "No reconcile run is recorded yet" in page and "<svg" not in page


def test_report_to_an_unwritable_place_is_exit_2(cli_env, capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "report", "--output", str(tmp_path / "no" / "such" / "dir.html"))
    assert code == 2 and err.startswith("trr-assets: error: report: cannot write --output")
