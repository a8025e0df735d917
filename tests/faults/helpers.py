"""Rows, queue entries and objects for the fault and race tests (S3 is the moto server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from tests.support.moto_server import S3Server
from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET


def row_keys(conn: psycopg.Connection[Any]) -> list[str]:
    """The asset rows' keys, in order."""
    return [r[0] for r in conn.execute("select object_key from core.show_assets order by object_key")]


def queue(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int]]:
    """The delete queue: ``{key: (state, attempts)}``."""
    return {r[0]: (r[1], r[2]) for r in conn.execute("select object_key, state, attempts from trr_assets.delete_queue")}


def add_asset(conn: psycopg.Connection[Any], server: S3Server, show: Any, name: str) -> str:
    """An object and its row, the row old enough to be past any grace period."""
    key = f"shows/{show}/{name}"
    etag = server.put(key, key.encode())
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum, updated_at)"
        " values (%s, %s, %s, %s, %s, now() - interval '30 days')",
        (show, TEST_BUCKET, key, len(key.encode()), etag),
    )
    return key


def thousand_assets(conn: psycopg.Connection[Any], server: S3Server) -> tuple[list[str], dict[str, Any]]:
    """1,000 objects of one show with their rows: ``(keys in order, {key: asset id})``."""
    show = make_show(conn)
    keys = [f"shows/{show}/{i:04d}.jpg" for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x"), keys))
    ids = dict(conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes)"
        " select %s, %s, k, 1 from unnest(%s::text[]) k returning object_key, id",
        (show, TEST_BUCKET, keys),
    ).fetchall())
    return keys, ids
