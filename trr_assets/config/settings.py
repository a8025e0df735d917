"""The settings: one frozen dataclass per section of the file, each key with
its default and its check.

A key is declared with ``_setting(default, check)``; the check returns what
is wrong with a value, or None. ``Settings`` holds every section;
``SECTIONS`` names them as the file does. Values are coerced and checked as
a section is built (``config.values``); where they come from (the file, the
environment) is ``config.loading``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trr_assets.config.values import build_section

SIGV4_MAX_EXPIRES_SECONDS = 604800

Check = Callable[[Any], str | None]  # returns a description of what is wrong, or None


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else "must be one of " + ", ".join(choices)


def _setting(default: Any, check: Check | None = None) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _check_key_pattern(value: str) -> str | None:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    if "show_id" not in compiled.groupindex:
        return "must have a named group (?P<show_id>...)"
    return None


def _check_content_types(values: list[str]) -> str | None:
    pattern = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/(\*|[A-Za-z0-9!#$&^_.+-]+)$")
    for value in values:
        if not pattern.match(value):
            return f"has {value!r}, which is not a type/subtype pattern like image/* or image/png"
    return None


def _check_cron(value: str) -> str | None:
    # The full parse is APScheduler's (see ``worker``); this keeps the shape
    # check cheap enough for the presigner, which also loads settings.
    fields = value.split()
    if len(fields) != 5:
        return "must be a cron expression of 5 fields (minute hour day month weekday)"
    if not all(re.fullmatch(r"[0-9A-Za-z*/,\-?]+", f) for f in fields):
        return "has characters a cron expression cannot contain"
    return None


def valid_bucket_name(value: str) -> bool:
    """S3's rules for a bucket name (3 to 63 lower-case letters, digits, dots, hyphens)."""
    return re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", value) is not None


def _check_buckets(values: list[str]) -> str | None:
    for value in values:
        if not valid_bucket_name(value):
            return f"has {value!r}, which is not a valid S3 bucket name"
    return None


def _check_region(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        return "must be a region name such as eu-west-1"
    return None


def _check_bucket_regions(values: dict[str, str]) -> str | None:
    for bucket, region in values.items():
        if _check_buckets([bucket]):
            return f"has {bucket!r}, which is not a valid S3 bucket name"
        if _check_region(region):
            return f"has {region!r} for {bucket}, which is not a region name such as eu-west-1"
    return None


def _check_endpoint(value: str) -> str | None:
    if value and not re.match(r"^https?://[^/\s]+", value):
        return "must be empty or an http(s):// URL"
    return None


def _check_db_url(value: str) -> str | None:
    if not re.match(r"^(postgres|postgresql)://", value) and "=" not in value:
        return "must be a postgresql:// URL or a libpq key=value string"
    return None


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    url: str = _setting("postgresql://postgres@localhost:5432/postgres", _check_db_url)
    pool_min_size: int = _setting(1, _at_least(0))
    pool_max_size: int = _setting(10, _at_least(1))
    connect_timeout_seconds: float = _setting(10.0, _between(0.1, 600))


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint_url: str = _setting("", _check_endpoint)
    # Empty: the boto3 way (AWS_REGION, AWS_DEFAULT_REGION, the profile), else us-east-1.
    region: str = _setting("", lambda v: _check_region(v) if v else None)
    # {bucket: region}; a bucket not named here has its region discovered (presigning).
    bucket_regions: dict[str, str] = _setting({}, lambda v: _check_bucket_regions(v))
    buckets: list[str] = _setting([], _check_buckets)
    prefix: str = _setting("shows/")
    key_pattern: str = _setting(r"^shows/(?P<show_id>[0-9a-fA-F-]{36})/", _check_key_pattern)
    addressing_style: str = _setting("auto", _one_of("auto", "path", "virtual"))
    retry_mode: str = _setting("standard", _one_of("standard", "adaptive", "legacy"))
    max_attempts: int = _setting(5, _between(1, 20))
    connect_timeout_seconds: float = _setting(10.0, _between(0.1, 600))
    read_timeout_seconds: float = _setting(60.0, _between(0.1, 3600))
    list_shards: int = _setting(16, _between(1, 256))
    list_concurrency: int = _setting(8, _between(1, 64))
    head_concurrency: int = _setting(16, _between(1, 128))  # botocore's HEADs: threads, one request each
    # How HEAD requests are sent: "native" (storage.heads: own signing, kept-alive
    # connections, one event loop, up to head_connections in flight per S3 host)
    # or "botocore" (head_concurrency threads, a request each, as before).
    head_client: str = _setting("native", _one_of("native", "botocore"))
    head_connections: int = _setting(192, _between(1, 1024))


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    interval_seconds: int = _setting(300, _at_least(1))
    batch_size: int = _setting(5000, _between(1, 100000))
    # Where a new or changed object's row gets its content type and owner id:
    # "head" (a HEAD request each) or "listing" (the key's extension; no
    # owner; a later "head" pass completes them). See trr_assets/metadata.py.
    metadata: str = _setting("head", _one_of("head", "listing"))


@dataclass(frozen=True, kw_only=True)
class DeletesSettings:
    interval_seconds: int = _setting(10, _at_least(1))
    max_attempts: int = _setting(12, _between(1, 1000))
    all_versions: bool = _setting(False)
    batch_size: int = _setting(1000, _between(1, 100000))
    backoff_base_seconds: float = _setting(10.0, _at_least(0))
    backoff_max_seconds: float = _setting(3600.0, _at_least(0))
    # An erasure intent older than this was left by a process that died
    # mid-deletion: the next drain or repair settles it (see erasures.py).
    settle_after_seconds: float = _setting(900.0, _at_least(0))


@dataclass(frozen=True, kw_only=True)
class ReconcileSettings:
    schedule: str = _setting("17 * * * *", _check_cron)
    grace_seconds: int = _setting(86400, _at_least(0))
    orphaned_objects: str = _setting("report", _one_of("report", "import", "delete", "quarantine"))
    orphaned_rows: str = _setting("report", _one_of("report", "delete"))
    max_deletes: int = _setting(1000, _at_least(0))
    max_delete_fraction: float = _setting(0.05, _between(0, 1))
    quarantine_prefix: str = _setting(
        "quarantine/", lambda v: None if v.endswith("/") and len(v) > 1 else "must end with /"
    )
    # reconcile --versions: repairs of versioned buckets and multipart uploads.
    incomplete_uploads: str = _setting("report", _one_of("report", "abort"))
    incomplete_upload_days: int = _setting(7, _at_least(0))
    orphaned_versions: str = _setting("report", _one_of("report", "delete"))
    lone_delete_markers: str = _setting("report", _one_of("report", "delete"))


@dataclass(frozen=True, kw_only=True)
class PresignSettings:
    expires_seconds: int = _setting(900, _between(1, SIGV4_MAX_EXPIRES_SECONDS))
    cache_window_seconds: int = _setting(0, _between(0, SIGV4_MAX_EXPIRES_SECONDS))
    max_upload_bytes: int = _setting(104857600, _between(1, 5 * 1024**4))
    allowed_content_types: list[str] = _setting(["image/*", "video/*"], _check_content_types)
    # Where upload_url puts new objects; empty: the first of s3.buckets.
    upload_bucket: str = _setting("", lambda v: _check_buckets([v]) if v else None)


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    format: str = _setting("auto", _one_of("json", "console", "auto"))
    level: str = _setting("info", _one_of("debug", "info", "warning", "error"))


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    heartbeat_seconds: int = _setting(60, _at_least(1))
    shutdown_timeout_seconds: float = _setting(8.0, _between(0.5, 60))
    # > 0: reconcile every N seconds instead of on reconcile.schedule (tests, demos)
    reconcile_interval_seconds: int = _setting(0, _at_least(0))


def _check_host(value: str) -> str | None:
    if not value or any(c.isspace() for c in value) or "/" in value:
        return "must be a host name or an IP address to listen on"
    return None


def _check_queue_urls(values: list[str]) -> str | None:
    for value in values:
        if not re.match(r"^https?://[^/\s]+/\S+$", value):
            return f"has {value!r}, which is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
    return None


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    # worker: serve /metrics and /healthz here; port 0 = off
    host: str = _setting("127.0.0.1", _check_host)
    port: int = _setting(0, _between(0, 65535))


@dataclass(frozen=True, kw_only=True)
class EventsSettings:
    queue_urls: list[str] = _setting([], _check_queue_urls)
    wait_seconds: int = _setting(20, _between(0, 20))  # SQS long polling
    endpoint_url: str = _setting("", _check_endpoint)  # SQS-compatible endpoint; empty for AWS
    receivers: int = _setting(4, _between(1, 32))  # receive loops in flight per queue
    batch_messages: int = _setting(100, _between(1, 1000))  # messages applied in one transaction, at most
    visibility_timeout_seconds: int = _setting(0, _between(0, 43200))  # 0: the queue's own
    # Sequencer entries older than this are pruned: longer than any event can
    # wait (SQS keeps a message 14 days at most; SNS retries a delivery to SQS
    # for up to 23 days).
    sequencer_retention_days: int = _setting(30, _between(15, 3650))


@dataclass(frozen=True, kw_only=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    deletes: DeletesSettings = field(default_factory=DeletesSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    presign: PresignSettings = field(default_factory=PresignSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    source: str = "defaults"  # where the settings came from, for messages

    def replace(self, **sections: Any) -> Settings:
        """A copy with some keys changed: ``replace(s3={"buckets": ["b"]})``."""
        changes = {}
        for name, values in sections.items():
            section = getattr(self, name)
            changes[name] = build_section(
                type(section), {**dataclasses.asdict(section), **values}, {}, name
            )
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name != "source"
}
