"""A process killed with SIGKILL in the middle of its work; restarted, it converges.

The CLI runs as a child process sharing PostgreSQL and S3 (moto in server
mode) with the test. To die at a precise point, the child is started through
a few lines of test code that register a botocore event handler which
SIGKILLs its own process (``tests.support.processes.run_cli_killed_at``): after the
N-th HEAD of a sync, around the N-th DeleteObjects of a drain, between the
copy and the delete of a quarantine. PostgreSQL rolls back whatever the
dead process had not committed; the restarted command must finish the job
with no lost deletion and no duplicate row.
"""

from __future__ import annotations

import pytest

from tests.faults.helpers import add_asset, queue, row_keys
from tests.support.postgres import make_show
from tests.support.processes import child_env, killed, run_cli, run_cli_killed_at, stdout_json, wait_for_sessions_to_end
from tests.support.s3 import TEST_BUCKET
from tests.support.s3_faults import ServerDeletes

pytestmark = pytest.mark.slow  # child processes


def _assert_clean(env: dict[str, str]) -> None:
    """A dry run of reconcile, as the operator would run it, finds no drift."""
    result = run_cli("reconcile", "--exit-code", "--format", "jsonl", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert stdout_json(result)["drift"] is False


def test_sync_killed_mid_pass_keeps_whole_batches_and_the_restart_converges(conn, db_url, s3_server):
    """SIGKILL at the 25th HEAD (batches of 10): the two committed batches stay, whole; the restarted sync
    writes the other 30 rows, never re-creates the queued deletions, and duplicates nothing."""
    show = make_show(conn)
    keys = [f"shows/{show}/{i:03d}.jpg" for i in range(50)]
    for key in keys:
        s3_server.put(key, key.encode())
    deleted = [add_asset(conn, s3_server, show, f"deleted-{i}.jpg") for i in range(3)]
    conn.execute("delete from core.show_assets")  # queued; their objects are still in S3
    env = child_env(
        db_url, s3_server.endpoint,
        TRR_ASSETS_S3_LIST_SHARDS="1", TRR_ASSETS_S3_LIST_CONCURRENCY="1", TRR_ASSETS_S3_HEAD_CONCURRENCY="1",
        TRR_ASSETS_SYNC_BATCH_SIZE="10",
    )

    first = run_cli_killed_at("HeadObject", 25, "sync", env=env)

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    assert row_keys(conn) == keys[:20]

    second = run_cli("sync", env=env)

    assert second.returncode == 0, second.stderr
    report = stdout_json(second)
    assert (report["inserted"], report["unchanged"], report["pending_deletes"]) == (30, 20, 3)
    assert row_keys(conn) == keys
    assert conn.execute("select count(*), count(distinct object_key) from core.show_assets").fetchone() == (50, 50)
    assert set(queue(conn)) == set(deleted)
    assert stdout_json(run_cli("process-deletes", env=env))["deleted"] == 3
    assert s3_server.keys() == set(keys)
    _assert_clean(env)


@pytest.mark.parametrize("when", ["before-send", "after-call"])
def test_drain_killed_around_its_s3_call_loses_no_deletion(conn, db_url, s3_server, monkeypatch, when):
    """SIGKILL just before the 2nd DeleteObjects is sent, or after S3 answered it but before the commit: the
    first batch stays completed, the second batch's entries are all still queued (attempts untouched), and the
    restarted drain deletes every queued object; the assets that kept their rows keep their objects."""
    server_deletes = ServerDeletes(monkeypatch)
    show = make_show(conn)
    gone = [add_asset(conn, s3_server, show, f"{i:03d}.jpg") for i in range(30)]
    kept = [add_asset(conn, s3_server, show, f"kept-{i}.jpg") for i in range(3)]
    conn.execute("delete from core.show_assets where object_key = any(%s)", (gone,))
    env = child_env(db_url, s3_server.endpoint, TRR_ASSETS_DELETES_BATCH_SIZE="10")

    first = run_cli_killed_at("DeleteObjects", 2, "process-deletes", when=when, env=env)

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    queued = queue(conn)
    assert len(queued) == 20 and set(queued.values()) == {("pending", 0)}
    first_batch = set(gone) - set(queued)
    sent_before_kill = set(server_deletes.per_key())
    assert first_batch <= sent_before_kill
    if when == "after-call":  # S3 deleted the 2nd batch; its completion never committed
        assert len(sent_before_kill) == 20
    else:
        assert sent_before_kill == first_batch

    second = run_cli("process-deletes", env=env)

    assert second.returncode == 0, second.stderr
    assert stdout_json(second)["deleted"] == 20
    assert queue(conn) == {}
    assert s3_server.keys() == set(kept)
    assert set(server_deletes.per_key()) == set(gone)  # nothing else was ever deleted
    assert row_keys(conn) == sorted(kept)
    _assert_clean(env)


@pytest.mark.parametrize("operation", ["CopyObject", "DeleteObject"])
def test_repair_killed_mid_quarantine_loses_no_object_and_the_restart_converges(conn, db_url, s3_server, operation):
    """SIGKILL after the 3rd CopyObject (a copy made, its original not deleted yet) or the 3rd DeleteObject of a
    quarantine repair: every orphaned object is still at its key or in quarantine, bytes intact; the restarted
    repair quarantines the rest and deletes the orphaned rows; then reconcile is clean."""
    show = make_show(conn)
    in_sync = [add_asset(conn, s3_server, show, f"ok-{i}.jpg") for i in range(10)]
    orphans = {}
    for i in range(6):
        key = f"shows/{show}/orphan-{i}.jpg"
        orphans[key] = f"orphan {i} bytes".encode()
        s3_server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=orphans[key])
    orphaned_rows = [add_asset(conn, s3_server, show, f"row-only-{i}.jpg") for i in range(3)]
    for key in orphaned_rows:
        s3_server.client.delete_object(Bucket=TEST_BUCKET, Key=key)
    env = child_env(
        db_url, s3_server.endpoint,
        TRR_ASSETS_S3_LIST_SHARDS="1", TRR_ASSETS_S3_LIST_CONCURRENCY="1",
        TRR_ASSETS_RECONCILE_ORPHANED_OBJECTS="quarantine", TRR_ASSETS_RECONCILE_ORPHANED_ROWS="delete",
        TRR_ASSETS_RECONCILE_MAX_DELETE_FRACTION="1",
    )
    quarantine = "quarantine/"

    first = run_cli_killed_at(operation, 3, "reconcile", "--repair", "--format", "jsonl", env=env)

    assert killed(first), first.stderr
    wait_for_sessions_to_end(conn)
    present = s3_server.keys()
    for key, body in orphans.items():
        assert key in present or quarantine + key in present, key
        for where in (key, quarantine + key):
            if where in present:
                assert s3_server.body(where) == body
    assert sum(quarantine + key in present for key in orphans) == 3

    second = run_cli("reconcile", "--repair", "--format", "jsonl", env=env)

    assert second.returncode == 0, second.stderr
    summary = stdout_json(second)
    assert summary["action_errors"] == 0
    assert s3_server.keys() == set(in_sync) | {quarantine + key for key in orphans}
    assert all(s3_server.body(quarantine + key) == body for key, body in orphans.items())
    assert row_keys(conn) == sorted(in_sync)
    assert stdout_json(run_cli("process-deletes", env=env))["pending"] == 0
    _assert_clean(env)
