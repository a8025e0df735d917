"""Shards that split themselves: a listing with more to come lists its rest as two halves at once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from hypothesis import given
from hypothesis import strategies as st

from tests.support.s3 import TEST_BUCKET
from tests.support.s3_faults import ERROR_BODY, RawBody
from tests.support.waiting import wait_for
from trr_assets import keys, storage
from trr_assets.errors import StorageError

hexish = st.text(alphabet="0123456789abcdefAF-/.g", max_size=10)


@given(hexish, hexish, hexish, st.one_of(st.none(), hexish), st.sampled_from(["", "shows/", "shows/a"]),
       st.integers(1, 1000), st.integers(0, 20))
def test_split_points_ascend_strictly_inside_what_is_left(first, last, tail_stop, stop_given, prefix, listed, most):
    first, last = sorted((prefix + first, prefix + last))
    stop = None if stop_given is None else prefix + tail_stop
    if stop is not None and stop <= last:
        stop = None
    bounds = keys.split_points(first, last, stop, prefix, listed=listed, page_size=10, most=most)
    assert len(bounds) <= most
    assert all(b.startswith(prefix) for b in bounds)
    assert [last, *bounds, *([stop] if stop else [])] == sorted({last, *bounds, *([stop] if stop else [])})


def test_split_points_cut_what_is_left_into_parts_of_about_a_page():
    # A page of 1,000 keys covered 0x000 to 0x7c3 of "shows/a": about a page is left.
    assert keys.split_points("shows/a000", "shows/a7c3-x/1.jpg", None, "shows/a", listed=1000, page_size=1000,
                             most=8) == ["shows/abe18"]
    # A page of 100 that covered a sixteenth of the range: 15 pages are left, cut as slots allow.
    assert len(keys.split_points("shows/0", "shows/1", None, "shows/", listed=100, page_size=100, most=8)) == 8
    assert len(keys.split_points("shows/0", "shows/1", None, "shows/", listed=100, page_size=100, most=20)) == 14
    assert keys.split_points("shows/0", "shows/1", None, "shows/", listed=100, page_size=100, most=0) == []
    # Less than a page left, keys that are not hex, or a page that shows no spread: no split.
    assert keys.split_points("shows/0", "shows/e", None, "shows/", listed=100, page_size=100, most=8) == []
    assert keys.split_points("shows/x", "shows/y", None, "shows/", listed=100, page_size=100, most=8) == []
    assert keys.split_points("shows/00-a", "shows/00-b", None, "shows/", listed=100, page_size=100, most=8) == []
    # Upper-case hex keys get upper-case boundaries.
    tails = "".join(b[len("shows/"):] for b in keys.split_points("shows/0", "shows/1A", "shows/F", "shows/",
                                                                  listed=100, page_size=100, most=3))
    assert set(tails) & set("ABCDEF") and not set(tails) & set("abcdef")


def _put_keys(s3: Any, count: int) -> list[str]:
    rnd = random.Random(count)
    names = sorted(f"shows/{uuid.UUID(int=rnd.getrandbits(128))}/x.jpg" for _ in range(count))
    for name in names:
        s3.put_object(Bucket=TEST_BUCKET, Key=name, Body=b"x")
    return names


class InFlight:
    """Counts the ListObjectsV2 requests in flight on a client, and their peak."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.requests = 0
        client.meta.events.register("before-send.s3.ListObjectsV2", self._sent)
        client.meta.events.register("after-call.s3.ListObjectsV2", self._answered)

    def _sent(self, **_: Any) -> None:
        with self.lock:
            self.now += 1
            self.requests += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.02)  # a little latency, so requests overlap when they can

    def _answered(self, **_: Any) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("extra", [1, 3, 8])
def test_a_split_listing_yields_every_key_once_in_order_within_its_slots(s3, extra):
    names = _put_keys(s3, 300)
    flight = InFlight(s3)
    splits = storage.ListingSplits(extra_listings=extra)
    for key_range in [keys.KeyRange("shows/", None), *keys.shard_ranges("shows/", 3)]:
        listed = [o.key for o in storage.list_objects(s3, TEST_BUCKET, prefix="shows/", start_at=key_range.start_at,
                                                      stop_before=key_range.stop_before, page_size=10,
                                                      splits=splits)]
        assert listed == [k for k in names if k in key_range]
    assert 1 < flight.peak <= 1 + extra  # it did split, and never beyond its slots
    # Every slot comes back once the listings are done (and none twice).
    wait_for(lambda: _free_slots(splits) == extra, what="every split slot to be given back", timeout_seconds=10)
    assert _free_slots(splits) == extra


def _free_slots(splits: storage.ListingSplits) -> int:
    """How many slots ``splits`` has free right now (taken, then given back)."""
    taken = 0
    while splits.take():
        taken += 1
    for _ in range(taken):
        splits.give_back()
    return taken


def test_splitting_takes_fewer_round_trips_in_a_row(s3):
    """With slots, a long listing's pages are fetched side by side, not one after another."""
    _put_keys(s3, 400)
    alone = InFlight(s3)
    sum(1 for _ in storage.list_objects(s3, TEST_BUCKET, prefix="shows/", page_size=10))
    assert alone.peak == 1 and alone.requests == 40
    split = InFlight(s3)
    sum(1 for _ in storage.list_objects(s3, TEST_BUCKET, prefix="shows/", page_size=10,
                                        splits=storage.ListingSplits(extra_listings=15)))
    assert split.peak > 8


def test_a_failed_page_in_a_split_off_part_fails_the_listing(s3):
    """Never a listing silently cut short: a part's error surfaces where its pages would have been."""
    names = _put_keys(s3, 200)
    failed: list[str] = []

    def fail_split_off_parts(request: Any, **_: Any) -> AWSResponse | None:
        if "start-after=" not in request.url:  # only a part split off starts after a boundary here
            return None
        failed.append(request.url)
        body = ERROR_BODY.format(code="AccessDenied", message="Access Denied").encode()
        return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, RawBody(body))

    s3.meta.events.register("before-send.s3.ListObjectsV2", fail_split_off_parts)
    listed: list[str] = []
    with pytest.raises(StorageError, match="list objects.*AccessDenied"):
        for obj in storage.list_objects(s3, TEST_BUCKET, prefix="shows/", page_size=10,
                                        splits=storage.ListingSplits(extra_listings=4)):
            listed.append(obj.key)
    assert failed and listed == names[: len(listed)] and len(listed) < len(names)


def test_a_reader_that_stops_early_stops_the_split_off_listings(s3):
    """Closing a listing after its first key ends every listing split off from it, long before the last page."""
    _put_keys(s3, 400)
    flight = InFlight(s3)
    listing = storage.list_objects(s3, TEST_BUCKET, prefix="shows/", page_size=10,
                                   splits=storage.ListingSplits(extra_listings=6))
    # Past the first page (10 keys): that is where the listing splits.
    for _ in range(11):
        next(listing)
    wait_for(lambda: _listing_threads() and flight.requests > 2, what="split-off listings under way",
             timeout_seconds=10)
    listing.close()
    # A thread ends at its next page; once none is left, no request can follow.
    wait_for(lambda: not _listing_threads(), what="the split-off listings to end", timeout_seconds=10)
    settled = flight.requests
    assert settled < 40
    assert flight.requests == settled


def _listing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "trr-list-ahead"]
