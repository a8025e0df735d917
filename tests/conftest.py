"""The test suite's harness: a real PostgreSQL, S3 from moto, nothing mocked in between.

The fixtures live in ``tests/support/`` and reach every test as pytest
plugins (below): ``postgres`` (a migrated database per test: ``db_url``,
``conn``, ``empty_db_url``, ``made_pools``), ``s3`` (``aws_env``, in-process moto ``s3``,
``settings``), ``moto_server`` (moto over HTTP for child processes:
``s3_server``), ``s3_faults`` (``quick_backoff``). Helpers that are not
fixtures are imported from those modules; each concept's folder keeps its
own in ``helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.s3",
    "tests.support.moto_server",
    "tests.support.s3_faults",
]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults (cli.main configures it)."""
    yield
    structlog.reset_defaults()
