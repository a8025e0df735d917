"""Settings loaded: the file found and read, the environment's overrides
gathered, every section built and checked, then the checks across sections.

Where the file is found: ``--config PATH``, else ``$TRR_ASSETS_CONFIG``, else
``./config.toml`` when present, else the defaults. The environment overrides
the file: ``TRR_ASSETS_<SECTION>_<KEY>`` for any key, plus ``DATABASE_URL``
for ``database.url`` (``TRR_ASSETS_DATABASE_URL`` wins over it when both are
set).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trr_assets.config.settings import SECTIONS, Settings
from trr_assets.config.values import build_section
from trr_assets.errors import ConfigError

ENV_PREFIX = "TRR_ASSETS_"


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
        sections[name] = build_section(cls, values, overrides.get(name, {}), name)
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


def _check_across_sections(settings: Settings) -> None:
    db = settings.database
    if db.pool_min_size > db.pool_max_size:
        raise ConfigError("config: database.pool_min_size must not exceed database.pool_max_size")
    d = settings.deletes
    if d.backoff_base_seconds > d.backoff_max_seconds:
        raise ConfigError("config: deletes.backoff_base_seconds must not exceed deletes.backoff_max_seconds")
