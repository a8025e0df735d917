"""The event listener's benchmark: lag, throughput, replay convergence.

``python -m bench.listening [--events N] [--rounds R]`` (not part of the
timed table: it measures a long-running listener). Everything runs against a
throwaway PostgreSQL and moto's server (S3 and SQS over HTTP, in a process
of its own), with one ``listen.Listener`` in this process:

- lag: objects PUT at a steady rate into a bucket whose notifications go to
  the queue; the time from each PUT's answer to its row being visible in
  the table (a poller reads the table every 10 ms), per round: p50, p99.
  Target: p99 <= 2 s.
- throughput: N notifications of new objects, sent beforehand, applied by
  ``listen --once``: events per second from the first receive to the last
  delete, for new keys (each HEADed, against ``bench.head_server``, which
  answers every HEAD at once) and for the same notifications again on fresh
  sequencers with the rows already current (no HEAD: the event says what
  the row holds). The queue is ``bench.sqs_server`` (moto's SQS walks the
  whole queue on every receive). Target: >= 1,000 events/s.
- replay: N events (objects seeded straight into moto's S3) plus removals of
  a tenth of the keys, duplicated and shuffled, into a fresh database
  (queue: ``bench.sqs_server``; S3: moto); a full sync afterwards must find
  nothing to insert or update, and the rows must equal those a full sync
  makes on its own.

Prints one JSON line per measurement and a summary with medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import boto3
import psycopg

from bench.env import Env, fake_aws_environment
from trr_assets import listen, storage, sync
from trr_assets.config import Settings, settings_from_mapping

BUCKET = "trr-bench-events"
BODY = "x" * 1000


def _settings(url: str, endpoint: str, queue_url: str, *, sqs_endpoint: str = "", **events: Any) -> Settings:
    return settings_from_mapping({
        "database": {"url": url, "pool_max_size": 20},
        "s3": {"endpoint_url": endpoint, "addressing_style": "path", "buckets": [BUCKET], "head_concurrency": 16},
        "reconcile": {"orphaned_rows": "delete", "grace_seconds": 0},
        "logging": {"format": "json", "level": "warning"},
        "events": {"queue_urls": [queue_url], "endpoint_url": sqs_endpoint or endpoint, "wait_seconds": 1, **events},
    })


class StandIns:
    """bench.sqs_server and bench.head_server, each in a process of its own."""

    def __init__(self) -> None:
        self._sqs = subprocess.Popen([sys.executable, "-m", "bench.sqs_server"], stdout=subprocess.PIPE, text=True)
        self._head = subprocess.Popen([sys.executable, "-m", "bench.head_server"], stdout=subprocess.PIPE, text=True)
        assert self._sqs.stdout is not None and self._head.stdout is not None
        self.sqs_endpoint = self._sqs.stdout.readline().strip()
        self.head_endpoint = f"http://127.0.0.1:{self._head.stdout.readline().strip()}"

    def sqs_client(self) -> Any:
        return boto3.client("sqs", endpoint_url=self.sqs_endpoint, region_name="us-east-1")

    def close(self) -> None:
        for process in (self._sqs, self._head):
            process.kill()
            process.wait()


def _record(key: str, sequencer: int, *, removed: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "sequencer": f"{sequencer:016X}"}
    if not removed:
        obj.update(size=len(BODY), eTag=hashlib.md5(BODY.encode()).hexdigest())
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": "ObjectRemoved:Delete" if removed else "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": BUCKET}, "object": obj},
    }


def _send(sqs: Any, url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start:start + 10])]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)


def _show(url: str) -> uuid.UUID:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("insert into core.shows (title) values ('bench') returning id").fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _rows(url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("select object_key, size_bytes, checksum, content_type from core.show_assets").fetchall()
    return {r[0]: tuple(r[1:]) for r in found}


def lag_round(env: Env, s3: Any, sqs: Any, uploads: int, rate: float) -> dict[str, Any]:
    queue_url = sqs.create_queue(QueueName=f"lag-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    with env.database() as url:
        show = _show(url)
        settings = _settings(url, env.moto.endpoint, queue_url, receivers=1, wait_seconds=20)
        stop = threading.Event()
        listener = listen.Listener(settings, stop=stop, s3=storage.make_client(settings.s3))
        runner = threading.Thread(target=listener.run)
        runner.start()
        put_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        done = threading.Event()

        def poll() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                while not done.is_set() or len(seen_at) < len(put_at):
                    now = time.monotonic()
                    for (key,) in conn.execute("select object_key from core.show_assets").fetchall():
                        seen_at.setdefault(key, now)
                    time.sleep(0.01)
                    if done.is_set() and time.monotonic() - now > 30:
                        return

        poller = threading.Thread(target=poll)
        poller.start()
        for i in range(uploads):
            key = f"shows/{show}/lag-{i:05d}.jpg"
            s3.put_object(Bucket=BUCKET, Key=key, Body=BODY.encode(), ContentType="image/jpeg")
            put_at[key] = time.monotonic()
            time.sleep(1 / rate)  # the upload rate, not a wait for a condition
        done.set()
        poller.join(60)
        stop.set()
        runner.join(60)
    lags = sorted(seen_at[k] - put_at[k] for k in put_at if k in seen_at)
    report = listener.tally.report()
    return {
        "measure": "lag", "uploads": uploads, "rows_seen": len(lags),
        "p50_seconds": round(lags[len(lags) // 2], 3) if lags else None,
        "p99_seconds": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 3) if lags else None,
        "listener_lag_seconds": report.lag_seconds,
    }


def throughput_round(env: Env, stand_ins: StandIns, events: int, receivers: int) -> dict[str, Any]:
    sqs = stand_ins.sqs_client()
    with env.database() as url:
        show = _show(url)
        keys = [f"shows/{show}/bulk-{i:06d}.jpg" for i in range(events)]
        figures: dict[str, Any] = {"measure": "throughput", "events": events, "receivers": receivers}
        for label, base in (("new_keys", 1), ("rows_current", 10**9)):
            queue_url = sqs.create_queue(QueueName=f"bulk-{uuid.uuid4().hex[:8]}")["QueueUrl"]
            _send(sqs, queue_url, [json.dumps({"Records": [_record(k, base + i)]}) for i, k in enumerate(keys)])
            settings = _settings(url, stand_ins.head_endpoint, queue_url, sqs_endpoint=stand_ins.sqs_endpoint,
                                 receivers=receivers, wait_seconds=0)
            if label == "rows_current":  # the rows hold what the events say (the HEAD server's answers differ)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("update core.show_assets set size_bytes = %s, checksum = %s",
                                 (len(BODY), hashlib.md5(BODY.encode()).hexdigest()))
            started = time.monotonic()
            report = listen.run(settings, once=True, s3=storage.make_client(settings.s3))
            seconds = time.monotonic() - started
            figures[label] = {"applied": report.applied, "seconds": round(seconds, 3),
                              "events_per_second": round(report.applied / seconds), "rows": report.rows}
    return figures


def replay_round(env: Env, stand_ins: StandIns, events: int, seed: int) -> dict[str, Any]:
    sqs = stand_ins.sqs_client()
    rnd = random.Random(seed)
    with env.database() as url:
        show = _show(url)
        keys = [f"shows/{show}/replay-{i:06d}.jpg" for i in range(events)]
        env.moto.put(BUCKET, keys, body=BODY)
        history = [json.dumps({"Records": [_record(k, 1000 + i)]}) for i, k in enumerate(keys)]
        removed = rnd.sample(keys, events // 10)
        s3 = storage.make_client(_settings(url, env.moto.endpoint, "http://x/q").s3)
        for start in range(0, len(removed), 1000):
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in removed[start:start + 1000]]})
        history += [json.dumps({"Records": [_record(k, 10**9, removed=True)]}) for k in removed]
        replay = history * 2
        rnd.shuffle(replay)
        queue_url = sqs.create_queue(QueueName=f"replay-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        _send(sqs, queue_url, replay)
        settings = _settings(url, env.moto.endpoint, queue_url, sqs_endpoint=stand_ins.sqs_endpoint, wait_seconds=0)
        started = time.monotonic()
        report = listen.run(settings, once=True, s3=s3)
        seconds = time.monotonic() - started
        listened = _rows(url)
        after = sync.run(settings, client=s3)
        with env.database() as fresh:
            _copy_show(url, fresh)
            sync.run(_settings(fresh, env.moto.endpoint, queue_url), client=s3)
            synced = _rows(fresh)
        env.moto.clear(BUCKET)
    return {
        "measure": "replay", "messages": len(replay), "received": report.received, "applied": report.applied,
        "stale": report.stale, "seconds": round(seconds, 3),
        "sync_after": {"inserted": after.inserted, "updated": after.updated},
        "same_rows_as_full_sync": listened == synced, "rows": len(listened),
    }


def _copy_show(source: str, target: str) -> None:
    with psycopg.connect(source, autocommit=True) as a, psycopg.connect(target, autocommit=True) as b:
        for show_id, title in a.execute("select id, title from core.shows").fetchall():
            b.execute("insert into core.shows (id, title) values (%s, %s)", (show_id, title))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listening")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=100, help="uploads per lag round")
    parser.add_argument("--rate", type=float, default=20.0, help="uploads per second in a lag round")
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--only", choices=("lag", "throughput", "replay"))
    args = parser.parse_args(argv)
    fake_aws_environment()
    results: dict[str, list[dict[str, Any]]] = {"lag": [], "throughput": [], "replay": []}
    stand_ins = StandIns()
    with Env() as env:
        endpoint = env.moto.endpoint
        env.moto.create_bucket(BUCKET)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        for round_ in range(args.rounds):
            if args.only in (None, "lag"):
                results["lag"].append(lag_round(env, s3, sqs, args.uploads, args.rate))
                print(json.dumps(results["lag"][-1]), flush=True)
            if args.only in (None, "throughput"):
                results["throughput"].append(throughput_round(env, stand_ins, args.events, args.receivers))
                print(json.dumps(results["throughput"][-1]), flush=True)
            if args.only in (None, "replay") and round_ == 0:
                results["replay"].append(replay_round(env, stand_ins, args.events, seed=round_))
                print(json.dumps(results["replay"][-1]), flush=True)
    stand_ins.close()
    summary: dict[str, Any] = {"measure": "summary"}
    if results["lag"]:
        summary["lag_p99_seconds_median"] = statistics.median(r["p99_seconds"] for r in results["lag"])
        summary["lag_p50_seconds_median"] = statistics.median(r["p50_seconds"] for r in results["lag"])
    if results["throughput"]:
        for label in ("new_keys", "rows_current"):
            summary[f"{label}_events_per_second_median"] = statistics.median(
                r[label]["events_per_second"] for r in results["throughput"])
    if results["replay"]:
        summary["replay_converges"] = all(
            r["same_rows_as_full_sync"] and r["sync_after"] == {"inserted": 0, "updated": 0} for r in results["replay"])
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
