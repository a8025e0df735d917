"""listen and the worker's listener as child processes (moto in server mode
for S3 and SQS): killed between the commit and the message delete, stopped
by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from tests.events.helpers import body, make_queue, record, send, visible_and_hidden
from tests.support.moto_server import S3Server
from tests.support.postgres import make_show
from tests.support.processes import Process, child_env, run_cli, stdout_json, wait_for_sessions_to_end
from tests.support.waiting import wait_for
from tests.sync.helpers import show_key

pytestmark = pytest.mark.slow  # child processes

_KILL_BEFORE_DELETE = """
import os, signal, sys
from trr_assets import cli, queues

real = queues.make_client

def kill(**_):
    sys.stderr.write("test: SIGKILL before DeleteMessageBatch\\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def make_client(*args, **kwargs):
    client = real(*args, **kwargs)
    client.meta.events.register("before-send.sqs.DeleteMessageBatch", kill)
    return client

queues.make_client = make_client
sys.exit(cli.main(sys.argv[1:]))
"""


def _sqs(endpoint: str) -> Any:
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint)


def _env(db_url: str, endpoint: str, url: str, **extra: str) -> dict[str, str]:
    values = {"TRR_ASSETS_EVENTS_QUEUE_URLS": url, "TRR_ASSETS_EVENTS_ENDPOINT_URL": endpoint,
              "TRR_ASSETS_EVENTS_WAIT_SECONDS": "0", "TRR_ASSETS_EVENTS_RECEIVERS": "1", **extra}
    return child_env(db_url, endpoint, **values)


def test_killed_between_commit_and_delete_the_redelivery_changes_nothing(
    conn: psycopg.Connection[Any], db_url: str, s3_server: S3Server
) -> None:
    sqs = _sqs(s3_server.endpoint)
    url = make_queue(sqs, s3_server.client, "killed", notify=False, visibility_timeout_seconds=1)
    show = make_show(conn)
    key = show_key(show, "k.jpg")
    s3_server.put(key)
    send(sqs, url, body(record(key, "00A1")))
    env = _env(db_url, s3_server.endpoint, url)
    killed = subprocess.run([sys.executable, "-c", _KILL_BEFORE_DELETE, "listen", "--once"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    wait_for_sessions_to_end(conn)
    committed = conn.execute("select object_key, xmin::text from core.show_assets").fetchall()
    assert [k for k, _ in committed] == [key]
    assert conn.execute("select sequencer from trr_assets.event_sequencers").fetchall() == [("00A1",)]
    wait_for(lambda: visible_and_hidden(sqs, url)[0] == 1, what="the message to come back")

    again = run_cli("listen", "--once", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    counts = stdout_json(again)
    assert {k: counts[k] for k in ("received", "applied", "stale", "ignored", "failed")} == {
        "received": 1, "applied": 0, "stale": 1, "ignored": 0, "failed": 0}
    assert conn.execute("select object_key, xmin::text from core.show_assets").fetchall() == committed
    assert visible_and_hidden(sqs, url) == (0, 0)


def test_listen_stops_cleanly_on_sigterm(
    conn: psycopg.Connection[Any], db_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    sqs = _sqs(s3_server.endpoint)
    url = make_queue(sqs, s3_server.client, "notified")  # S3 itself sends the events
    show = make_show(conn)
    key = show_key(show, "live.jpg")
    env = _env(db_url, s3_server.endpoint, url, TRR_ASSETS_EVENTS_WAIT_SECONDS="1")
    process = Process(["listen"], env, tmp_path / "listen.log")
    try:
        wait_for(lambda: process.events("listen_started"), what="the listener to start", watch=[process])
        s3_server.put(key)
        wait_for(lambda: conn.execute("select count(*) from core.show_assets").fetchone() == (1,),
                 what="the upload's row", watch=[process])
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.proc.stdout is not None
        counts = json.loads(process.proc.stdout.read().strip().splitlines()[-1])
        assert counts["applied"] == 1 and counts["failed"] == 0
    finally:
        process.stop()


def test_worker_listens_when_queues_are_set(
    conn: psycopg.Connection[Any], db_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    sqs = _sqs(s3_server.endpoint)
    url = make_queue(sqs, s3_server.client, "worker-events")
    show = make_show(conn)
    key = show_key(show, "w.jpg")
    env = _env(db_url, s3_server.endpoint, url, TRR_ASSETS_EVENTS_WAIT_SECONDS="1",
               TRR_ASSETS_SYNC_INTERVAL_SECONDS="3600", TRR_ASSETS_RECONCILE_SCHEDULE="0 0 1 1 *")
    process = Process(["worker"], env, tmp_path / "worker.log")
    try:
        wait_for(lambda: process.events("listen_started"), what="the worker's listener", watch=[process])
        s3_server.put(key)
        wait_for(lambda: conn.execute("select object_key from core.show_assets").fetchall() == [(key,)],
                 what="the upload's row", watch=[process])
        assert process.events("listen_batch_applied", job="listen")
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.events("worker_stopped")
    finally:
        process.stop()
