"""Waiting for a condition, never for a fixed time.

``wait_for`` polls a predicate until it holds or a deadline passes; the
deadline is a bound on how long a broken run takes to fail, never a figure a
test asserts on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

# Seconds: the default bound on waiting for a condition.
WAIT_SECONDS = 60.0


class _Alive(Protocol):
    def alive(self) -> bool: ...

    def stderr_text(self) -> str: ...


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout_seconds: float = WAIT_SECONDS,
    what: str = "a condition",
    interval_seconds: float = 0.05,
    watch: Iterable[_Alive] = (),
) -> Any:
    """Poll ``predicate()`` until it is truthy and return its value.

    Fails (AssertionError naming ``what``) after ``timeout_seconds``, or at
    once when a process in ``watch`` has exited (with the end of its log).
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = predicate()
        if result:
            return result
        for process in watch:
            assert process.alive(), f"process exited early while waiting for {what}:\n{process.stderr_text()[-3000:]}"
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout_seconds} s"
        time.sleep(interval_seconds)
