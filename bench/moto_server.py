"""A moto S3 server in its own process, a slow-listing front for it, and a
back door for seeding.

``python -m bench.moto_server --list-delay 0.2`` starts
``moto.server.ThreadedMotoServer`` on 127.0.0.1 (a free port) and, in front
of it, a small proxy that answers every ListObjectsV2 page ``--list-delay``
seconds late, then prints ``{"endpoint": ..., "slow_endpoint": ...}`` on
stdout. It then reads one JSON command per line on stdin and answers one
JSON line each. The commands write straight into moto's in-memory backend,
so seeding 200,000 objects costs seconds rather than 200,000 HTTP PUTs;
everything measured goes through HTTP like any S3 client. A process of its
own, so the server's work does not share the benchmark's interpreter lock.

The proxy stands for an S3 whose pages take ``--list-delay`` to arrive and
cost the server nothing: moto itself spends a few hundred milliseconds of
one core (one interpreter lock) per 1,000-key page, which would turn a
latency benchmark into a benchmark of moto. So the proxy forwards each
distinct listing request to moto once, keeps the answer (the bucket does
not change during a listing benchmark), and serves it, delayed, from then
on. The client's own work, requests, parsing, is untouched.

Commands: ``{"op": "create_bucket", "bucket": B}``, ``{"op": "put",
"bucket": B, "keys": [...], "body": "text"}``, ``{"op": "clear", "bucket":
B}``, ``{"op": "count", "bucket": B}``, ``{"op": "forget_pages"}`` (drop the
proxy's kept answers).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT_ID = "123456789012"  # moto's default account, used for any unknown access key
REGION = "us-east-1"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate"}


def _backend() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[ACCOUNT_ID]["global"]


class _Pages:
    """The listing answers the proxy keeps, by request line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}


def _make_proxy(upstream: tuple[str, int], delay: float, pages: _Pages) -> ThreadingHTTPServer:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _upstream(self) -> http.client.HTTPConnection:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(*upstream, timeout=600)
            return conn

        def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            for attempt in (1, 2):
                conn = self._upstream()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP
                            and k.lower() != "content-length"]
                    return answer.status, kept, data
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            listing = self.command == "GET" and "list-type=2" in self.path
            if listing:
                with pages.lock:
                    answer = pages.kept.get(self.path)
                if answer is None:
                    answer = self._forward(body)
                    if answer[0] == 200:
                        with pages.lock:
                            pages.kept[self.path] = answer
                time.sleep(delay)
            else:
                answer = self._forward(body)
            status, headers, data = answer
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # as S3, every connection of a burst is accepted (socketserver's default: 5)

    return Server(("127.0.0.1", 0), Handler)


def _handle(command: dict[str, Any], pages: _Pages) -> dict[str, Any]:
    backend = _backend()
    op, bucket = command["op"], command.get("bucket")
    if op == "create_bucket":
        backend.create_bucket(bucket, REGION)
        return {"ok": True}
    if op == "put":
        body = command.get("body", "x").encode()
        for key in command["keys"]:
            # moto computes an object's ETag lazily, on first listing, by
            # reading the body without a lock: two concurrent listings that
            # both reach a key (sharded listings overlap at their ends) can
            # leave it with the MD5 of an empty body. Computed here, once.
            _ = backend.put_object(bucket, key, body).etag
        return {"ok": True, "count": len(command["keys"])}
    if op == "clear":
        names = list(backend.get_bucket(bucket).keys.keys())
        for key in names:
            backend.delete_object(bucket, key)
        return {"ok": True, "count": len(names)}
    if op == "count":
        return {"ok": True, "count": len(backend.get_bucket(bucket).keys)}
    if op == "forget_pages":
        with pages.lock:
            pages.kept.clear()
        return {"ok": True}
    return {"ok": False, "error": f"unknown op {op!r}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.moto_server")
    parser.add_argument("--list-delay", type=float, default=0.2, help="seconds each listing page takes (proxy)")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    pages = _Pages()
    proxy = _make_proxy((host, port), args.list_delay, pages)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    slow_host, slow_port = proxy.server_address[:2]
    assert isinstance(slow_host, str)  # an AF_INET server's address
    print(json.dumps({"endpoint": f"http://{host}:{port}", "slow_endpoint": f"http://{slow_host}:{slow_port}"}),
          flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                answer = _handle(json.loads(line), pages)
            except Exception as exc:  # the parent reports it; the server stays up
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        proxy.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
