"""``trr-assets doctor``: is this installation ready, and what to do if not.

A list of checks, each ``ok``, ``warn`` (works, but something costs money
or will bite later) or ``fail`` (something does not work), and for every
problem what to do about it. Nothing is changed. The configuration was
already loaded and validated by the time this runs (a bad one is exit 2
before any check); the database and each bucket are checked independently,
so one that is down does not hide the others' problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from trr_assets import db, storage
from trr_assets.config import Settings
from trr_assets.errors import TrrAssetsError, one_line

log = structlog.get_logger()

NEEDED_EVENTS = ("s3:ObjectCreated:", "s3:ObjectRemoved:")


@dataclass(frozen=True)
class Check:
    name: str  # what was checked, e.g. "bucket media: versioning"
    status: str  # ok, warn or fail
    detail: str  # what was found
    fix: str = ""  # what to do about it (empty when ok)

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def needs_action(checks: list[Check]) -> bool:
    return any(check.status != "ok" for check in checks)


def run(settings: Settings, *, client: Any = None) -> list[Check]:
    """Every check, in the order a person reads them."""
    checks = check_config(settings)
    checks += check_database(settings)
    if settings.s3.buckets:
        client = client or storage.make_client(settings.s3)
        for bucket in settings.s3.buckets:
            checks += check_bucket(client, bucket, settings)
    return checks


def check_config(settings: Settings) -> list[Check]:
    source = settings.source
    checks = [Check("configuration", "ok", f"valid (from {source})" if source != "defaults" else
                    "valid (no config file: the defaults and the environment)")]
    if not settings.s3.buckets:
        checks.append(Check("configuration: s3.buckets", "fail", "no bucket is configured",
                            "set s3.buckets (or TRR_ASSETS_S3_BUCKETS) to the buckets to keep in step"))
    return checks


def check_database(settings: Settings) -> list[Check]:
    try:
        with db.connect(settings.database, autocommit=True, application_name="trr-assets doctor") as conn:
            applied = set(db.applied_migrations(conn))
    except TrrAssetsError as exc:
        return [Check("database", "fail", one_line(exc),
                      "check database.url (or DATABASE_URL), that the server runs and accepts this client")]
    checks = [Check("database", "ok", "reachable")]
    known = [m.name for m in db.available_migrations()]
    pending = [name for name in known if name not in applied]
    unknown = sorted(name for name in applied if name not in known and not name.startswith("optional/"))
    if pending:
        checks.append(Check("database: migrations", "fail",
                            f"{len(pending)} of {len(known)} not applied ({', '.join(pending)})",
                            "run `trr-assets migrate`"))
    elif unknown:
        checks.append(Check("database: migrations", "warn",
                            f"the database has migrations this version does not know ({', '.join(unknown)})",
                            "upgrade trr-assets to the version that migrated this database"))
    else:
        checks.append(Check("database: migrations", "ok", f"all {len(known)} applied"))
    return checks


def check_bucket(client: Any, bucket: str, settings: Settings) -> list[Check]:
    name = f"bucket {bucket}"
    try:
        storage.check_bucket(client, bucket)
    except TrrAssetsError as exc:
        return [Check(name, "fail", one_line(exc),
                      "check s3.buckets, the credentials' permissions (s3:ListBucket) and s3.endpoint_url")]
    checks = [Check(name, "ok", "exists and is reachable")]
    checks += _settings_checks(client, bucket, settings)
    return checks


def _settings_checks(client: Any, bucket: str, settings: Settings) -> list[Check]:
    name = f"bucket {bucket}"
    checks: list[Check] = []
    try:
        versioning = storage.bucket_versioning(client, bucket)
        rules = [r for r in storage.bucket_lifecycle_rules(client, bucket) if r.get("Status") == "Enabled"]
    except TrrAssetsError as exc:
        return [Check(f"{name}: versioning and lifecycle", "fail", one_line(exc),
                      "allow s3:GetBucketVersioning and s3:GetLifecycleConfiguration to these credentials")]
    if versioning == "Enabled":
        noncurrent = any("NoncurrentVersionExpiration" in r for r in rules)
        deletes_all = settings.deletes.all_versions
        checks.append(Check(f"{name}: versioning", "ok",
                            "on; deletes remove every version" if deletes_all else
                            "on; a delete adds a delete marker and keeps the old versions"))
        if noncurrent:
            checks.append(Check(f"{name}: noncurrent versions", "ok", "a lifecycle rule expires them"))
        elif not deletes_all:
            checks.append(Check(
                f"{name}: noncurrent versions", "warn",
                "versioning on, no lifecycle rule for noncurrent versions: old versions are billed forever",
                "add a lifecycle rule with NoncurrentVersionExpiration (or set deletes.all_versions = true)"))
        else:
            checks.append(Check(f"{name}: noncurrent versions", "ok",
                                "no lifecycle rule, but deletes.all_versions removes them"))
    else:
        checks.append(Check(f"{name}: versioning", "ok",
                            "suspended (older versions may remain)" if versioning else "off"))
    if any("AbortIncompleteMultipartUpload" in r for r in rules):
        checks.append(Check(f"{name}: incomplete uploads", "ok", "a lifecycle rule aborts them"))
    else:
        checks.append(Check(
            f"{name}: incomplete uploads", "warn",
            "no lifecycle rule aborts incomplete multipart uploads: their parts are billed until aborted",
            "add a lifecycle rule with AbortIncompleteMultipartUpload (DaysAfterInitiation = 7, say)"))
    queue_urls = list(getattr(getattr(settings, "events", None), "queue_urls", []) or [])
    if queue_urls:
        checks.append(_notifications_check(client, bucket, queue_urls))
    return checks


def queue_arn(url: str) -> str:
    """arn:aws:sqs:REGION:ACCOUNT:NAME for an SQS queue URL (empty if not one)."""
    parts = url.rstrip("/").split("/")
    host = parts[2] if len(parts) > 2 else ""
    if len(parts) < 5 or not host.startswith("sqs."):
        return ""
    region = host.split(".")[1]
    return f"arn:aws:sqs:{region}:{parts[-2]}:{parts[-1]}"


def _notifications_check(client: Any, bucket: str, queue_urls: list[str]) -> Check:
    name = f"bucket {bucket}: event notifications"
    try:
        found = storage.bucket_notifications(client, bucket)
    except TrrAssetsError as exc:
        return Check(name, "fail", one_line(exc), "allow s3:GetBucketNotification to these credentials")
    arns = {queue_arn(url) for url in queue_urls} | {url.rstrip("/").split("/")[-1] for url in queue_urls}
    ours = [n for n in found if n["kind"] == "topic" or n["arn"] in arns or n["arn"].split(":")[-1] in arns]
    events = {event for n in ours for event in n["events"]}
    missing = [need for need in NEEDED_EVENTS if not any(e.startswith(need) for e in events)]
    if not ours:
        return Check(name, "fail", "the bucket sends no event notification to events.queue_urls",
                     "add an event notification for s3:ObjectCreated:* and s3:ObjectRemoved:* to the queue")
    if missing:
        return Check(name, "fail", f"no notification for {', '.join(m + '*' for m in missing)}",
                     "add those event types to the bucket's notification")
    via = "an SNS topic" if all(n["kind"] == "topic" for n in ours) else "the queue"
    return Check(name, "ok", f"object created and removed events go to {via}")
