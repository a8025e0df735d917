"""trr-assets listen: S3 Event Notifications through real moto SQS and S3, into real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import structlog

from tests.events.helpers import (
    body,
    listen_settings,
    make_queue,
    once,
    record,
    s3_test_event,
    send,
    sns,
    visible_and_hidden,
)
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from tests.support.waiting import wait_for
from tests.sync.helpers import put, rows, show_key
from trr_assets import listen


def test_puts_and_removals_from_s3_notifications(db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any) -> None:
    url = make_queue(sqs, s3)
    show = make_show(conn)
    a, b = show_key(show, "a.jpg"), show_key(show, "b c+d.png")
    etag = put(s3, a, b"aaaa", content_type="image/jpeg", owner=str(show))
    put(s3, b, b"bb", content_type="image/png")
    report = once(listen_settings(db_url, url), s3)
    # S3 sends an s3:TestEvent when the notification configuration is saved: ignored
    assert (report.received, report.applied, report.stale, report.ignored, report.failed) == (3, 2, 0, 1, 0)
    assert report.rows["inserted"] == 2 and report.deleted == 3
    assert rows(conn)[a] == (show, 4, etag, "image/jpeg", show)
    assert rows(conn)[b][3] == "image/png"
    assert visible_and_hidden(sqs, url) == (0, 0)

    s3.delete_object(Bucket=TEST_BUCKET, Key=a)
    report = once(listen_settings(db_url, url), s3)  # orphaned_rows = "report": the row stays for reconcile
    assert (report.applied, report.rows.get("left")) == (1, 1)
    assert a in rows(conn)

    put(s3, b, b"bbb")  # a second creation of b; a back, then removed again, now under "delete"
    put(s3, a, b"aaaa")
    s3.delete_object(Bucket=TEST_BUCKET, Key=a)
    report = once(listen_settings(db_url, url, reconcile={"orphaned_rows": "delete"}), s3)
    # moto's records carry no sequencer: of a key's unordered records, the last received counts
    assert (report.applied, report.stale) == (2, 1)
    assert report.rows.get("deleted") == 1 and report.rows.get("updated") == 1
    assert set(rows(conn)) == {b} and rows(conn)[b][1] == 3
    # the row went without an S3 delete queued for its key
    assert conn.execute("select count(*) from trr_assets.delete_queue").fetchone() == (0,)


def test_order_and_duplicates_by_sequencer(db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "x.jpg")
    put(s3, key, b"xx")
    settings = listen_settings(db_url, url, reconcile={"orphaned_rows": "delete"})
    # the creation (sequencer ...B0) twice, and a removal older than it (...A)
    send(sqs, url, body(record(key, "0055AED6DCD90281B0")), body(record(key, "0055AED6DCD90281B0")),
         body(record(key, "0055AED6DCD90281A", name="ObjectRemoved:Delete")))
    report = once(settings, s3)
    assert (report.applied, report.stale) == (1, 2)
    assert key in rows(conn)
    recorded = conn.execute("select sequencer, event_name from trr_assets.event_sequencers").fetchall()
    assert recorded == [("0055AED6DCD90281B0", "ObjectCreated:Put")]
    # each again, one batch at a time: all stale, nothing written
    before = conn.execute("select xmin::text from core.show_assets").fetchall()
    for sequencer, name in [("0055AED6DCD90281B", "ObjectRemoved:Delete"), ("0055AED6DCD90281B0", "ObjectCreated:Put")]:
        send(sqs, url, body(record(key, sequencer, name=name)))
        report = once(settings, s3)
        assert (report.applied, report.stale) == (0, 1)
    assert conn.execute("select xmin::text from core.show_assets").fetchall() == before


def test_sns_envelope_test_event_and_keys_outside(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "a b+c.jpg")
    put(s3, key)
    send(sqs, url,
         sns(body(record(key, "01"))),  # URL-encoded by the helper: "a+b%2Bc.jpg"
         s3_test_event(),
         body(record("elsewhere/k.jpg", "01")),
         body(record(key, "01", bucket="another-bucket")),
         body(record("shows/not-a-show/k.jpg", "01")),
         body(record(show_key(uuid.uuid4(), "k.jpg"), "01")))
    put(s3, show_key(uuid.uuid4(), "k.jpg").replace("shows/", "shows/"), b"")  # no notification configured
    report = once(listen_settings(db_url, url), s3)
    assert report.as_dict()["received"] == 6
    assert (report.applied, report.ignored, report.skipped, report.failed) == (1, 3, 2, 0)
    assert report.skipped_by_reason == {"malformed_show_id": 1, "unknown_show": 1} or \
        report.skipped_by_reason == {"no_match": 1, "unknown_show": 1}
    assert list(rows(conn)) == [key]
    assert visible_and_hidden(sqs, url) == (0, 0)


def test_garbage_is_failed_left_on_the_queue_and_logged_once(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "ok.jpg")
    put(s3, key)
    send(sqs, url, "garbage {", body(record(key, "01")))
    settings = listen_settings(db_url, url, events={"visibility_timeout_seconds": 1})
    with structlog.testing.capture_logs() as logs:
        listener = listen.Listener(settings, once=True, s3=s3)
        first = listener.run()
        assert (first.failed, first.applied) == (1, 1)
        assert visible_and_hidden(sqs, url) == (0, 1)  # left on the queue
        # once it is visible again, a second run of the same listener counts it, logs nothing new
        _wait_visible(sqs, url)
        second = listener.run()
    assert second.failed == 2  # the listener's counts are cumulative
    assert [e["event"] for e in logs].count("listen_message_unparseable") == 1


def _wait_visible(sqs: Any, url: str) -> None:
    wait_for(lambda: visible_and_hidden(sqs, url)[0] > 0, what="the message to be visible again")


def test_missing_queue_is_one_line_error_exit_1(db_url: str, s3: Any, sqs: Any, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from trr_assets import cli

    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[s3]\nbuckets = ["{TEST_BUCKET}"]\n'
        '[events]\nqueue_urls = ["https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue"]\nwait_seconds = 0\n'
    )
    code = cli.main(["--config", str(config), "listen", "--once"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("trr-assets: error: sqs: queue no-such-queue does not exist")
    assert "Traceback" not in "\n".join(err)


def test_empty_queue_list_is_a_config_error(db_url: str, s3: Any) -> None:
    from trr_assets.errors import ConfigError

    with pytest.raises(ConfigError, match="events.queue_urls"):
        listen.run(make_settings(db_url), once=True, s3=s3)


def test_listing_mode_writes_rows_from_the_event_without_a_head(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    """With sync.metadata = "listing", a creation event that gives size and ETag makes its row as sync's
    listing mode does: no HEAD, content type from the key, owner left, the key on the list for a later
    "head" pass, which then fills the row from S3. An event without size and ETag is still HEADed."""
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    a, b = show_key(show, "a.png"), show_key(show, "b.webp")
    etag_a = put(s3, a, b"aaaa", content_type="image/x-custom", owner=str(show))
    put(s3, b, b"bb", content_type="image/x-other")
    heads: list[str] = []
    s3.meta.events.register("after-call.s3.HeadObject", lambda **kw: heads.append("x"))
    send(sqs, url, body(record(a, "0A", size=4, etag=etag_a), record(b, "0B", size=None, etag=None)))

    report = once(listen_settings(db_url, url, sync={"metadata": "listing"}), s3)

    assert (report.applied, report.rows.get("inserted")) == (2, 2)
    assert len(heads) == 1  # b's event says nothing of size and ETag: HEADed
    assert rows(conn)[a] == (show, 4, etag_a, "image/png", None)
    assert rows(conn)[b][3] == "image/x-other"
    pending = conn.execute("select object_key from trr_assets.heads_pending").fetchall()
    assert pending == [(a,)]

    from trr_assets import sync

    filled = sync.run(make_settings(db_url), client=s3)
    assert filled.filled == 1 and len(heads) == 2
    assert rows(conn)[a] == (show, 4, etag_a, "image/x-custom", show)
