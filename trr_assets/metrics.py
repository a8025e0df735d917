"""Prometheus metrics of a worker, and the ``/metrics`` + ``/healthz`` server.

Each ``Metrics`` has a registry of its own, so several workers in one
process (tests) or several replicas each serve their own figures. What the
worker counts itself (job runs, S3 requests, sync outcomes, events) lives in
that registry; what lives in PostgreSQL (the delete queue, the last
reconcile's findings) is read at scrape time, with one query, by
``DatabaseCollector``: nothing polls between scrapes.

Names follow Prometheus conventions: base units (seconds, Unix timestamps),
``_total`` for counters, labels of a small fixed set of values. The metrics
SPEC.md names are marked "contract"; docs/operations.md lists them all.

Other parts of the worker report through the methods of ``Metrics``:
``observe_job`` (the worker), ``observe_s3`` (hooked on the S3 client by
``storage.observe_requests``), ``observe_event`` (the event listener).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trr_assets import __version__, db, status
from trr_assets.config import DatabaseSettings
from trr_assets.errors import TrrAssetsError

log = structlog.get_logger()

JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
SYNC_COUNTS = ("inserted", "updated", "unchanged", "skipped")
DELETE_COUNTS = ("deleted", "retried", "gave_up", "skipped")
SCRAPE_DB_TIMEOUT_SECONDS = 5.0


class DatabaseCollector(Collector):
    """The figures that live in PostgreSQL, read when Prometheus scrapes.

    One connection and one query (``metrics_snapshot``) per scrape. When the
    database cannot be read, ``trr_assets_database_up`` is 0 and the other
    series are left out (absent, not stale).
    """

    def __init__(self, database: DatabaseSettings) -> None:
        self._database = DatabaseSettings(
            url=database.url,
            connect_timeout_seconds=min(database.connect_timeout_seconds, SCRAPE_DB_TIMEOUT_SECONDS),
        )

    def describe(self) -> list[Any]:
        return []  # registering must not touch the database

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("trr_assets_database_up",
                               "1 when this scrape could read the database, else 0")
        try:
            with db.connect(self._database, autocommit=True, application_name="trr-assets metrics") as conn:
                snap = status.snapshot(conn)
        except TrrAssetsError as exc:
            log.warning("metrics_database_unreadable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("trr_assets_delete_queue_pending",
                                "Queued S3 deletions not done yet (retries included)", value=snap.pending)
        yield GaugeMetricFamily("trr_assets_delete_queue_failed",
                                "Queued S3 deletions given up after deletes.max_attempts", value=snap.failed)
        yield GaugeMetricFamily("trr_assets_delete_queue_oldest_age_seconds",
                                "Age of the oldest pending S3 deletion (0 when none)",
                                value=snap.oldest_age_seconds)
        drift = GaugeMetricFamily("trr_assets_drift_findings",
                                  "Findings of the last completed reconcile run, by bucket and kind",
                                  labels=["bucket", "kind"])
        for (bucket, kind), count in sorted(snap.drift.items()):
            drift.add_metric([bucket, kind], count)
        yield drift
        if snap.last_reconcile_finished_at is not None:
            yield GaugeMetricFamily("trr_assets_reconcile_last_completed_timestamp_seconds",
                                    "When the last completed reconcile run finished (Unix time)",
                                    value=snap.last_reconcile_finished_at)


class Metrics:
    """A worker's metrics, in a registry of their own."""

    def __init__(self, database: DatabaseSettings | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.job_duration = Histogram("trr_assets_job_duration_seconds", "Duration of worker job runs",
                                      ["job"], buckets=JOB_BUCKETS, registry=r)
        self.job_runs = Counter("trr_assets_job_runs_total", "Worker job runs by outcome",
                                ["job", "outcome"], registry=r)
        self.job_last_success = Gauge("trr_assets_job_last_success_timestamp_seconds",
                                      "When a run of the job last succeeded in this worker (Unix time)",
                                      ["job"], registry=r)
        self.s3_requests = Counter("trr_assets_s3_requests_total", "S3 API calls by operation and outcome",
                                   ["operation", "outcome"], registry=r)
        self.s3_duration = Histogram("trr_assets_s3_request_duration_seconds",
                                     "S3 API call latency, retries included", ["operation"],
                                     buckets=S3_BUCKETS, registry=r)
        self.sync_objects = Counter("trr_assets_sync_objects_total",
                                    "Objects seen by sync runs, by what was done with them",
                                    ["outcome"], registry=r)
        self.deletes = Counter("trr_assets_deletes_total",
                               "Queued S3 deletions this worker's drains handled: deleted, retried "
                               "(S3 refused; rescheduled), gave_up, skipped (a row names the key again)",
                               ["outcome"], registry=r)
        self.events = Counter("trr_assets_events_total", "S3 event notifications by outcome",
                              ["outcome"], registry=r)
        self.event_lag = Histogram("trr_assets_event_lag_seconds",
                                   "From an S3 event's eventTime to its effect committed",
                                   buckets=LAG_BUCKETS, registry=r)
        info = Gauge("trr_assets_build_info", "Always 1; the version is a label", ["version"], registry=r)
        info.labels(__version__).set(1)
        if database is not None:
            r.register(DatabaseCollector(database))

    def observe_job(self, job: str, outcome: str, seconds: float, counts: dict[str, Any] | None = None) -> None:
        """One run of a worker job: ``outcome`` is ok, failed, refused or skipped."""
        self.job_runs.labels(job, outcome).inc()
        if outcome == "skipped":
            return
        self.job_duration.labels(job).observe(seconds)
        if outcome == "ok":
            self.job_last_success.labels(job).set(time.time())
        tallies = {"sync": (SYNC_COUNTS, self.sync_objects), "deletes": (DELETE_COUNTS, self.deletes)}
        if job in tallies:
            names, counter = tallies[job]
            for name in names:
                value = (counts or {}).get(name)
                if isinstance(value, int) and value > 0:
                    counter.labels(name).inc(value)

    def observe_s3(self, operation: str, outcome: str, seconds: float) -> None:
        """One S3 API call (see ``storage.observe_requests``)."""
        self.s3_requests.labels(operation, outcome).inc()
        self.s3_duration.labels(operation).observe(seconds)

    def observe_event(self, outcome: str, *, lag_seconds: float | None = None) -> None:
        """One event notification: received, applied, stale, ignored or failed.

        ``lag_seconds`` (applied events): from the event's ``eventTime`` to
        its effect committed.
        """
        self.events.labels(outcome).inc()
        if lag_seconds is not None:
            self.event_lag.observe(max(0.0, lag_seconds))

    def render(self) -> bytes:
        """The Prometheus text format of everything in the registry."""
        return generate_latest(self.registry)


Health = Callable[[], tuple[bool, dict[str, Any]]]  # (healthy, details)


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` on ``host:port`` (port 0: any free port).

    ``/healthz`` answers 200 with ``{"status": "ok", ...}`` while ``health``
    says healthy, else 503 with what is wrong. Requests are served by
    threads of their own, so a slow scrape never blocks a health check.
    """

    def __init__(self, metrics: Metrics, health: Health, *, host: str, port: int) -> None:
        handler = _handler(metrics, health)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TrrAssetsError(f"metrics: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="trr-assets-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        host, port = self.address
        log.info("metrics_serving", host=host, port=port, paths=["/metrics", "/healthz"])
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever: only once it runs
            self._thread.join(5)
        self._server.server_close()


def _handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"trr-assets/{__version__}"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, metrics.render())
            elif path == "/healthz":
                healthy, details = health()
                body = json.dumps({"status": "ok" if healthy else "unhealthy", **details}).encode()
                self._answer(200 if healthy else 503, "application/json", body + b"\n")
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _answer(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass  # a scrape every 15 s is not news; errors still reach the worker's log

    return Handler
