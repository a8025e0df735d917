"""The sharded pass that sync and reconcile share.

(Stage one holds only the progress protocol; the pass itself follows.)
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """How a pass reports its progress; the CLI draws it, the worker passes none.

    Called from the pass's threads, one call at a time or not: an
    implementation takes its own lock.
    """

    def start(self, phase: str, units: int) -> None:
        """A pass (``phase``: "sync", "scan", "count", "repair") of ``units`` units begins."""

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        """``keys`` more keys looked at, ``written`` more rows written, ``units_done`` more units ended."""

    def finish(self) -> None:
        """The pass ended."""


class NoProgress:
    """Reports nothing (the default)."""

    def start(self, phase: str, units: int) -> None:
        pass

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass
