"""Sync's database side: an initial import, and a re-sync that finds nothing
to change, against ``executemany`` of INSERT ... ON CONFLICT in pipeline mode.

The listing and the HEAD answers are fetched beforehand and served from
memory (``bench.prefetched``), so what is measured is everything but S3's
own time. The import's figure is ``sync.run`` itself into a database holding
the shows and no assets: the merge of each key range against the (empty)
rows, its HEAD thread pool, and its write path for new objects (per batch,
the show look-up, a COPY straight into ``core.show_assets`` and one commit),
its key ranges side by side as configured, each on its own connection. The
notes add ``writer.upsert_objects(absent=True)`` alone, all 200,000 objects in
one call on one connection with the HEAD answers handed over inline: the
write path without the merge, where each batch is written while the next
is parsed. The re-sync's figure is ``sync.run`` too: a no-op pass is the
merge against the rows (streamed queries), with nothing to write. The
database is real and fresh for every repetition (a clone of a template
holding the shows, or the shows and the imported rows).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, cast

import psycopg

from bench import data
from bench.env import query
from bench.harness import Benchmark, Context, Measured, Stat, megabytes, number, timed
from bench.prefetched import PrefetchedS3

if TYPE_CHECKING:  # PrefetchedS3 answers the calls sync makes, as a client would
    from trr_assets.storage import S3Client

PER_SHOW = 200
BUCKET = data.BUCKET


class _Data:
    """One size's data, in the shapes each side consumes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.shows = data.show_ids(n // PER_SHOW)
        self.objects = list(data.objects(self.shows, PER_SHOW))
        self.client = PrefetchedS3(BUCKET, self.objects, content_type=data.CONTENT_TYPE)
        show_of = {o.key: show for show in self.shows for o in data.objects([show], PER_SHOW)}
        self.rows = [(show_of[o.key], BUCKET, o.key, data.CONTENT_TYPE, o.size, o.etag) for o in self.objects]


def shows_template(ctx: Context, shows: list[uuid.UUID]) -> str:
    """A database holding ``shows`` (built once per run)."""
    return ctx.env.template(f"shows:{len(shows)}", lambda conn, url: conn.execute(
        query("insert_shows"), {"ids": shows}))


def imported_template(ctx: Context, shows: list[uuid.UUID]) -> str:
    """A database holding ``shows`` and the rows of their ``PER_SHOW`` objects each."""
    def build(conn: psycopg.Connection[Any], url: str) -> None:
        conn.execute(query("insert_assets"), {"bucket": BUCKET, "ids": shows, "per_show": PER_SHOW,
                                              "drift": False, "content_type": data.CONTENT_TYPE})

    return ctx.env.template(f"imported:{len(shows) * PER_SHOW}", build, parent=shows_template(ctx, shows))


class InlineExecutor(Executor):
    """Runs each task at once in the caller's thread: the HEAD answers are
    already in memory, so there is nothing to wait for in parallel."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        return map(fn, *iterables)


def _upsert(ctx: Context, url: str, d: _Data) -> tuple[float, Any]:
    """writer.upsert_objects of every object into an empty clone, on one connection."""
    from trr_assets import db, writer

    settings = ctx.env.settings(url)

    def write() -> Any:
        with db.connect(settings.database, autocommit=True) as conn:
            return writer.upsert_objects(conn, cast("S3Client", d.client), BUCKET, d.objects, settings=settings,
                                         head_pool=InlineExecutor(), absent=True)

    return timed(write)


def _sync(ctx: Context, url: str, d: _Data) -> tuple[float, Any]:
    from trr_assets import sync

    settings = ctx.env.settings(url)
    return timed(lambda: sync.run(settings, client=cast("S3Client", d.client)))


def _executemany(url: str, d: _Data) -> float:
    def write() -> None:
        with psycopg.connect(url) as conn:
            with conn.cursor() as cur, conn.pipeline():
                cur.executemany(query("baseline_upsert"), d.rows)
            conn.commit()

    seconds, _ = timed(write)
    return seconds


def _head_cpu_micros(ctx: Context, calls: int = 2_000) -> float:
    """Client CPU per HEAD (``storage.head_object`` through a ``make_client``
    client), in microseconds, against ``bench.head_server``: what bounds an
    initial import against real S3, whatever the database does."""
    from trr_assets import storage

    server = subprocess.Popen([sys.executable, "-m", "bench.head_server"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = storage.make_client(ctx.env.settings("postgresql://unused", endpoint=f"http://127.0.0.1:{port}").s3)
        for _ in range(100):  # warm-up: connection, endpoint resolution, caches
            storage.head_object(client, BUCKET, "shows/warm-up.jpg")
        started = time.process_time()
        for i in range(calls):
            storage.head_object(client, BUCKET, f"shows/{i:06d}.jpg")
        return (time.process_time() - started) / calls * 1e6
    finally:
        server.kill()
        server.wait()


def _watch(url: str) -> tuple[Any, Any]:
    """(WAL position, clock) before a measured write."""
    with psycopg.connect(url, autocommit=True) as conn:
        lsn = conn.execute(query("wal_position")).fetchone()
        now = conn.execute(query("clock")).fetchone()
    assert lsn is not None and now is not None
    return lsn[0], now[0]


def _written(url: str, lsn: Any, since: Any) -> tuple[int, int]:
    """(WAL bytes since lsn, rows inserted or rewritten since)."""
    with psycopg.connect(url, autocommit=True) as conn:
        wal = conn.execute(query("wal_bytes_since"), {"since": lsn}).fetchone()
        rows = conn.execute(query("rows_written_since"), {"since": since}).fetchone()
    assert wal is not None and rows is not None
    return int(wal[0]), int(rows[0])


def run_import(ctx: Context) -> Measured:
    n = ctx.size(200_000, 20_000)
    d, warm = _Data(n), _Data(max(PER_SHOW, n // 10))
    template, warm_template = shows_template(ctx, d.shows), shows_template(ctx, warm.shows)
    for side in (_upsert, _sync):
        with ctx.env.database(warm_template) as url:
            side(ctx, url, warm)
    with ctx.env.database(warm_template) as url:
        _executemany(url, warm)
    figure: list[float] = []
    baseline: list[float] = []
    write_path: list[float] = []
    head_cpu: list[float] = []
    for rep in range(ctx.repeat):
        head_cpu.append(_head_cpu_micros(ctx))
        with ctx.env.database(template) as url:
            seconds, report = _sync(ctx, url, d)
            if report.inserted != n or report.failed:
                raise RuntimeError(f"sync inserted {report.inserted} of {n} rows; failed: {report.failed}")
            figure.append(n / seconds)
        with ctx.env.database(template) as url:
            baseline.append(n / _executemany(url, d))
        with ctx.env.database(template) as url:
            seconds, counts = _upsert(ctx, url, d)
            if counts.inserted != n:
                raise RuntimeError(f"upsert_objects inserted {counts.inserted} of {n} rows")
            write_path.append(n / seconds)
        ctx.say(f"import: repetition {rep + 1}/{ctx.repeat} done")
    fig, base, alone = Stat.of(figure, "rows/s"), Stat.of(baseline, "rows/s"), Stat.of(write_path, "rows/s")
    heads = Stat.of(head_cpu, "µs")
    ratio = fig.median / base.median
    config = ctx.env.settings("postgresql://unused")
    return Measured(
        title=f"initial import, {n:,} objects, rows/s (DB side: sync.run, listing and HEADs pre-fetched)",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
        met=fig.median >= 60_000,
        notes=(f"sync.run into an empty clone: {config.s3.list_shards} key ranges merged and written "
               f"{config.s3.list_concurrency} at a time, each on its own connection, batches of "
               f"{config.sync.batch_size:,}, HEADs in runs on its pool of {config.s3.head_concurrency} threads; "
               f"{len(d.shows):,} shows of {PER_SHOW} objects; the baseline writes the same rows in one "
               f"transaction.",
               f"the write path alone, writer.upsert_objects(absent=True) of all {n:,} objects in one call on one "
               f"connection, HEAD answers handed over inline: {alone.text()}.",
               f"against real S3, the HEADs set the pace instead: one HEAD costs the client "
               f"{heads.text()} of CPU (storage.head_object through botocore, 2,000 calls against "
               f"bench.head_server, a kept-alive local server answering as S3 does), at most "
               f"{number(1e6 / heads.median)} HEADs/s per process (one interpreter lock), "
               f"{number(n * heads.median / 1e6)} s of CPU for {n:,} new objects.",),
        extra={"objects": n, "upsert_objects": alone.as_dict(), "head_cpu_us": heads.as_dict()},
    )


def run_resync(ctx: Context) -> Measured:
    n = ctx.size(200_000, 20_000)
    d, warm = _Data(n), _Data(max(PER_SHOW, n // 10))
    template, warm_template = imported_template(ctx, d.shows), imported_template(ctx, warm.shows)
    with ctx.env.database(warm_template) as url:
        _sync(ctx, url, warm)
    with ctx.env.database(warm_template) as url:
        _executemany(url, warm)
    figure: list[float] = []
    baseline: list[float] = []
    wal: dict[str, list[int]] = {"sync": [], "executemany": []}
    updated: dict[str, list[int]] = {"sync": [], "executemany": []}
    for rep in range(ctx.repeat):
        with ctx.env.database(template) as url:
            lsn, since = _watch(url)
            seconds, report = _sync(ctx, url, d)
            bytes_, rows = _written(url, lsn, since)
            if report.scanned != n or report.inserted or report.failed:
                raise RuntimeError(f"re-sync: {report.as_dict()}")
            figure.append(n / seconds)
            wal["sync"].append(bytes_)
            updated["sync"].append(max(rows, report.updated))
        with ctx.env.database(template) as url:
            lsn, since = _watch(url)
            seconds = _executemany(url, d)
            bytes_, rows = _written(url, lsn, since)
            baseline.append(n / seconds)
            wal["executemany"].append(bytes_)
            updated["executemany"].append(rows)
        ctx.say(f"resync: repetition {rep + 1}/{ctx.repeat} done")
    fig, base = Stat.of(figure, "rows/s"), Stat.of(baseline, "rows/s")
    ratio = fig.median / base.median
    wal_sync, wal_base = statistics.median(wal["sync"]), statistics.median(wal["executemany"])
    return Measured(
        title=f"no-op re-sync of the same {n:,}, rows/s; rows updated; WAL written",
        figure=fig, baseline=base, ratio=ratio,
        ratio_text=f"{number(ratio)}× faster; WAL (median) {megabytes(wal_sync)} vs {megabytes(wal_base)}",
        met=fig.median >= 200_000 and max(updated["sync"]) == 0,
        notes=(f"rows updated: sync {max(updated['sync']):,}, executemany {min(updated['executemany']):,} "
               f"(rows whose updated_at moved, and sync's own count); WAL bytes (pg_current_wal_lsn "
               f"difference, whole cluster, nothing else running): sync {', '.join(f'{w:,}' for w in wal['sync'])}; "
               f"executemany {', '.join(f'{w:,}' for w in wal['executemany'])}.",),
        extra={"objects": n, "wal_bytes": wal, "rows_updated": updated},
    )


IMPORT = Benchmark(
    name="import",
    title="initial import, 200,000 objects, rows/s (DB side: sync.run, listing and HEADs pre-fetched)",
    baseline_title="executemany INSERT … ON CONFLICT, pipeline mode",
    target="≥ 60,000 rows/s",
    needs=("trr_assets.sync",),
    run=run_import,
)

RESYNC = Benchmark(
    name="resync",
    title="no-op re-sync of the same 200,000, rows/s; rows updated; WAL written",
    baseline_title="the same executemany (rewrites every row)",
    target="≥ 200,000 rows/s, 0 rows updated, WAL bytes reported",
    needs=("trr_assets.sync",),
    run=run_resync,
)
