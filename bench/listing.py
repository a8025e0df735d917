"""Sharded listing against one sequential paginator, at 200 ms per page.

The sharded lister is what sync and reconcile run: ``storage.list_objects``
over each of ``keys.shard_ranges(prefix, 16)``, the 16 shards at once (16
threads, and up to 16 more for the parts of shards it splits, as sync does
with ``list_concurrency = 16``). The baseline is botocore's
``list_objects_v2`` paginator over the whole prefix, from the same client.
Both talk to moto through ``bench.moto_server``'s slow front, where every
ListObjectsV2 page arrives 200 ms late; see there why moto's own per-page
work is taken out of the measured runs.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import data
from bench.harness import Benchmark, Context, Measured, Stat, number, timed
from bench.pages import PageCounter
from trr_assets import keys, storage

SHARDS = 16
PER_SHOW = 10
BUCKET = "trr-bench-listing"


def sequential(client: Any) -> int:
    paginator = client.get_paginator("list_objects_v2")
    return sum(len(page.get("Contents", ())) for page in paginator.paginate(Bucket=BUCKET, Prefix=data.PREFIX))


def sharded(client: Any) -> list[int]:
    """Objects listed per shard."""
    splits = storage.ListingSplits(extra_listings=SHARDS)

    def one(shard: keys.KeyRange) -> int:
        listing = storage.list_objects(client, BUCKET, prefix=data.PREFIX, start_at=shard.start_at,
                                       stop_before=shard.stop_before, splits=splits)
        return sum(1 for _ in listing)

    with ThreadPoolExecutor(SHARDS, thread_name_prefix="bench-shard") as pool:
        return list(pool.map(one, keys.shard_ranges(data.PREFIX, SHARDS)))


def run(ctx: Context) -> Measured:
    n = ctx.size(30_000, 7_500)
    moto = ctx.env.moto
    moto.create_bucket(BUCKET)
    moto.put(BUCKET, data.keys(data.show_ids(n // PER_SHOW), PER_SHOW))
    moto.forget_pages()
    settings = ctx.env.settings("postgresql://unused", endpoint=moto.slow_endpoint)
    client = storage.make_client(settings.s3, max_pool_connections=2 * SHARDS)
    counter = PageCounter(client)
    # Warm-up: moto computes every page once (this is the pass that costs
    # moto's own work; the measured passes get the same pages, delayed).
    first_sequential, count = timed(lambda: sequential(client))
    first_sharded, per_shard = timed(lambda: sharded(client))
    if count != n or sum(per_shard) != n:
        raise RuntimeError(f"listed {count} and {sum(per_shard)} objects, expected {n}")
    figure: list[float] = []
    baseline: list[float] = []
    counter.take()
    for _ in range(ctx.repeat):
        seconds, per_shard = timed(lambda: sharded(client))
        if sum(per_shard) != n:
            raise RuntimeError(f"the sharded listing found {sum(per_shard)} objects, expected {n}")
        figure.append(seconds)
        peak = counter.peak_in_flight
        sharded_pages, sharded_keys = counter.take()
        seconds, count = timed(lambda: sequential(client))
        if count != n:
            raise RuntimeError(f"the paginator found {count} objects, expected {n}")
        baseline.append(seconds)
        sequential_pages, _ = counter.take()
    fig, base = Stat.of(figure, "s"), Stat.of(baseline, "s")
    ratio = base.median / fig.median
    rounds = max(max(1, math.ceil(c / 1000)) for c in per_shard)  # pages of the longest shard, unsplit
    notes = (
        f"{sequential_pages} pages one after another vs {sharded_pages} pages in {SHARDS} shards, at most {peak} "
        f"requests in flight (the longest shard holds {max(per_shard):,} keys, {rounds} pages in a row if listed "
        f"in one piece; a shard whose first page shows more than a page still to come is listed in parts). "
        f"The rest is the client's own work per page (parsing up to 1,000 keys), which the threads "
        f"share one interpreter lock for ({sharded_keys:,} keys parsed for {n:,}: a part's last page runs past "
        f"its end).",
        f"first pass, moto computing each page (its own CPU on top of the 200 ms): sequential "
        f"{first_sequential:.1f} s, sharded {first_sharded:.1f} s.",
    )
    return Measured(
        title=f"sharded listing, {n:,} objects, 200 ms per page, {SHARDS} shards at once",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
        met=ratio >= 8, notes=notes,
        extra={"objects": n, "pages_sequential": sequential_pages, "pages_sharded": sharded_pages,
               "keys_parsed_sharded": sharded_keys, "objects_per_shard": per_shard,
               "peak_requests_in_flight": peak,
               "first_pass_seconds": {"sequential": first_sequential, "sharded": first_sharded},
               "page_delay_seconds": moto.list_delay},
    )


BENCHMARK = Benchmark(
    name="listing",
    title=f"sharded listing, 30,000 objects, 200 ms per page, {SHARDS} shards at once",
    baseline_title="one sequential paginator",
    target="≥ 8×",
    needs=("trr_assets.storage", "trr_assets.keys"),
    run=run,
)
