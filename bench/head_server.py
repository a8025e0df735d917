"""A server that answers every HEAD as S3 answers a HEAD of an object, on
one kept-alive connection, at once and from a process of its own.

``python -m bench.head_server`` prints its port on stdout and serves until
killed. It stands in for S3 when measuring what a HEAD costs the client
(botocore's request building, signing and response parsing): moto's own
server closes each connection and spends its own CPU per request.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HEADERS = (
    ("Content-Type", "image/jpeg"),
    ("Content-Length", "48213"),
    ("ETag", '"9b2cf535f27731c974343645a3985328"'),
    ("Last-Modified", "Wed, 26 Nov 2026 08:12:56 GMT"),
    ("x-amz-meta-owner-id", "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    ("x-amz-request-id", "4442587FB7D0A2F9"),
    ("x-amz-id-2", "vlR7PnpV2Ce81l0PRw6jlUpck7Jo5ZsQjryTjKlc5aLWGVHPZLj5NeC6qMa0emYBDXOo6QBU0Wo="),
    ("x-amz-server-side-encryption", "AES256"),
    ("Accept-Ranges", "bytes"),
    ("Server", "AmazonS3"),
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        for name, value in HEADERS:
            self.send_header(name, value)
        self.end_headers()


class _Server(ThreadingHTTPServer):
    # S3 accepts every connection a client opens at once. With socketserver's
    # backlog of 5, the listener's burst of new connections overflowed the
    # accept queue: some requests went unanswered until the client's read
    # timeout (60 s), and the throughput row measured that timeout.
    request_queue_size = 1024
    daemon_threads = True


def main() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
