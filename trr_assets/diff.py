"""The diff engine that sync and reconcile share: pure, it takes two
key-ordered iterables (``scan`` feeds it a listing and ``db``'s row stream).

S3 lists keys in byte order, and ``core.show_assets.object_key`` is collated
"C", so the listing and a streamed query over the rows are two sorted
streams that merge-join in one pass, holding one chunk of each at a time:
memory does not grow with the bucket. Each key is one of:

- in both, size and ETag equal: counted in ``Batch.same`` (nothing to do)
- ``ONLY_IN_S3``: an object with no row (sync inserts it; reconcile: orphaned object)
- ``ONLY_IN_DB``: a row with no object (reconcile: orphaned row)
- ``CHANGED``: both, size or ETag differ (sync updates; reconcile: mismatch)
- ``PENDING_DELETE``: no row, and the key's deletion is queued in the outbox
  (neither an orphan nor something to re-create)

Every key but the equal ones comes out as a ``Diff``. The equal ones, nearly
all keys of a healthy bucket, are only counted: runs of them are found by
comparing whole slices of the two chunks in C, with no Python step per key.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, count, islice
from operator import eq, itemgetter, le, lt, ne
from typing import Any, NamedTuple

from trr_assets.records import ObjectInfo, RowInfo


class Kind(enum.Enum):
    ONLY_IN_S3 = "only_in_s3"
    ONLY_IN_DB = "only_in_db"
    CHANGED = "changed"
    PENDING_DELETE = "pending_delete"

    # Members are singletons compared by identity, so identity's hash (in C)
    # serves; Enum's own __hash__ is a Python call.
    __hash__ = object.__hash__


# Diff and Batch are NamedTuples, like the records (see ``records``).


class Diff(NamedTuple):
    kind: Kind
    key: str
    obj: ObjectInfo | None
    row: RowInfo | None


class Batch(NamedTuple):
    """What the merge found in a stretch of keys, in key order."""

    same: int  # keys in both streams with equal size and ETag
    diffs: list[Diff]  # every other key


# A Diff built by tuple.__new__ in C: NamedTuple's own __new__ is a Python
# function, a frame per key.
_diff = functools.partial(tuple.__new__, Diff)

_ONLY_IN_S3, _ONLY_IN_DB, _CHANGED, _PENDING = Kind.ONLY_IN_S3, Kind.ONLY_IN_DB, Kind.CHANGED, Kind.PENDING_DELETE

CHUNK_SIZE = 1000  # keys read from each stream at a time, and the size of a Batch

# What "equal" compares, as one tuple per item, built in C: (key, size, etag).
# A queue entry's is (key, None, None), never equal to an object's, whose
# size is an int and ETag a str.
_object_view = itemgetter(0, 1, 2)
_row_view = itemgetter(0, 2, 3)
_key = itemgetter(0)


def merge(objects: Iterable[ObjectInfo], rows: Iterable[RowInfo], *, chunk_size: int = CHUNK_SIZE) -> Iterator[Batch]:
    """Merge-join two key-ordered streams: one ``Batch`` per ``chunk_size`` keys or so.

    Both inputs must be sorted by key (code-point order). A stream out of
    order raises ``ValueError`` (checked a chunk at a time, before any of
    the chunk is reported), since a silent misorder would report live
    objects as orphans. A row and a queue entry for the same key (adjacent in
    the row stream) count as the row.

    The row stream is closed when the merge ends, however it ends.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    rws = iter(rows)
    try:
        yield from _merge(_object_chunks(iter(objects), chunk_size), _row_chunks(rws, chunk_size), chunk_size)
    finally:
        # However the merge ends (exhausted, stopped early, out of order, a
        # failed listing page), close the row stream: an open one holds its
        # connection (see stream_rows).
        close = getattr(rws, "close", None)
        if close is not None:
            close()


# A chunk: its items, and what "equal" compares of each.
_Chunk = tuple[list[Any], list[Any]]
_FIRST_WINDOW = 32  # keys compared at once after a difference; doubles while equal


def _merge(objects: Iterator[_Chunk], rows: Iterator[_Chunk], chunk_size: int) -> Iterator[Batch]:
    obj_items, obj_views = next(objects, ([], []))
    row_items, row_views = next(rows, ([], []))
    i = j = same = 0
    diffs: list[Diff] = []
    window = _FIRST_WINDOW
    while obj_items and row_items:
        # The common case: a run of keys equal in both. Compare a window of
        # both chunks pairwise in C and stop at the first difference.
        n = min(len(obj_items) - i, len(row_items) - j, window)
        run = next(compress(count(), map(ne, obj_views[i : i + n], row_views[j : j + n])), n)
        same += run
        i += run
        j += run
        if run == n:
            window = min(2 * window, chunk_size)
        else:
            # One key by hand: they differ, or one stream has a key the other lacks.
            window = _FIRST_WINDOW
            obj, row = obj_items[i], row_items[j]
            if obj.key < row.key:
                diffs.append(_diff((_ONLY_IN_S3, obj.key, obj, None)))
                i += 1
            elif row.key < obj.key:
                if not row.queued:  # a queued deletion whose object is gone: nothing to report
                    diffs.append(_diff((_ONLY_IN_DB, row.key, None, row)))
                j += 1
            else:  # same key; not equal, or a queue entry
                diffs.append(_diff((_PENDING if row.queued else _CHANGED, obj.key, obj, row)))
                i += 1
                j += 1
        if i == len(obj_items):
            obj_items, obj_views = next(objects, ([], []))
            i = 0
        if j == len(row_items):
            row_items, row_views = next(rows, ([], []))
            j = 0
        if same + len(diffs) >= chunk_size:
            yield Batch(same, diffs)
            same, diffs = 0, []
    # One stream has ended: the rest of the other has no partner.
    while obj_items:
        diffs.extend(_diff((_ONLY_IN_S3, obj.key, obj, None)) for obj in islice(obj_items, i, None))
        yield Batch(same, diffs)
        same, diffs, i = 0, [], 0
        obj_items, obj_views = next(objects, ([], []))
    while row_items:
        diffs.extend(_diff((_ONLY_IN_DB, row.key, None, row)) for row in islice(row_items, j, None) if not row.queued)
        yield Batch(same, diffs)
        same, diffs, j = 0, [], 0
        row_items, row_views = next(rows, ([], []))
    if same or diffs:
        yield Batch(same, diffs)


def _object_chunks(objects: Iterator[ObjectInfo], size: int) -> Iterator[_Chunk]:
    """The listing ``size`` objects at a time, each chunk checked to be in strictly increasing order."""
    last: str | None = None
    while chunk := list(islice(objects, size)):
        keys = list(map(_key, chunk))
        if last is not None:
            keys.insert(0, last)
        _check_order(keys, lt, "S3 listing")
        last = keys[-1]
        yield chunk, list(map(_object_view, chunk))


def _row_chunks(rows: Iterator[RowInfo], size: int) -> Iterator[_Chunk]:
    """The rows about ``size`` at a time, in order, each key once.

    A key with both a row and a queue entry comes as the row alone. The last
    row of a chunk is held back until the next chunk is read, so that such a
    pair is folded even when a chunk boundary falls between its two halves.
    """
    held: list[RowInfo] = []
    while True:
        fresh = list(islice(rows, size))
        more = bool(fresh)  # else the stream has ended
        chunk = held + fresh if held else fresh
        if not chunk:
            return
        keys = list(map(_key, chunk))
        _check_order(keys, le, "row cursor")  # a row and its queue entry share a key
        if any(map(eq, keys, islice(keys, 1, None))):
            chunk = _fold(chunk)
        held = [chunk.pop()] if more else []
        if chunk:
            yield chunk, list(map(_row_view, chunk))
        if not more:
            return


def _check_order(keys: list[str], in_order: Callable[[str, str], bool], stream: str) -> None:
    """Each key and the next are ``in_order`` (compared in C), else ValueError naming the first misplaced key."""
    if not all(map(in_order, keys, islice(keys, 1, None))):
        bad = next(b for a, b in zip(keys, keys[1:], strict=False) if not in_order(a, b))
        raise ValueError(f"{stream} out of order at {bad!r}")


def _fold(chunk: list[RowInfo]) -> list[RowInfo]:
    """One item per key: of a row and its key's queue entry, the row."""
    folded: list[RowInfo] = []
    for row in chunk:
        if folded and folded[-1].key == row.key:
            if folded[-1].queued:
                folded[-1] = row
        else:
            folded.append(row)
    return folded
