"""storage_heads.HeadClient: the answers botocore gives, for a fraction of
its CPU; retries, timeouts, stale connections, and when botocore keeps them.

Against moto over HTTP (``s3_server``) for the answers and the error
mapping, and against ``_Faulty``, a small HEAD server on a real socket that
misbehaves on cue, for retries. The signing itself is held to botocore's
bytes by tests/presign/test_sigv4.py (hypothesis over keys, endpoints, regions,
tokens).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.moto_server import S3Server, moto_auth
from tests.support.s3 import TEST_BUCKET
from trr_assets import storage
from trr_assets.config import S3Settings
from trr_assets.errors import StorageError
from trr_assets.storage import heads as storage_heads
from trr_assets.storage import regions
from trr_assets.storage.heads import HeadClient

ODD_KEYS = [
    "shows/plain.jpg",
    "shows/with space and+plus.png",
    "shows/ünïcödé/日本語.jpg",
    "shows/percent%20already%2Fencoded.jpg",
    "shows/question?hash#amp&eq=.jpg",
    "shows/tilde~star*quote'paren(.jpg",
    "shows//double//slash/",
    "shows/semi;colon:comma,at@dollar$.jpg",
]


def _settings(endpoint: str, **values: Any) -> S3Settings:
    return S3Settings(endpoint_url=endpoint, addressing_style="path", **values)


def _fields(answer: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if answer is None:
        return None
    return tuple(answer.get(name) for name in ("ContentLength", "ETag", "ContentType", "LastModified", "Metadata"))


def test_answers_are_botocores_for_the_same_objects(s3_server: S3Server) -> None:
    """Length, ETag, content type, Last-Modified and metadata as botocore's head_object gives them,
    for odd keys, objects with and without metadata, empty objects; a missing key is None for both."""
    client = s3_server.client
    for i, key in enumerate(ODD_KEYS):
        metadata = {"owner-id": f"00000000-0000-4000-8000-{i:012d}", "note": "x y"} if i % 2 else {}
        client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"a" * (i * 37), ContentType=f"image/t{i}",
                          Metadata=metadata)
    client.put_object(Bucket=TEST_BUCKET, Key="shows/no-type", Body=b"")
    keys = [*ODD_KEYS, "shows/no-type", "shows/missing.jpg"]

    with HeadClient(client, _settings(s3_server.endpoint)) as heads:
        native = list(heads.heads(TEST_BUCKET, keys))
        single = heads.head(TEST_BUCKET, ODD_KEYS[1])

    expected = [_fields(storage.head_object(client, TEST_BUCKET, key)) for key in keys]
    assert [_fields(a) for a in native] == expected
    assert expected[-1] is None and expected[1] is not None and expected[1][4]["owner-id"]
    assert _fields(single) == expected[1]


def test_refused_credentials_fail_as_storage_says(s3_server: S3Server) -> None:
    """A HEAD that S3 refuses (403) is the StorageError storage.head_object raises, word for word."""
    with moto_auth():
        client = storage.make_client(_settings(s3_server.endpoint, max_attempts=1))
        with pytest.raises(StorageError) as by_botocore:
            storage.head_object(client, TEST_BUCKET, "shows/a.jpg")
        with HeadClient(client, _settings(s3_server.endpoint)) as heads, pytest.raises(StorageError) as native:
            heads.head(TEST_BUCKET, "shows/a.jpg")
    assert str(native.value) == str(by_botocore.value) == f"s3: head object (bucket {TEST_BUCKET}): 403: Forbidden"


# --- a HEAD server that misbehaves on cue ---------------------------------------------


class _Faulty:
    """Answers HEADs on a real socket, keeping connections alive; for each
    key, the first answers follow its script ("503", "500", "reset": close
    without answering, "hang": never answer, "close-after": answer then
    close the connection while idle), then 200. With ``slow_over``, a
    request that arrives while more than that many are being answered is
    answered 503 SlowDown, as S3 answers a client that asks too fast."""

    def __init__(self, scripts: dict[str, list[str]], *, delay: float = 0.0, tls: Any = None,
                 slow_over: int | None = None, region: str | None = None) -> None:
        self.scripts = {key: list(steps) for key, steps in scripts.items()}
        self.delay = delay
        self.slow_over = slow_over
        # With a region: a request signed for another answers 301 naming it, as S3 does.
        self.region = region
        self.signed_for: Counter[str] = Counter()
        self.active = 0  # requests being answered now
        self.slowdowns = 0
        self.peaks: list[int] = []  # self.active as each request arrived
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.tls = tls
        scheme = "https://localhost" if tls else "http://127.0.0.1"
        self.endpoint = f"{scheme}:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                return
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                key = head.split(b" ")[1].decode().split("/", 2)[2]
                with self.lock:
                    self.seen[key] += 1
                    self.active += 1
                    self.peaks.append(self.active)
                    script = self.scripts.get(key, [])
                    step = script.pop(0) if script else "200"
                    if self.slow_over is not None and self.active > self.slow_over:
                        step, self.slowdowns = "503", self.slowdowns + 1
                    scope = re.search(rb"Credential=[^/]+/[0-9]{8}/([^/]+)/", head)
                    signed_for = scope.group(1).decode() if scope else ""
                    self.signed_for[signed_for] += 1
                    if self.region is not None and signed_for != self.region:
                        step = "301"
                if self.delay:
                    time.sleep(self.delay)
                with self.lock:
                    self.active -= 1
                if step == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                if step == "hang":
                    time.sleep(5)
                    return
                status = {"200": "200 OK", "close-after": "200 OK", "503": "503 Slow Down",
                          "500": "500 Internal Server Error", "301": "301 Moved Permanently"}[step]
                region = f"x-amz-bucket-region: {self.region or 'eu-west-1'}\r\n" if step == "301" else ""
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 5\r\nETag: \"e\"\r\n{region}"
                             f"Content-Type: image/png\r\n\r\n".encode())
                if step == "close-after":
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def faulty(aws_env: None) -> Iterator[Any]:
    servers: list[_Faulty] = []

    def make(scripts: dict[str, list[str]], **kwargs: Any) -> _Faulty:
        servers.append(_Faulty(scripts, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _client(server: _Faulty, **values: Any) -> HeadClient:
    settings = _settings(server.endpoint, **values)
    return HeadClient(storage.make_client(settings), settings, backoff_base_seconds=0.01)


def test_503_500_and_resets_are_retried_with_backoff(faulty: Any) -> None:
    """503 SlowDown, 500 and a reset connection are tried again (each try counted by the server), after a
    jittered backoff within its exponential bound; the answers come back in order."""
    server = faulty({"b/slow": ["503", "503"], "b/err": ["500"], "b/reset": ["reset", "reset"]})
    keys = ["b/slow", "b/err", "b/reset", "b/fine"]
    with capture_logs() as logs, _client(server, max_attempts=3) as heads:
        answers = list(heads.heads("trr-test", keys))
    assert [a["ETag"] if a else None for a in answers] == ['"e"'] * 4
    assert server.seen == {"b/slow": 3, "b/err": 2, "b/reset": 3, "b/fine": 1}
    retries = [e for e in logs if e["event"] == "s3_head_retry"]
    by_key = Counter((e["reason"].split(" ")[0]) for e in retries)
    # A reset on a connection that had answered before may be a kept-alive
    # connection S3 closed: sent again once without counting a try.
    assert by_key["503:"] == 2 and by_key["500:"] == 1 and 1 <= by_key["connection"] <= 2
    assert all(0 <= e["delay_seconds"] <= 0.01 * 2 ** (e["tries"] - 1) for e in retries)


def test_slow_down_halves_the_heads_in_flight_and_they_grow_back(faulty: Any) -> None:
    """An endpoint that answers 503 SlowDown whenever more than 8 HEADs are in flight, asked for 400 keys
    with 64 connections and 5 tries each (the default): the client halves what it keeps in flight on SlowDown (once per
    round), so every key is answered, with few 503s; once S3 stops slowing it down, the number in flight
    grows back towards s3.head_connections."""
    server = faulty({}, delay=0.01, slow_over=8)
    with capture_logs() as logs, _client(server, max_attempts=5, head_connections=64) as heads:
        answers = list(heads.heads("trr-test", [f"b/{i}" for i in range(400)]))
        assert len(answers) == 400 and all(answers)
        # Without easing off, 64 in flight against 8 allowed gets 7 of 8 requests refused each round,
        # and keys run out of tries: hundreds of 503s. Halving reaches 8 in three cuts.
        assert server.slowdowns < 200
        cuts = [e["in_flight_limit"] for e in logs if e["event"] == "s3_heads_slowed"]
        assert cuts[:2] == [32, 16] and 1 <= min(cuts) <= 8
        server.slow_over, server.peaks = None, []
        answers = list(heads.heads("trr-test", [f"c/{i}" for i in range(3000)]))
    assert len(answers) == 3000 and all(answers)
    assert max(server.peaks[:100]) <= 16 and max(server.peaks[-100:]) > 32


def _counting(server: _Faulty, **values: Any) -> tuple[HeadClient, list[str]]:
    """A HeadClient, and the HEADs its botocore client sends."""
    settings = _settings(server.endpoint, **values)
    client, sent = storage.make_client(settings), []
    client.meta.events.register("after-call.s3.HeadObject", lambda **kw: sent.append("x"))
    return HeadClient(client, settings, backoff_base_seconds=0.01), sent


def test_a_bucket_in_another_region_is_learnt_and_signed_for_natively(faulty: Any) -> None:
    """A bucket in eu-west-1 asked with a us-east-1 client: the first answers are 301s naming the region;
    the client learns it, signs for it from then on, and every key is answered without botocore, with at
    most one redirect per connection in flight when it learnt."""
    server = faulty({}, region="eu-west-1")
    heads, botocore_heads = _counting(server, max_attempts=1, head_connections=4)
    with capture_logs() as logs, heads:
        answers = list(heads.heads("trr-test", [f"b/{i}" for i in range(200)]))
    assert len(answers) == 200 and all(a and a["ETag"] == '"e"' for a in answers)
    assert botocore_heads == []
    assert server.signed_for["eu-west-1"] == 200 and 1 <= server.signed_for["us-east-1"] <= 4
    assert [(e["bucket"], e["region"]) for e in logs if e["event"] == "s3_bucket_region_learnt"] == [
        ("trr-test", "eu-west-1")]


def test_requests_queued_when_the_region_is_learnt_go_to_the_regions_endpoint(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the region's endpoint is another host (as on AWS, virtual-hosted), the bucket's queued requests
    follow the bucket there, signed for it: the old endpoint sees only the first round of requests."""
    old, new = faulty({}, region="eu-west-1"), faulty({}, region="eu-west-1")
    made = storage.make_client(_settings(new.endpoint, region="eu-west-1"))
    plain = regions.BucketClients.client_for
    monkeypatch.setattr(regions.BucketClients, "client_for",
                        lambda self, bucket: made if self.region_of(bucket) == "eu-west-1" else plain(self, bucket))
    heads, botocore_heads = _counting(old, max_attempts=1, head_connections=4)
    with heads:
        answers = list(heads.heads("trr-test", [f"b/{i}" for i in range(200)]))
    assert len(answers) == 200 and all(answers) and botocore_heads == []
    assert sum(old.seen.values()) <= 4 and old.signed_for == {"us-east-1": sum(old.seen.values())}
    assert new.signed_for == {"eu-west-1": 200}


def test_a_configured_bucket_region_is_signed_for_from_the_start(faulty: Any) -> None:
    """s3.bucket_regions names the bucket's region: not one request is redirected."""
    server = faulty({}, region="eu-west-1")
    with _client(server, max_attempts=1, bucket_regions={"trr-test": "eu-west-1"}) as heads:
        answers = list(heads.heads("trr-test", [f"b/{i}" for i in range(20)]))
    assert all(answers) and server.signed_for == {"eu-west-1": 20}


def test_a_bucket_redirected_again_once_signed_for_its_region_goes_to_botocore(faulty: Any) -> None:
    """A 301 for a request already signed for the region it names: botocore's region redirection takes
    that key (its request, the third, gets the answer)."""
    server = faulty({"b/moved": ["301", "301"]})
    heads, botocore_heads = _counting(server, max_attempts=1)
    with heads:
        answer = heads.head("trr-test", "b/moved")
    assert answer is not None and answer["ETag"] == '"e"' and answer["ContentType"] == "image/png"
    assert server.seen["b/moved"] == 3 and len(botocore_heads) == 1
    assert server.signed_for["eu-west-1"] >= 1


def test_gives_up_after_max_attempts_with_one_line(faulty: Any) -> None:
    """A key that keeps failing is tried s3.max_attempts times in all, then a one-line StorageError."""
    server = faulty({"b/down": ["503"] * 10})
    with _client(server, max_attempts=4) as heads, pytest.raises(StorageError) as failed:
        list(heads.heads("trr-test", ["b/ok", "b/down"]))
    assert str(failed.value) == "s3: head object (bucket trr-test): 503: Service Unavailable (after 4 tries)"
    assert server.seen["b/down"] == 4


def test_an_answer_that_never_comes_times_out_and_is_retried(faulty: Any) -> None:
    server = faulty({"b/hang": ["hang"]})
    with _client(server, max_attempts=2, read_timeout_seconds=0.3) as heads:
        assert heads.head("trr-test", "b/hang") is not None
    assert server.seen["b/hang"] == 2


def test_a_kept_alive_connection_closed_while_idle_costs_no_try(faulty: Any) -> None:
    """The server closes a connection after answering; the next HEAD, sent on it or on a new one, succeeds
    with one try allowed."""
    server = faulty({"b/first": ["close-after"]})
    with _client(server, max_attempts=1, head_connections=1) as heads:
        assert heads.head("trr-test", "b/first") is not None
        assert heads.head("trr-test", "b/second") is not None
    assert server.seen == {"b/first": 1, "b/second": 1}
    assert server.connections == 2


def test_many_heads_wait_at_once_on_kept_alive_connections(faulty: Any) -> None:
    """head_connections requests are in flight together, each connection reused for many."""
    server = faulty({}, delay=0.2)
    keys = [f"b/{i}" for i in range(200)]
    started = time.perf_counter()
    with _client(server, head_connections=50) as heads:
        answers = list(heads.heads("trr-test", keys))
    assert len(answers) == 200 and all(answers)
    assert time.perf_counter() - started < 200 * 0.2 / 10  # one at a time would take 40 s; 50 at once, ~0.8 s
    assert server.connections <= 50


def test_botocore_keeps_the_heads_of_a_client_something_intercepts(s3: Any) -> None:
    """A client whose requests a before-send handler answers (moto's mock here) keeps botocore's HEADs:
    native ones would go past it."""
    assert "intercepted" in str(storage_heads.native_possible(s3))
    with storage_heads.for_client(s3, S3Settings()) as native:
        assert native is None


def test_botocore_keeps_the_heads_behind_a_proxy_or_when_asked(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment, or s3.head_client = "botocore", keeps botocore's HEADs; else native."""
    settings = S3Settings()
    plain = storage.make_client(S3Settings(endpoint_url="http://127.0.0.1:9", addressing_style="path"))
    assert storage_heads.native_possible(plain) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert storage_heads.native_possible(plain) == "a proxy is configured"
    monkeypatch.delenv("HTTPS_PROXY")
    with storage_heads.for_client(plain, S3Settings(head_client="botocore")) as native:
        assert native is None
    with storage_heads.for_client(plain, settings) as native:
        assert isinstance(native, HeadClient)


# --- sync with native HEADs ----------------------------------------------------------


def test_sync_writes_the_rows_botocores_heads_would(s3_server: S3Server, db_url: str, conn: Any) -> None:
    """sync with the native HEADs (botocore makes no HEAD) writes exactly the rows it writes with
    botocore's: content type, owner id (valid, invalid, none), size, checksum, for odd keys."""
    from tests.support.postgres import make_show
    from tests.sync.helpers import rows
    from trr_assets import sync

    show = make_show(conn)
    for i, name in enumerate(["a.jpg", "with space+plus.png", "ünï/日本.gif", "q?h#.webp", "t~(x).jpg"]):
        owner = {0: "7c9e6679-7425-40de-944b-e07fc1f90ae7", 1: "not-a-uuid"}.get(i % 3)
        s3_server.client.put_object(Bucket=TEST_BUCKET, Key=f"shows/{show}/{name}", Body=b"x" * i,
                                    ContentType=f"image/t{i}", Metadata={"owner-id": owner} if owner else {})
    written = {}
    for head_client in ("native", "botocore"):
        settings = s3_server.settings(db_url, s3={"head_client": head_client, "list_shards": 2})
        client = storage.make_client(settings.s3)
        botocore_heads: list[str] = []
        client.meta.events.register("after-call.s3.HeadObject", lambda heads=botocore_heads, **kw: heads.append("x"))
        report = sync.run(settings, client=client)
        assert (report.inserted, report.failed) == (5, [])
        assert len(botocore_heads) == (0 if head_client == "native" else 5)
        written[head_client] = rows(conn)
        conn.execute("delete from core.show_assets")
        conn.execute("delete from trr_assets.delete_queue")
    assert written["native"] == written["botocore"]
    assert {r[3] for r in written["native"].values()} == {f"image/t{i}" for i in range(5)}


def _self_signed(tmp_path: Any) -> tuple[Any, str]:
    """A server TLS context for "localhost" and the path of its certificate (the client's CA bundle)."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


def test_heads_over_tls_verify_the_certificate_as_botocore_does(faulty: Any, tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS, the client's CA bundle (AWS_CA_BUNDLE here) vouches for the server: HEADs succeed; with
    the default bundle, the same server's certificate is refused, and that is a one-line StorageError."""
    context, cert = _self_signed(tmp_path)
    server = faulty({}, tls=context)
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    with _client(server, max_attempts=1) as heads:
        assert [a["ETag"] for a in heads.heads("trr-test", ["b/1", "b/2", "b/3"])] == ['"e"'] * 3
    monkeypatch.delenv("AWS_CA_BUNDLE")
    with _client(server, max_attempts=1) as heads, pytest.raises(StorageError, match="SSLCertVerificationError"):
        heads.head("trr-test", "b/1")
