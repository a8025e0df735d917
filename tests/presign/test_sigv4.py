"""Header signing (``sigv4.HeaderSigner``) against botocore, the oracle.

For the same client, bucket, key, credentials and clock, the signer's URL and
signed headers (``Authorization`` above all) must be byte for byte what
botocore's client sends for a HEAD or GET of the object: every endpoint and
addressing style, any region, any key, with and without a session token.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator
from typing import Any
from unittest import mock

import botocore.auth
import botocore.credentials
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.s3 import static_aws_credentials
from trr_assets import storage
from trr_assets.config import S3Settings
from trr_assets.sigv4 import EMPTY_SHA256, HeaderSigner, QuerySigner

# (endpoint_url, addressing_style): AWS and custom endpoints, both styles.
ENDPOINTS = [
    ("", "virtual"),
    ("", "path"),
    ("", "auto"),
    ("http://127.0.0.1:9000", "path"),
    ("https://minio.example.com", "virtual"),
    ("https://r2.example.com:8443/prefix", "path"),
]
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2", "auto"]
SIGNED = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token")


class _Sent(Exception):
    """Raised from before-send: the request is captured, nothing goes out."""


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[tuple[int, str], Any]]:
    """A client from storage.make_client per endpoint and region."""
    made: dict[tuple[int, str], Any] = {}
    with pytest.MonkeyPatch.context() as env:
        static_aws_credentials(env)
        for index, (endpoint, style) in enumerate(ENDPOINTS):
            for region in REGIONS:
                client = storage.make_client(
                    S3Settings(endpoint_url=endpoint, addressing_style=style, region=region, max_attempts=1)
                )
                client.meta.events.register("before-send.s3", _capture)
                made[(index, region)] = client
    yield made


def _capture(request: Any, **_: Any) -> None:
    raise _Sent(request)


def _botocore_request(client: Any, bucket: str, key: str, when: dt.datetime) -> tuple[str, dict[str, str]]:
    """(URL, the signed headers) of the HEAD botocore's client would send."""
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when), pytest.raises(_Sent) as sent:
        client.head_object(Bucket=bucket, Key=key)
    request = sent.value.args[0]
    headers = {name: request.headers[name].decode() for name in SIGNED if name in request.headers}
    return request.url, headers


def _with_credentials(client: Any, access_key: str, secret_key: str, token: str | None) -> None:
    client._request_signer._credentials = botocore.credentials.Credentials(access_key, secret_key, token)


ACCESS_KEYS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=24)
SECRETS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=48)
# Session tokens as AWS makes them (base64 with / + =) and with the spaces a
# header value may carry, which SigV4 squeezes in the canonical request.
TOKENS = st.one_of(
    st.none(),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=400)
    .filter(lambda t: t.strip() != ""),
)
KEYS = st.text(min_size=1, max_size=120).filter(lambda k: len(k.encode()) <= 1024)


@settings(max_examples=400, deadline=None)
@given(
    variant=st.tuples(st.integers(0, len(ENDPOINTS) - 1), st.sampled_from(REGIONS)),
    bucket=st.sampled_from(["trr-assets", "trr.assets.dotted", "b12"]),
    key=KEYS,
    access_key=ACCESS_KEYS,
    secret_key=SECRETS,
    token=TOKENS,
    when=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
)
def test_signed_headers_are_byte_identical_to_botocore(clients, variant, bucket, key, access_key,
                                                       secret_key, token, when):
    """A HEAD of any key, with any credentials, token, endpoint and region: same URL and signed headers as botocore
    sends."""
    when = when.replace(microsecond=0)
    client = clients[variant]
    _with_credentials(client, access_key, secret_key, token)
    expected_url, expected_headers = _botocore_request(client, bucket, key, when)
    signed = HeaderSigner(client, credentials_ttl=0).sign(
        "HEAD", bucket, key, signed_at=calendar.timegm(when.timetuple())
    )
    assert signed.method == "HEAD"
    assert signed.url == expected_url
    assert signed.headers == expected_headers


def test_a_head_signs_the_host_the_empty_payload_the_date_and_the_token(clients):
    """The Authorization names its scope and signed headers as S3 expects them."""
    client = clients[(3, "eu-west-1")]
    _with_credentials(client, "AKIAEXAMPLE", "secret", "a-token")
    signer = HeaderSigner(client, credentials_ttl=0)
    signed = signer.sign("HEAD", "trr-assets", "shows/a b.png", signed_at=1_700_000_000)
    assert signed.url == "http://127.0.0.1:9000/trr-assets/shows/a%20b.png"
    assert signed.headers["X-Amz-Date"] == "20231114T221320Z"
    assert signed.headers["X-Amz-Content-SHA256"] == EMPTY_SHA256
    assert signed.headers["X-Amz-Security-Token"] == "a-token"
    assert signed.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20231114/eu-west-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
    )
    _with_credentials(client, "AKIAEXAMPLE", "secret", None)
    plain = HeaderSigner(client, credentials_ttl=0).sign("HEAD", "trr-assets", "k", signed_at=1_700_000_000)
    assert "X-Amz-Security-Token" not in plain.headers
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in plain.headers["Authorization"]


def test_both_signers_share_one_signing_key_and_endpoint(clients):
    """Query and header signing of one bucket resolve the same endpoint and derive the same key."""
    client = clients[(0, "eu-west-1")]
    _with_credentials(client, "AKIAEXAMPLE", "secret", None)
    query, header = QuerySigner(client, credentials_ttl=0), HeaderSigner(client, credentials_ttl=0)
    assert query.endpoint("trr-assets") == header.endpoint("trr-assets")
    assert query.endpoint("trr-assets").region == "eu-west-1"
    url = query.sign("GET", "trr-assets", "k", expires=60, signed_at=1_700_000_000)
    signed = header.sign("GET", "trr-assets", "k", signed_at=1_700_000_000)
    assert url.startswith(signed.url + "?")
    keys = [signer.signing_key("20231114", "eu-west-1") for signer in (query, header)]
    assert keys[0].scope == keys[1].scope == "20231114/eu-west-1/s3/aws4_request"
    assert keys[0].signature("20231114T221320Z", "x") == keys[1].signature("20231114T221320Z", "x")


def test_client_for_bucket_picks_each_buckets_endpoint_and_region(clients):
    """With client_for_bucket, each bucket is signed with its own client's endpoint and region."""
    by_bucket = {"east-bucket": clients[(0, "us-east-1")], "west-bucket": clients[(0, "eu-west-1")]}
    for client in by_bucket.values():
        _with_credentials(client, "AKIAEXAMPLE", "secret", None)
    signer = HeaderSigner(clients[(0, "us-east-1")], credentials_ttl=0, client_for_bucket=by_bucket.__getitem__)
    when = dt.datetime(2024, 5, 6, 7, 8, 9)
    for bucket, client in by_bucket.items():
        signed = signer.sign("HEAD", bucket, "k", signed_at=calendar.timegm(when.timetuple()))
        assert (signed.url, signed.headers) == _botocore_request(client, bucket, "k", when)
    assert signer.endpoint("west-bucket").region == "eu-west-1"
