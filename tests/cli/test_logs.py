"""Logging: structured events, and no secret ever reaches the output."""

from __future__ import annotations

import io
import json

import structlog

from trr_assets import logs


def test_json_lines_with_event_name_and_level():
    stream = io.StringIO()
    logs.configure(format="json", level="info", stream=stream)
    structlog.get_logger().info("sync_finished", bucket="b", inserted=3)
    structlog.get_logger().debug("not_shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert (event["event"], event["level"], event["bucket"], event["inserted"]) == ("sync_finished", "info", "b", 3)
    assert event["timestamp"].endswith("Z")


def test_secrets_are_redacted_from_every_value(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXAMPLETOKEN")
    stream = io.StringIO()
    logs.configure(format="json", stream=stream)
    structlog.get_logger().warning(
        "oops",
        url="postgresql://app:hunter2@db.internal:5432/prod",
        dsn="host=db password=hunter3 dbname=x",
        presigned="https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=tok",
        nested={"detail": ["secret is wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "FQoGZXIvYXdzEXAMPLETOKEN"]},
    )
    out = stream.getvalue()
    for secret in ("hunter2", "hunter3", "abcdef0123", "wJalrXUtnFEMI", "FQoGZXIvYXdz", "AKIA%2F", "=tok"):
        assert secret not in out, secret
    assert "db.internal" in out  # the rest of the message survives


def test_exceptions_are_redacted_too():
    stream = io.StringIO()
    logs.configure(format="json", stream=stream)
    try:
        raise RuntimeError("cannot reach postgresql://u:topsecret@h/db")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    assert "topsecret" not in stream.getvalue()
    assert "RuntimeError" in stream.getvalue()


def test_console_format_is_readable():
    """logging.format = "console" writes the event and its fields as text, not a JSON object."""
    stream = io.StringIO()
    logs.configure(format="console", stream=stream)
    structlog.get_logger().info("heartbeat", jobs=3)
    out = stream.getvalue()
    assert "heartbeat" in out and "jobs" in out and not out.lstrip().startswith("{")
