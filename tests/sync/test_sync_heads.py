"""sync's HEAD requests: in runs of consecutive objects, one pool task per
run, the answers still in listing order and every object HEADed once."""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import psycopg

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.sync.helpers import object_info, put, rows, show_key, sync_settings
from trr_assets import heads
from trr_assets.storage import ObjectInfo
from trr_assets.writer import upsert_objects


class _UnevenHeads:
    """An S3 client whose HEADs take uneven times (0-3 ms, by key), so
    that tasks finish out of order; counts the HEADs of each key."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.asked: dict[str, int] = {}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        with self._lock:
            self.asked[Key] = self.asked.get(Key, 0) + 1
        time.sleep(zlib.crc32(Key.encode()) % 4 / 1000)
        return self._client.head_object(Bucket=Bucket, Key=Key)  # type: ignore[no-any-return]


class _CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the tasks handed to it."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.tasks = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.tasks += 1
        return super().submit(fn, *args, **kwargs)


def _todo(s3: Any, count: int) -> list[tuple[ObjectInfo, str]]:
    show = str(uuid.uuid4())  # HEADing needs no show row: only the write checks it
    keys = [show_key(uuid.UUID(show), f"{i:04d}.jpg") for i in range(count)]
    for key in keys:
        put(s3, key)
    return [(object_info(s3, key), show) for key in keys]


def _heads(client: Any, todo: list[tuple[ObjectInfo, str]], pool_workers: int, workers: int) -> tuple[list[Any], int]:
    with _CountingPool(pool_workers) as pool:
        answers = list(heads.Heads(client, TEST_BUCKET, pool, workers)(todo))
    return answers, pool.tasks


def test_heads_in_runs_come_back_in_listing_order_one_head_per_object(s3):
    """300 objects HEADed by 4 threads whose answers come out of order: rows in listing order, each key once."""
    todo = _todo(s3, 300)
    client = _UnevenHeads(s3)

    answers, tasks = _heads(client, todo, 4, 4)

    assert [row.key for row in answers] == [obj.key for obj, _ in todo]
    assert all(row.show_id == show and row.size == obj.size for row, (obj, show) in zip(answers, todo, strict=True))
    assert client.asked == {obj.key: 1 for obj, _ in todo}
    assert tasks < len(todo)


def test_a_large_batch_makes_few_pool_tasks_and_a_small_one_a_task_per_object(s3):
    """Runs are sized for about four per worker, up to HEAD_RUN_MAX: 300 objects for one worker make
    5 tasks (runs of 64), 200 for two make 8 (runs of 25), and 3 for one make 3 (no parallelism lost)."""
    show = str(uuid.uuid4())
    now = datetime.now(timezone.utc)
    todo = [(ObjectInfo(f"shows/{show}/{i:04d}.jpg", 1, "0" * 32, now), show) for i in range(300)]  # never uploaded

    big, big_tasks = _heads(s3, todo, 2, 1)
    mid, mid_tasks = _heads(s3, todo[:200], 2, 2)
    small, small_tasks = _heads(s3, todo[:3], 2, 1)

    assert (len(big), len(mid), len(small)) == (300, 200, 3)  # an answer (None: no such object) each
    assert (big_tasks, mid_tasks, small_tasks) == (-(-300 // heads.HEAD_RUN_MAX), 8, 3)


def test_an_object_gone_inside_a_run_is_counted_vanished_and_the_run_goes_on(conn, db_url, s3):
    """Objects deleted before their HEAD, in the middle of runs, make no row and are counted; the rest are written."""
    show = make_show(conn)
    keys = [show_key(show, f"{i:02d}.jpg") for i in range(12)]
    for key in keys:
        put(s3, key, key.encode())
    listing = [object_info(s3, key) for key in keys]
    gone = {keys[3], keys[8]}
    for key in gone:
        s3.delete_object(Bucket=TEST_BUCKET, Key=key)
    settings = sync_settings(db_url, head_concurrency=1)  # 12 objects, one worker: runs of 3

    for absent in (True, False):
        conn.execute("delete from core.show_assets")
        conn.execute("delete from trr_assets.delete_queue")
        with psycopg.connect(db_url, autocommit=True) as writer:
            counts = upsert_objects(writer, s3, TEST_BUCKET, listing, settings=settings, absent=absent)

        assert (counts.inserted, counts.vanished) == (10, 2)
        assert set(rows(conn)) == set(keys) - gone
        assert all(row[1] == len(key) for key, row in rows(conn).items())
