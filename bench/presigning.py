"""The presigner: URLs per second on one core, and a page of 1,000 URLs
checked by RLS in one query.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from bench import data
from bench.env import query
from bench.harness import Benchmark, Context, Measured, Stat, number, timed
from trr_assets import db, storage
from trr_assets.config import DatabaseSettings

BUCKET = data.BUCKET
SIGV4 = "X-Amz-Algorithm=AWS4-HMAC-SHA256"


def run_url_for_key(ctx: Context) -> Measured:
    from trr_assets.presign import Presigner

    n = ctx.size(100_000, 20_000)
    n_baseline = ctx.size(5_000, 1_000)
    shows = data.show_ids(n // 100)
    names = list(data.keys(shows, 100))
    # No database is touched: url_for_key makes no row check.
    settings = ctx.env.settings(ctx.env.url(ctx.env.migrated))
    client = storage.make_client(settings.s3)
    with Presigner(settings=settings) as presigner:
        mine = presigner.url_for_key(BUCKET, names[0])
        theirs = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": names[0]},
                                               ExpiresIn=settings.presign.expires_seconds)
        if SIGV4 not in mine or SIGV4 not in theirs:
            raise RuntimeError("both sides must make SigV4 URLs")

        def ours(count: int) -> None:
            for key in names[:count]:
                presigner.url_for_key(BUCKET, key)

        def botocore(count: int) -> None:
            for key in names[:count]:
                client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key},
                                              ExpiresIn=settings.presign.expires_seconds)

        ours(2_000)  # warm-up
        botocore(200)
        figure: list[float] = []
        baseline: list[float] = []
        for _ in range(ctx.repeat):
            seconds, _ = timed(lambda: ours(n))
            figure.append(n / seconds)
            seconds, _ = timed(lambda: botocore(n_baseline))
            baseline.append(n_baseline / seconds)
    fig, base = Stat.of(figure, "URLs/s"), Stat.of(baseline, "URLs/s")
    ratio = fig.median / base.median
    return Measured(
        title=f"presign url_for_key, URLs/s, one core ({n:,} distinct keys)",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
        met=fig.median >= 100_000 and ratio >= 30,
        notes=(f"one thread; GET URLs for {n:,} distinct keys (botocore: the first {n_baseline:,}), same "
               f"client configuration (SigV4, {storage.configured_region(settings.s3)}), "
               f"{settings.presign.expires_seconds} s expiry.",),
        extra={"urls": n, "baseline_urls": n_baseline},
    )


def run_get_urls(ctx: Context) -> Measured:
    from trr_assets.presign import Presigner

    n = ctx.size(1_000, 200)
    calls = ctx.size(10, 5)
    user = uuid.UUID(int=0x5EB, version=4)
    shows = data.show_ids(10)

    def build(conn: psycopg.Connection[Any], url: str) -> None:
        db.migrate(DatabaseSettings(url=url), enable=["org-read"])
        conn.execute(query("insert_shows"), {"ids": shows})
        conn.execute(query("add_org_member"), {"user_id": user})
        conn.execute(query("insert_assets"), {"bucket": BUCKET, "ids": shows, "per_show": n // len(shows),
                                              "drift": False, "content_type": data.CONTENT_TYPE})

    template = ctx.env.template(f"presign:{n}", build)
    claims = {"role": "authenticated", "sub": str(user)}
    outsider = {"role": "authenticated", "sub": str(uuid.UUID(int=0xBAD, version=4))}
    # Read-only: one clone serves every repetition, as one database serves a web server.
    with ctx.env.database(template) as url, psycopg.connect(url, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(query("asset_ids"), {"bucket": BUCKET})]
        settings = ctx.env.settings(url)
        with Presigner(settings=settings) as presigner:
            if presigner.get_urls(ids, outsider):
                raise RuntimeError("RLS let a non-member see assets: the org-read policy is not in force")

            def page() -> None:
                urls = presigner.get_urls(ids, claims)
                if len(urls) != n:
                    raise RuntimeError(f"get_urls returned {len(urls)} URLs, expected {n}")

            def singles() -> None:
                for asset in ids:
                    presigner.get_url(asset, claims)

            for _ in range(3):  # warm-up: the pool's connections, the plans
                page()
            for asset in ids[:50]:
                presigner.get_url(asset, claims)
            figure: list[float] = []
            baseline: list[float] = []
            for _ in range(ctx.repeat):
                for _ in range(calls):
                    seconds, _ = timed(page)
                    figure.append(seconds * 1000)
                seconds, _ = timed(singles)
                baseline.append(seconds * 1000)
    fig, base = Stat.of(figure, "ms"), Stat.of(baseline, "ms")
    ratio = base.median / fig.median
    return Measured(
        title=f"get_urls {n:,} assets, RLS-checked query (org-read policy), ms per call",
        baseline_title=f"{n:,} single get_url calls",
        figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
        met=fig.median <= 30,
        notes=(f"claims of an organization member ({{'role': 'authenticated', 'sub': ...}}), org-read policy "
               f"enabled, so RLS checks membership per row; {len(figure)} get_urls calls, "
               f"{ctx.repeat} rounds of {n:,} get_url calls.",),
        extra={"assets": n, "get_urls_calls": len(figure)},
    )


PRESIGN = Benchmark(
    name="presign",
    title="presign url_for_key, URLs/s, one core",
    baseline_title="botocore generate_presigned_url (SigV4)",
    target="≥ 100,000/s and ≥ 30×",
    needs=("trr_assets.presign",),
    run=run_url_for_key,
    command_process=False,  # a web server importing the presigner
)

GET_URLS = Benchmark(
    name="get_urls",
    title="get_urls 1,000 assets, RLS-checked query, ms per call",
    baseline_title="1,000 single get_url calls",
    target="≤ 30 ms median",
    needs=("trr_assets.presign",),
    run=run_get_urls,
    command_process=False,  # a web server importing the presigner
)
