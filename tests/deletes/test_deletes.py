"""Paired deletes: every delete path enqueues, the drain deletes what S3
confirms, retries what it refuses, and gives up (reported, requeueable) at
max attempts. Real PostgreSQL, moto S3."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
import structlog

from tests.deletes.helpers import DeleteCalls, add_asset, add_rows, object_body, object_exists, queue, refuse_keys
from tests.support.postgres import as_role, make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import cli, deletes, storage

# --- every delete path enqueues ------------------------------------------------


def test_app_delete_by_id_as_service_role_ends_with_object_gone(conn, settings, s3):
    """The app's `delete from core.show_assets where id = ...` (service role, RLS on) queues the object; a drain
    deletes it."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    keep, kept_key = add_asset(conn, s3, show, "b.jpg")
    with as_role(conn, "service_role"):
        conn.execute("delete from core.show_assets where id = %s", (asset,))
    [entry] = queue(conn)
    assert (entry["bucket"], entry["object_key"], entry["asset_id"], entry["state"]) == (
        TEST_BUCKET,
        key,
        asset,
        "pending",
    )

    report = deletes.drain(settings)

    assert (report.deleted, report.pending, report.failed, report.requests) == (1, 0, 0, 1)
    assert not object_exists(s3, key)
    assert object_exists(s3, kept_key)
    assert queue(conn) == []


def test_operator_bulk_sql_delete_ends_with_every_object_gone(conn, settings, s3):
    """An operator's one-statement bulk delete queues every row's object; one drain deletes them all."""
    show = make_show(conn)
    keys = [add_asset(conn, s3, show, f"{i}.jpg")[1] for i in range(5)]
    conn.execute("delete from core.show_assets where bucket = %s", (TEST_BUCKET,))
    assert len(queue(conn)) == 5

    report = deletes.drain(settings)

    assert report.deleted == 5
    assert [k for k in keys if object_exists(s3, k)] == []
    assert queue(conn) == []


def test_cascade_from_deleted_show_ends_with_objects_gone(conn, settings, s3):
    """Deleting a core.shows row cascades to its assets, whose objects are queued and deleted; other shows' are not."""
    show, other = make_show(conn), make_show(conn)
    keys = [add_asset(conn, s3, show, f"{i}.png")[1] for i in range(3)]
    _, other_key = add_asset(conn, s3, other, "x.png")
    conn.execute("delete from core.shows where id = %s", (show,))
    assert sorted(e["object_key"] for e in queue(conn)) == sorted(keys)

    deletes.drain(settings)

    assert [k for k in keys if object_exists(s3, k)] == []
    assert object_exists(s3, other_key)


def test_truncate_cascade_from_shows_enqueues_every_row(conn, settings, s3):
    """TRUNCATE fires no DELETE trigger; the TRUNCATE trigger still queues every row, so the objects go too."""
    show = make_show(conn)
    keys = [add_asset(conn, s3, show, f"{i}.png")[1] for i in range(3)]
    conn.execute("truncate core.shows cascade")
    assert sorted(e["object_key"] for e in queue(conn)) == sorted(keys)

    deletes.drain(settings)

    assert [k for k in keys if object_exists(s3, k)] == []


def test_rolled_back_delete_enqueues_nothing(conn, settings, s3):
    """A row delete whose transaction rolls back leaves no queue entry and the object in place."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    with pytest.raises(RuntimeError):
        with conn.transaction():
            conn.execute("delete from core.show_assets where id = %s", (asset,))
            assert len(queue(conn)) == 1  # visible inside the transaction ...
            raise RuntimeError("roll back")
    assert queue(conn) == []  # ... and gone with it

    report = deletes.drain(settings)

    assert (report.deleted, report.requests) == (0, 0)
    assert object_exists(s3, key)


# --- batching ------------------------------------------------------------------


def test_2500_queued_deletions_drain_in_exactly_three_requests(conn, settings, s3):
    """2,500 queued keys go out as 3 DeleteObjects requests of at most 1,000 keys, each key once, all objects gone."""
    show = make_show(conn)
    keys = add_rows(conn, show, 2500)
    for key in keys:
        s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"")
    conn.execute("delete from core.show_assets where show_id = %s", (show,))
    client = storage.make_client(settings.s3)
    calls = DeleteCalls(client)

    report = deletes.drain(settings, client=client)

    assert len(calls.calls) == 3 and report.requests == 3
    assert max(len(c) for c in calls.calls) <= 1000
    assert sorted(calls.keys) == sorted(keys)
    assert report.deleted == 2500
    assert s3.list_objects_v2(Bucket=TEST_BUCKET).get("KeyCount") == 0
    assert queue(conn) == []


def test_limit_takes_at_most_that_many_entries(conn, settings, s3):
    """drain(limit=N) deletes N entries and leaves the rest pending."""
    show = make_show(conn)
    add_rows(conn, show, 7)
    conn.execute("delete from core.show_assets")

    report = deletes.drain(settings, limit=3)

    assert (report.deleted, report.pending) == (3, 4)


def test_each_bucket_gets_its_own_request(conn, db_url, aws_env, s3):
    """Entries of two buckets are grouped per bucket: one request each, each object deleted from its own bucket."""
    s3.create_bucket(Bucket="trr-second-bucket")
    settings = make_settings(db_url)
    show = make_show(conn)
    _, key_a = add_asset(conn, s3, show, "a.jpg")
    _, key_b = add_asset(conn, s3, show, "a.jpg", bucket="trr-second-bucket")
    conn.execute("delete from core.show_assets")
    client = storage.make_client(settings.s3)
    calls = DeleteCalls(client)

    deletes.drain(settings, client=client)

    assert len(calls.calls) == 2
    assert not object_exists(s3, key_a) and not object_exists(s3, key_b, bucket="trr-second-bucket")


def test_key_that_xml_cannot_carry_does_not_fail_its_batch(conn, settings, s3):
    """A key with a control character (invalid in XML) is deleted alone; the rest of its batch still goes out
    together."""
    show = make_show(conn)
    _, plain = add_asset(conn, s3, show, "plain.jpg")
    _, odd = add_asset(conn, s3, show, "odd\x01name.jpg")
    conn.execute("delete from core.show_assets")

    report = deletes.drain(settings)

    assert (report.deleted, report.errors) == (2, 0)
    assert not object_exists(s3, plain) and not object_exists(s3, odd)


# --- per-key failures, backoff, give up, requeue -----------------------------------


def test_per_key_error_is_retried_with_stored_backoff_while_others_complete(conn, db_url, aws_env, s3):
    """A key S3 refuses stays queued with attempts+1, last_error and next_attempt_at = now + base * 2^(n-1); the others
    complete."""
    settings = make_settings(db_url, deletes={"backoff_base_seconds": 30, "backoff_max_seconds": 100})
    show = make_show(conn)
    keys = [add_asset(conn, s3, show, f"{i}.jpg")[1] for i in range(4)]
    conn.execute("delete from core.show_assets")
    client = storage.make_client(settings.s3)
    refuse_keys(client, {keys[1]})

    with structlog.testing.capture_logs() as logs:
        first = deletes.drain(settings, client=client)

    assert (first.deleted, first.retried, first.pending, first.failed) == (3, 1, 1, 0)
    [entry] = queue(conn)
    assert entry["object_key"] == keys[1] and entry["state"] == "pending" and entry["attempts"] == 1
    assert "AccessDenied" in entry["last_error"]
    assert entry["next_attempt_at"] - entry["updated_at"] == timedelta(seconds=30)
    assert any(e["event"] == "delete_retry_scheduled" and e["key"] == keys[1] for e in logs)

    # Not due yet: a drain leaves it alone.
    assert deletes.drain(settings, client=client).requests == 0
    conn.execute("update trr_assets.delete_queue set next_attempt_at = now()")
    deletes.drain(settings, client=client)
    [entry] = queue(conn)
    assert entry["attempts"] == 2
    assert entry["next_attempt_at"] - entry["updated_at"] == timedelta(seconds=60)

    conn.execute("update trr_assets.delete_queue set next_attempt_at = now()")
    deletes.drain(settings, client=client)
    [entry] = queue(conn)
    assert entry["next_attempt_at"] - entry["updated_at"] == timedelta(seconds=100)  # capped at backoff_max

    # S3 accepts it again: the next due drain completes it.
    conn.execute("update trr_assets.delete_queue set next_attempt_at = now()")
    last = deletes.drain(settings)
    assert (last.deleted, last.pending) == (1, 0)
    assert queue(conn) == []


def test_max_attempts_ends_in_failed_reported_entry_then_requeue_completes_it(conn, db_url, aws_env, s3):
    """At max_attempts the entry is marked failed, logged and counted; it is not retried until requeued, then it
    completes."""
    settings = make_settings(db_url, deletes={"max_attempts": 2, "backoff_base_seconds": 0})
    show = make_show(conn)
    _, key = add_asset(conn, s3, show, "stuck.jpg")
    conn.execute("delete from core.show_assets")
    refusing = storage.make_client(settings.s3)
    refuse_keys(refusing, {key})

    first = deletes.drain(settings, client=refusing)
    assert (first.retried, first.gave_up, first.pending) == (1, 0, 1)  # one attempt per run, even with no backoff
    with structlog.testing.capture_logs() as logs:
        second = deletes.drain(settings, client=refusing)
    assert (second.gave_up, second.failed, second.pending) == (1, 1, 0)
    [entry] = queue(conn)
    assert (entry["state"], entry["attempts"]) == ("failed", 2)
    assert [e for e in logs if e["event"] == "delete_gave_up"][0]["key"] == key

    third = deletes.drain(settings)  # failed entries are not retried on their own
    assert (third.requests, third.failed) == (0, 1)

    assert deletes.requeue_failed(settings) == 1
    [entry] = queue(conn)
    assert (entry["state"], entry["attempts"]) == ("pending", 0)
    final = deletes.drain(settings)
    assert (final.deleted, final.failed, final.pending) == (1, 0, 0)
    assert queue(conn) == []


def test_whole_request_failure_counts_an_attempt_for_each_of_its_keys(conn, settings, s3):
    """A DeleteObjects request that fails as a whole (here: no such bucket) costs each of its keys one attempt; other
    buckets' keys complete."""
    show = make_show(conn)
    _, good = add_asset(conn, s3, show, "good.jpg")
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'trr-no-such-bucket', 'shows/x/1'),"
        " (%s, 'trr-no-such-bucket', 'shows/x/2')",
        (show, show),
    )
    conn.execute("delete from core.show_assets")

    report = deletes.drain(settings)

    assert (report.deleted, report.retried) == (1, 2)
    assert not object_exists(s3, good)
    entries = queue(conn)
    assert [(e["bucket"], e["attempts"]) for e in entries] == [("trr-no-such-bucket", 1)] * 2
    assert all("NoSuchBucket" in e["last_error"] for e in entries)


def test_deleting_a_key_already_gone_completes(conn, settings, s3):
    """A queued key with no object (deleted earlier, or never uploaded) is confirmed by S3 and completed."""
    show = make_show(conn)
    add_rows(conn, show, 2)
    conn.execute("delete from core.show_assets")

    report = deletes.drain(settings)

    assert (report.deleted, report.errors) == (2, 0)
    assert queue(conn) == []


# --- no collateral ---------------------------------------------------------------


def test_reupload_before_drain_cancels_deletion_and_keeps_new_object(conn, settings, s3):
    """A new row for a key whose deletion is queued removes the entry; the new object survives the drain."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    assert len(queue(conn)) == 1
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)", (show, TEST_BUCKET, key)
    )
    s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"new")
    assert queue(conn) == []

    report = deletes.drain(settings)

    assert report.requests == 0
    assert object_body(s3, key) == b"new"


def test_update_moving_a_row_onto_a_queued_key_cancels_its_deletion(conn, settings, s3):
    """An UPDATE that points a row at a key whose deletion is queued cancels that deletion."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    other, _ = add_asset(conn, s3, show, "b.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    conn.execute("update core.show_assets set object_key = %s where id = %s", (key, other))
    assert queue(conn) == []

    deletes.drain(settings)

    assert object_exists(s3, key)


def test_entry_whose_key_has_a_row_is_completed_without_deleting_the_object(conn, settings, s3):
    """Defence in depth: if a row exists for a queued key (triggers bypassed), the drain skips the S3 delete and drops
    the entry."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))
    conn.execute("alter table core.show_assets disable trigger show_assets_cancel_delete")
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s)", (show, TEST_BUCKET, key)
    )
    conn.execute("alter table core.show_assets enable trigger show_assets_cancel_delete")
    assert len(queue(conn)) == 1

    with structlog.testing.capture_logs() as logs:
        report = deletes.drain(settings)

    assert (report.skipped, report.deleted, report.requests) == (1, 0, 0)
    assert object_exists(s3, key)
    assert queue(conn) == []
    assert any(e["event"] == "delete_skipped_live_row" for e in logs)


# --- versioned buckets -------------------------------------------------------------


@pytest.fixture
def versioned(s3):
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def _versions(s3, key):
    page = s3.list_object_versions(Bucket=TEST_BUCKET, Prefix=key)
    return [v for v in page.get("Versions", []) if v["Key"] == key], [
        m for m in page.get("DeleteMarkers", []) if m["Key"] == key
    ]


def test_versioned_bucket_default_leaves_a_delete_marker(conn, settings, versioned):
    """deletes.all_versions = false: the key is deleted with a delete marker; older versions stay."""
    show = make_show(conn)
    asset, key = add_asset(conn, versioned, show, "a.jpg", body=b"v1")
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"v2")
    conn.execute("delete from core.show_assets where id = %s", (asset,))

    assert deletes.drain(settings).deleted == 1

    assert not object_exists(versioned, key)
    kept, markers = _versions(versioned, key)
    assert len(kept) == 2 and len(markers) == 1


def test_versioned_bucket_all_versions_removes_every_version_and_marker(conn, db_url, aws_env, versioned):
    """deletes.all_versions = true: every version and delete marker of exactly that key is removed; a key it prefixes
    is not."""
    settings = make_settings(db_url, deletes={"all_versions": True})
    show = make_show(conn)
    asset, key = add_asset(conn, versioned, show, "a.jpg", body=b"v1")
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"v2")
    versioned.delete_object(Bucket=TEST_BUCKET, Key=key)  # a marker ...
    versioned.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"v3")  # ... under a live version
    _, longer = add_asset(conn, versioned, show, "a.jpg.thumb")
    second, second_key = add_asset(conn, versioned, show, "b.jpg", body=b"b1")
    versioned.put_object(Bucket=TEST_BUCKET, Key=second_key, Body=b"b2")
    conn.execute("delete from core.show_assets where id in (%s, %s)", (asset, second))

    report = deletes.drain(settings)

    assert (report.deleted, report.errors) == (2, 0)
    assert _versions(versioned, key) == ([], [])
    assert _versions(versioned, second_key) == ([], [])
    assert object_exists(versioned, longer)
    assert queue(conn) == []


def test_all_versions_on_an_unversioned_bucket_deletes_the_object(conn, db_url, aws_env, s3):
    """deletes.all_versions = true also works on a bucket without versioning (its one version is "null")."""
    settings = make_settings(db_url, deletes={"all_versions": True})
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets where id = %s", (asset,))

    report = deletes.drain(settings)

    assert (report.deleted, report.errors) == (1, 0)
    assert not object_exists(s3, key)


def test_all_versions_listing_failure_counts_an_attempt(conn, db_url, aws_env, s3):
    """deletes.all_versions = true: a key whose versions cannot be listed (no such bucket) is retried, not completed."""
    settings = make_settings(db_url, deletes={"all_versions": True})
    show = make_show(conn)
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'trr-no-such-bucket', 'shows/x/1')",
        (show,),
    )
    conn.execute("delete from core.show_assets")

    report = deletes.drain(settings)

    assert (report.deleted, report.retried, report.requests) == (0, 1, 0)
    [entry] = queue(conn)
    assert entry["attempts"] == 1 and "does not exist" in entry["last_error"]


# --- delete_assets and the CLI -------------------------------------------------------


def test_delete_assets_drains_only_its_own_entries(conn, settings, s3):
    """delete_assets deletes the rows and drains just their entries; other queued deletions wait for the worker."""
    show = make_show(conn)
    asset, key = add_asset(conn, s3, show, "mine.jpg")
    other, other_key = add_asset(conn, s3, show, "queued.jpg")
    conn.execute("delete from core.show_assets where id = %s", (other,))

    report = deletes.delete_assets(settings, [str(asset)])

    assert (report.deleted_rows, report.deleted_objects, report.pending, report.not_found) == (1, 1, 0, [])
    assert not object_exists(s3, key)
    assert object_exists(s3, other_key)
    assert [e["object_key"] for e in queue(conn)] == [other_key]


@pytest.fixture
def cli_env(monkeypatch, tmp_path, db_url, aws_env):
    """Environment for cli.main; structlog's setup is put back afterwards
    (main binds it to the sys.stderr of the moment, which pytest closes)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TRR_ASSETS_S3_BUCKETS", TEST_BUCKET)
    monkeypatch.setenv("TRR_ASSETS_LOGGING_FORMAT", "json")
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_delete_cli_prints_spec_json_and_reports_unknown_ids(conn, s3, cli_env, capsys):
    """`trr-assets delete` deletes the known ids' rows and objects, lists unknown and malformed ids, exits 0."""
    show = make_show(conn)
    first, first_key = add_asset(conn, s3, show, "1.jpg")
    second, second_key = add_asset(conn, s3, show, "2.jpg")
    unknown = "00000000-0000-4000-8000-000000000000"

    code = cli.main(["delete", str(first), unknown, "not-a-uuid", str(second)])

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {k: out[k] for k in ("deleted_rows", "deleted_objects", "pending")} == {
        "deleted_rows": 2, "deleted_objects": 2, "pending": 0
    }
    assert out["not_found"] == [unknown, "not-a-uuid"]
    assert not object_exists(s3, first_key) and not object_exists(s3, second_key)
    assert conn.execute("select count(*) from core.show_assets").fetchone()[0] == 0


def test_process_deletes_cli_prints_spec_json(conn, s3, cli_env, capsys):
    """`trr-assets process-deletes` drains the queue and prints {"deleted", "failed", "pending", ...}."""
    show = make_show(conn)
    keys = [add_asset(conn, s3, show, f"{i}.jpg")[1] for i in range(3)]
    conn.execute("delete from core.show_assets")

    code = cli.main(["process-deletes"])

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out["deleted"], out["failed"], out["pending"]) == (3, 0, 0)
    assert [k for k in keys if object_exists(s3, k)] == []


def test_process_deletes_requeue_failed_flag_requeues_and_drains(conn, s3, cli_env, capsys):
    """`process-deletes --requeue-failed` turns failed entries pending again and drains them in the same run."""
    show = make_show(conn)
    _, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets")
    conn.execute("update trr_assets.delete_queue set state = 'failed', attempts = 12, last_error = 'AccessDenied'")

    assert cli.main(["process-deletes"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    assert object_exists(s3, key)

    code = cli.main(["process-deletes", "--requeue-failed"])

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out["requeued"], out["deleted"], out["failed"]) == (1, 1, 0)
    assert not object_exists(s3, key)


def test_requeue_sql_documented_in_docs_works(conn, settings, s3):
    """The SQL docs/deletes.md gives operators for requeueing failed entries makes them drainable again."""
    show = make_show(conn)
    _, key = add_asset(conn, s3, show, "a.jpg")
    conn.execute("delete from core.show_assets")
    conn.execute("update trr_assets.delete_queue set state = 'failed', attempts = 12")
    doc = (__import__("pathlib").Path(__file__).parents[2] / "docs" / "deletes.md").read_text()
    section = doc.split("**Failed entries.**", 1)[1]
    statement = section.split("```sql", 1)[1].split("```", 1)[0]

    conn.execute(statement)

    assert deletes.drain(settings).deleted == 1
    assert not object_exists(s3, key)


def test_database_errors_are_wrapped(settings, s3):
    """An unreachable database surfaces as one-line DatabaseError, not a psycopg exception."""
    from trr_assets.errors import DatabaseError

    broken = settings.replace(database={"url": "postgresql://nobody@127.0.0.1:1/none", "connect_timeout_seconds": 1})
    with pytest.raises(DatabaseError) as caught:
        deletes.drain(broken)
    assert not isinstance(caught.value, psycopg.Error)
    assert "\n" not in str(caught.value)


def test_process_deletes_cli_exits_1_when_s3_refuses_and_keeps_the_entry(conn, s3, cli_env, capsys):
    """When S3 refuses deletions in a run, process-deletes still prints its JSON, exits 1, and the entry stays
    queued."""
    show = make_show(conn)
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key) values (%s, 'trr-no-such-bucket', 'shows/x/1')",
        (show,),
    )
    conn.execute("delete from core.show_assets")

    code = cli.main(["process-deletes"])

    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 1
    assert (out["deleted"], out["retried"], out["pending"]) == (0, 1, 1)
    assert "refused 1 deletion" in captured.err
    assert len(queue(conn)) == 1


def test_should_stop_ends_the_drain_between_batches(conn, db_url, aws_env, s3):
    """The worker's stop flag is asked between batches: a batch once taken is finished, the next is not taken."""
    settings = make_settings(db_url, deletes={"batch_size": 2})
    show = make_show(conn)
    add_rows(conn, show, 5)
    conn.execute("delete from core.show_assets")
    asked: list[int] = []

    def stop_after_first_batch() -> bool:
        asked.append(1)
        return len(asked) > 1

    report = deletes.drain(settings, should_stop=stop_after_first_batch)

    assert (report.deleted, report.pending, report.requests) == (2, 3, 1)
