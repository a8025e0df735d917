"""Counting the ListObjectsV2 pages a client fetched and the keys they held."""

from __future__ import annotations

import threading
from typing import Any


class PageCounter:
    """Registered on a client: every ListObjectsV2 answer it parses is
    counted, and the most requests it had in flight at once is kept."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.pages = 0
        self.keys = 0
        self.in_flight = self.peak_in_flight = 0
        client.meta.events.register("before-send.s3.ListObjectsV2", self._sent)
        client.meta.events.register("after-call.s3.ListObjectsV2", self._count)

    def _sent(self, **_: Any) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _count(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.in_flight -= 1
            self.pages += 1
            self.keys += len(parsed.get("Contents", ()))

    def take(self) -> tuple[int, int]:
        """(pages, keys) since the last call."""
        with self._lock:
            counted = self.pages, self.keys
            self.pages = self.keys = self.peak_in_flight = 0
        return counted
