"""The presigner's own SigV4 signing against botocore, the oracle.

Every URL ``QuerySigner`` makes must be byte for byte the URL botocore's
``generate_presigned_url`` makes for the same client, key, method, expiry
and clock: both addressing styles, AWS and custom endpoints, GET and PUT
(content type and length signed), with and without a session token.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import botocore.credentials
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.s3 import static_aws_credentials
from trr_assets import storage
from trr_assets.config import S3Settings, settings_from_mapping
from trr_assets.errors import ConfigError
from trr_assets.presign import Presigner, signing_window
from trr_assets.sigv4 import QuerySigner

# (endpoint_url, addressing_style, region): AWS and custom endpoints, both styles.
ENDPOINTS = [
    ("", "virtual", "us-east-1"),
    ("", "path", "eu-west-1"),
    ("", "auto", "eu-central-1"),
    ("http://127.0.0.1:9000", "path", "us-east-1"),
    ("https://minio.example.com", "virtual", "us-east-1"),
    ("https://r2.example.com:8443/prefix", "path", "auto-region-1"),
]
BUCKETS = ["trr-assets", "trr.assets.dotted"]
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDO+k3y/Ab=c+d%e~f&g"
CONTENT_TYPES = ["image/png", "video/mp4", "image/svg+xml", "application/octet-stream", "image/x-icon"]
# Characters keys are made of: the troublesome ASCII, spaces, runs of
# slashes, unicode from several planes, controls and invisible formatting.
KEY_PIECES = [
    *"abcXYZ019-_.",
    " ", "  ", "+", "~", "%", "%2F", "/", "//", "?", "#", "=", "&", ";", ":", "@", "$", ",", "!", "'",
    "(", ")", "*", "[", "]", "{", "}", '"', "<", ">", "^", "`", "|", "\\",
    "ü", "é", "ß", "漢字", "😀", "\u00a0", "\u200b", "\u202e", "\t", "\n", "\x7f", "..", "./",
]


def _frozen(when: dt.datetime) -> Any:
    """botocore's clock stopped at ``when`` (naive UTC, as botocore keeps it)."""
    return mock.patch.object(botocore.auth, "get_current_datetime", return_value=when)


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[tuple[int, bool], Any]]:
    """A client from storage.make_client per endpoint, with and without a session token."""
    made: dict[tuple[int, bool], Any] = {}
    with pytest.MonkeyPatch.context() as env:
        static_aws_credentials(env)
        for with_token in (False, True):
            if with_token:
                env.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
            for index, (endpoint, style, region) in enumerate(ENDPOINTS):
                s3 = S3Settings(endpoint_url=endpoint, addressing_style=style, region=region)
                made[(index, with_token)] = storage.make_client(s3)
    yield made


def _random_key(rng: random.Random) -> str:
    while True:
        key = "".join(rng.choice(KEY_PIECES) for _ in range(rng.randint(1, 40)))
        if rng.random() < 0.5:
            key = f"shows/{rng.getrandbits(128):032x}/{key}"
        if len(key.encode()) <= 1024:
            return key


def _botocore_url(
    client: Any, method: str, bucket: str, key: str, expires: int, put_headers: tuple[str, int] | None
) -> str:
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if put_headers is not None:
        params["ContentType"], params["ContentLength"] = put_headers
    operation = "put_object" if method == "PUT" else "get_object"
    return client.generate_presigned_url(operation, Params=params, ExpiresIn=expires)


def _assert_same_url(client: Any, signer: QuerySigner, method: str, bucket: str, key: str, expires: int,
                     when: dt.datetime, put_headers: tuple[str, int] | None) -> None:
    with _frozen(when):
        expected = _botocore_url(client, method, bucket, key, expires, put_headers)
    content_type, content_length = put_headers if put_headers else (None, None)
    got = signer.sign(
        method, bucket, key, expires=expires, signed_at=calendar.timegm(when.timetuple()),
        content_type=content_type, content_length=content_length,
    )
    assert got == expected, f"key {key!r}"


def test_urls_are_byte_identical_to_botocore_over_thousands_of_random_keys(clients):
    """4,000 seeded random keys over every endpoint, style, method and token variant: same bytes as botocore."""
    rng = random.Random(20241126)
    signers = {variant: QuerySigner(client) for variant, client in clients.items()}
    variants = sorted(clients)
    methods_seen = set()
    for n in range(4000):
        variant = variants[n % len(variants)]
        method = "PUT" if (n // len(variants)) % 2 else "GET"
        put_headers = (rng.choice(CONTENT_TYPES), rng.randint(0, 5 * 1024**3)) if method == "PUT" else None
        # Any second from 2000 to 2037: every day boundary and signing key is fair game.
        when = dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rng.randint(0, 37 * 365 * 86400))
        _assert_same_url(
            clients[variant], signers[variant], method, rng.choice(BUCKETS), _random_key(rng),
            rng.randint(1, 604800), when, put_headers,
        )
        methods_seen.add((variant, method))
    assert len(methods_seen) == 2 * len(variants)


@settings(max_examples=400, deadline=None)
@given(
    key=st.text(min_size=1, max_size=120).filter(lambda k: len(k.encode()) <= 1024),
    variant=st.sampled_from([(i, t) for i in range(len(ENDPOINTS)) for t in (False, True)]),
    bucket=st.sampled_from(BUCKETS),
    put=st.one_of(st.none(), st.tuples(st.sampled_from(CONTENT_TYPES), st.integers(0, 5 * 1024**3))),
    expires=st.integers(1, 604800),
    when=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
)
def test_urls_are_byte_identical_to_botocore_for_any_unicode_key(clients, key, variant, bucket, put, expires, when):
    """Hypothesis' keys (any unicode text) sign exactly as botocore signs them."""
    when = when.replace(microsecond=0)
    signer = QuerySigner(clients[variant])
    _assert_same_url(clients[variant], signer, "PUT" if put else "GET", bucket, key, expires, when, put)


def _botocore_canonical_request(client: Any, **params: Any) -> str:
    """The canonical request botocore signs for a presigned put_object."""
    seen: list[str] = []
    original = botocore.auth.SigV4Auth.canonical_request

    def record(self: Any, request: Any) -> str:
        seen.append(original(self, request))
        return seen[-1]

    with mock.patch.object(botocore.auth.SigV4Auth, "canonical_request", record):
        client.generate_presigned_url("put_object", Params=params, ExpiresIn=900)
    return seen[-1]


def test_put_canonical_request_binds_content_type_and_length(clients):
    """A PUT signs content-length and content-type as headers (as botocore does); changing either changes the
    signature."""
    client = clients[(0, False)]
    signer = QuerySigner(client)
    when = dt.datetime(2024, 1, 2, 3, 4, 5)
    at = calendar.timegm(when.timetuple())
    common = {"expires": 900, "signed_at": at}
    with _frozen(when):
        oracle = _botocore_canonical_request(
            client, Bucket="trr-assets", Key="a b.png", ContentType="image/png", ContentLength=42
        )
    ours = signer.canonical_request(
        "PUT", "trr-assets", "a b.png", content_type="image/png", content_length=42, **common
    )
    assert ours == oracle
    lines = ours.split("\n")
    assert lines[0] == "PUT" and lines[1] == "/a%20b.png"
    assert "content-length:42" in lines and "content-type:image/png" in lines
    assert lines[-2] == "content-length;content-type;host"
    assert lines[-1] == "UNSIGNED-PAYLOAD"

    def signature(content_type: str, length: int) -> str:
        url = signer.sign("PUT", "trr-assets", "a b.png", content_type=content_type, content_length=length, **common)
        return parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]

    base = signature("image/png", 42)
    assert signature("image/jpeg", 42) != base
    assert signature("image/png", 43) != base
    assert signature("image/png", 42) == base


def test_get_canonical_request_signs_only_the_host(clients):
    """A GET signs the host header alone, with the key path as botocore encodes it."""
    signer = QuerySigner(clients[(3, False)])
    canonical = signer.canonical_request("GET", "trr-assets", "x+y~z/ü", expires=60, signed_at=1_700_000_000)
    lines = canonical.split("\n")
    assert lines[:2] == ["GET", "/trr-assets/x%2By~z/%C3%BC"]
    assert lines[3:] == ["host:127.0.0.1:9000", "", "host", "UNSIGNED-PAYLOAD"]


def test_refreshed_credentials_are_used_for_the_next_url(clients):
    """When the client's refreshable credentials rotate, the signer signs with the new ones (and still matches
    botocore)."""
    client = storage.make_client(S3Settings())
    generation = iter(range(1, 1000))

    def fetch() -> dict[str, str]:
        n = next(generation)
        # Already inside botocore's mandatory refresh window: every read refreshes.
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
        return {"access_key": f"AKIAROTATED{n:09d}", "secret_key": f"secret-{n}", "token": f"token-{n}",
                "expiry_time": expiry.isoformat()}

    client._request_signer._credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="test-rotation"
    )
    signer = QuerySigner(client, credentials_ttl=0)
    when = dt.datetime(2024, 6, 1, 12, 0, 0)
    first = signer.sign("GET", "trr-assets", "k.png", expires=60, signed_at=calendar.timegm(when.timetuple()))
    second = signer.sign("GET", "trr-assets", "k.png", expires=60, signed_at=calendar.timegm(when.timetuple()))
    first_key = parse_qs(urlsplit(first).query)["X-Amz-Credential"][0].split("/")[0]
    second_key = parse_qs(urlsplit(second).query)["X-Amz-Credential"][0].split("/")[0]
    assert first_key.startswith("AKIAROTATED") and second_key.startswith("AKIAROTATED")
    assert first_key != second_key
    # The signer and botocore read the same credentials object; with the
    # rotation pinned, their URLs agree.
    frozen = client._request_signer._credentials.get_frozen_credentials()
    pinned = botocore.credentials.Credentials(frozen.access_key, frozen.secret_key, frozen.token)
    client._request_signer._credentials = pinned
    _assert_same_url(client, QuerySigner(client), "GET", "trr-assets", "k.png", 60, when, None)


# --- expiry and the cache window ---------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    now=st.floats(min_value=946684800, max_value=4102444800, allow_nan=False),
    expires=st.integers(1, 604800),
    window=st.integers(0, 604800),
    later=st.floats(min_value=0, max_value=604800, allow_nan=False),
)
def test_signing_window_keeps_urls_alive_and_within_sigv4_limit(now, expires, window, later):
    """Rounded signing never shortens a URL below `expires`, never exceeds 7 days, and repeats within a window."""
    signed_at, x_expires = signing_window(now, expires, window)
    assert signed_at <= now
    assert 1 <= x_expires <= 604800
    assert signed_at + x_expires >= int(now) + expires
    again = signing_window(now + later, expires, window)
    effective = min(window, 604800 - expires)
    if effective > 1 and int(now + later) // effective == int(now) // effective:
        assert again == (signed_at, x_expires)
    if window == 0:
        assert (signed_at, x_expires) == (int(now), expires)


def _presigner(clock: Any, **presign: Any) -> Presigner:
    return Presigner(settings_from_mapping(
        {"s3": {"buckets": ["trr-assets"], "bucket_regions": {"trr-assets": "us-east-1"}}, "presign": presign}
    ), clock=clock)


def test_cache_window_makes_the_same_url_for_the_whole_window(aws_env):
    """With cache_window_seconds, URLs made anywhere in one window are identical; the next window's differ."""
    now = [1_700_000_123.5]
    with _presigner(lambda: now[0], expires_seconds=900, cache_window_seconds=3600) as presigner:
        first = presigner.url_for_key("trr-assets", "shows/a/b.png")
        now[0] = 1_700_000_123.5 + 1000
        assert presigner.url_for_key("trr-assets", "shows/a/b.png") == first
        query = parse_qs(urlsplit(first).query)
        window_start = 1_700_000_123 - 1_700_000_123 % 3600
        assert query["X-Amz-Date"] == [
            dt.datetime.fromtimestamp(window_start, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        ]
        assert query["X-Amz-Expires"] == ["4500"]
        now[0] = window_start + 3600
        assert presigner.url_for_key("trr-assets", "shows/a/b.png") != first


def test_without_cache_window_the_url_is_signed_now_for_expires_seconds(aws_env):
    """cache_window_seconds = 0: X-Amz-Date is now and X-Amz-Expires is presign.expires_seconds."""
    with _presigner(lambda: 1_700_000_123.9, expires_seconds=321) as presigner:
        query = parse_qs(urlsplit(presigner.url_for_key("trr-assets", "k")).query)
    assert query["X-Amz-Date"] == ["20231114T221523Z"]
    assert query["X-Amz-Expires"] == ["321"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


def test_expiry_outside_sigv4_bounds_is_refused(aws_env):
    """expires of 0, above 604800, or not a whole number raises ValueError; a bad config value is a ConfigError."""
    with _presigner(lambda: 1_700_000_000.0) as presigner:
        for bad in (0, -5, 604801, 1.5, True):
            with pytest.raises(ValueError, match="expires"):
                presigner.url_for_key("trr-assets", "k", expires=bad)
        query = parse_qs(urlsplit(presigner.url_for_key("trr-assets", "k", expires=604800)).query)
        assert query["X-Amz-Expires"] == ["604800"]
        with pytest.raises(ValueError, match="method"):
            presigner.url_for_key("trr-assets", "k", method="delete")
    with pytest.raises(ConfigError, match="presign.expires_seconds"):
        settings_from_mapping({"presign": {"expires_seconds": 604801}})


def test_get_urls_cannot_bind_headers(aws_env):
    """content_type/content_length are refused on a GET (they only mean something for a PUT)."""
    with _presigner(lambda: 1_700_000_000.0) as presigner:
        with pytest.raises(ValueError, match="PUT"):
            presigner.url_for_key("trr-assets", "k", content_type="image/png")


def test_importing_presign_is_cheap():
    """`import trr_assets.presign` loads no boto3, botocore, psycopg, psycopg_pool or apscheduler."""
    heavy = ["boto3", "botocore", "psycopg", "psycopg_pool", "apscheduler"]
    code = (
        "import sys, trr_assets.presign\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
