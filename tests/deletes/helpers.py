"""Helpers of the paired-delete tests (tests/deletes/)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import botocore.exceptions
import psycopg

from tests.support.s3 import TEST_BUCKET


def key_of(show_id: uuid.UUID, name: str) -> str:
    return f"shows/{show_id}/{name}"


def add_asset(
    conn: psycopg.Connection[Any], s3: Any, show_id: uuid.UUID, name: str, *, bucket: str = TEST_BUCKET,
    body: bytes = b"old",
) -> tuple[uuid.UUID, str]:
    """PUT an object and insert its row (as the owner); return (asset id, key)."""
    key = key_of(show_id, name)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    row = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes) values (%s, %s, %s, %s) returning id",
        (show_id, bucket, key, len(body)),
    ).fetchone()
    assert row is not None
    return row[0], key


def add_rows(conn: psycopg.Connection[Any], show_id: uuid.UUID, count: int, *, bucket: str = TEST_BUCKET) -> list[str]:
    """Insert ``count`` rows (no objects) in one statement; return their keys."""
    rows = conn.execute(
        """
        insert into core.show_assets (show_id, bucket, object_key)
        select %(show)s, %(bucket)s, 'shows/' || %(show)s::text || '/' || lpad(g::text, 5, '0') || '.jpg'
        from generate_series(1, %(count)s) g
        returning object_key
        """,
        {"show": show_id, "bucket": bucket, "count": count},
    ).fetchall()
    return [r[0] for r in rows]


def object_exists(s3: Any, key: str, *, bucket: str = TEST_BUCKET) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


def object_body(s3: Any, key: str, *, bucket: str = TEST_BUCKET) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def queue(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The delete queue, oldest first, as dicts."""
    cur = conn.execute(
        "select bucket, object_key, asset_id, state, attempts, next_attempt_at, last_error, updated_at"
        " from trr_assets.delete_queue order by id"
    )
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class DeleteCalls:
    """Records the keys of every DeleteObjects request a client sends."""

    def __init__(self, client: Any) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.s3.DeleteObjects", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.calls.append([obj["Key"] for obj in params["Delete"]["Objects"]])

    @property
    def keys(self) -> list[str]:
        return [key for call in self.calls for key in call]


def refuse_keys(client: Any, keys: set[str], code: str = "AccessDenied") -> None:
    """Make S3's answer report ``keys`` as per-key errors (the objects may
    well be gone; the drain must only trust what the response says)."""

    def edit(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Errors"] = [*parsed.get("Errors", ()), *(
            {"Key": d["Key"], "Code": code, "Message": "Access Denied"}
            for d in parsed.get("Deleted", ()) if d["Key"] in keys
        )]
        parsed["Deleted"] = [d for d in parsed.get("Deleted", ()) if d["Key"] not in keys]

    client.meta.events.register("after-call.s3.DeleteObjects", edit)
