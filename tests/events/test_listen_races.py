"""listen under concurrency and faults: the removal/re-upload race, several
receivers on one key, visibility kept while a batch is slow, a stop that
hands messages back, replays that converge."""

from __future__ import annotations

import random
import threading
from typing import Any

import boto3
import psycopg
import structlog

from tests.events.helpers import body, listen_settings, make_queue, once, record, send, visible_and_hidden
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.sync.helpers import put, rows, show_key
from trr_assets import deletes, listen, sync

WAIT = 30  # seconds: a bound on waiting for a condition, never asserted on


def test_removal_reupload_race_never_deletes_the_new_object(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    """The race: an object removed, then uploaded again under the same key,
    the removal applied after the new upload reached S3. Here the upload
    lands between the removal's live check (S3: gone) and its row delete.
    The row goes, but no S3 delete is queued for the key, so no drain can
    remove the new object; its creation event brings the row back."""
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "race.jpg")
    put(s3, key, b"old")
    settings = listen_settings(db_url, url, reconcile={"orphaned_rows": "delete"})
    send(sqs, url, body(record(key, "0A")))
    assert once(settings, s3).applied == 1
    s3.delete_object(Bucket=TEST_BUCKET, Key=key)

    uploader = boto3.client("s3", region_name="us-east-1")  # not the listener's client: no hook on it
    reuploaded: list[str] = []

    def reupload_after_live_check(http_response: Any, **_: Any) -> None:
        if http_response.status_code == 404 and not reuploaded:  # the one HEAD of the run: the live check
            reuploaded.append(put(uploader, key, b"new object"))

    s3.meta.events.register("after-call.s3.HeadObject", reupload_after_live_check)
    send(sqs, url, body(record(key, "0B", name="ObjectRemoved:Delete")))
    report = once(settings, s3)
    s3.meta.events.unregister("after-call.s3.HeadObject", reupload_after_live_check)
    assert reuploaded, "the live check never ran"
    assert report.rows.get("deleted") == 1 and key not in rows(conn)
    assert conn.execute("select count(*) from trr_assets.delete_queue").fetchone() == (0,)

    drained = deletes.drain(settings, client=s3)  # a drain now finds nothing to delete
    assert drained.as_dict().get("deleted", 0) == 0
    assert s3.get_object(Bucket=TEST_BUCKET, Key=key)["Body"].read() == b"new object"

    send(sqs, url, body(record(key, "0C", size=10, etag=reuploaded[0])))
    assert once(settings, s3).rows.get("inserted") == 1
    assert rows(conn)[key][1:3] == (10, reuploaded[0])


def test_a_removal_whose_object_is_back_leaves_the_row(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "back.jpg")
    put(s3, key)
    settings = listen_settings(db_url, url, reconcile={"orphaned_rows": "delete"})
    send(sqs, url, body(record(key, "01")))
    once(settings, s3)
    send(sqs, url, body(record(key, "02", name="ObjectRemoved:Delete")))  # but the object is there (re-uploaded)
    report = once(settings, s3)
    assert report.rows.get("left") == 1 and key in rows(conn)


def test_several_receivers_on_one_key_apply_the_newest_once(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "busy.jpg")
    put(s3, key)
    sequencers = [f"{n:016X}" for n in random.Random(7).sample(range(1, 10**6), 30)]
    send(sqs, url, *(body(record(key, s)) for s in sequencers))
    settings = listen_settings(db_url, url, events={"receivers": 3, "batch_messages": 1})
    report = once(settings, s3)
    assert report.received == 30 and report.applied + report.stale == 30 and report.applied >= 1
    recorded = conn.execute("select sequencer from trr_assets.event_sequencers").fetchall()
    assert recorded == [(max(sequencers),)]
    assert visible_and_hidden(sqs, url) == (0, 0)


def test_visibility_extended_while_a_batch_is_slow(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "slow.jpg")
    put(s3, key)
    send(sqs, url, body(record(key, "01")))
    extended = threading.Event()
    listener_sqs = boto3.client("sqs", region_name="us-east-1")
    listener_sqs.meta.events.register("before-call.sqs.ChangeMessageVisibilityBatch", lambda **_: extended.set())

    def slow_head(**_: Any) -> None:  # the HEAD answers only once the visibility was extended
        assert extended.wait(WAIT)

    s3.meta.events.register("before-call.s3.HeadObject", slow_head)
    settings = listen_settings(db_url, url, events={"visibility_timeout_seconds": 2})
    with structlog.testing.capture_logs() as logs:
        report = listen.Listener(settings, once=True, s3=s3, sqs=lambda _: listener_sqs).run()
    s3.meta.events.unregister("before-call.s3.HeadObject", slow_head)
    assert report.applied == 1 and report.messages == 1 and report.deleted == 1
    assert any(e["event"] == "listen_visibility_extended" for e in logs)
    assert visible_and_hidden(sqs, url) == (0, 0)


def test_stop_hands_received_messages_back(db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any) -> None:
    """A stop that comes while a receive is in flight: what it brings is not
    applied, and goes back to the queue at once (not after 30 s)."""
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "late.jpg")
    put(s3, key)
    send(sqs, url, body(record(key, "01")), body(record(key, "02")))
    stop = threading.Event()
    listener_sqs = boto3.client("sqs", region_name="us-east-1")
    listener_sqs.meta.events.register("after-call.sqs.ReceiveMessage", lambda **_: stop.set())
    settings = listen_settings(db_url, url)
    report = listen.Listener(settings, stop=stop, s3=s3, sqs=lambda _: listener_sqs).run()
    assert report.applied == 0 and rows(conn) == {}
    assert visible_and_hidden(sqs, url) == (2, 0)


def test_replay_duplicated_and_shuffled_converges_to_a_full_sync(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    """Every event of a history (creations, overwrites, removals), each sent
    twice, all shuffled: the rows are those a full sync makes of the bucket."""
    rnd = random.Random(20)
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    history: list[str] = []
    for i in range(60):
        key = show_key(show, f"{i:03d}.jpg")
        sequencer = 0
        for step in range(rnd.randint(1, 4)):
            sequencer += rnd.randint(1, 1000)
            if step and rnd.random() < 0.4:
                s3.delete_object(Bucket=TEST_BUCKET, Key=key)
                history.append(body(record(key, f"{sequencer:012X}", name="ObjectRemoved:Delete")))
            else:
                data = f"{key} v{step}".encode() * rnd.randint(1, 3)
                etag = put(s3, key, data)
                history.append(body(record(key, f"{sequencer:012X}", size=len(data), etag=etag)))
    replay = history * 2
    rnd.shuffle(replay)
    send(sqs, url, *replay)
    settings = listen_settings(db_url, url, reconcile={"orphaned_rows": "delete"}, events={"receivers": 2})
    report = once(settings, s3)
    assert report.received >= len(replay) and report.failed == 0  # SQS delivers at least once
    listened = rows(conn)
    live = {o["Key"] for o in s3.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])}
    assert set(listened) == live
    after = sync.run(settings, client=s3)
    assert (after.inserted, after.updated) == (0, 0)
    assert rows(conn) == listened
