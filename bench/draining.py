"""Draining the delete queue against one DeleteObject per key.

Each repetition starts over: a fresh database clone whose rows are deleted
(the outbox trigger queues their objects, as any delete path would), and the
objects created again in moto. The figure is ``deletes.drain`` emptying the
queue, DB work included; the baseline sends one ``DeleteObject`` per key for
the same objects, S3 calls only.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from bench import data
from bench.env import query
from bench.harness import Benchmark, Context, Measured, Stat, number, timed
from trr_assets import storage

PER_SHOW = 100
BUCKET = "trr-bench-deletes"


def _queue(url: str, shows: list[Any]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("insert_assets"), {"bucket": BUCKET, "ids": shows, "per_show": PER_SHOW,
                                              "drift": False, "content_type": data.CONTENT_TYPE})
        conn.execute(query("delete_bucket_rows"), {"bucket": BUCKET})
        row = conn.execute(query("queued_deletes"), {"bucket": BUCKET}).fetchone()
    return int(row[0]) if row else 0


def _restock(ctx: Context, shows: list[Any]) -> None:
    moto = ctx.env.moto
    moto.clear(BUCKET)
    moto.put(BUCKET, data.keys(shows, PER_SHOW))


def run(ctx: Context) -> Measured:
    from trr_assets import deletes

    n = ctx.size(10_000, 1_000)
    shows = data.show_ids(n // PER_SHOW)
    moto = ctx.env.moto
    moto.create_bucket(BUCKET)
    template = ctx.env.template(f"shows:{len(shows)}", lambda conn, url: conn.execute(
        query("insert_shows"), {"ids": shows}))
    expected_requests = math.ceil(n / deletes.MAX_KEYS_PER_REQUEST)

    def drain_once(shows: list[Any]) -> tuple[float, Any]:
        count = len(shows) * PER_SHOW
        _restock(ctx, shows)
        with ctx.env.database(template) as url:
            queued = _queue(url, shows)
            if queued != count:
                raise RuntimeError(f"{queued} deletions queued, expected {count}")
            settings = ctx.env.settings(url, endpoint=moto.endpoint, s3={"buckets": [BUCKET]})
            client = storage.make_client(settings.s3)
            seconds, report = timed(lambda: deletes.drain(settings, client=client))
        if report.deleted != count or report.pending or report.failed or moto.count(BUCKET):
            raise RuntimeError(f"the drain left work behind: {report.as_dict()}")
        return seconds, report

    def one_by_one(shows: list[Any]) -> float:
        _restock(ctx, shows)
        settings = ctx.env.settings("postgresql://unused", endpoint=moto.endpoint)
        client = storage.make_client(settings.s3)
        names = list(data.keys(shows, PER_SHOW))

        def delete_each() -> None:
            for key in names:
                client.delete_object(Bucket=BUCKET, Key=key)

        seconds, _ = timed(delete_each)
        if moto.count(BUCKET):
            raise RuntimeError("objects left after deleting one by one")
        return seconds

    warm = shows[: max(1, len(shows) // 10)]
    drain_once(warm)
    one_by_one(warm)
    figure: list[float] = []
    baseline: list[float] = []
    requests: list[int] = []
    for rep in range(ctx.repeat):
        seconds, report = drain_once(shows)
        figure.append(n / seconds)
        requests.append(report.requests)
        baseline.append(n / one_by_one(shows))
        ctx.say(f"drain: repetition {rep + 1}/{ctx.repeat} done")
    fig, base = Stat.of(figure, "deletes/s"), Stat.of(baseline, "deletes/s")
    ratio = fig.median / base.median
    met = all(r == expected_requests for r in requests)
    notes = (
        f"DeleteObjects requests per drain: {', '.join(map(str, requests))} (ceil({n:,}/1000) = "
        f"{expected_requests}, one bucket); the drain's figure includes taking, checking and completing "
        f"the queue entries in PostgreSQL.",
    )
    return Measured(
        title=f"drain {n:,} queued deletes, deletes/s",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
        met=met, notes=notes, extra={"deletes": n, "requests": requests, "expected_requests": expected_requests},
    )


BENCHMARK = Benchmark(
    name="drain",
    title="drain 10,000 queued deletes, deletes/s",
    baseline_title="one DeleteObject per key",
    target="requests = ceil(N/1000) per bucket; deletes/s reported",
    needs=("trr_assets.deletes",),
    run=run,
)
