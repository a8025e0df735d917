"""SQS: the one client factory and the calls the listener makes.

Every SQS call trr-assets makes is here, the way every S3 call is in
``storage``: receive (long polling, up to 10 messages), delete in batches,
change visibility in batches. botocore errors leave this module as
``QueueError`` with a one-line message; a queue that does not exist says so
in those words.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.session
import structlog

from trr_assets.config import Settings
from trr_assets.errors import QueueError

log = structlog.get_logger()

MAX_MESSAGES = 10  # SQS's limit per receive and per batch call
_REGION_IN_URL = re.compile(r"^https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")
_MISSING_QUEUE_CODES = frozenset({
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue",
})
_session_lock = threading.Lock()


@dataclass(frozen=True)
class Message:
    """One received message."""

    id: str
    receipt: str  # the receipt handle of this receive (deletes and visibility changes need it)
    body: str
    receive_count: int  # ApproximateReceiveCount: 1 the first time
    sent_at: datetime | None  # SentTimestamp, tz-aware


def region_of(queue_url: str, default: str) -> str:
    """The region a queue URL names (``https://sqs.REGION.amazonaws.com/...``), else ``default``."""
    found = _REGION_IN_URL.match(queue_url)
    return found.group(1) if found else default


def queue_name(queue_url: str) -> str:
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


def make_client(settings: Settings, queue_url: str) -> Any:
    """A botocore SQS client for ``queue_url``: its region, ``events.endpoint_url``
    when set, the retry mode and timeouts of ``[s3]``. Thread-safe to use."""
    s3 = settings.s3
    events = settings.events
    retries: Any = {"mode": s3.retry_mode, "total_max_attempts": s3.max_attempts}  # s3.retry_mode is checked
    config = botocore.config.Config(
        region_name=region_of(queue_url, s3.region or "us-east-1"),
        retries=retries,
        connect_timeout=s3.connect_timeout_seconds,
        # A long poll holds the request open for wait_seconds: read longer than that.
        read_timeout=max(s3.read_timeout_seconds, events.wait_seconds + 10.0),
        max_pool_connections=max(10, 2 * events.receivers + 2),
    )
    with _session_lock:  # boto3's default session is not thread-safe to create clients from
        session = boto3.session.Session(botocore_session=botocore.session.get_session())
        return session.client("sqs", endpoint_url=events.endpoint_url or None, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@contextmanager
def wrap_errors(action: str, queue_url: str) -> Iterator[None]:
    """Turn botocore errors into one-line ``QueueError``."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise wrapped(exc, action, queue_url) from exc


def wrapped(exc: Exception, action: str, queue_url: str) -> QueueError:
    name = queue_name(queue_url)
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        if code in _MISSING_QUEUE_CODES:
            return QueueError(f"sqs: queue {name} does not exist or is not visible ({queue_url})")
        message = exc.response.get("Error", {}).get("Message") or code
        return QueueError(f"sqs: {action} (queue {name}): {code}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return QueueError(f"sqs: {action} (queue {name}): no AWS credentials found")
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return QueueError(f"sqs: {action} (queue {name}): {detail}")


def visibility_timeout_seconds(client: Any, queue_url: str) -> int:
    """The queue's own visibility timeout; also the check that the queue exists."""
    with wrap_errors("read queue attributes", queue_url):
        answer = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])
    return int(answer.get("Attributes", {}).get("VisibilityTimeout", 30))


def receive(
    client: Any, queue_url: str, *, max_messages: int, wait_seconds: int, visibility_timeout_seconds: int
) -> list[Message]:
    """Up to ``max_messages`` (at most 10) messages, waiting up to ``wait_seconds`` for the first."""
    with wrap_errors("receive messages", queue_url):
        answer = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max(1, min(MAX_MESSAGES, max_messages)),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
    return [_message(m) for m in answer.get("Messages", [])]


def _message(raw: dict[str, Any]) -> Message:
    attributes = raw.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    return Message(
        id=raw["MessageId"],
        receipt=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_at=datetime.fromtimestamp(int(sent) / 1000, timezone.utc) if sent else None,
    )


def delete(client: Any, queue_url: str, messages: Sequence[Message]) -> list[str]:
    """Delete messages (DeleteMessageBatch, 10 a call); the ids SQS did not delete."""
    failed: list[str] = []
    for start in range(0, len(messages), MAX_MESSAGES):
        chunk = messages[start : start + MAX_MESSAGES]
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(chunk)]
        with wrap_errors("delete messages", queue_url):
            answer = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        for refused in answer.get("Failed", []):
            message = chunk[int(refused["Id"])]
            failed.append(message.id)
            log.warning("queue_delete_refused", queue=queue_name(queue_url), message_id=message.id,
                        code=refused.get("Code"), detail=refused.get("Message"))
    return failed


def change_visibility(client: Any, queue_url: str, messages: Sequence[Message], timeout_seconds: int) -> None:
    """Set the messages' visibility timeout from now (ChangeMessageVisibilityBatch,
    10 a call): longer while they are being applied, 0 to hand them back."""
    for start in range(0, len(messages), MAX_MESSAGES):
        chunk = messages[start : start + MAX_MESSAGES]
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": timeout_seconds}
            for i, m in enumerate(chunk)
        ]
        with wrap_errors("change message visibility", queue_url):
            answer = client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        for refused in answer.get("Failed", []):
            log.warning("queue_visibility_refused", queue=queue_name(queue_url),
                        message_id=chunk[int(refused["Id"])].id, code=refused.get("Code"))
