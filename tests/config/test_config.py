"""Configuration: file, environment overrides, validation up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trr_assets.config import Settings, load_settings, settings_from_mapping
from trr_assets.errors import ConfigError


def test_defaults_match_the_contract():
    """With no file and no environment, every key has SPEC.md's default."""
    s = settings_from_mapping({})
    assert s.database.url == "postgresql://postgres@localhost:5432/postgres"
    assert (s.s3.endpoint_url, s.s3.region, s.s3.buckets, s.s3.prefix) == ("", "", [], "shows/")
    assert s.s3.key_pattern == r"^shows/(?P<show_id>[0-9a-fA-F-]{36})/"
    assert (s.sync.interval_seconds, s.deletes.interval_seconds, s.deletes.max_attempts) == (300, 10, 12)
    assert (s.reconcile.schedule, s.reconcile.grace_seconds) == ("17 * * * *", 86400)
    assert (s.reconcile.orphaned_objects, s.reconcile.orphaned_rows) == ("report", "report")
    assert (s.reconcile.max_deletes, s.reconcile.max_delete_fraction) == (1000, 0.05)
    assert (s.presign.expires_seconds, s.presign.cache_window_seconds) == (900, 0)
    assert s.presign.max_upload_bytes == 104857600
    assert s.presign.allowed_content_types == ["image/*", "video/*"]
    assert s.deletes.all_versions is False
    assert (s.logging.format, s.logging.level) == ("auto", "info")


def test_file_is_read_and_environment_overrides_it(tmp_path):
    """TRR_ASSETS_<SECTION>_<KEY> beats the file; DATABASE_URL sets database.url."""
    path = tmp_path / "c.toml"
    path.write_text('[s3]\nbuckets = ["from-file"]\n[reconcile]\ngrace_seconds = 5\n')
    env = {
        "TRR_ASSETS_RECONCILE_GRACE_SECONDS": "0",
        "TRR_ASSETS_S3_BUCKETS": "one-bucket, two-bucket",
        "DATABASE_URL": "postgresql://u@h/db",
        "TRR_ASSETS_DELETES_ALL_VERSIONS": "true",
    }
    s = load_settings(path, environ=env)
    assert s.reconcile.grace_seconds == 0
    assert s.s3.buckets == ["one-bucket", "two-bucket"]
    assert s.database.url == "postgresql://u@h/db"
    assert s.deletes.all_versions is True
    assert s.source == str(path)


def test_trr_assets_database_url_wins_over_database_url():
    env = {"DATABASE_URL": "postgresql://a@h/a", "TRR_ASSETS_DATABASE_URL": "postgresql://b@h/b"}
    assert settings_from_mapping({}, environ=env).database.url == "postgresql://b@h/b"


def test_list_from_environment_accepts_a_toml_array():
    env = {"TRR_ASSETS_PRESIGN_ALLOWED_CONTENT_TYPES": '["image/png", "video/*"]'}
    assert settings_from_mapping({}, environ=env).presign.allowed_content_types == ["image/png", "video/*"]


def test_config_file_found_through_environment_then_cwd(tmp_path, monkeypatch):
    """$TRR_ASSETS_CONFIG is used when no --config; else ./config.toml if present."""
    a = tmp_path / "a.toml"
    a.write_text("[sync]\ninterval_seconds = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRR_ASSETS_CONFIG", str(a))
    assert load_settings(environ={}).sync.interval_seconds == 7
    monkeypatch.delenv("TRR_ASSETS_CONFIG")
    (tmp_path / "config.toml").write_text("[sync]\ninterval_seconds = 9\n")
    assert load_settings(environ={}).sync.interval_seconds == 9


@pytest.mark.parametrize(
    ("data", "env", "names"),
    [
        ({"reconcile": {"grace_seconds": "soon"}}, {}, "reconcile.grace_seconds"),
        ({"reconcile": {"grace_seconds": -1}}, {}, "reconcile.grace_seconds"),
        ({}, {"TRR_ASSETS_RECONCILE_GRACE_SECONDS": "abc"}, "TRR_ASSETS_RECONCILE_GRACE_SECONDS"),
        ({"reconcile": {"orphaned_objects": "nuke"}}, {}, "reconcile.orphaned_objects"),
        ({"reconcile": {"max_delete_fraction": 1.5}}, {}, "reconcile.max_delete_fraction"),
        ({"reconcile": {"schedule": "every hour"}}, {}, "reconcile.schedule"),
        ({"presign": {"expires_seconds": 604801}}, {}, "presign.expires_seconds"),
        ({"presign": {"allowed_content_types": ["images"]}}, {}, "presign.allowed_content_types"),
        ({"s3": {"key_pattern": "^shows/(?P<id>.*)"}}, {}, "s3.key_pattern"),
        ({"s3": {"key_pattern": "(("}}, {}, "s3.key_pattern"),
        ({"s3": {"buckets": ["Not_A_Bucket"]}}, {}, "s3.buckets"),
        ({"s3": {"buckets": "one"}}, {}, "s3.buckets"),
        ({"s3": {"endpoint_url": "localhost:9000"}}, {}, "s3.endpoint_url"),
        ({"deletes": {"all_versions": "yes"}}, {}, "deletes.all_versions"),
        ({}, {"TRR_ASSETS_DELETES_ALL_VERSIONS": "maybe"}, "deletes.all_versions"),
        ({"logging": {"level": "loud"}}, {}, "logging.level"),
        ({"s3": {"bukets": []}}, {}, "s3.bukets"),
        ({"s4": {}}, {}, "s4"),
        ({}, {"TRR_ASSETS_SYNC_INTERVALSECONDS": "5"}, "sync.intervalseconds"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(data, env, names):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data, environ=env)
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_bad_database_url_error_does_not_show_the_url():
    """A rejected database.url is named, but its value (which may hold a password) is not shown."""
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"database": {"url": "mysql://u:hunter2@h/db"}})
    assert "database.url" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[s3\nbuckets = 1")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_settings(path, environ={})


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_replace_revalidates():
    """Settings.replace changes keys and still checks them."""
    s = Settings().replace(s3={"buckets": ["b-one"]})
    assert s.s3.buckets == ["b-one"]
    with pytest.raises(ConfigError):
        s.replace(reconcile={"grace_seconds": -5})


def test_example_config_is_complete_and_valid():
    """config.example.toml parses, and documents every key the code knows."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from trr_assets.config import SECTIONS

    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    data = tomllib.loads(example.read_text())
    settings_from_mapping(data)
    for section, cls in SECTIONS.items():
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section


def test_importing_config_is_cheap():
    """config imports none of boto3, psycopg or APScheduler (the presigner loads it)."""
    code = (
        "import sys, trr_assets.config;"
        " print(sorted(m for m in ('boto3','botocore','psycopg','apscheduler') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
