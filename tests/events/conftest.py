"""The events folder's fixture: moto's SQS beside the in-process S3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest


@pytest.fixture
def sqs(s3: Any) -> Iterator[Any]:
    """moto's SQS, in the same mock as the ``s3`` fixture (so S3 notifies it)."""
    yield boto3.client("sqs", region_name="us-east-1")
