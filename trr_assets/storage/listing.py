"""Listing a bucket's objects: ListObjectsV2, page by page, in key order,
a shard's busy listing split into parts fetched ahead at once.

Part of ``storage`` (the package re-exports ``list_objects``,
``ListingSplits`` and ``strip_etag``). ``narrowed``, ``just_below`` and
``clip`` are how a listing keeps to a key range; ``storage.versions`` lists
versions with them too.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from trr_assets.keys import KeyRange, exact_prefix, split_points
from trr_assets.records import ObjectInfo, object_info
from trr_assets.storage.wrapping import wrap_errors

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a test extra: annotations only
    from mypy_boto3_s3 import S3Client


def strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


class ListingSplits:
    """How many listings a run may add by splitting shards (see ``list_objects``).

    Shared by every shard of a run: a shard splits only while a slot is free,
    so the requests in flight stay within the run's listings plus
    ``extra_listings``.
    """

    def __init__(self, *, extra_listings: int) -> None:
        self._slots = threading.Semaphore(max(0, extra_listings))

    def take(self) -> bool:
        return self._slots.acquire(blocking=False)

    def give_back(self) -> None:
        self._slots.release()


def list_objects(
    client: S3Client,
    bucket: str,
    *,
    prefix: str = "",
    start_at: str | None = None,
    stop_before: str | None = None,
    page_size: int = 1000,
    splits: ListingSplits | None = None,
) -> Iterator[ObjectInfo]:
    """The objects of ``bucket`` under ``prefix`` with ``start_at <= key < stop_before``.

    In S3's order (byte order of the UTF-8 key, which is code-point order of
    the Python string). A failed page raises ``StorageError``: a listing is
    never silently cut short.

    With ``splits``, a listing whose first page shows more than a page still
    to come lists the rest as parts of about a page each, at once, as many
    as there are free slots (``keys.split_points`` places the boundaries):
    the first part goes on here, each other one in a thread of its own, at
    most two pages ahead of use, yielded in order. A shard that holds more
    keys than its neighbours then takes no more round trips than they do.
    """
    prefix, start_at, stop_before = narrowed(prefix, start_at, stop_before)
    for page in _pages(client, bucket, prefix, start_at, stop_before, page_size, splits):
        yield from page


def narrowed(prefix: str, start_at: str | None, stop_before: str | None) -> tuple[str, str | None, str | None]:
    """A listing's (prefix, start_at, stop_before), with a range that is
    exactly the keys under a longer prefix turned into that prefix: S3 then
    stops at the range's end instead of a page running past it."""
    narrow = exact_prefix(KeyRange(start_at, stop_before)) if start_at is not None else None
    if narrow is not None and narrow.startswith(prefix):
        return narrow, None, None
    return prefix, start_at, stop_before


def just_below(key: str) -> str:
    """A marker for an exclusive start (StartAfter, KeyMarker) that lists from
    ``key``: "shows/e" plus the highest code point sorts after every real key
    under "shows/e", so S3 does not send those again; any key beyond it but
    below ``key`` is cut by ``clip``."""
    return key[:-1] + chr(ord(key[-1]) - 1) + "\U0010ffff"


_Keyed = TypeVar("_Keyed", bound=tuple[Any, ...])


def clip(items: list[_Keyed], start_at: str | None, stop_before: str | None) -> tuple[list[_Keyed], bool]:
    """A page's items (key first, in key order) cut to ``start_at <= key <
    stop_before``, and whether the range ended within the page. Only a
    page's ends can be out of range: the common page is left as it is."""
    if start_at is not None and items and items[0][0] < start_at:
        items = [i for i in items if i[0] >= start_at]
    if stop_before is not None and items and items[-1][0] >= stop_before:
        return [i for i in items if i[0] < stop_before], True
    return items, False


def _pages(
    client: S3Client,
    bucket: str,
    prefix: str,
    start_at: str | None,
    stop_before: str | None,
    page_size: int,
    splits: ListingSplits | None,
    token: str | None = None,
) -> Generator[list[ObjectInfo], None, None]:
    """``list_objects``, a page at a time; ``token`` continues a listing."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if token is not None:
        params["ContinuationToken"] = token
    elif start_at is not None and start_at > prefix:
        # StartAfter is exclusive: start just below start_at (see just_below).
        params["StartAfter"] = just_below(start_at)
    # Only a new listing's first page may split it. Later pages add little
    # to the estimate, and a part split off splits only on its own first
    # page, so a wrong guess (keys bunched where the page did not show it)
    # costs a few requests once, not a few per page.
    may_split = splits is not None and token is None
    while True:
        with wrap_errors("list objects", bucket):
            page = client.list_objects_v2(**params)
        contents = page.get("Contents", ())
        # One comprehension for the page (botocore gives Size as an int);
        # keys out of the range, at most the ends of a page, are cut after.
        objects = [
            object_info((item["Key"], item["Size"], strip_etag(item.get("ETag")), item["LastModified"]))
            for item in contents
        ]
        objects, ended = clip(objects, start_at, stop_before)
        if objects:
            yield objects
        if ended or not page.get("IsTruncated"):
            return
        token = params["ContinuationToken"] = page["NextContinuationToken"]
        params.pop("StartAfter", None)
        if may_split and splits is not None and contents:
            bounds = _split(splits, contents, stop_before, prefix, page_size)
            if bounds:
                yield from _split_listing(client, bucket, prefix, stop_before, page_size, splits, token, bounds)
                return
        may_split = False


_MOST_PARTS = 64  # a listing split at once into at most this many parts, plus its own


def _split(splits: ListingSplits, contents: Any, stop_before: str | None, prefix: str, page_size: int) -> list[str]:
    """Boundaries for what is left after ``contents``, a split slot taken for each."""
    estimate = functools.partial(split_points, contents[0]["Key"], contents[-1]["Key"], stop_before, prefix,
                                 listed=len(contents), page_size=page_size)
    wanted = len(estimate(most=_MOST_PARTS))
    taken = 0
    while taken < wanted and splits.take():
        taken += 1
    bounds = estimate(most=taken) if taken else []
    for _ in range(taken - len(bounds)):
        splits.give_back()
    return bounds


def _split_listing(
    client: S3Client,
    bucket: str,
    prefix: str,
    stop_before: str | None,
    page_size: int,
    splits: ListingSplits,
    token: str,
    bounds: list[str],
) -> Iterator[list[ObjectInfo]]:
    """What is left of a listing, cut at ``bounds``: the first part goes on
    from ``token`` here; the others are fetched at once, ahead, a thread (and
    a slot, taken by ``_split``) each, and yielded in order after it."""
    ahead = [
        _Ahead(functools.partial(_pages, client, bucket, prefix, start, stop, page_size, splits), splits).start()
        for start, stop in zip(bounds, [*bounds[1:], stop_before], strict=True)
    ]
    try:
        yield from _pages(client, bucket, prefix, None, bounds[0], page_size, splits, token)
        for part in ahead:
            yield from part
    finally:
        for part in ahead:
            part.close()


class _Ahead:
    """A listing's pages, fetched by a thread of their own ahead of use.

    At most ``_AHEAD`` pages wait: memory stays flat however far the reader
    lags. An error reaches the reader where the failed page would have been.
    The split slot is given back when the thread ends.
    """

    _AHEAD = 2

    def __init__(self, pages: Callable[[], Generator[list[ObjectInfo], None, None]], splits: ListingSplits) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self._AHEAD)
        self._closed = threading.Event()
        self._splits = splits
        self._thread = threading.Thread(target=self._fetch, args=(pages,), name="trr-list-ahead", daemon=True)

    def start(self) -> _Ahead:
        self._thread.start()
        return self

    def _fetch(self, pages: Callable[[], Generator[list[ObjectInfo], None, None]]) -> None:
        try:
            listing = pages()
            try:
                for page in listing:
                    if not self._put(("page", page)):
                        return
            finally:
                listing.close()  # and any listing it split off in turn
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self._put(("error", exc))
        finally:
            self._splits.give_back()

    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue ``item`` unless the reader has gone; False when it has."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list[ObjectInfo]]:
        while True:
            kind, value = self._queue.get()
            if kind == "page":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def close(self) -> None:
        """The reader is done (or gave up): the thread stops at its next page."""
        self._closed.set()
