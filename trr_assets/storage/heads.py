"""HEAD requests to S3 at S3's pace: many in flight, little CPU each.

Part of ``storage`` (every S3 call lives there): sync HEADs every new or
changed object, and through botocore a HEAD costs the client about a
millisecond of CPU (request building, endpoint rules, signing, response
parsing), so one process tops out near a thousand HEADs a second whatever
S3 does. ``HeadClient`` makes the same request for a small fraction of
that: signed by ``sigv4.HeaderSigner`` (byte-identical to botocore's
``Authorization``, credentials and endpoint still from the botocore client),
sent over kept-alive HTTP/1.1 connections by one asyncio event loop in a
thread of its own, as many at once as ``s3.head_connections`` allows.

Answers are shaped like botocore's ``head_object`` (the keys sync reads:
``ContentLength``, ``ETag``, ``ContentType``, ``LastModified``,
``Metadata``); a missing object is None; any other failure is the
``StorageError`` ``storage.head_object`` raises for it. 500, 502, 503
(SlowDown), 504 and broken connections are retried up to
``s3.max_attempts`` tries in all, after a full-jitter exponential backoff
(botocore's standard mode). A SlowDown also halves the HEADs in flight to
that endpoint, once per round, and each answer after it adds back a little
(additive increase, multiplicative decrease, as TCP). A kept-alive
connection the server closed while idle is replaced without counting a try.
A 301, 307 or 400 naming ``x-amz-bucket-region`` teaches the client the
bucket's region: its requests go again, natively, signed for that region
with a client made for it (``s3.bucket_regions`` is known from the start);
one redirected again although signed for the region named goes to botocore.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog

from trr_assets import storage
from trr_assets.config import S3Settings
from trr_assets.errors import StorageError
from trr_assets.sigv4 import HeaderSigner
from trr_assets.storage import S3Client, http, inflight, regions

log = structlog.get_logger()

RETRY_STATUSES = frozenset({500, 502, 503, 504})
RUN = 64  # keys per task handed to the loop: one hand-over per run, not per key
_USER_AGENT = "trr-assets"
_MAX_HEAD_BYTES = 65536  # a response head larger than this is not S3's


def native_possible(client: S3Client) -> str | None:
    """Why ``client``'s HEADs must stay with botocore, or None when they may
    bypass it: a client that is not botocore's (a stand-in), a proxy in the
    environment (botocore honours HTTP(S)_PROXY; this client does not), or
    something that intercepts the client's requests (a ``before-send``
    handler: a stub, a mock, an injected fault) that the HEADs would miss.
    """
    if getattr(client, "_request_signer", None) is None:
        return "not a botocore client"
    proxies = urllib.request.getproxies()
    if proxies.get("http") or proxies.get("https"):
        return "a proxy is configured"
    events: Any = client.meta.events  # its handlers are botocore's internals, which have no types
    try:
        handlers = events._emitter._handlers.prefix_search("before-send.s3.HeadObject")
    except AttributeError:
        return "cannot tell whether the client's requests are intercepted"
    # A handler that says it is switched off (moto's, once its mock ends) intercepts nothing.
    if any(getattr(handler, "enabled", True) for handler in handlers):
        return "the client's requests are intercepted (before-send)"
    return None


@contextmanager
def for_client(client: S3Client, settings: S3Settings) -> Iterator[HeadClient | None]:
    """A ``HeadClient`` for ``client`` while the block runs, or None when
    ``s3.head_client`` is "botocore" or ``native_possible`` says no."""
    if settings.head_client != "native":
        yield None
        return
    reason = native_possible(client)
    if reason is not None:
        log.debug("s3_heads_by_botocore", reason=reason)
        yield None
        return
    with HeadClient(client, settings) as heads:
        yield heads


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer's head read."""

    def __init__(self, client: HeadClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.request: inflight.Request | None = None
        self.buffer = b""
        self.used = False  # has answered: a close before any byte of the next answer is a stale keep-alive
        self.deadline = 0.0
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD_BYTES:
                self.close()
            return
        head, rest = self.buffer[:end], self.buffer[end + 4:]
        self.buffer = b""
        request, self.request = self.request, None
        if request is not None:
            self.origin.in_flight -= 1
        if request is None or rest:  # an answer nobody asked for, or a body after a HEAD's answer
            self.close()
            if request is not None:
                self.client._retry(request, "an answer the client cannot read")
            return
        self.used = True
        self.client._answered(self, request, head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._lost(self, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


_Origin = inflight.Origin["_Connection"]


class HeadClient:
    """HEADs of S3 objects, many at once, from one event loop in its own thread.

    ``client`` is the botocore client of ``storage.make_client``: its
    credentials sign and its endpoint resolution says where each bucket
    lives. Up to ``s3.head_connections`` requests are in flight per S3
    endpoint host, each on a kept-alive connection of its own (HTTP/1.1, no
    pipelining). Callbacks (``asyncio.Protocol``), not a task per request:
    a HEAD costs the loop a send, a receive and a parse. Thread-safe;
    ``close`` ends the loop and its connections.
    """

    def __init__(
        self,
        client: S3Client,
        settings: S3Settings,
        *,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 20.0,
    ) -> None:
        self._client = client
        self._regions = regions.BucketClients(settings, client)
        self._signer = HeaderSigner(client, client_for_bucket=self._regions.client_if_known)
        self._observe = storage.request_observer(client)  # metrics, when the client has them
        self.concurrency = settings.head_connections  # most requests in flight per endpoint
        self._attempts = settings.max_attempts
        self._connect_timeout = settings.connect_timeout_seconds
        self._read_timeout = settings.read_timeout_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._ssl: ssl.SSLContext | None = None  # made on the first https connection (loading CAs costs ~30 ms)
        self._origins: dict[str, _Origin] = {}
        self._origin_of_bucket: dict[str, _Origin] = {}
        self._sweeping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trr-heads", daemon=True)
        self._thread.start()
        self._closed = False

    # -- the caller's side

    def heads(self, bucket: str, keys: Sequence[str]) -> Iterator[dict[str, Any] | None]:
        """Each key's answer (None: no such object), in order, as they come.

        Every key is handed to the loop at once (runs of ``RUN`` keys, one
        future each); the first failure is raised where its answer would
        have been, and what has not been sent yet is dropped if the caller
        stops early.
        """
        if self._closed:
            raise StorageError("s3: head object: the HEAD client is closed")
        chunks = [keys[start:start + RUN] for start in range(0, len(keys), RUN)]
        runs = [(inflight.Run(len(chunk)), chunk) for chunk in chunks]
        self._loop.call_soon_threadsafe(self._submit, bucket, runs)
        try:
            for run, _ in runs:
                yield from run.future.result()
        finally:
            for run, _ in runs:
                run.future.cancel()

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """One object's answer (None: no such object)."""
        return next(self.heads(bucket, [key]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._close_all)
        self._thread.join(timeout=10)
        self._loop.close()
        self._regions.close()

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the loop's side

    def _close_all(self) -> None:
        for origin in self._origins.values():
            for conn in list(origin.connections):
                conn.close()
            for request in origin.waiting:
                request.run.fail(StorageError("s3: head object: the HEAD client was closed"))
            origin.waiting.clear()
        self._loop.call_soon(self._loop.stop)  # after the closes' callbacks

    def _submit(self, bucket: str, runs: list[tuple[inflight.Run, Sequence[str]]]) -> None:
        try:
            origin = self._origin(bucket)
        except StorageError as exc:
            for run, _ in runs:
                run.fail(exc)
            return
        for run, keys in runs:
            origin.waiting.extend(inflight.Request(bucket, key, run, index) for index, key in enumerate(keys))
        self._pump(origin)

    def _origin(self, bucket: str) -> _Origin:
        origin = self._origin_of_bucket.get(bucket)
        if origin is None:
            endpoint = self._signer.endpoint(bucket)
            scheme, _, netloc, _ = endpoint.base.split("/", 3)
            name = f"{scheme}//{netloc}"
            origin = self._origins.get(name)
            if origin is None:
                origin = self._origins[name] = inflight.Origin(name, endpoint.host, most_in_flight=self.concurrency)
            self._origin_of_bucket[bucket] = origin
        return origin

    def _pump(self, origin: _Origin) -> None:
        """Send waiting requests on idle connections; open more while allowed."""
        waiting, idle = origin.waiting, origin.idle
        limit = int(origin.limit)
        while waiting and idle and origin.in_flight < limit:
            request = waiting.popleft()
            if not request.run.done():
                self._send(idle.pop(), request)
        room = min(limit - origin.in_flight, self.concurrency - len(origin.connections)) - origin.opening
        for _ in range(min(room, len(waiting) - origin.opening)):
            origin.opening += 1
            self._loop.create_task(self._open(origin))

    async def _open(self, origin: _Origin) -> None:
        if origin.secure and self._ssl is None:
            self._ssl = http.ssl_context(self._client)
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(lambda: _Connection(self, origin), origin.host, origin.port,
                                             ssl=self._ssl if origin.secure else None,
                                             server_hostname=origin.host if origin.secure else None),
                self._connect_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            origin.opening -= 1
            reason = f"cannot connect to {origin.netloc}: {type(exc).__name__}: {exc}".rstrip(": ")
            if origin.waiting:  # the connection was for the next request: that try failed
                self._retry(origin.waiting.popleft(), reason)
            self._pump(origin)
            return
        except BaseException:
            origin.opening -= 1
            raise
        origin.opening -= 1
        origin.connections.add(conn)
        origin.idle.append(conn)
        self._pump(origin)

    def _send(self, conn: _Connection, request: inflight.Request) -> None:
        signed = self._signer.sign("HEAD", request.bucket, request.key, signed_at=int(time.time()))
        request.signed_for = self._signer.endpoint(request.bucket).region
        path = signed.url.split("/", 3)[3]
        lines = [f"HEAD /{path} HTTP/1.1", f"Host: {conn.origin.host_header}", f"User-Agent: {_USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in signed.headers.items()]
        conn.request = request
        conn.origin.in_flight += 1
        conn.origin.sent += 1
        request.sent_as = conn.origin.sent
        conn.deadline = time.monotonic() + self._read_timeout
        assert conn.transport is not None
        conn.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(min(1.0, self._read_timeout / 4), self._sweep)

    def _sweep(self) -> None:
        """Close the connections whose answer is overdue (their requests are retried)."""
        now, busy = time.monotonic(), False
        for origin in self._origins.values():
            for conn in origin.connections:
                if conn.request is not None:
                    busy = True
                    if conn.deadline < now:
                        conn.timed_out = True
                        conn.close()
        self._sweeping = busy
        if busy:
            self._loop.call_later(min(1.0, self._read_timeout / 4), self._sweep)

    def _answered(self, conn: _Connection, request: inflight.Request, head: bytes) -> None:
        origin = conn.origin
        try:
            status, headers = http.parse_head(head)
        except http.NotHttp as exc:
            conn.close()
            self._retry(request, str(exc))
            return
        if headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            origin.idle.append(conn)
        if status == 503:
            limit = origin.slowed(request)
            if limit is not None:
                log.info("s3_heads_slowed", bucket=request.bucket, in_flight_limit=int(limit))
        else:
            origin.answered()
        if self._observe is not None and status not in RETRY_STATUSES:
            self._observe("HeadObject", storage.request_outcome(status), time.monotonic() - request.started)
        if status == 200:
            request.run.answer(request.index, http.answer_of(headers))
        elif status == 404:
            request.run.answer(request.index, None)
        elif status in RETRY_STATUSES:
            self._retry(request, f"{status}: {http.phrase(status)}")
        elif status in (301, 307, 400) and "x-amz-bucket-region" in headers:
            self._moved(request, headers["x-amz-bucket-region"])
        else:
            reason = f"{status}: {http.phrase(status)}"
            request.run.fail(StorageError(f"s3: head object (bucket {request.bucket}): {reason}"))
        self._pump(origin)

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        origin = conn.origin
        origin.connections.discard(conn)
        if conn in origin.idle:
            origin.idle.remove(conn)
        request, conn.request = conn.request, None
        if request is not None:
            origin.in_flight -= 1
            if conn.timed_out:
                self._retry(request, f"no answer within {self._read_timeout:g} s")
            elif conn.used and not conn.buffer and not request.resent:
                # A kept-alive connection the server closed as the request
                # went out (S3 closes idle ones): once, not counted as a try.
                request.resent = True
                self._requeue(request)
            else:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ") if exc else "closed by the server"
                self._retry(request, f"connection lost ({reason})")
        self._pump(origin)

    def _moved(self, request: inflight.Request, region: str) -> None:
        """S3 says ``request``'s bucket is in ``region``: sign for it from now on
        (the requests signed for the old one come back here too, and go
        again as they are), or, if this one was signed for it already, let
        botocore's region redirection find the way."""
        bucket = request.bucket
        if request.signed_for == region:
            self._by_botocore(request)
            return
        old = None
        if self._signer.endpoint(bucket).region != region:
            log.info("s3_bucket_region_learnt", bucket=bucket, region=region)
            self._regions.learn(bucket, region)
            self._signer.forget(bucket)
            old = self._origin_of_bucket.pop(bucket, None)
        try:
            origin = self._origin(bucket)  # a client for the region, made once, on this thread
        except StorageError as exc:
            request.run.fail(exc)
            return
        if old is not None and old is not origin:
            # The region's endpoint is another host (virtual-hosted style on
            # AWS): the bucket's queued requests follow it there, or they
            # would go to the old host signed for the new one.
            moving = [r for r in old.waiting if r.bucket == bucket]
            old.waiting = deque(r for r in old.waiting if r.bucket != bucket)
            origin.waiting.extend(moving)
        origin.waiting.appendleft(request)
        self._pump(origin)

    def _by_botocore(self, request: inflight.Request) -> None:
        """HEAD one object through botocore (in the loop's default thread pool),
        whose region redirection follows a bucket that moved again."""
        asked = self._loop.run_in_executor(None, storage.head_object, self._client, request.bucket, request.key)

        def settle(done: asyncio.Future[Any]) -> None:
            exc = done.exception()
            if exc is not None:
                request.run.fail(exc)
            else:
                request.run.answer(request.index, done.result())

        asked.add_done_callback(settle)

    def _retry(self, request: inflight.Request, reason: str) -> None:
        if request.run.done():  # failed or given up by the caller: nobody waits for it
            return
        request.tries += 1
        if request.tries >= self._attempts:
            if self._observe is not None:
                status = int(reason[:3]) if reason[:3].isdigit() else None
                self._observe("HeadObject", storage.request_outcome(status), time.monotonic() - request.started)
            request.run.fail(StorageError(
                f"s3: head object (bucket {request.bucket}): {reason} (after {request.tries} tries)"))
            return
        delay = random.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (request.tries - 1)))
        log.debug("s3_head_retry", bucket=request.bucket, tries=request.tries, reason=reason, delay_seconds=delay)
        self._loop.call_later(delay, self._requeue, request)

    def _requeue(self, request: inflight.Request) -> None:
        """Put ``request`` first in line at its bucket's endpoint (as it is now: a
        bucket may have moved region since the request was queued)."""
        try:
            origin = self._origin(request.bucket)
        except StorageError as exc:  # the endpoint of a region just learnt could not be made
            request.run.fail(exc)
            return
        origin.waiting.appendleft(request)
        self._pump(origin)
