"""HEADing a batch's objects for the row writer: content type, ``owner-id``
metadata, current size and ETag, each answer made into the row to write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NamedTuple

from trr_assets import metadata, storage
from trr_assets.records import ObjectInfo
from trr_assets.storage import S3Client
from trr_assets.storage import heads as storage_heads


class Row(NamedTuple):
    """A row to write, from an object's HEAD answer (a NamedTuple: see ``records``)."""

    key: str
    show_id: str  # canonical text (keys.parse_show_id)
    size: int
    etag: str
    content_type: str | None
    owner_id: uuid.UUID | None
    invalid_owner: bool = False  # `owner-id` metadata was there but not a UUID


HEAD_RUN_MAX = 64  # objects HEADed one after another by one pool task, at most


@dataclass(frozen=True)
class Heads:
    """HEADs the objects of one bucket on ``pool``, sized for ``workers``
    threads, or with ``native`` (a ``storage_heads.HeadClient``) when given."""

    client: S3Client
    bucket: str
    pool: Executor
    workers: int
    native: storage_heads.HeadClient | None = None
    from_listing: bool = False  # no HEADs: rows from the listing alone (sync.metadata = "listing")

    def __call__(self, todo: list[tuple[ObjectInfo, str]]) -> Iterator[Row | None]:
        """Each object's HEAD answer as a row (None: gone), in order, as they come.

        One pool task HEADs a run of consecutive objects, not one each: a
        task's hand-over costs a lock or two, and with every unit of a sync
        submitting to the one shared pool, those locks, not the HEADs, were
        what the threads spent their time on (measured: see docs/benchmarks.md,
        import row). Runs stay short enough that each of the ``workers``
        gets about four of them, so a small batch is still HEADed with all
        the parallelism it can use.
        """
        client, bucket = self.client, self.bucket
        if self.from_listing:
            guess = metadata.guess_content_type
            return (Row(obj.key, show_id, obj.size, obj.etag, guess(obj.key), None) for obj, show_id in todo)
        if self.native is not None:
            native = self.native.heads(bucket, [obj.key for obj, _ in todo])
            return (_row(obj, show_id, answer) for (obj, show_id), answer in zip(todo, native, strict=False))
        size = max(1, min(HEAD_RUN_MAX, len(todo) // (4 * self.workers)))
        if size == 1:
            return self.pool.map(lambda item: _head(client, bucket, item[0], item[1]), todo)
        runs = [todo[start : start + size] for start in range(0, len(todo), size)]
        answers = self.pool.map(lambda run: [_head(client, bucket, obj, show_id) for obj, show_id in run], runs)
        return (row for run in answers for row in run)


def _head(client: S3Client, bucket: str, obj: ObjectInfo, show_id: str) -> Row | None:
    """The object's current metadata, or None when it is gone."""
    return _row(obj, show_id, storage.head_object(client, bucket, obj.key))


def _row(obj: ObjectInfo, show_id: str, response: Mapping[str, Any] | None) -> Row | None:
    """The row of a HEAD answer (None: the object is gone)."""
    if response is None:
        return None
    owner: uuid.UUID | None = None
    invalid_owner = False
    metadata = response.get("Metadata")
    raw_owner = metadata.get("owner-id") if metadata else None
    if raw_owner:
        try:
            owner = uuid.UUID(raw_owner.strip())
        except ValueError:
            invalid_owner = True
    return Row(
        obj.key,
        show_id,
        int(response.get("ContentLength", obj.size)),
        storage.strip_etag(response.get("ETag")) or obj.etag,
        response.get("ContentType"),
        owner,
        invalid_owner,
    )
