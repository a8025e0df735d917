"""Typed, validated settings: TOML file plus environment overrides.

Where the file is found: ``--config PATH``, else ``$TRR_ASSETS_CONFIG``, else
``./config.toml`` when present, else the defaults. The environment overrides
the file: ``TRR_ASSETS_<SECTION>_<KEY>`` for any key, plus ``DATABASE_URL``
for ``database.url`` (``TRR_ASSETS_DATABASE_URL`` wins over it when both are
set). Everything is checked before anything is touched; a bad value raises
``ConfigError`` with one line naming the key (exit 2 at the CLI).

This module is imported by the presigner, so it imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trr_assets.errors import ConfigError

ENV_PREFIX = "TRR_ASSETS_"
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
    # How HEAD requests are sent: "native" (storage_heads: own signing, kept-alive
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
            changes[name] = _build_section(
                type(section), {**dataclasses.asdict(section), **values}, {}, name
            )
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name != "source"
}


def find_config_file(path: str | os.PathLike[str] | None) -> Path | None:
    """The file the settings come from, or None for the defaults."""
    if path is not None:
        candidate, origin = Path(path), "--config"
    elif os.environ.get(ENV_PREFIX + "CONFIG"):
        candidate, origin = Path(os.environ[ENV_PREFIX + "CONFIG"]), "$TRR_ASSETS_CONFIG"
    else:
        default = Path("config.toml")
        return default if default.is_file() else None
    if candidate.is_dir():
        raise ConfigError(f"config file {candidate} is a directory, not a file (from {origin})")
    if not candidate.is_file():
        raise ConfigError(f"config file not found: {candidate} (from {origin})")
    return candidate


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Find, read, override from the environment and validate the settings."""
    environ = os.environ if environ is None else environ
    config_file = find_config_file(path)
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: not valid TOML ({exc})") from exc
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: cannot be read ({exc.strerror})") from exc
    return settings_from_mapping(
        data, environ=environ, source=str(config_file) if config_file else "defaults"
    )


def settings_from_mapping(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "defaults",
) -> Settings:
    """Settings from a TOML-shaped mapping plus environment overrides."""
    environ = {} if environ is None else environ
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config: unknown section [{unknown[0]}]")
    overrides = _environment_overrides(environ)
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config: [{name}] must be a table")
        sections[name] = _build_section(cls, values, overrides.get(name, {}), name)
    settings = Settings(**sections, source=source)
    _check_across_sections(settings)
    return settings


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, tuple[str, str]]]:
    """``{section: {key: (raw value, variable name)}}`` from the environment."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    if environ.get("DATABASE_URL"):
        found.setdefault("database", {})["url"] = (environ["DATABASE_URL"], "DATABASE_URL")
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        # Other TRR_ASSETS_* variables (CONFIG, TEST_DATABASE_URL, ...) are not settings.
        if section in SECTIONS and key:
            known = {f.name for f in dataclasses.fields(SECTIONS[section])}
            if key not in known:
                raise ConfigError(f"config: unknown key {section}.{key} (from {name})")
            found.setdefault(section, {})[key] = (raw, name)
    return found


def _build_section(
    cls: type, values: Mapping[str, Any], env: Mapping[str, tuple[str, str]], section: str
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"config: unknown key {section}.{unknown[0]}")
    kwargs = {}
    for name, spec in fields.items():
        key = f"{section}.{name}"
        if name in env:
            raw, variable = env[name]
            value = _parse_env(raw, hints[name], key, variable)
            origin = f" (from {variable})"
        elif name in values:
            value, origin = values[name], ""
        else:
            continue
        value = _coerce(value, hints[name], key, origin)
        check = spec.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            shown = "" if "url" in name else f", got {value!r}"
            raise ConfigError(f"config: {key} {problem}{shown}{origin}")
        kwargs[name] = value
    return cls(**kwargs)


def _parse_env(raw: str, kind: Any, key: str, variable: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config: {key} must be true or false, got {raw!r} (from {variable})")
    if kind in (int, float):
        try:
            return kind(raw.strip())
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"config: {key} must be {what}, got {raw!r} (from {variable})") from None
    if typing.get_origin(kind) is dict:
        return _parse_env_table(raw, key, variable)
    if typing.get_origin(kind) is list:
        text = raw.strip()
        if text.startswith("["):
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"config: {key} must be a TOML array or a comma-separated list (from {variable})"
                ) from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _parse_env_table(raw: str, key: str, variable: str) -> dict[str, str]:
    """A table from the environment: a TOML inline table (``{b = "eu-west-1"}``)
    or comma-separated ``name=value`` pairs."""
    text = raw.strip()
    problem = f"config: {key} must be a TOML inline table or name=value pairs separated by commas (from {variable})"
    if text.startswith("{"):
        try:
            return dict(tomllib.loads(f"v = {text}")["v"])
        except tomllib.TOMLDecodeError:
            raise ConfigError(problem) from None
    table = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise ConfigError(problem)
        table[name.strip()] = value.strip()
    return table


def _coerce(value: Any, kind: Any, key: str, origin: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config: {key} must be true or false, got {value!r}{origin}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config: {key} must be a whole number, got {value!r}{origin}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config: {key} must be a number, got {value!r}{origin}")
    if typing.get_origin(kind) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"config: {key} must be a list of strings{origin}")
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ConfigError(f"config: {key} must be a table of strings{origin}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"config: {key} must be a string{origin}")


def _check_across_sections(settings: Settings) -> None:
    db = settings.database
    if db.pool_min_size > db.pool_max_size:
        raise ConfigError("config: database.pool_min_size must not exceed database.pool_max_size")
    d = settings.deletes
    if d.backoff_base_seconds > d.backoff_max_seconds:
        raise ConfigError("config: deletes.backoff_base_seconds must not exceed deletes.backoff_max_seconds")
