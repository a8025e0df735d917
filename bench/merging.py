"""Reconcile's merge core: the listing merge-joined with rows streamed from
PostgreSQL, against a naive in-memory set difference of the same data.

Each measurement runs in a fresh interpreter (``bench.merge_child``), so its
peak RSS is its own. Both sizes live in one database, a bucket each; the
database is only read, so every repetition uses it as it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg

from bench import data
from bench.env import query
from bench.harness import Benchmark, Context, Measured, Stat, number

PER_SHOW = 1000
MODES = ("merge", "naive")


def _child(url: str, bucket: str, pool: int, shows: int, mode: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.merge_child", "--db", url, "--bucket", bucket,
               "--show-pool", str(pool), "--shows", str(shows), "--per-show", str(PER_SHOW), "--mode", mode]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"merge child ({mode}, {shows * PER_SHOW} keys) failed: {last}")
    return json.loads(done.stdout)


def _bucket(size: int) -> str:
    return f"trr-bench-merge-{size}"


def run(ctx: Context) -> Measured:
    sizes = (10_000, 100_000) if ctx.quick else (100_000, 1_000_000)
    big, small = sizes[-1], sizes[0]
    pool = big // PER_SHOW
    shows = data.show_ids(pool)
    with ctx.env.database() as url:
        ctx.say(f"merge: writing {sum(sizes):,} rows")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(query("insert_shows"), {"ids": shows})
            for size in sizes:
                conn.execute(query("insert_assets"), {
                    "bucket": _bucket(size), "ids": shows[: size // PER_SHOW], "per_show": PER_SHOW,
                    "drift": True, "content_type": data.CONTENT_TYPE,
                })
            conn.execute("vacuum (freeze, analyze)")
        for mode in MODES:  # warm-up: compiled bytecode, the rows in PostgreSQL's cache
            _child(url, _bucket(small), pool, small // PER_SHOW, mode)
        results: dict[tuple[int, str], list[dict[str, Any]]] = {(s, m): [] for s in sizes for m in MODES}
        for rep in range(ctx.repeat):
            for size in sizes:
                for mode in MODES:
                    results[(size, mode)].append(_child(url, _bucket(size), pool, size // PER_SHOW, mode))
            ctx.say(f"merge: repetition {rep + 1}/{ctx.repeat} done")
    for (size, mode), found in results.items():
        expected = data.expected_drift(size // PER_SHOW, PER_SHOW)
        for result in found:
            if result["counts"] != expected:
                raise RuntimeError(f"{mode} at {size:,} keys found {result['counts']}, expected {expected}")

    def rate(size: int, mode: str) -> Stat:
        return Stat.of([size / r["seconds"] for r in results[(size, mode)]], "keys/s")

    def rss(size: int, mode: str) -> float:
        return max(r["rss_mb"] for r in results[(size, mode)])

    figure, baseline = rate(big, "merge"), rate(big, "naive")
    growth = rss(big, "merge") - rss(small, "merge")
    # Flat: the larger run needs at most 5 MB or 10 % more than the smaller.
    flat = growth <= max(5.0, 0.10 * rss(small, "merge"))
    ratio = figure.median / baseline.median
    label = {100_000: "100k", 1_000_000: "1M", 10_000: "10k"}
    met = figure.median >= 300_000 and rss(big, "merge") <= 150 and flat
    notes = (
        f"peak RSS of the merge: {rss(small, 'merge'):.0f} MB at {label[small]} keys, {rss(big, 'merge'):.0f} MB at "
        f"{label[big]} ({'flat' if flat else 'not flat'}: {growth:+.1f} MB); the naive set difference: "
        f"{rss(small, 'naive'):.0f} MB and {rss(big, 'naive'):.0f} MB. A fresh interpreter with psycopg and the "
        f"project imported starts at {min(r['rss_before_mb'] for v in results.values() for r in v):.0f} MB.",
        "1% of the keys are objects with no row, 1% rows with no object, 1% differ in size; both sides found "
        "exactly those. The naive side runs the same SQL query, fetched whole.",
    )
    extra = {
        "sizes": list(sizes),
        "keys_per_second": {f"{m}@{s}": rate(s, m).as_dict() for s in sizes for m in MODES},
        "peak_rss_mb": {f"{m}@{s}": rss(s, m) for s in sizes for m in MODES},
        "rss_growth_mb": growth,
        "flat": flat,
    }
    return Measured(
        title=f"reconcile merge core, {big:,} keys vs {big:,} rows streamed from PostgreSQL; peak RSS",
        figure=figure, baseline=baseline, ratio=ratio, ratio_text=f"{number(ratio)}× faster; "
        f"RSS {rss(big, 'merge'):.0f} MB vs {rss(big, 'naive'):.0f} MB",
        met=met, notes=notes, extra=extra,
    )


BENCHMARK = Benchmark(
    name="merge",
    title="reconcile merge core, 1,000,000 keys vs 1,000,000 rows streamed from PostgreSQL; peak RSS",
    baseline_title="naive in-memory set difference",
    target="≥ 300,000 keys/s; peak RSS ≤ 150 MB and flat from 100k to 1M",
    needs=("trr_assets.diff",),
    run=run,
)
