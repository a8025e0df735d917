"""S3 and settings for tests: fake AWS credentials, moto in-process, settings.

Fixtures: ``aws_env`` (fixed fake credentials, nothing from the machine),
``s3`` (moto's in-process S3 with the test bucket), ``settings`` (this
test's database and the test bucket). Helper: ``make_settings``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from trr_assets.config import Settings, settings_from_mapping

TEST_BUCKET = "trr-test-assets"
AWS_KEY_ID = "AKIATESTTESTTESTTEST"
AWS_SECRET = "test-secret-key-never-logged-0123456789"
# The AWS part of a child process's environment: these credentials, no files.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/trr-assets-test",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/trr-assets-test",
}


def static_aws_credentials(env: pytest.MonkeyPatch) -> None:
    """Fixed fake credentials, and no profile, endpoint or token from the machine."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        env.delenv(name, raising=False)
    env.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    env.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    env.setenv("AWS_CONFIG_FILE", FAKE_AWS["AWS_CONFIG_FILE"])
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", FAKE_AWS["AWS_SHARED_CREDENTIALS_FILE"])


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake, fixed AWS credentials; nothing from the developer's machine leaks in."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("TRR_ASSETS_") and name != "TRR_ASSETS_TEST_DATABASE_URL":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """moto's in-process S3 with the test bucket created; yields a client."""
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=TEST_BUCKET)
        yield client


def make_settings(db_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for tests: this database, the test bucket, no grace."""
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "s3": {"buckets": [TEST_BUCKET], "bucket_regions": {TEST_BUCKET: "us-east-1"}},
        "reconcile": {"grace_seconds": 0},
        "logging": {"format": "json"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return settings_from_mapping(data)


@pytest.fixture
def settings(db_url: str, aws_env: None) -> Settings:
    """Test settings (``make_settings``) for this test's own database."""
    return make_settings(db_url)
