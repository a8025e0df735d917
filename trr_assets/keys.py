"""Object keys: which show a key names, and how a prefix splits into shards.

Pure functions, no I/O. Keys are compared as Python strings, whose order
(code points) is the byte order of their UTF-8 encoding: S3's listing order
and PostgreSQL's ``collate "C"`` order.
"""

from __future__ import annotations

import functools
import math
import re
import string
import uuid
from dataclasses import dataclass
from enum import Enum


class SkipReason(str, Enum):
    """Why a listed key gets no row."""

    NO_MATCH = "no_match"  # the key does not match s3.key_pattern
    MALFORMED_SHOW_ID = "malformed_show_id"  # matched, but the show id is not a UUID
    UNKNOWN_SHOW = "unknown_show"  # a UUID, but no core.shows row has it
    INVALID_KEY = "invalid_key"  # PostgreSQL text cannot hold it (a NUL character)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Keys ``k`` with ``start_at <= k < stop_before`` (None: unbounded)."""

    start_at: str
    stop_before: str | None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key >= self.start_at and (
            self.stop_before is None or key < self.stop_before
        )


def parse_show_id(key: str, pattern: re.Pattern[str]) -> str | SkipReason:
    """The show a key belongs to, as its canonical text (lower-case, hyphenated
    UUID), or why it belongs to none.

    Upper- and lower-case spellings of a show id name the same show. Text,
    not ``uuid.UUID``: sync puts every key's show id in sets and dicts, and a
    string hashes in C where a UUID's ``__hash__`` is a Python call.
    """
    if "\x00" in key:
        return SkipReason.INVALID_KEY
    match = pattern.search(key)
    spelling = match.group("show_id") if match else None
    if spelling is None:
        return SkipReason.NO_MATCH
    try:
        return _canonical_show_id(spelling)
    except ValueError:
        return SkipReason.MALFORMED_SHOW_ID


@functools.lru_cache(maxsize=65536)  # a bucket holds many keys per show: each spelling parsed once
def _canonical_show_id(spelling: str) -> str:
    return str(uuid.UUID(spelling))


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every key that starts with ``prefix``."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def prefix_range(prefix: str) -> KeyRange:
    """The whole prefix as one range."""
    return KeyRange(prefix, prefix_end(prefix))


def shard_ranges(prefix: str, shards: int) -> list[KeyRange]:
    """Split the keys under ``prefix`` into ``shards`` contiguous ranges.

    Boundaries are ``prefix`` plus hex digits, spread evenly, since keys under
    ``shows/`` start with a show's UUID: one digit up to 16 shards, two up to
    256. Other keys still land in exactly one range: the ranges cover the
    whole prefix with no gap or overlap. With 16 (or 256) shards the middle
    ranges are exactly "the keys that start with ``prefix`` + digits", which
    ``storage.list_objects`` lists with that narrower prefix, so a shard's
    last page never runs on into the next shard's keys.
    """
    if not 1 <= shards <= 256:
        raise ValueError("shards must be between 1 and 256")
    digits = 1 if shards <= 16 else 2
    space = 16**digits
    bounds = [prefix + format(i * space // shards, f"0{digits}x") for i in range(1, shards)]
    starts = [prefix, *bounds]
    stops: list[str | None] = [*bounds, prefix_end(prefix)]
    return [KeyRange(start, stop) for start, stop in zip(starts, stops, strict=True)]


def exact_prefix(key_range: KeyRange) -> str | None:
    """The prefix whose keys are exactly ``key_range``, if there is one."""
    if key_range.start_at and key_range.stop_before == prefix_end(key_range.start_at):
        return key_range.start_at
    return None


_HEX_DIGITS = 12  # read from a key to place it: 48 bits, finer than any page


def _hex_fraction(key: str, prefix: str) -> float | None:
    """Where ``key`` sits among the keys under ``prefix``, 0 to 1, reading the
    hex digits after the prefix; None when the first is not one."""
    value = digits = 0
    for char in key[len(prefix):len(prefix) + _HEX_DIGITS]:
        if char not in string.hexdigits:
            break
        value, digits = value * 16 + int(char, 16), digits + 1
    return value / 16**digits if digits else None


def split_points(
    first: str, last: str, stop_before: str | None, prefix: str, *, listed: int, page_size: int, most: int
) -> list[str]:
    """Boundaries that split what is left of a listing into parts of about a page each.

    A listing of the keys under ``prefix`` below ``stop_before`` has read a
    page of ``listed`` keys, ``first`` to ``last``. Keys are taken to go on
    in hex digits, as show UUIDs do (``shard_ranges`` makes the same guess),
    and as densely as on that page: what is left, up to ``stop_before``, is
    then estimated in pages and cut into that many parts (at most ``most``
    + 1), evenly. Each boundary ``b`` has ``last < b < stop_before`` and they
    ascend, so the parts cover what is left exactly, whatever the keys really
    are; a wrong guess costs balance, never a key. No estimate (keys not in
    hex, a page of one key) means no boundaries.
    """
    start, end = _hex_fraction(first, prefix), _hex_fraction(last, prefix)
    stop = 1.0 if stop_before is None or not stop_before.startswith(prefix) else _hex_fraction(stop_before, prefix)
    if start is None or end is None or stop is None or end <= start or stop <= end or most < 1:
        return []
    pages_left = listed * (stop - end) / (end - start) / page_size
    parts = min(most + 1, math.ceil(pages_left))
    if parts < 2:
        return []
    upper = any(c in "ABCDEF" for c in last[len(prefix):])
    bounds: list[str] = []
    for i in range(1, parts):
        digits = format(int((end + (stop - end) * i / parts) * 16**_HEX_DIGITS), f"0{_HEX_DIGITS}x")
        bound = prefix + (digits.upper() if upper else digits).rstrip("0")
        if bound > (bounds[-1] if bounds else last) and (stop_before is None or bound < stop_before):
            bounds.append(bound)
    return bounds
