"""reconcile --versions' listing of versions against the plain listing of as many keys.

Both list the same bucket of the S3 stand-in (``bench.s3_standin``, every
answer 20 ms late, almost no CPU of its own) in the listing's 16 shards,
``s3.list_concurrency`` at once, from one client made by
``storage.make_client``: the figure with ``storage_versions.list_versions``
(ListObjectVersions), the baseline with ``storage.list_objects``
(ListObjectsV2), so both pay the same round trips and differ by what a page
carries and costs to parse. Neither splits shards, so both send the same
number of pages.

Each measurement runs in a fresh interpreter (``python -m
bench.version_listing --child ...``), so its peak RSS is its own; memory is
flat when the peak grows by no more than 5 MB (or 10 %) from a fifth of the
versions to all of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import data
from bench.end_to_end import StandIn
from bench.harness import Benchmark, Context, Measured, Stat, number

SHARDS = 16
MODES = ("versions", "plain")


def _child(endpoint: str, mode: str, objects: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.version_listing", "--child", "--endpoint", endpoint, "--mode", mode]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"version listing child ({mode}) failed: {last}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result["listed"] != objects:
        raise RuntimeError(f"{mode} listed {result['listed']:,} entries, expected {objects:,}")
    return result


def run(ctx: Context) -> Measured:
    big = ctx.size(100_000, 20_000)
    small = big // 5
    results: dict[tuple[int, str], list[dict[str, Any]]] = {(s, m): [] for s in (small, big) for m in MODES}
    with StandIn(big) as stand_in, StandIn(small) as small_stand_in:
        endpoints = {big: stand_in.endpoint, small: small_stand_in.endpoint}
        for mode in MODES:  # warm-up: compiled bytecode, the stand-ins' pages
            _child(endpoints[small], mode, small)
        for rep in range(ctx.repeat):
            for size in (small, big):
                for mode in MODES:
                    results[(size, mode)].append(_child(endpoints[size], mode, size))
            ctx.say(f"version listing: repetition {rep + 1}/{ctx.repeat} done")
    with StandIn(big // 2, versions_per_key=2) as two_each:
        two = Stat.of([_child(two_each.endpoint, "versions", big)["seconds"] for _ in range(ctx.repeat)], "s")
    figure = Stat.of([r["seconds"] for r in results[(big, "versions")]], "s")
    baseline = Stat.of([r["seconds"] for r in results[(big, "plain")]], "s")
    ratio = figure.median / baseline.median

    def rss(size: int, mode: str) -> float:
        return max(r["rss_mb"] for r in results[(size, mode)])

    growth = rss(big, "versions") - rss(small, "versions")
    flat = growth <= max(5.0, 0.10 * rss(small, "versions"))
    notes = (
        f"peak RSS listing versions: {rss(small, 'versions'):.0f} MB at {small:,}, {rss(big, 'versions'):.0f} MB at "
        f"{big:,} ({'flat' if flat else 'NOT flat'}: {growth:+.1f} MB); the plain listing: "
        f"{rss(small, 'plain'):.0f} MB and {rss(big, 'plain'):.0f} MB.",
        f"{big:,} versions of {big // 2:,} keys, two each: {two.text()}, {two.median / baseline.median:.2f}× the "
        f"plain listing of {big:,} keys.",
    )
    return Measured(
        title=f"version listing, {big:,} versions, {SHARDS} shards, 20 ms per page",
        figure=figure, baseline=baseline, ratio=ratio, ratio_text=f"{number(ratio)}× the plain listing's time",
        met=ratio <= 1.5 and flat, notes=notes,
        baseline_title=f"plain listing of {big:,} keys",
        extra={"versions": big, "peak_rss_mb": {f"{m}@{s}": rss(s, m) for s in (small, big) for m in MODES},
               "rss_growth_mb": growth, "two_versions_per_key": two.as_dict()},
    )


BENCHMARK = Benchmark(
    name="version-listing",
    title=f"version listing, 100,000 versions, {SHARDS} shards, 20 ms per page",
    baseline_title="plain listing of 100,000 keys",
    target="≤ 1.5× and flat memory",
    needs=("trr_assets.storage.versions",),
    run=run,
)


# --- the child ---------------------------------------------------------------------


def child(endpoint: str, mode: str) -> dict[str, Any]:
    from bench.merge_child import peak_rss_mb
    from trr_assets import keys, storage
    from trr_assets.config import settings_from_mapping
    from trr_assets.runtime import tune_collector
    from trr_assets.storage import versions as storage_versions

    tune_collector()
    settings = settings_from_mapping({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}})
    client = storage.make_client(settings.s3)
    before = peak_rss_mb()

    def one(shard: keys.KeyRange) -> int:
        if mode == "versions":
            pages = storage_versions.list_versions(client, data.BUCKET, prefix=data.PREFIX, start_at=shard.start_at,
                                                   stop_before=shard.stop_before)
            return sum(len(page) for page in pages)
        listing = storage.list_objects(client, data.BUCKET, prefix=data.PREFIX, start_at=shard.start_at,
                                       stop_before=shard.stop_before)
        return sum(1 for _ in listing)

    started = time.perf_counter()
    with ThreadPoolExecutor(settings.s3.list_concurrency, thread_name_prefix="bench-shard") as pool:
        listed = sum(pool.map(one, keys.shard_ranges(data.PREFIX, SHARDS)))
    seconds = time.perf_counter() - started
    return {"listed": listed, "seconds": seconds, "rss_before_mb": before, "rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.version_listing")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(child(args.endpoint, args.mode)))


if __name__ == "__main__":
    main()
