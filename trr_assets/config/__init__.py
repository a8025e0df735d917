"""Typed, validated settings: TOML file plus environment overrides.

Where the file is found: ``--config PATH``, else ``$TRR_ASSETS_CONFIG``, else
``./config.toml`` when present, else the defaults. The environment overrides
the file: ``TRR_ASSETS_<SECTION>_<KEY>`` for any key, plus ``DATABASE_URL``
for ``database.url`` (``TRR_ASSETS_DATABASE_URL`` wins over it when both are
set). Everything is checked before anything is touched; a bad value raises
``ConfigError`` with one line naming the key (exit 2 at the CLI).

The package is imported by the presigner, so it imports nothing heavy. Its
modules: ``settings`` (the sections, their keys, defaults and checks),
``values`` (a section built from raw values, coerced and checked),
``loading`` (the file found and read, the environment's overrides, the
checks across sections). Callers import from here.
"""

from __future__ import annotations

from trr_assets.config.loading import ENV_PREFIX, find_config_file, load_settings, settings_from_mapping
from trr_assets.config.settings import (
    SECTIONS,
    SIGV4_MAX_EXPIRES_SECONDS,
    DatabaseSettings,
    DeletesSettings,
    EventsSettings,
    LoggingSettings,
    MetricsSettings,
    PresignSettings,
    ReconcileSettings,
    S3Settings,
    Settings,
    SyncSettings,
    WorkerSettings,
    valid_bucket_name,
)

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "SIGV4_MAX_EXPIRES_SECONDS",
    "DatabaseSettings",
    "DeletesSettings",
    "EventsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PresignSettings",
    "ReconcileSettings",
    "S3Settings",
    "Settings",
    "SyncSettings",
    "WorkerSettings",
    "find_config_file",
    "load_settings",
    "settings_from_mapping",
    "valid_bucket_name",
]
