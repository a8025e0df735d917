"""Faults injected into S3, and S3's side of the story.

- ``S3Faults``: answers a share of a client's requests with an S3 error
  (503 SlowDown, 500 InternalError) instead of sending them, through
  botocore's ``before-send`` event; records every attempt, so a test can
  prove botocore really retried.
- ``quick_backoff`` (fixture): botocore's backoff computed as usual, slept a
  hundredth of.
- ``ServerDeletes``: every object deletion the moto server performs, from any
  process, counted per key.
- ``ERROR_BODY`` and ``RawBody``: an S3 error document, and the raw stream a
  made-up ``AWSResponse`` reads its body from.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
)
FAULTS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error."),
}


class RawBody:
    """The raw stream AWSResponse reads its content from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def _attempt(request: Any) -> int:
    """Which try of a request this is, from botocore's ``amz-sdk-request`` header."""
    value = request.headers.get("amz-sdk-request", b"attempt=1")
    text = value.decode() if isinstance(value, bytes) else value
    return int(text.split(";")[0].partition("=")[2])


@dataclass
class Attempt:
    operation: str
    method: str
    url: str
    attempt: int
    identity: str  # the same for every try of one request
    faulted: bool


@dataclass
class S3Faults:
    """Answer some of ``client``'s S3 requests with an error instead of sending them.

    Every ``every``-th request of each operation (counting first tries only)
    is picked: it fails its first ``fail_attempts`` tries (botocore numbers
    them in the ``amz-sdk-request`` header), then goes through; with
    ``fail_attempts=None`` it always fails. The count is deterministic
    whatever the order threads send in. Picked requests get 503 SlowDown and
    500 InternalError in turn, unless ``statuses`` says otherwise;
    ``operations`` limits the faults to those operation names. Setting
    ``active`` to False lets everything through.
    """

    client: Any
    every: int = 3
    fail_attempts: int | None = 1
    statuses: tuple[int, ...] = (503, 500)
    operations: frozenset[str] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    active: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _firsts: Counter[str] = field(default_factory=Counter)
    _picked: dict[str, int] = field(default_factory=dict)  # identity -> status
    _picks: int = 0

    def __post_init__(self) -> None:
        self.client.meta.events.register("before-send.s3.*", self._before_send)

    def _before_send(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        body = request.body if isinstance(request.body, (bytes, str)) else b""
        body = body.encode() if isinstance(body, str) else body
        identity = hashlib.sha256(f"{request.method}|{request.url}|".encode() + body).hexdigest()
        attempt = _attempt(request)
        with self._lock:
            status = None
            wanted = self.active and (self.operations is None or operation in self.operations)
            if wanted and attempt == 1:
                self._picked.pop(identity, None)
                self._firsts[operation] += 1
                if self._firsts[operation] % self.every == 0:
                    self._picked[identity] = self.statuses[self._picks % len(self.statuses)]
                    self._picks += 1
            if wanted and identity in self._picked and (self.fail_attempts is None or attempt <= self.fail_attempts):
                status = self._picked[identity]
            self.attempts.append(Attempt(operation, request.method, request.url, attempt, identity, status is not None))
        if status is None:
            return None
        code, message = FAULTS[status]
        return AWSResponse(
            request.url,
            status,
            {"Content-Type": "application/xml", "x-amz-request-id": "injected"},
            RawBody(ERROR_BODY.format(code=code, message=message).encode()),
        )

    @property
    def injected(self) -> list[Attempt]:
        return [a for a in self.attempts if a.faulted]

    def count(self, operation: str | None = None, *, faulted: bool | None = None) -> int:
        return sum(
            1 for a in self.attempts
            if (operation is None or a.operation == operation) and (faulted is None or a.faulted == faulted)
        )

    def unanswered_faults(self) -> list[Attempt]:
        """Injected faults botocore did not follow with another try of the same request."""
        tried = {(a.identity, a.attempt) for a in self.attempts}
        return [a for a in self.injected if (a.identity, a.attempt + 1) not in tried]

    def tries_per_request(self, operation: str) -> Counter[str]:
        return Counter(a.identity for a in self.attempts if a.operation == operation)


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's standard backoff, computed as usual but slept a hundredth of.

    Yields the delays botocore computed (one per retry), so a test can show
    that each retry waited a backoff.
    """
    from botocore.retries import standard

    computed: list[float] = []
    real = standard.ExponentialBackoff.delay_amount

    def delay_amount(self: Any, context: Any) -> float:
        delay = real(self, context)
        computed.append(delay)
        return delay / 100

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", delay_amount)
    return computed




class ServerDeletes:
    """Every object deletion moto's S3 performs (DeleteObject and each key of
    DeleteObjects), from any process, with whether the object existed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.s3.models import S3Backend

        self._lock = threading.Lock()
        self.calls: list[tuple[str, str, bool]] = []
        real = S3Backend.delete_object

        def delete_object(backend: Any, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
            existed = key_name in backend.get_bucket(bucket_name).keys
            result = real(backend, bucket_name, key_name, *args, **kwargs)
            with self._lock:
                self.calls.append((bucket_name, key_name, existed))
            return result

        monkeypatch.setattr(S3Backend, "delete_object", delete_object)

    def per_key(self) -> Counter[str]:
        with self._lock:
            return Counter(key for _, key, _ in self.calls)

    def removed(self) -> Counter[str]:
        """Keys whose object a deletion actually removed."""
        with self._lock:
            return Counter(key for _, key, existed in self.calls if existed)
