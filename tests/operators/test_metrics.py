"""Metrics and health: /metrics and /healthz over a real socket, parsed with
prometheus_client's own parser; the database figures read at scrape time;
every S3 call counted; each replica serves its own figures."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from tests.support.waiting import wait_for
from tests.sync.helpers import put, show_key
from trr_assets import storage
from trr_assets.config import Settings
from trr_assets.errors import TrrAssetsError
from trr_assets.metrics import Metrics, MetricsServer
from trr_assets.worker import Worker

CONTRACT = {
    "trr_assets_delete_queue_pending",
    "trr_assets_delete_queue_failed",
    "trr_assets_delete_queue_oldest_age_seconds",
    "trr_assets_drift_findings",
    "trr_assets_job_duration_seconds",
    "trr_assets_job_last_success_timestamp_seconds",
    "trr_assets_s3_requests",  # the parser names a counter's family without _total
}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def serve() -> Iterator[Callable[[Metrics, Any], str]]:
    servers: list[MetricsServer] = []

    def start(metrics: Metrics, health: Any = lambda: (True, {})) -> str:
        server = MetricsServer(metrics, health, host="127.0.0.1", port=0).start()
        servers.append(server)
        host, port = server.address
        return f"http://{host}:{port}"

    yield start
    for server in servers:
        server.close()


def _seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "insert into trr_assets.delete_queue (bucket, object_key, state, enqueued_at, last_error, attempts) values "
        "('b1', 'shows/a', 'pending', now() - interval '1 hour', null, 0), "
        "('b1', 'shows/b', 'pending', now() - interval '5 minutes', null, 0), "
        "('b1', 'shows/c', 'failed', now() - interval '2 days', 'AccessDenied: no', 12)"
    )
    counts = {"orphaned_objects": 3, "orphaned_rows": 1, "mismatched": 0, "failed_deletes": 1,
              "by_bucket": {"b1": {"orphaned_objects": 2, "orphaned_rows": 1, "mismatched": 0, "failed_deletes": 1},
                            "b2": {"orphaned_objects": 1, "orphaned_rows": 0, "mismatched": 0, "failed_deletes": 0}}}
    conn.execute(
        "insert into trr_assets.reconcile_runs (dry_run, buckets, prefix, run_by, outcome, counts, finished_at, "
        "started_at) values (true, '{b1,b2}', 'shows/', 'test', 'drift', %s, now(), now() - interval '1 minute')",
        (json.dumps(counts),),
    )
    # A later run that failed part way is passed over.
    conn.execute(
        "insert into trr_assets.reconcile_runs (dry_run, buckets, prefix, run_by, outcome, counts, finished_at) "
        "values (true, '{b1}', 'shows/', 'test', 'failed', '{\"orphaned_objects\": 99}', now())"
    )


def test_metrics_parse_and_name_every_contract_metric_with_the_database_read_at_scrape_time(
    settings: Settings, conn: psycopg.Connection[Any], serve: Callable[..., str]
) -> None:
    metrics = Metrics(settings.database)
    metrics.observe_job("sync", "ok", 1.5, {"inserted": 4, "unchanged": 10, "skipped": 0})
    metrics.observe_job("deletes", "failed", 0.2, {})
    metrics.observe_s3("HeadObject", "not_found", 0.01)
    base = serve(metrics)

    status, before = _get(base + "/metrics")
    assert status == 200
    empty = _samples(before)
    assert _value(empty, "trr_assets_delete_queue_pending") == 0
    assert _value(empty, "trr_assets_delete_queue_oldest_age_seconds") == 0
    assert _value(empty, "trr_assets_database_up") == 1

    _seed(conn)  # no restart, no loop: the next scrape reads it
    status, text = _get(base + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert CONTRACT <= set(families)
    assert families["trr_assets_job_duration_seconds"].type == "histogram"
    assert families["trr_assets_s3_requests"].type == "counter"
    s = _samples(text)
    assert _value(s, "trr_assets_delete_queue_pending") == 2
    assert _value(s, "trr_assets_delete_queue_failed") == 1
    assert 3590 < (_value(s, "trr_assets_delete_queue_oldest_age_seconds") or 0) < 3700
    assert _value(s, "trr_assets_drift_findings", bucket="b1", kind="orphaned_object") == 2
    assert _value(s, "trr_assets_drift_findings", bucket="b2", kind="orphaned_object") == 1
    assert _value(s, "trr_assets_drift_findings", bucket="b1", kind="failed_delete") == 1
    assert _value(s, "trr_assets_job_duration_seconds_count", job="sync") == 1
    assert _value(s, "trr_assets_job_runs_total", job="deletes", outcome="failed") == 1
    assert abs((_value(s, "trr_assets_job_last_success_timestamp_seconds", job="sync") or 0) - time.time()) < 60
    assert _value(s, "trr_assets_job_last_success_timestamp_seconds", job="deletes") is None
    assert _value(s, "trr_assets_sync_objects_total", outcome="inserted") == 4
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadObject", outcome="not_found") == 1


def test_a_database_that_cannot_be_read_is_database_up_0_not_a_failed_scrape(
    aws_env: None, unused_port: int, serve: Callable[..., str]
) -> None:
    settings = make_settings(f"postgresql://postgres@127.0.0.1:{unused_port}/x",
                             database={"connect_timeout_seconds": 1.0})
    with structlog.testing.capture_logs() as logs:
        status, text = _get(serve(Metrics(settings.database)) + "/metrics")
    assert status == 200
    s = _samples(text)
    assert _value(s, "trr_assets_database_up") == 0
    assert _value(s, "trr_assets_delete_queue_pending") is None
    assert [e for e in logs if e["event"] == "metrics_database_unreadable"]


def test_every_s3_call_is_counted_by_operation_and_outcome_with_its_latency(s3: Any) -> None:
    metrics = Metrics()
    client = storage.make_client(make_settings("postgresql://x@localhost/x").s3)
    storage.observe_requests(client, metrics.observe_s3)
    client.put_object(Bucket=TEST_BUCKET, Key="shows/x", Body=b"1")
    assert storage.head_object(client, TEST_BUCKET, "shows/x") is not None
    assert storage.head_object(client, TEST_BUCKET, "shows/missing") is None
    list(storage.list_objects(client, TEST_BUCKET, prefix="shows/"))
    with pytest.raises(TrrAssetsError):
        storage.check_bucket(client, "no-such-bucket-here")
    s = _samples(metrics.render().decode())
    assert _value(s, "trr_assets_s3_requests_total", operation="PutObject", outcome="ok") == 1
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadObject", outcome="ok") == 1
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadObject", outcome="not_found") == 1
    assert _value(s, "trr_assets_s3_requests_total", operation="ListObjectsV2", outcome="ok") == 1
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadBucket", outcome="not_found") == 1
    assert _value(s, "trr_assets_s3_request_duration_seconds_count", operation="HeadObject") == 2


def test_an_s3_endpoint_that_does_not_answer_is_a_network_error(aws_env: None, unused_port: int) -> None:
    metrics = Metrics()
    settings = make_settings("postgresql://x@localhost/x", s3={
        "endpoint_url": f"http://127.0.0.1:{unused_port}", "max_attempts": 1, "connect_timeout_seconds": 1.0})
    client = storage.make_client(settings.s3)
    storage.observe_requests(client, metrics.observe_s3)
    with pytest.raises(TrrAssetsError):
        storage.check_bucket(client, TEST_BUCKET)
    s = _samples(metrics.render().decode())
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadBucket", outcome="network_error") == 1


def test_events_api_counts_outcomes_and_lag() -> None:
    metrics = Metrics()
    metrics.observe_event("applied", lag_seconds=2.5)
    metrics.observe_event("stale")
    s = _samples(metrics.render().decode())
    assert _value(s, "trr_assets_events_total", outcome="applied") == 1
    assert _value(s, "trr_assets_events_total", outcome="stale") == 1
    assert _value(s, "trr_assets_event_lag_seconds_count") == 1


def test_healthz_is_200_while_the_scheduler_runs_and_the_database_answers(
    settings: Settings, unused_port: int
) -> None:
    w = Worker(settings.replace(metrics={"port": unused_port}), jobs=[])
    base = f"http://127.0.0.1:{unused_port}"
    assert w.health()[0] is False  # not serving yet: no scheduler
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(w.serve()), daemon=True)
    thread.start()
    try:
        def healthy() -> bool:
            try:
                return _get(base + "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(healthy, what="/healthz to answer 200")
        status, body = _get(base + "/healthz")
        assert json.loads(body) == {"status": "ok", "scheduler": "running", "database": "ok", "running": []}
        assert _get(base + "/nope")[0] == 404
    finally:
        w.request_stop()
        thread.join(20)
    assert result == [0]
    with pytest.raises(OSError):
        _get(base + "/healthz")  # the server stopped with the worker


def test_healthz_is_503_when_the_database_does_not_answer(aws_env: None, unused_port: int) -> None:
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        settings = make_settings(f"postgresql://postgres@127.0.0.1:{dead.getsockname()[1]}/x",
                                 database={"connect_timeout_seconds": 1.0}, metrics={"port": unused_port})
        w = Worker(settings, jobs=[])
        base = f"http://127.0.0.1:{unused_port}"
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(w.serve()), daemon=True)
        thread.start()
        try:
            def scheduling() -> bool:  # the scheduler is fine; only the database is not
                try:
                    return json.loads(_get(base + "/healthz")[1])["scheduler"] == "running"
                except OSError:
                    return False

            wait_for(scheduling, what="/healthz to see the scheduler running")
            status, body = _get(base + "/healthz")
        finally:
            w.request_stop()
            thread.join(20)
    assert result == [0]
    assert status == 503
    details = json.loads(body)
    assert details["status"] == "unhealthy" and details["scheduler"] == "running"
    assert details["database"].startswith("database: cannot connect")


def test_healthz_is_503_when_the_scheduler_is_not_running(settings: Settings, serve: Callable[..., str]) -> None:
    w = Worker(settings, jobs=[])
    status, body = _get(serve(w.metrics, w.health) + "/healthz")
    assert status == 503
    assert json.loads(body)["scheduler"] == "stopped"


def test_a_port_in_use_is_a_one_line_error(settings: Settings) -> None:
    server = MetricsServer(Metrics(), lambda: (True, {}), host="127.0.0.1", port=0)
    try:
        with pytest.raises(TrrAssetsError, match=r"metrics: cannot listen on 127.0.0.1:\d+"):
            MetricsServer(Metrics(), lambda: (True, {}), host="127.0.0.1", port=server.address[1])
    finally:
        server.close()


def test_replicas_each_serve_their_own_job_figures_and_the_same_database_figures(
    settings: Settings, conn: psycopg.Connection[Any], s3: Any, serve: Callable[..., str]
) -> None:
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    put(s3, show_key(show, "b.jpg"))
    one, two = Worker(settings), Worker(settings)
    url_one, url_two = serve(one.metrics, one.health), serve(two.metrics, two.health)
    [sync_job] = [job for job in one.jobs if job.name == "sync"]
    assert one.run_job(sync_job) == "ok"

    first, second = _samples(_get(url_one + "/metrics")[1]), _samples(_get(url_two + "/metrics")[1])
    assert _value(first, "trr_assets_job_runs_total", job="sync", outcome="ok") == 1
    assert _value(first, "trr_assets_sync_objects_total", outcome="inserted") == 2
    assert (_value(first, "trr_assets_s3_requests_total", operation="ListObjectsV2", outcome="ok") or 0) >= 1
    assert _value(second, "trr_assets_job_runs_total", job="sync", outcome="ok") is None
    assert _value(first, "trr_assets_delete_queue_pending") == _value(second, "trr_assets_delete_queue_pending") == 0

    [run] = conn.execute("select job, outcome, counts->>'inserted', worker from trr_assets.job_runs").fetchall()
    assert run[:3] == ("sync", "ok", "2") and run[3].startswith("worker@")


def test_a_drain_that_found_nothing_is_not_recorded_but_a_failed_run_is(
    settings: Settings, conn: psycopg.Connection[Any], s3: Any
) -> None:
    w = Worker(settings)
    [deletes_job] = [job for job in w.jobs if job.name == "deletes"]
    assert w.run_job(deletes_job) == "ok"
    assert conn.execute("select count(*) from trr_assets.job_runs").fetchone() == (0,)
    broken = Worker(settings.replace(s3={"buckets": ["no-such-bucket-here"]}))
    [sync_job] = [job for job in broken.jobs if job.name == "sync"]
    assert broken.run_job(sync_job) == "failed"
    [(outcome, error)] = conn.execute("select outcome, error from trr_assets.job_runs").fetchall()
    assert outcome == "failed" and "no-such-bucket-here" in error


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_heads_sent_past_botocore_are_counted_too(aws_env: None) -> None:
    from tests.support.moto_server import moto_server
    from trr_assets.storage import heads as storage_heads

    metrics = Metrics()
    with moto_server() as endpoint:
        settings = make_settings("postgresql://x@localhost/x", s3={"endpoint_url": endpoint,
                                                                    "addressing_style": "path"})
        client = storage.make_client(settings.s3)
        storage.observe_requests(client, metrics.observe_s3)
        client.create_bucket(Bucket=TEST_BUCKET)
        client.put_object(Bucket=TEST_BUCKET, Key="shows/x", Body=b"1")
        with storage_heads.for_client(client, settings.s3) as heads:
            assert heads is not None, "the HEADs went through botocore"
            answers = list(heads.heads(TEST_BUCKET, ["shows/x", "shows/missing"]))
    assert answers[0] is not None and answers[1] is None
    s = _samples(metrics.render().decode())
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadObject", outcome="ok") == 1
    assert _value(s, "trr_assets_s3_requests_total", operation="HeadObject", outcome="not_found") == 1


def test_drift_findings_are_per_bucket_from_a_real_reconcile_run(
    settings: Settings, conn: psycopg.Connection[Any], s3: Any
) -> None:
    from trr_assets import reconcile

    s3.create_bucket(Bucket="trr-test-second")
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    put(s3, show_key(show, "b.jpg"), bucket="trr-test-second")
    put(s3, show_key(show, "c.jpg"), bucket="trr-test-second")
    two = settings.replace(s3={"buckets": [TEST_BUCKET, "trr-test-second"]})
    reconcile.run(two, reconcile.ReconcileOptions(repair=False))
    s = _samples(Metrics(two.database).render().decode())
    assert _value(s, "trr_assets_drift_findings", bucket=TEST_BUCKET, kind="orphaned_object") == 1
    assert _value(s, "trr_assets_drift_findings", bucket="trr-test-second", kind="orphaned_object") == 2
    assert _value(s, "trr_assets_drift_findings", bucket="trr-test-second", kind="orphaned_row") == 0
