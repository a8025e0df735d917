"""S3 Event Notifications: parse queue messages into events (no I/O).

A message body is S3's own notification (``{"Records": [...]}``), the same
wrapped by SNS (``{"Type": "Notification", "Message": "<S3's JSON>"}``), or
S3's ``s3:TestEvent`` (sent when a notification configuration is saved).
Keys arrive URL-encoded the way HTML forms encode them (``+`` is a space,
``%2B`` a plus).

Per key, S3 gives each change a ``sequencer``: upper-case hex that grows
with the key's changes. Two sequencers compare the way AWS documents: pad
the shorter with zeros on the right, then compare as strings
(``sequencer_newer``). Sequencers of different keys mean nothing to each
other.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from trr_assets.errors import MessageError

_HEX = re.compile(r"[0-9A-Fa-f]+")


class Kind(enum.Enum):
    CREATED = "created"  # ObjectCreated:*
    REMOVED = "removed"  # ObjectRemoved:*, LifecycleExpiration:Delete*
    OTHER = "other"  # restores, tagging, ACLs, replication, transitions: no row changes


@dataclass(frozen=True)
class Event:
    """One record of a notification, about one key."""

    bucket: str
    key: str  # decoded
    sequencer: str  # upper-case hex; "" when the record has none (some S3-compatible stores)
    name: str  # eventName, e.g. "ObjectCreated:Put"
    kind: Kind
    event_time: datetime | None  # tz-aware
    size: int | None = None  # creations only
    etag: str | None = None  # creations only, without quotes


@dataclass(frozen=True)
class Parsed:
    """What one message holds: its events, or S3's test event."""

    events: tuple[Event, ...] = ()
    test_event: bool = False


def kind_of(name: str) -> Kind:
    if name.startswith("ObjectCreated:"):
        return Kind.CREATED
    if name.startswith("ObjectRemoved:") or name.startswith("LifecycleExpiration:Delete"):
        return Kind.REMOVED
    return Kind.OTHER


def decode_key(raw: str) -> str:
    """An event's object key as S3 names it (``+`` is a space, ``%2B`` a plus)."""
    return unquote_plus(raw, encoding="utf-8", errors="strict")


def sequencer_newer(candidate: str, applied: str) -> bool:
    """Whether ``candidate`` comes after ``applied`` (two sequencers of one key)."""
    width = max(len(candidate), len(applied))
    return candidate.upper().ljust(width, "0") > applied.upper().ljust(width, "0")


def sequencer_order(sequencer: str, width: int) -> str:
    """A sort key: sequencers padded to ``width`` compare as ``sequencer_newer`` does."""
    return sequencer.upper().ljust(width, "0")


def parse_message(body: str) -> Parsed:
    """The events of one message body; ``MessageError`` (one line) when it is not a notification."""
    document = _json(body, "message body")
    if isinstance(document, dict) and document.get("Type") == "Notification" and "Message" in document:
        inner = document["Message"]
        if not isinstance(inner, str):
            raise MessageError("SNS notification whose Message is not a string")
        document = _json(inner, "SNS Message")
    if not isinstance(document, dict):
        raise MessageError("message body is not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return Parsed(test_event=True)
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise MessageError("message is not an S3 event notification (no Records)")
    return Parsed(events=tuple(_event(record, i) for i, record in enumerate(records)))


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise MessageError(f"{what} is not JSON ({type(exc).__name__})") from None


def _event(record: Any, index: int) -> Event:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise MessageError(f"{where} is not a JSON object")
    name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(name, str) or not isinstance(s3, dict):
        raise MessageError(f"{where} is not an S3 event record (no eventName or s3)")
    bucket = _field(s3, "bucket", "name", where)
    obj = s3.get("object")
    if not isinstance(obj, dict):
        raise MessageError(f"{where} has no s3.object")
    raw_key = obj.get("key")
    if not isinstance(raw_key, str) or not raw_key:
        raise MessageError(f"{where} has no s3.object.key")
    try:
        key = decode_key(raw_key)
    except UnicodeDecodeError:
        raise MessageError(f"{where}: s3.object.key is not URL-encoded UTF-8") from None
    sequencer = obj.get("sequencer", "")
    if not isinstance(sequencer, str) or sequencer and not _HEX.fullmatch(sequencer):
        raise MessageError(f"{where}: s3.object.sequencer is not hex")
    kind = kind_of(name)
    size = etag = None
    if kind is Kind.CREATED:
        raw_size = obj.get("size")
        size = raw_size if isinstance(raw_size, int) and not isinstance(raw_size, bool) and raw_size >= 0 else None
        raw_etag = obj.get("eTag")
        etag = raw_etag.strip('"') if isinstance(raw_etag, str) and raw_etag.strip('"') else None
    return Event(
        bucket=bucket,
        key=key,
        sequencer=sequencer.upper(),
        name=name,
        kind=kind,
        event_time=_time(record.get("eventTime")),
        size=size,
        etag=etag,
    )


def _field(mapping: dict[str, Any], outer: str, inner: str, where: str) -> str:
    part = mapping.get(outer)
    value = part.get(inner) if isinstance(part, dict) else None
    if not isinstance(value, str) or not value:
        raise MessageError(f"{where} has no s3.{outer}.{inner}")
    return value


def _time(value: Any) -> datetime | None:
    """eventTime (ISO 8601, "1970-01-01T00:00:00.000Z"), or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def newest_per_key(events: Iterable[Event]) -> tuple[list[Event], int]:
    """The newest event of each (bucket, key), in (bucket, key) order, and
    how many were left out (older than, or the same as, another of the batch).

    A record without a sequencer cannot be ordered: of those, the last one
    given wins, and a sequenced event of the same key wins over any of them.
    """
    newest: dict[tuple[str, str], Event] = {}
    dropped = 0
    for event in events:
        slot = (event.bucket, event.key)
        held = newest.get(slot)
        if held is not None:
            dropped += 1
            if held.sequencer and not (event.sequencer and sequencer_newer(event.sequencer, held.sequencer)):
                continue
        newest[slot] = event
    return [newest[slot] for slot in sorted(newest)], dropped
