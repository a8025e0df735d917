"""The listener's outcomes and lag reach the worker's Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.events.helpers import body, listen_settings, make_queue, record, send
from tests.support.postgres import make_show
from tests.sync.helpers import put, show_key
from trr_assets import listen
from trr_assets.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_event_outcomes_and_lag_are_counted_as_the_report_counts_them(
    db_url: str, conn: psycopg.Connection[Any], s3: Any, sqs: Any
) -> None:
    """Each event is counted once as received and once under its outcome; every applied
    event with an eventTime adds one lag observation, measured from that time."""
    url = make_queue(sqs, s3, notify=False)
    show = make_show(conn)
    key = show_key(show, "m.jpg")
    put(s3, key, b"mm")
    uploaded = datetime.now(UTC) - timedelta(seconds=30)
    send(sqs, url,
         body(record(key, "0055AED6DCD90281B0", event_time=uploaded)),
         body(record(key, "0055AED6DCD90281A0")),  # older than the one applied: stale
         "not json at all")  # failed
    metrics = Metrics()
    report = listen.Listener(listen_settings(db_url, url), once=True, s3=s3,
                             observe_event=metrics.observe_event).run()
    assert (report.received, report.applied, report.stale, report.failed) == (3, 1, 1, 1)

    samples = _samples(metrics)
    for outcome, expected in [("received", 3), ("applied", 1), ("stale", 1), ("failed", 1)]:
        assert samples[("trr_assets_events_total", (("outcome", outcome),))] == expected, outcome
    assert samples[("trr_assets_event_lag_seconds_count", ())] == 1
    assert samples[("trr_assets_event_lag_seconds_sum", ())] >= 30
