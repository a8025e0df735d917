"""Reconcile end to end (dry run) against the bare listing of the same bucket.

Both list the same moto bucket over HTTP (``bench.moto_server``, no added
latency). Reconcile also streams the rows from PostgreSQL, merges, and
classifies; the question is how much that adds to the listing it cannot do
without. A dry run changes nothing but its history row, so one database
clone serves every repetition.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bench import data
from bench.env import query
from bench.harness import Benchmark, Context, Measured, Stat, number, timed
from bench.pages import PageCounter
from trr_assets import storage

PER_SHOW = 100
BUCKET = "trr-bench-reconcile"
BODY = "x"  # every object's body; the rows carry its size and MD5


def bare_listing(client: Any) -> int:
    paginator = client.get_paginator("list_objects_v2")
    return sum(len(page.get("Contents", ())) for page in paginator.paginate(Bucket=BUCKET, Prefix=data.PREFIX))


def run(ctx: Context) -> Measured:
    from trr_assets import reconcile

    n = ctx.size(20_000, 2_000)
    shows = data.show_ids(n // PER_SHOW)
    expected = data.expected_drift(len(shows), PER_SHOW)
    moto = ctx.env.moto
    moto.create_bucket(BUCKET)
    moto.put(BUCKET, (o.key for o in data.objects(shows, PER_SHOW, drift=True)), body=BODY)

    def build(conn: psycopg.Connection[Any], url: str) -> None:
        conn.execute(query("insert_shows"), {"ids": shows})
        conn.execute(query("insert_assets_of_body"), {
            "bucket": BUCKET, "ids": shows, "per_show": PER_SHOW, "drift": True,
            "content_type": data.CONTENT_TYPE, "body": BODY,
        })

    template = ctx.env.template(f"reconcile:{n}", build)
    with ctx.env.database(template) as url:
        settings = ctx.env.settings(url, endpoint=moto.endpoint, s3={"buckets": [BUCKET]})
        client = storage.make_client(settings.s3, max_pool_connections=32)
        counter = PageCounter(client)
        objects = n - expected["only_in_db"]

        def reconcile_once() -> Any:
            return reconcile.run(settings, reconcile.ReconcileOptions(), client=client)

        def check(summary: Any) -> None:
            found = (summary.objects_scanned, summary.orphaned_objects, summary.orphaned_rows, summary.mismatched)
            wanted = (objects, expected["only_in_s3"], expected["only_in_db"], expected["changed"])
            if found != wanted:
                raise RuntimeError(f"reconcile found {summary.as_dict()}, expected {expected}")

        check(reconcile_once())  # warm-up
        if bare_listing(client) != objects:
            raise RuntimeError("the bare listing did not list every object")
        figure: list[float] = []
        baseline: list[float] = []
        counter.take()
        for _ in range(ctx.repeat):
            seconds, summary = timed(reconcile_once)
            check(summary)
            figure.append(seconds)
            reconcile_pages = counter.take()
            seconds, count = timed(lambda: bare_listing(client))
            if count != objects:
                raise RuntimeError(f"the bare listing found {count} objects, expected {objects}")
            baseline.append(seconds)
            bare_pages = counter.take()
    fig, base = Stat.of(figure, "s"), Stat.of(baseline, "s")
    ratio = fig.median / base.median
    return Measured(
        title=f"reconcile end to end (dry run), {n:,} objects on a local moto server, seconds",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× the listing's time",
        met=ratio <= 1.3,
        notes=(f"reconcile lists in {settings.s3.list_shards} shards, {settings.s3.list_concurrency} at a time, "
               f"and merges with the rows: {reconcile_pages[0]} pages holding {reconcile_pages[1]:,} keys (a "
               f"shard's pages are partly full; keys read past a shard's end are dropped), against the "
               f"paginator's {bare_pages[0]} pages of {bare_pages[1]:,}. moto serves one request at a time "
               f"(one interpreter lock) and sorts the whole bucket for every page, so both sides mostly "
               f"measure moto's time per page.",),
        extra={"objects": objects, "keys": n, "pages": {"reconcile": reconcile_pages[0], "bare": bare_pages[0]},
               "keys_parsed": {"reconcile": reconcile_pages[1], "bare": bare_pages[1]}},
    )


BENCHMARK = Benchmark(
    name="reconcile",
    title="reconcile end to end (dry run), 20,000 objects on a local moto server, seconds",
    baseline_title="bare ListObjectsV2 pagination",
    target="≤ 1.3×",
    needs=("trr_assets.reconcile",),
    run=run,
)
