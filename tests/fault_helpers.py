"""Tools of the fault, race, bad-input and security tests.

- ``moto_endpoint`` / ``s3_server``: moto in server mode on 127.0.0.1, so
  child processes (the CLI, the worker) share S3 with the test; reset and
  given the test bucket before each test.
- ``moto_auth``: moto's IAM check switched on, so unknown access keys are
  refused as AWS refuses wrong credentials.
- ``S3Faults``: answers a share of a client's requests with an S3 error
  (503 SlowDown, 500 InternalError) instead of sending them, through
  botocore's ``before-send`` event; records every attempt, so a test can
  prove botocore really retried.
- ``ServerDeletes``: every object deletion the moto server performs, from any
  process, counted per key.
- ``far_database``: a TCP front to the test's PostgreSQL that holds each new
  connection a while before relaying it, as a distant server's handshakes
  would, and records how many it held at once.
- ``child_env``, ``run_cli`` and ``run_cli_killed_at``: the CLI (the worker
  included) as a child process against the test's database and S3,
  optionally SIGKILLed by itself at a precise point (a botocore event handler
  installed by test code, never product code).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import TEST_BUCKET, make_settings, make_show
from trr_assets import storage
from trr_assets.config import Settings

WAIT = 60  # seconds: a bound on waiting for a condition, never asserted on
AWS_KEY_ID = "AKIATESTTESTTESTTEST"
AWS_SECRET = "test-secret-key-never-logged-0123456789"


# --- a local S3 server -----------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 over HTTP on a free local port (one per session)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class S3Server:
    """The local S3 server of one test, with a client for the test's own use."""

    endpoint: str
    client: Any

    def settings(self, db_url: str, **sections: dict[str, Any]) -> Settings:
        """Test settings (``conftest.make_settings``) pointed at this server."""
        s3 = {"endpoint_url": self.endpoint, "addressing_style": "path", **sections.pop("s3", {})}
        return make_settings(db_url, s3=s3, **sections)

    def keys(self, bucket: str = TEST_BUCKET) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", ())}

    def body(self, key: str, bucket: str = TEST_BUCKET) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, key: str, body: bytes = b"data", *, bucket: str = TEST_BUCKET) -> str:
        """PUT an object; return its ETag without quotes."""
        reply = self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
        return reply["ETag"].strip('"')


def _moto_api(endpoint: str, path: str, data: bytes = b"") -> None:
    request = urllib.request.Request(endpoint + path, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass


@pytest.fixture
def s3_server(moto_endpoint: str, aws_env: None) -> S3Server:
    """The session's moto server, emptied, with the test bucket created."""
    _moto_api(moto_endpoint, "/moto-api/reset")
    settings = make_settings("postgresql://unused", s3={"endpoint_url": moto_endpoint, "addressing_style": "path"})
    client = storage.make_client(settings.s3)
    client.create_bucket(Bucket=TEST_BUCKET)
    return S3Server(moto_endpoint, client)


@contextmanager
def moto_auth() -> Iterator[None]:
    """moto's IAM authentication switched on: unknown access keys are refused
    (InvalidAccessKeyId / 403), as AWS refuses wrong credentials."""
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin

    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before


# --- a distant database ------------------------------------------------------------


class FarDatabase:
    """See ``far_database``. ``url`` connects through it."""

    def __init__(self, url: str, delay_seconds: float) -> None:
        params = conninfo_to_dict(url)
        host, port = str(params.pop("host", "localhost")), int(params.pop("port", 5432))
        params.pop("hostaddr", None)
        self._upstream = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        self._delay_seconds = delay_seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = make_conninfo("", **params, host="127.0.0.1", port=str(self._listener.getsockname()[1]))
        self._lock = threading.Lock()
        self._held = 0
        self.most_held = 0  # connections held back at the same moment, at most
        self.opened = 0  # connections relayed
        self._sockets: list[socket.socket] = []

    def serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            self._held += 1
            self.most_held = max(self.most_held, self._held)
            self._sockets.append(client)
        time.sleep(self._delay_seconds)
        with self._lock:
            self._held -= 1
            self.opened += 1
        family = socket.AF_UNIX if isinstance(self._upstream, str) else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        with self._lock:
            self._sockets.append(server)
        try:
            server.connect(self._upstream)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@contextmanager
def far_database(url: str, *, delay_seconds: float) -> Iterator[FarDatabase]:
    """A TCP front to the database at ``url`` that holds each new connection
    for ``delay_seconds`` before relaying it (a distant server's round trips
    and handshakes), counting how many it held at once (``most_held``)."""
    far = FarDatabase(url, delay_seconds)
    threading.Thread(target=far.serve, daemon=True).start()
    try:
        yield far
    finally:
        far.close()


# --- injected S3 faults ----------------------------------------------------------

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
)
FAULTS = {503: ("SlowDown", "Please reduce your request rate."), 500: ("InternalError", "We encountered an internal error.")}


class _Body:
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
            _Body(_ERROR_BODY.format(code=code, message=message).encode()),
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


# --- server-side accounting of deletions -----------------------------------------


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


# --- the CLI in a child process ----------------------------------------------------

# Run the CLI with S3 clients that SIGKILL this very process when the N-th
# call of an operation has returned (or is about to be sent): test code,
# handed to ``python -c``; nothing of it is in the product.
_KILLER = """
import os, signal, sys, threading
from trr_assets import cli, storage

operation, when, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = [0]
lock = threading.Lock()

def kill(**_):
    with lock:
        seen[0] += 1
        if seen[0] >= nth:
            sys.stderr.write("test: SIGKILL at %s %s #%d\\n" % (when, operation, seen[0]))
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

real = storage.make_client

def make_client(*args, **kwargs):
    client = real(*args, **kwargs)
    client.meta.events.register(f"{when}.s3.{operation}", kill)
    return client

storage.make_client = make_client
sys.exit(cli.main(sys.argv[4:]))
"""


def child_env(db_url: str, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: this database and S3 server, JSON logs."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("TRR_ASSETS_", "AWS_", "PG")) and k != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=db_url,
        AWS_ACCESS_KEY_ID=AWS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent/trr-assets-test",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/trr-assets-test",
        TRR_ASSETS_S3_ENDPOINT_URL=endpoint,
        TRR_ASSETS_S3_ADDRESSING_STYLE="path",
        TRR_ASSETS_S3_BUCKETS=TEST_BUCKET,
        TRR_ASSETS_RECONCILE_GRACE_SECONDS="0",
        TRR_ASSETS_LOGGING_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``trr-assets ARGS`` in a child process; waits for it."""
    return subprocess.run(
        [sys.executable, "-m", "trr_assets", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def run_cli_killed_at(
    operation: str, nth: int, *args: str, env: dict[str, str], when: str = "after-call"
) -> subprocess.CompletedProcess[str]:
    """``trr-assets ARGS`` in a child that SIGKILLs itself at the ``nth``
    ``when`` (``after-call`` or ``before-send``) event of ``operation``."""
    return subprocess.run(
        [sys.executable, "-c", _KILLER, operation, when, str(nth), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def wait_for_sessions_to_end(conn: psycopg.Connection[Any], prefix: str = "trr-assets") -> None:
    """Wait until PostgreSQL has noticed that killed clients are gone (their
    sessions end and their transactions roll back)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and application_name like %s and pid <> pg_backend_pid()",
            (prefix + "%",),
        ).fetchone()
        if row and row[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("sessions of the killed process never ended")


def stdout_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last stdout line of a CLI child, parsed."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr[-2000:]}"
    return json.loads(lines[-1])


def killed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == -signal.SIGKILL


# --- database helpers shared by the fault and race tests -----------------------------


def row_keys(conn: psycopg.Connection[Any]) -> list[str]:
    """The asset rows' keys, in order."""
    return [r[0] for r in conn.execute("select object_key from core.show_assets order by object_key")]


def queue(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int]]:
    """The delete queue: ``{key: (state, attempts)}``."""
    return {r[0]: (r[1], r[2]) for r in conn.execute("select object_key, state, attempts from trr_assets.delete_queue")}


def add_asset(conn: psycopg.Connection[Any], server: S3Server, show: Any, name: str) -> str:
    """An object and its row, the row old enough to be past any grace period."""
    key = f"shows/{show}/{name}"
    etag = server.put(key, key.encode())
    conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes, checksum, updated_at)"
        " values (%s, %s, %s, %s, %s, now() - interval '30 days')",
        (show, TEST_BUCKET, key, len(key.encode()), etag),
    )
    return key


def thousand_assets(conn: psycopg.Connection[Any], server: S3Server) -> tuple[list[str], dict[str, Any]]:
    """1,000 objects of one show with their rows: ``(keys in order, {key: asset id})``."""
    show = make_show(conn)
    keys = [f"shows/{show}/{i:04d}.jpg" for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: server.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x"), keys))
    ids = dict(conn.execute(
        "insert into core.show_assets (show_id, bucket, object_key, size_bytes)"
        " select %s, %s, k, 1 from unnest(%s::text[]) k returning object_key, id",
        (show, TEST_BUCKET, keys),
    ).fetchall())
    return keys, ids
