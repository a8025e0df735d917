"""Shared set-up for the reconcile tests: objects, rows, queue entries, a run."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from trr_assets import reconcile
from trr_assets.config import Settings
from trr_assets.reconcile import ReconcileOptions, ReconcileSummary

LONG_AGO = datetime.now(timezone.utc) - timedelta(days=30)


def put(
    s3: Any, key: str, body: bytes = b"data", *, bucket: str = TEST_BUCKET, content_type: str = "image/jpeg"
) -> str:
    """Upload an object; return its ETag without quotes."""
    reply = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    return reply["ETag"].strip('"')


def add_row(
    conn: psycopg.Connection[Any],
    show_id: uuid.UUID,
    key: str,
    *,
    size: int,
    etag: str,
    bucket: str = TEST_BUCKET,
    updated_at: datetime = LONG_AGO,
) -> uuid.UUID:
    """Insert a row as sync would have (updated_at set explicitly: no trigger on insert)."""
    row = conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes, checksum,"
        " created_at, updated_at) values (%s, %s, %s, 'image/jpeg', %s, %s, %s, %s) returning id",
        (show_id, bucket, key, size, etag, updated_at, updated_at),
    ).fetchone()
    assert row is not None
    return row[0]


def enqueue(conn: psycopg.Connection[Any], key: str, *, state: str = "pending", bucket: str = TEST_BUCKET) -> None:
    conn.execute(
        "insert into trr_assets.delete_queue (bucket, object_key, state) values (%s, %s, %s)", (bucket, key, state)
    )


@dataclass
class Planted:
    """A bucket with one of everything, and the keys of each class."""

    show_id: uuid.UUID
    in_sync: list[str] = field(default_factory=list)
    orphaned_objects: list[str] = field(default_factory=list)
    orphaned_rows: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    row_ids: dict[str, uuid.UUID] = field(default_factory=dict)


def plant(conn: psycopg.Connection[Any], s3: Any) -> Planted:
    show = make_show(conn)
    p = Planted(show_id=show)
    base = f"shows/{show}/"
    for name in ("a.jpg", "b.jpg", "é ü+x.jpg"):
        key = base + name
        etag = put(s3, key, b"in sync " + name.encode())
        p.row_ids[key] = add_row(conn, show, key, size=len(b"in sync " + name.encode()), etag=etag)
        p.in_sync.append(key)
    for key in (base + "orphan.jpg", "shows/not-a-show/stray.jpg"):
        put(s3, key, b"orphan")
        p.orphaned_objects.append(key)
    key = base + "row-only.jpg"
    p.row_ids[key] = add_row(conn, show, key, size=10, etag="0" * 32)
    p.orphaned_rows.append(key)
    key = base + "changed.jpg"
    put(s3, key, b"new content, longer")
    p.row_ids[key] = add_row(conn, show, key, size=3, etag="1" * 32)
    p.mismatched.append(key)
    key = base + "being-deleted.jpg"
    put(s3, key, b"queued")
    enqueue(conn, key)
    p.pending.append(key)
    key = base + "delete-gave-up.jpg"
    put(s3, key, b"failed")
    enqueue(conn, key, state="failed")
    p.failed.append(key)
    return p


def run(
    settings: Settings, client: Any = None, **options: Any
) -> tuple[list[dict[str, Any]], ReconcileSummary]:
    """Run reconcile; return the findings the sink received and the summary."""
    found: list[dict[str, Any]] = []
    summary = reconcile.run(settings, ReconcileOptions(**options), sink=found.append, client=client)
    return found, summary


def keys_of(findings: list[dict[str, Any]], kind: str) -> set[str]:
    return {f["key"] for f in findings if f["kind"] == kind}


def object_keys(s3: Any, bucket: str = TEST_BUCKET) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", ())}


def row_keys(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from core.show_assets")}


def queued_keys(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from trr_assets.delete_queue")}


def write_config(path: Path, db_url: str, **sections: dict[str, Any]) -> Path:
    """A TOML config for the CLI: this database, the test bucket, no grace."""
    data: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        "s3": {"buckets": [TEST_BUCKET]},
        "reconcile": {"grace_seconds": 0},
        "logging": {"format": "json"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for name, values in data.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
