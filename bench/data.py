"""The benchmark's data: deterministic shows, keys and objects.

Every benchmark derives its data from a show count and a number of objects
per show, so both sides of a comparison, the database and the S3 side, and a
child process measuring memory all see exactly the same keys without passing
them around. Keys are ``shows/<show uuid>/<7-digit number>.jpg``: generated
in S3's order (shows sorted by their text, numbers ascending, all of one
width), so a listing can be produced lazily, one object at a time.

Drift (for reconcile's merge), by the object number ``j``: ``j % 100 == 1``
an object with no row, ``== 2`` a row with no object, ``== 3`` both, with
different sizes. ``bench/queries.sql`` builds the same rows in SQL.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

from trr_assets.storage import ObjectInfo, object_info

BUCKET = "trr-bench-assets"
PREFIX = "shows/"
CONTENT_TYPE = "image/jpeg"
LAST_MODIFIED = datetime(2024, 1, 1, tzinfo=timezone.utc)


def show_ids(count: int, *, seed: int = 8) -> list[uuid.UUID]:
    """``count`` show ids, sorted as their text sorts (S3's order of the keys)."""
    rnd = random.Random(seed)
    ids = {uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(count)}
    while len(ids) < count:  # a collision is as likely as winning a lottery twice
        ids.add(uuid.UUID(int=rnd.getrandbits(128), version=4))
    return sorted(ids, key=str)


def object_key(show: uuid.UUID, number: int) -> str:
    return f"{PREFIX}{show}/{number:07d}.jpg"


def size_of(number: int) -> int:
    return 1000 + number


def etag_of(number: int) -> str:
    return f"{number:032x}"


def keys(shows: list[uuid.UUID], per_show: int) -> Iterator[str]:
    """Every key, in S3's order."""
    for show in shows:
        for number in range(per_show):
            yield object_key(show, number)


def objects(shows: list[uuid.UUID], per_show: int, *, drift: bool = False) -> Iterator[ObjectInfo]:
    """The listing of the bucket, in S3's order, one object at a time."""
    # Per object number, once: what does not depend on the show.
    tails = [(f"/{number:07d}.jpg", size_of(number), etag_of(number)) for number in range(per_show)
             if not (drift and number % 100 == 2)]  # with drift: a row with no object
    for show in shows:
        prefix = f"{PREFIX}{show}"
        for tail, size, etag in tails:
            yield object_info((prefix + tail, size, etag, LAST_MODIFIED))


def expected_drift(shows: int, per_show: int) -> dict[str, int]:
    """What a correct merge of ``objects(drift=True)`` with the drift rows finds."""
    def count(remainder: int) -> int:
        return shows * sum(1 for n in range(per_show) if n % 100 == remainder)

    only_s3, only_db, changed = count(1), count(2), count(3)
    return {
        "only_in_s3": only_s3,
        "only_in_db": only_db,
        "changed": changed,
        "same": shows * per_show - only_s3 - only_db - changed,
    }
