"""A local S3 for end-to-end benchmarks: every answer arrives after a fixed
delay, as from a bucket across a network, and costs almost no CPU here.

``python -m bench.s3_standin --objects N [--delay 0.02] [--bucket B]``
prints ``{"endpoint": "http://127.0.0.1:PORT"}`` on stdout and serves until
killed (or its stdin closes). It holds the ``N`` objects of ``bench.data``
(``N // 200`` shows of 200 objects), generated from their numbers: a sorted
list of keys, no bodies. It answers, path-style, what sync asks of S3:

- ``GET /B?list-type=2`` (ListObjectsV2) with ``prefix``, ``start-after``,
  ``continuation-token``, ``max-keys`` (at most 1,000) and
  ``encoding-type=url``, in S3's order with S3's XML;
- ``HEAD /B/KEY`` (HeadObject): Content-Type, Content-Length, ETag,
  Last-Modified and an ``owner-id`` metadata header, or a bodiless 404;
- ``GET /B?versions`` (ListObjectVersions) with ``prefix``, ``key-marker``,
  ``version-id-marker`` and ``max-keys``: each object has
  ``--versions-per-key`` versions (ids ``v0``, ``v1``, ...; the highest is
  the current one), no delete markers;
- ``HEAD /B`` (HeadBucket); anything else gets S3's ``NotImplemented`` error.

``GET /__bench/stats`` answers (at once) with the requests served so far by
kind and the server's own CPU seconds; ``POST /__bench/reset`` zeroes the
counts. Event-driven (one asyncio loop, ``asyncio.Protocol``, no thread per
request); each answer is written ``--delay`` seconds after its request was
read, by a timer, so hundreds of requests wait at once for free.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import os
import sys
import time
import uuid
from collections import Counter
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from bench import data
from bench.data import LAST_MODIFIED

PER_SHOW = 200
_LIST_DATE = LAST_MODIFIED.strftime("%Y-%m-%dT%H:%M:%S.000Z")
_HTTP_DATE = LAST_MODIFIED.strftime("%a, %d %b %Y %H:%M:%S GMT")
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def owner_of(number: int) -> str:
    """The ``owner-id`` metadata of object number ``number`` (deterministic)."""
    return str(uuid.UUID(int=number + 1, version=4))


class Bucket:
    """``objects`` synthetic objects of ``bench.data``, by key."""

    def __init__(self, name: str, objects: int, versions_per_key: int = 1) -> None:
        self.name = name
        self.versions_per_key = versions_per_key
        shows = data.show_ids(max(1, objects // PER_SHOW)) if objects else []
        self.keys = list(data.keys(shows, PER_SHOW))[:objects]
        self._numbers = {key: int(key[-11:-4]) for key in self.keys}

    def number(self, key: str) -> int | None:
        return self._numbers.get(key)

    def page(self, prefix: str, after: str | None, max_keys: int) -> tuple[list[str], bool]:
        start = bisect.bisect_left(self.keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self.keys, after))
        keys: list[str] = []
        i = start
        while i < len(self.keys) and len(keys) < max_keys:
            key = self.keys[i]
            if not key.startswith(prefix):
                return keys, False
            keys.append(key)
            i += 1
        more = i < len(self.keys) and self.keys[i].startswith(prefix)
        return keys, more


    def version_page(self, prefix: str, key_marker: str | None, version_marker: str | None,
                     max_keys: int) -> tuple[list[tuple[str, int]], bool]:
        """Up to ``max_keys`` (key, version number) pairs after the markers, newest version first."""
        per = self.versions_per_key
        start = bisect.bisect_left(self.keys, prefix)
        first_version = per - 1
        if key_marker is not None:
            i = bisect.bisect_right(self.keys, key_marker)
            if version_marker is not None and i > 0 and self.keys[i - 1] == key_marker:
                left = int(version_marker.lstrip("v")) - 1  # the next older version of the marker's key
                if left >= 0:
                    i, first_version = i - 1, left
            start = max(start, i)
        out: list[tuple[str, int]] = []
        i, version = start, first_version
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            if len(out) == max_keys:
                return out, True
            out.append((self.keys[i], version))
            version -= 1
            if version < 0:
                i, version = i + 1, per - 1
        return out, False


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _untoken(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode()


def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"", *, head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", "x-amz-request-id: 4442587FB7D0A2F9", "Server: AmazonS3"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _error(status: str, code: str, message: str, *, head: bool = False) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
            f"</Message></Error>").encode()
    return _response(status, [("Content-Type", "application/xml")], body, head=head)


class Server:
    def __init__(self, bucket: Bucket, delay: float) -> None:
        self.bucket = bucket
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self._heads: dict[int, bytes] = {}  # a HEAD's answer depends on the object's number alone

    def head_answer(self, target: str) -> bytes | None:
        """The answer to ``HEAD target`` when it names an object of the
        bucket plainly (no query, no escapes), else None: the common case,
        served without parsing the target."""
        if "?" in target or "%" in target or not target.startswith(self._bucket_path):
            return None
        number = self.bucket.number(target[len(self._bucket_path):])
        if number is None:
            return None
        answer = self._heads.get(number)
        if answer is None:
            answer = self._heads[number] = self._head(target[len(self._bucket_path):])
        self.counts["head"] += 1
        return answer

    @property
    def _bucket_path(self) -> str:
        return f"/{self.bucket.name}/"

    def answer(self, method: str, target: str) -> tuple[bytes, bool]:
        """(the response, whether it waits ``delay``)."""
        parts = urlsplit(target)
        path = unquote(parts.path)
        if path.startswith("/__bench/"):
            return self._control(method, path), False
        name, _, key = path.lstrip("/").partition("/")
        head = method == "HEAD"
        if name != self.bucket.name:
            self.counts["other"] += 1
            return _error("404 Not Found", "NoSuchBucket", "The specified bucket does not exist", head=head), True
        if key and head:
            self.counts["head"] += 1
            return self._head(key), True
        if not key and head:
            self.counts["head_bucket"] += 1
            return _response("200 OK", [("x-amz-bucket-region", "us-east-1")], head=True), True
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if not key and method == "GET" and query.get("list-type") == "2":
            self.counts["list"] += 1
            return self._list(query), True
        if not key and method == "GET" and "versions" in query:
            self.counts["list_versions"] += 1
            return self._list_versions(query), True
        self.counts["other"] += 1
        return _error("501 Not Implemented", "NotImplemented", f"{method} {parts.path} is not served here",
                      head=head), True

    def _head(self, key: str) -> bytes:
        number = self.bucket.number(key)
        if number is None:
            return _response("404 Not Found", [("Content-Type", "application/xml")], head=True)
        return _response("200 OK", [
            ("Content-Type", data.CONTENT_TYPE),
            ("Content-Length", str(data.size_of(number))),
            ("ETag", f'"{data.etag_of(number)}"'),
            ("Last-Modified", _HTTP_DATE),
            ("Accept-Ranges", "bytes"),
            ("x-amz-meta-owner-id", owner_of(number)),
            ("x-amz-server-side-encryption", "AES256"),
        ], head=True)

    def _list(self, query: dict[str, str]) -> bytes:
        prefix = query.get("prefix", "")
        token = query.get("continuation-token")
        start_after = query.get("start-after")
        try:
            max_keys = max(0, min(1000, int(query.get("max-keys", "1000"))))
            after = _untoken(token) if token is not None else start_after
        except ValueError:
            return _error("400 Bad Request", "InvalidArgument", "bad max-keys or continuation-token")
        keys, more = self.bucket.page(prefix, after, max_keys)
        url = query.get("encoding-type") == "url"

        def text(value: str) -> str:
            return quote(value, safe="/") if url else escape(value)

        out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_NS}">',
               f"<Name>{self.bucket.name}</Name><Prefix>{text(prefix)}</Prefix>"]
        if token is not None:
            out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if start_after is not None:
            out.append(f"<StartAfter>{text(start_after)}</StartAfter>")
        out.append(f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
        if url:
            out.append("<EncodingType>url</EncodingType>")
        out.append(f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>")
        if more:
            out.append(f"<NextContinuationToken>{_token(keys[-1])}</NextContinuationToken>")
        numbers = self.bucket._numbers
        for key in keys:
            number = numbers[key]
            out.append(f"<Contents><Key>{text(key)}</Key><LastModified>{_LIST_DATE}</LastModified>"
                       f"<ETag>&quot;{data.etag_of(number)}&quot;</ETag><Size>{data.size_of(number)}</Size>"
                       f"<StorageClass>STANDARD</StorageClass></Contents>")
        out.append("</ListBucketResult>")
        return _response("200 OK", [("Content-Type", "application/xml")], "".join(out).encode())

    def _list_versions(self, query: dict[str, str]) -> bytes:
        prefix = query.get("prefix", "")
        try:
            max_keys = max(1, min(1000, int(query.get("max-keys", "1000"))))
        except ValueError:
            return _error("400 Bad Request", "InvalidArgument", "bad max-keys")
        found, more = self.bucket.version_page(prefix, query.get("key-marker"), query.get("version-id-marker"),
                                               max_keys)
        out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListVersionsResult xmlns="{_NS}">',
               f"<Name>{self.bucket.name}</Name><Prefix>{escape(prefix)}</Prefix>"
               f"<KeyMarker>{escape(query.get('key-marker', ''))}</KeyMarker>"
               f"<VersionIdMarker>{escape(query.get('version-id-marker', ''))}</VersionIdMarker>"
               f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if more else 'false'}</IsTruncated>"]
        if more:
            out.append(f"<NextKeyMarker>{escape(found[-1][0])}</NextKeyMarker>"
                       f"<NextVersionIdMarker>v{found[-1][1]}</NextVersionIdMarker>")
        numbers = self.bucket._numbers
        latest = self.bucket.versions_per_key - 1
        for key, version in found:
            number = numbers[key]
            out.append(f"<Version><Key>{escape(key)}</Key><VersionId>v{version}</VersionId>"
                       f"<IsLatest>{'true' if version == latest else 'false'}</IsLatest>"
                       f"<LastModified>{_LIST_DATE}</LastModified><ETag>&quot;{data.etag_of(number)}&quot;</ETag>"
                       f"<Size>{data.size_of(number)}</Size><StorageClass>STANDARD</StorageClass>"
                       f"<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID></Owner>"
                       f"</Version>")
        out.append("</ListVersionsResult>")
        return _response("200 OK", [("Content-Type", "application/xml")], "".join(out).encode())

    def _control(self, method: str, path: str) -> bytes:
        if path == "/__bench/reset" and method == "POST":
            self.counts.clear()
        body = json.dumps({"requests": dict(self.counts), "cpu_seconds": time.process_time()}).encode()
        return _response("200 OK", [("Content-Type", "application/json")], body)


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.ready_at = 0.0  # answers leave in the order their requests came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, chunk: bytes) -> None:
        self.buffer += chunk
        loop = asyncio.get_running_loop()
        server = self.server
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            if "content-length:" in head.lower():  # a request with a body (never one of sync's)
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            method, target, _ = (head[: head.find("\r\n")].split(" ") + ["", ""])[:3]
            plain = server.head_answer(target) if method == "HEAD" else None
            response, delayed = (plain, True) if plain is not None else server.answer(method, target)
            now = loop.time()
            at = max(now + (self.server.delay if delayed else 0.0), self.ready_at)
            self.ready_at = at
            loop.call_at(at, self._send, response)

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _serve(server: Server, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: _Connection(server), host, port, backlog=1024)
    bound = listener.sockets[0].getsockname()
    print(json.dumps({"endpoint": f"http://{bound[0]}:{bound[1]}", "objects": len(server.bucket.keys)}),
          flush=True)
    stdin_closed: asyncio.Future[None] = loop.create_future()

    def read_stdin() -> None:  # serve until the parent closes our stdin
        if not os.read(sys.stdin.fileno(), 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), read_stdin)
    await stdin_closed
    listener.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_standin")
    parser.add_argument("--objects", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds each S3 request takes (default 0.02)")
    parser.add_argument("--bucket", default=data.BUCKET)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--versions-per-key", type=int, default=1, help="versions each object has (default 1)")
    args = parser.parse_args(argv)
    server = Server(Bucket(args.bucket, args.objects, max(1, args.versions_per_key)), args.delay)
    asyncio.run(_serve(server, "127.0.0.1", args.port))


if __name__ == "__main__":
    main()
