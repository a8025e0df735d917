"""Where a row's metadata comes from: a HEAD of its object, or the listing alone.

``sync.metadata = "head"`` (the default) HEADs every new or changed object:
the row gets S3's ``Content-Type`` and the ``owner-id`` metadata. With
``"listing"``, the row is written from the listing alone: size, checksum and
show as always, ``content_type`` guessed from the key's extension
(``guess_content_type``), ``owner_id`` left as it is (null for a new row),
and the key is put on ``trr_assets.heads_pending``. A later pass with
``"head"`` HEADs just those keys and rewrites the rows whose metadata
differs (see ``sync``); complete rows are never HEADed again.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Sequence
from typing import Any

import psycopg

from trr_assets import db, keys

HEAD = "head"
LISTING = "listing"

# Python's own table only, never the machine's /etc/mime.types: the same key
# gets the same guess wherever sync runs.
_TYPES = mimetypes.MimeTypes(filenames=())


def guess_content_type(key: str) -> str | None:
    """The content type a key's extension suggests (``image/jpeg`` for
    ``.JPG``), or None when the extension says nothing."""
    extension = posixpath.splitext(key)[1]
    if not extension:
        return None
    found = _TYPES.types_map[True].get(extension) or _TYPES.types_map[True].get(extension.lower())
    return found


def mark_pending(conn: psycopg.Connection[Any], bucket: str, keys: Sequence[str]) -> None:
    """Put the keys on ``trr_assets.heads_pending`` (inside the caller's
    transaction, the one that wrote their rows)."""
    if keys:
        with db.wrap_errors(f"mark rows of bucket {bucket} for a later HEAD"):
            conn.execute(db.query("sync_mark_heads_pending"), {"bucket": bucket, "keys": list(keys)})


def pending(
    conn: psycopg.Connection[Any], bucket: str, *, prefix: str, after: str, limit: int
) -> list[tuple[str, int, str]]:
    """(key, size, checksum) of the next ``limit`` rows on the list under ``prefix``, after ``after``."""
    params = {"bucket": bucket, "start": prefix, "stop": keys.prefix_end(prefix), "after": after, "limit": limit}
    with db.wrap_errors(f"read the rows of bucket {bucket} awaiting a HEAD"):
        found = conn.execute(db.query("sync_heads_pending"), params).fetchall()
    return [(row[0], int(row[1] or 0), row[2] or "") for row in found]


def drop_orphans(conn: psycopg.Connection[Any], bucket: str) -> None:
    """Take the keys whose rows were deleted since off the list."""
    with db.wrap_errors(f"clear rows of bucket {bucket} awaiting a HEAD"):
        conn.execute(db.query("sync_heads_pending_orphans"), {"bucket": bucket})


def done(conn: psycopg.Connection[Any], bucket: str, keys: Sequence[str]) -> None:
    """Take keys HEADed by a "head" pass off the list."""
    if keys:
        with db.wrap_errors(f"clear rows of bucket {bucket} awaiting a HEAD"):
            conn.execute(db.query("sync_heads_done"), {"bucket": bucket, "keys": list(keys)})
