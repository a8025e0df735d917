"""The bookkeeping of the native HEAD client (``storage.heads``): the
answers to a run of keys, each key's request and its tries, and each
endpoint's waiting requests, connections and in-flight limit.

Only the client's event loop thread touches these (``Run.future`` hands the
answers to the caller's thread), so nothing here takes a lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

ConnectionT = TypeVar("ConnectionT")


class Run:
    """The answers to a run of keys, and the future that hands them over."""

    __slots__ = ("results", "left", "future")

    def __init__(self, size: int) -> None:
        self.results: list[dict[str, Any] | None] = [None] * size
        self.left = size
        self.future: Future[list[dict[str, Any] | None]] = Future()

    def done(self) -> bool:
        return self.future.done()

    def answer(self, index: int, answer: dict[str, Any] | None) -> None:
        self.results[index] = answer
        self.left -= 1
        if self.left == 0:
            self._settle(lambda: self.future.set_result(self.results))

    def fail(self, exc: BaseException) -> None:
        self._settle(lambda: self.future.set_exception(exc))

    def _settle(self, settle: Callable[[], None]) -> None:
        if not self.future.done():
            try:
                settle()
            except InvalidStateError:  # cancelled by the caller meanwhile
                pass


class Request:
    """One key to HEAD, and what became of its tries."""

    __slots__ = ("bucket", "key", "run", "index", "tries", "resent", "started", "sent_as", "signed_for")

    def __init__(self, bucket: str, key: str, run: Run, index: int) -> None:
        self.bucket = bucket
        self.key = key
        self.run = run
        self.index = index
        self.tries = 0  # tries that failed
        self.resent = False  # sent again once, free, after a kept-alive connection turned out closed
        self.started = time.monotonic()
        self.sent_as = 0  # the origin's count of requests sent, this one's send included
        self.signed_for = ""  # the region its last try was signed for


class Origin(Generic[ConnectionT]):
    """One scheme://host:port: its waiting requests, its connections, and
    how many requests may be in flight on them now."""

    def __init__(self, origin: str, host_header: str, *, most_in_flight: int) -> None:
        parts = urlsplit(origin)
        self.host_header = host_header  # the host the requests are signed for
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.secure else 80)
        self.netloc = parts.netloc
        self.waiting: deque[Request] = deque()
        self.idle: list[ConnectionT] = []
        self.connections: set[ConnectionT] = set()
        self.opening = 0
        # In flight: requests sent on a connection, their answer not read
        # yet. At most ``limit`` of them: ``s3.head_connections`` until S3
        # says SlowDown (``slowed``), growing back after (``answered``).
        self.in_flight = 0
        self.most = most_in_flight
        self.limit = float(self.most)
        self.sent = 0  # requests sent so far
        self.cut_after = 0  # the count of requests sent when the limit was last cut

    def slowed(self, request: Request) -> float | None:
        """A 503 SlowDown: halve the limit, once per round of requests. The
        503s of requests sent before the last cut answer the same overload
        that cut already eased. The new limit, or None if unchanged."""
        if request.sent_as <= self.cut_after:
            return None
        self.limit = max(1.0, self.limit / 2)
        self.cut_after = self.sent
        return self.limit

    def answered(self) -> None:
        """An answer that is not a SlowDown: the limit grows back by about
        one request per round of answers, up to ``s3.head_connections``."""
        if self.limit < self.most:
            self.limit = min(float(self.most), self.limit + 1 / self.limit)
