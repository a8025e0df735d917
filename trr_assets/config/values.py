"""A section of settings built from its raw values: each value coerced to the
type its key declares and checked, or a one-line ``ConfigError`` naming the
key (and the environment variable it came from).

Values come from TOML (already typed) or from the environment (strings,
parsed here: booleans, numbers, lists as TOML arrays or comma-separated,
tables as TOML inline tables or ``name=value`` pairs).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from trr_assets.errors import ConfigError


def build_section(
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
