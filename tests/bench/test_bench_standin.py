"""The benchmark's S3 stand-in answers what sync asks as S3 does, through
botocore over a real socket, each answer after its delay, many at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bench import data
from bench.end_to_end import StandIn
from bench.s3_standin import owner_of
from trr_assets import keys, storage
from trr_assets.config import S3Settings
from trr_assets.errors import BucketNotFound

OBJECTS = 2_400
DELAY = 0.2


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    with StandIn(OBJECTS, delay=DELAY) as server:
        yield server


@pytest.fixture
def client(stand_in: StandIn, aws_env: None) -> Any:
    return storage.make_client(S3Settings(endpoint_url=stand_in.endpoint, addressing_style="path",
                                          max_attempts=1), max_pool_connections=64)


def _expected() -> list[storage.ObjectInfo]:
    return list(data.objects(data.show_ids(OBJECTS // 200), 200))


def test_listing_pages_prefixes_and_ranges_like_s3(client: Any) -> None:
    """Pages of max-keys with continuation tokens, a prefix, start-after and a sharded listing give
    the bench's objects exactly, in S3's order, with sizes and ETags."""
    expected = _expected()

    paginator = client.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=data.BUCKET, Prefix="shows/", PaginationConfig={"PageSize": 700}))
    assert [len(p["Contents"]) for p in pages] == [700, 700, 700, 300]
    listed = [(o["Key"], o["Size"], o["ETag"].strip('"')) for p in pages for o in p["Contents"]]
    assert listed == [(o.key, o.size, o.etag) for o in expected]

    shards = keys.shard_ranges("shows/", 16)
    sharded = [o for shard in shards for o in storage.list_objects(
        client, data.BUCKET, prefix="shows/", start_at=shard.start_at, stop_before=shard.stop_before)]
    assert sharded == expected

    after = expected[1000].key
    page = client.list_objects_v2(Bucket=data.BUCKET, Prefix="shows/", StartAfter=after, MaxKeys=5)
    assert [o["Key"] for o in page["Contents"]] == [o.key for o in expected[1001:1006]]
    narrow = expected[0].key[:20]
    assert [o.key for o in storage.list_objects(client, data.BUCKET, prefix=narrow)] == \
        [o.key for o in expected if o.key.startswith(narrow)]


def test_head_answers_like_s3_and_missing_objects_are_404(client: Any) -> None:
    """HEAD gives size, ETag, type, date and owner-id metadata; a missing key is None (404); a missing
    bucket is BucketNotFound."""
    obj = _expected()[205]
    answer = storage.head_object(client, data.BUCKET, obj.key)
    assert answer is not None
    assert (answer["ContentLength"], answer["ETag"], answer["ContentType"], answer["LastModified"]) == \
        (obj.size, f'"{obj.etag}"', data.CONTENT_TYPE, data.LAST_MODIFIED)
    assert answer["Metadata"] == {"owner-id": owner_of(5)}
    assert storage.head_object(client, data.BUCKET, "shows/missing.jpg") is None
    with pytest.raises(BucketNotFound):
        storage.check_bucket(client, "no-such-bucket")


def test_each_answer_waits_the_delay_and_many_wait_at_once(client: Any, stand_in: StandIn) -> None:
    """A request takes at least the delay; 64 requests at once take about one delay, not 64, and the
    stand-in counts them."""
    key = _expected()[0].key
    started = time.perf_counter()
    storage.head_object(client, data.BUCKET, key)
    assert time.perf_counter() - started >= DELAY

    stand_in.stats(reset=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda _: storage.head_object(client, data.BUCKET, key), range(64)))
    elapsed = time.perf_counter() - started
    assert all(a is not None for a in answers)
    assert elapsed < 16 * DELAY  # answered one after another, they would take 64 delays
    assert stand_in.stats()["requests"] == {"head": 64}
