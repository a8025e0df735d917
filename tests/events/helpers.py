"""Helpers of the event tests: S3 notification bodies as S3 and SNS send them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote_plus

from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import listen
from trr_assets.config import Settings


def record(
    key: str,
    sequencer: str,
    *,
    name: str = "ObjectCreated:Put",
    bucket: str = TEST_BUCKET,
    size: int | None = 4,
    etag: str | None = "8d777f385d3dfec8815d20f7496026dc",
    event_time: datetime | None = None,
    encode: bool = True,
) -> dict[str, Any]:
    """One S3 event record, its key URL-encoded as S3 sends it."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/") if encode else key, "sequencer": sequencer}
    if name.startswith("ObjectCreated:"):
        if size is not None:
            obj["size"] = size
        if etag is not None:
            obj["eTag"] = etag
    when = event_time or datetime.now(timezone.utc)
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "eventName": name,
        "userIdentity": {"principalId": "AWS:EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "trr-assets",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def sns(inner: str) -> str:
    """A body as SNS delivers it to SQS (raw message delivery off)."""
    return json.dumps({
        "Type": "Notification",
        "MessageId": "a1b2c3d4-0000-0000-0000-000000000000",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:trr-assets",
        "Subject": "Amazon S3 Notification",
        "Message": inner,
        "Timestamp": "2026-12-05T00:00:00.000Z",
        "SignatureVersion": "1",
    })


def s3_test_event(bucket: str = TEST_BUCKET) -> str:
    return json.dumps({
        "Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-05T00:00:00.000Z",
        "Bucket": bucket, "RequestId": "EXAMPLE", "HostId": "EXAMPLE",
    })


def make_queue(
    sqs: Any, s3: Any, name: str = "trr-events", *, notify: bool = True, bucket: str = TEST_BUCKET,
    visibility_timeout_seconds: int = 30,
) -> str:
    """An SQS queue; with ``notify`` the bucket sends it its creations and removals."""
    attributes = {"VisibilityTimeout": str(visibility_timeout_seconds)}
    url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    if notify:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"QueueConfigurations": [
                {"Id": "trr-assets", "QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]},
        )
    return url


def send(sqs: Any, url: str, *bodies: str) -> None:
    for text in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=text)


def visible_and_hidden(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def listen_settings(db_url: str, url: str, **sections: dict[str, Any]) -> Settings:
    """Test settings listening to ``url``: no long polling, one receiver."""
    events = {"queue_urls": [url], "wait_seconds": 0, "receivers": 1, **sections.pop("events", {})}
    return make_settings(db_url, events=events, **sections)


def once(settings: Settings, s3: Any) -> listen.ListenReport:
    return listen.run(settings, once=True, s3=s3)
