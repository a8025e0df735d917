"""The operator commands run in-process against this test's database and moto."""

from __future__ import annotations

import pytest

from tests.support.s3 import TEST_BUCKET


@pytest.fixture
def cli_env(db_url: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TRR_ASSETS_S3_BUCKETS", TEST_BUCKET)
    monkeypatch.setenv("TRR_ASSETS_LOGGING_FORMAT", "json")
    return db_url


