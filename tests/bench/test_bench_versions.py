"""The stand-in's ListObjectVersions, and storage_versions.list_versions over
it: pages with key and version markers, shards that start with a KeyMarker
(which moto mishandles), every version once, in S3's order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import data
from bench.end_to_end import StandIn
from trr_assets import keys, storage
from trr_assets.config import S3Settings
from trr_assets.storage import versions as storage_versions

OBJECTS = 600
PER_KEY = 3


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    with StandIn(OBJECTS, delay=0.0, versions_per_key=PER_KEY) as server:
        yield server


@pytest.fixture
def client(stand_in: StandIn, aws_env: None) -> Any:
    return storage.make_client(S3Settings(endpoint_url=stand_in.endpoint, addressing_style="path", max_attempts=1))


def _expected() -> list[tuple[str, str, bool]]:
    return [(o.key, f"v{v}", v == PER_KEY - 1)
            for o in data.objects(data.show_ids(OBJECTS // 200), 200) for v in reversed(range(PER_KEY))]


@pytest.mark.parametrize("shards", [1, 5, 16])
def test_sharded_version_listing_gives_every_version_once_in_order(client: Any, shards: int) -> None:
    listed = [
        (v.key, v.version_id, v.is_latest)
        for shard in keys.shard_ranges("shows/", shards)
        for page in storage_versions.list_versions(client, data.BUCKET, prefix="shows/", start_at=shard.start_at,
                                                   stop_before=shard.stop_before, page_size=7)
        for v in page
    ]
    assert listed == _expected()


def test_pages_carry_key_and_version_markers(client: Any) -> None:
    paginator = client.get_paginator("list_object_versions")
    pages = list(paginator.paginate(Bucket=data.BUCKET, Prefix="shows/", PaginationConfig={"PageSize": 500}))
    assert [len(p["Versions"]) for p in pages] == [500, 500, 500, 300]
    assert pages[0]["NextKeyMarker"] == pages[0]["Versions"][-1]["Key"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for p in pages for v in p["Versions"]] == _expected()
