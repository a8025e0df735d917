"""Helpers of the sync tests: objects in moto, rows as plain tuples, HEAD counting."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from trr_assets import sync
from trr_assets.config import Settings
from tests.conftest import TEST_BUCKET, make_settings


def put(
    s3: Any,
    key: str,
    body: bytes = b"data",
    *,
    content_type: str = "image/jpeg",
    owner: str | None = None,
    bucket: str = TEST_BUCKET,
) -> str:
    """Upload an object; returns its ETag without quotes."""
    extra = {"Metadata": {"owner-id": owner}} if owner is not None else {}
    response = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra)
    return response["ETag"].strip('"')


def rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    """``{object_key: (show_id, size_bytes, checksum, content_type, owner_id)}`` of the test bucket."""
    found = conn.execute(
        "select object_key, show_id, size_bytes, checksum, content_type, owner_id"
        " from core.show_assets where bucket = %s order by object_key",
        (TEST_BUCKET,),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in found}


def versions(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    """``{object_key: (xmin, updated_at)}``: any write to a row changes its xmin."""
    found = conn.execute(
        "select object_key, xmin::text, updated_at from core.show_assets order by object_key"
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in found}


def sync_settings(db_url: str, **s3: Any) -> Settings:
    """Small shards and concurrency, to exercise them without loading the machine."""
    options = {"list_shards": 4, "list_concurrency": 2, "head_concurrency": 4, **s3}
    batch = options.pop("batch_size", 100)
    return make_settings(db_url, s3=options, sync={"batch_size": batch})


def run(settings: Settings, s3: Any, **kwargs: Any) -> sync.SyncReport:
    return sync.run(settings, client=s3, progress=False, **kwargs)


class HeadCounter:
    """Counts HeadObject calls made with a client."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-call.s3.HeadObject", self._seen)

    def _seen(self, **_: Any) -> None:
        self.count += 1


def show_key(show: uuid.UUID, name: str) -> str:
    return f"shows/{show}/{name}"
