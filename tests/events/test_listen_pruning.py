"""The listener prunes the sequencer entries older than events.sequencer_retention_days."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from tests.events.helpers import body, listen_settings, make_queue, once, record, send
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.sync.helpers import put, rows, show_key
from trr_assets import applying
from trr_assets.config import settings_from_mapping
from trr_assets.errors import ConfigError


def _entry(conn: psycopg.Connection[Any], key: str, sequencer: str, days_ago: int) -> None:
    conn.execute(
        "insert into trr_assets.event_sequencers (bucket, object_key, sequencer, event_name, applied_at)"
        " values (%s, %s, %s, 'ObjectRemoved:Delete', now() - make_interval(days => %s))",
        (TEST_BUCKET, key, sequencer, days_ago),
    )


def _entries(conn: psycopg.Connection[Any]) -> set[str]:
    return {key for (key,) in conn.execute("select object_key from trr_assets.event_sequencers")}


def test_entries_past_the_retention_are_pruned_as_the_listener_starts(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five entries applied 31 days ago go (in transactions of PRUNE_BATCH, here 2), the ones of 29 days
    and of today stay, with the default retention of 30 days; the count is logged."""
    url = make_queue(sqs, s3, notify=False)
    for i in range(5):
        _entry(conn, f"shows/old-{i}.jpg", "0A", 31)
    _entry(conn, "shows/recent.jpg", "0A", 29)
    _entry(conn, "shows/today.jpg", "0A", 0)
    monkeypatch.setattr(applying, "PRUNE_BATCH", 2)
    with capture_logs() as logs:
        once(listen_settings(db_url, url), s3)
    assert _entries(conn) == {"shows/recent.jpg", "shows/today.jpg"}
    assert [(e["count"], e["retention_days"]) for e in logs if e["event"] == "events_sequencers_pruned"] == [(5, 30)]


def test_a_key_whose_entry_was_pruned_takes_its_next_event(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    """A removal 40 days ago recorded a high sequencer; once pruned, a new upload's event (S3 restarts
    nothing, but a lower sequencer is what a stale entry would have refused) is applied."""
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "again.jpg")
    _entry(conn, key, "FFFF", 40)
    etag = put(s3, key, b"four")
    send(sqs, url, body(record(key, "0001", size=4, etag=etag)))
    report = once(listen_settings(db_url, url), s3)
    assert (report.applied, report.stale) == (1, 0)
    assert key in rows(conn)


def test_a_retention_shorter_than_a_queue_keeps_messages_is_refused() -> None:
    """Under 15 days an entry could be pruned while an older event of its key still waits in SQS."""
    with pytest.raises(ConfigError, match="events.sequencer_retention_days"):
        settings_from_mapping({"events": {"sequencer_retention_days": 14}})
