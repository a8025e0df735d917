"""SigV4 for S3, byte for byte what botocore makes, much faster.

Two ways to sign one request, sharing everything but the last step:
``QuerySigner.sign``, a presigned URL (botocore's ``generate_presigned_url``),
and ``HeaderSigner.sign``, the headers of a request with no body (a HEAD or
a GET), ``Authorization`` included, as botocore's client sends them.

botocore spends most of a signature resolving the endpoint (~0.4 ms per
presigned URL). A signer asks a botocore client once per bucket where the
bucket lives (URL prefix, host, signing region) and then signs each request
itself with a per-day signing key. The client and its credentials still come
from boto3 (``storage.make_client``), so profiles, roles and refreshing
credentials keep working. tests/presign/test_presign_sigv4.py (URLs) and
tests/presign/test_sigv4.py (headers) hold the signers to botocore's bytes.

Importing it loads no botocore (``storage.wrapping`` is loaded on first use).
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

from trr_assets.errors import StorageError

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest

    from trr_assets.storage import S3Client

__all__ = [
    "ALGORITHM", "EMPTY_SHA256", "UNSIGNED_PAYLOAD", "Endpoint", "HeaderSigner", "QuerySigner", "SigningKey",
    "canonical_request",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the payload hash of a request with no body
_QUERY_SAFE = "-_.~"  # botocore's percent_encode: everything else is escaped
_KEY_SAFE = "/~"  # botocore's greedy {Key+} label
_SENTINEL_KEY = "k"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one bucket's objects live, as botocore resolved it."""

    base: str  # scheme://netloc/path-prefix: the URL up to the encoded key
    path: str  # the path prefix alone; the canonical URI is path + encoded key
    host: str  # the host header botocore signs (lowercase, no default port)
    region: str  # the signing region
    host_header: str  # "host:<host>\n", the canonical headers' last line


@dataclass(frozen=True, slots=True)
class SigningKey:
    """What one set of credentials signs with on one day in one region.

    Holds the per-day signing key as the two SHA-256 states HMAC starts from
    (key XOR ipad, key XOR opad), so a signature costs two hash copies and no
    key derivation; and the credential and token, raw and query-encoded.
    """

    scope: str  # day/region/s3/aws4_request
    access_key: str
    token: str | None  # the session token as is (X-Amz-Security-Token header)
    credential: str  # X-Amz-Credential, percent-encoded
    query_token: str | None  # X-Amz-Security-Token, percent-encoded
    inner: Any
    outer: Any

    @classmethod
    def derive(cls, access_key: str, secret_key: str, token: str | None, *, day: str, region: str) -> SigningKey:
        key = hmac.digest(("AWS4" + secret_key).encode(), day.encode(), "sha256")
        for part in (region, "s3", "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        block = key.ljust(64, b"\0")  # SHA-256's block size; a 32-byte key is padded, never hashed
        scope = f"{day}/{region}/s3/aws4_request"
        return cls(
            scope=scope,
            access_key=access_key,
            token=token,
            credential=quote(f"{access_key}/{scope}", safe=_QUERY_SAFE),
            query_token=None if token is None else quote(token, safe=_QUERY_SAFE),
            inner=hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            outer=hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        )

    def signature(self, amz_date: str, canonical: str) -> str:
        """The hex signature of a canonical request made at ``amz_date``."""
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        inner = self.inner.copy()
        inner.update(f"{ALGORITHM}\n{amz_date}\n{self.scope}\n{digest}".encode())
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def canonical_request(
    method: str, uri: str, query: str, headers: str, signed_headers: str, payload_hash: str
) -> str:
    """The SigV4 canonical request. ``headers`` are the canonical header lines,
    sorted, each ending in a newline; ``signed_headers`` their names joined by ``;``."""
    return f"{method}\n{uri}\n{query}\n{headers}\n{signed_headers}\n{payload_hash}"


def host_from_url(url: str) -> str:
    """The host header value botocore signs: lowercase, default port dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def encode_key(key: str) -> str:
    """An object key as it stands in the URL path and the canonical URI."""
    return quote(key, safe=_KEY_SAFE)


class _FrozenCredentials(Protocol):  # botocore's ReadOnlyCredentials
    access_key: str
    secret_key: str
    token: str | None


class _Credentials(Protocol):  # botocore's, static or refreshing
    def get_frozen_credentials(self) -> _FrozenCredentials: ...


class _RequestSigner(Protocol):
    _credentials: _Credentials | None


class _SigningClient(Protocol):
    """What the signers read of a botocore client that its stubs leave out."""

    _request_signer: _RequestSigner


class _Signer(abc.ABC):
    """What both signers share: endpoints per bucket, credentials, signing keys.

    ``client`` is a SigV4 botocore S3 client (``storage.make_client``); its
    credentials sign everything. ``client_for_bucket``, when given, names the
    client whose endpoint and region a bucket's requests use (a client made
    for the bucket's own region); else ``client`` serves every bucket. Each
    bucket is resolved once. Credentials are read again at most every
    ``credentials_ttl`` seconds (refreshable credentials refresh well before
    they expire, so a short cache never signs with dead keys). Thread-safe.
    """

    _MAX_CACHED = 256

    def __init__(
        self,
        client: S3Client,
        *,
        credentials_ttl: float = 1.0,
        client_for_bucket: Callable[[str], S3Client] | None = None,
    ) -> None:
        self._client = client
        self._client_for_bucket = client_for_bucket
        self._credentials_ttl = credentials_ttl
        self._endpoints: dict[str, Endpoint] = {}
        self._keys: dict[tuple[tuple[str, str, str | None], str, str], SigningKey] = {}
        self._credentials_cache: tuple[float, tuple[str, str, str | None]] = (-math.inf, ("", "", None))
        self._amz_date_cache: tuple[int, str] = (-1, "")
        self._lock = threading.Lock()

    def endpoint(self, bucket: str) -> Endpoint:
        """Where ``bucket``'s objects live (resolved once, then cached)."""
        return self._endpoints.get(bucket) or self._resolve(bucket)

    def forget(self, bucket: str) -> None:
        """Resolve ``bucket`` again on its next request (it moved region)."""
        with self._lock:
            self._endpoints.pop(bucket, None)

    def _prepare(self, bucket: str, signed_at: int) -> tuple[Endpoint, str, SigningKey]:
        """(endpoint, X-Amz-Date, signing key) for a request to ``bucket`` at ``signed_at``."""
        endpoint = self._endpoints.get(bucket) or self._resolve(bucket)
        second, amz_date = self._amz_date_cache
        if second != signed_at:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
            self._amz_date_cache = (signed_at, amz_date)
        return endpoint, amz_date, self.signing_key(amz_date[:8], endpoint.region)

    def signing_key(self, day: str, region: str) -> SigningKey:
        """The signing key of the current credentials for one day (``YYYYMMDD``)
        and region, derived once and cached (both signers derive the same)."""
        # One read of the credentials per request: key id, secret and token match.
        credentials = self._credentials()
        cache_key = (credentials, day, region)
        signing = self._keys.get(cache_key)
        if signing is None:
            signing = SigningKey.derive(*credentials, day=day, region=region)
            if len(self._keys) >= self._MAX_CACHED:
                self._keys.clear()
            self._keys[cache_key] = signing
        return signing

    def _credentials(self) -> tuple[str, str, str | None]:
        """(access key, secret key, session token) from the client, cached briefly."""
        fetched_at, frozen = self._credentials_cache
        now = time.monotonic()
        if now - fetched_at < self._credentials_ttl:
            return frozen
        from trr_assets.storage.wrapping import wrap_errors  # botocore, loaded only when signing starts

        # The object the client itself signs with: static, or refreshing
        # (assumed roles, instance profiles, SSO), refreshed by botocore here.
        credentials = cast("_SigningClient", self._client)._request_signer._credentials
        if credentials is None:
            raise StorageError("s3: cannot sign: no AWS credentials found")
        with wrap_errors("read AWS credentials"):
            current = credentials.get_frozen_credentials()
        frozen = (current.access_key, current.secret_key, current.token)
        self._credentials_cache = (now, frozen)
        return frozen

    def _resolve(self, bucket: str) -> Endpoint:
        """Ask botocore once where ``bucket`` lives: URL prefix, host, region."""
        from trr_assets.storage.wrapping import wrap_errors

        client = self._client if self._client_for_bucket is None else self._client_for_bucket(bucket)
        with self._lock:
            endpoint = self._endpoints.get(bucket)
            if endpoint is not None:
                return endpoint
            with wrap_errors("sign", bucket):
                url, region = self._locate(client, bucket)
            parts = urlsplit(url)
            if region is None or not parts.path.endswith("/" + _SENTINEL_KEY):
                raise StorageError(f"s3: the client for bucket {bucket} does not sign with SigV4")
            path = parts.path[: -len(_SENTINEL_KEY)]
            host = host_from_url(url)
            endpoint = Endpoint(base=f"{parts.scheme}://{parts.netloc}{path}", path=path, host=host, region=region,
                                host_header=f"host:{host}\n")
            if len(self._endpoints) >= self._MAX_CACHED:
                self._endpoints.clear()
            self._endpoints[bucket] = endpoint
            return endpoint

    @abc.abstractmethod
    def _locate(self, client: S3Client, bucket: str) -> tuple[str, str | None]:
        """(URL of the object ``k`` in ``bucket``, signing region) as botocore
        makes them; no region when the client does not sign with SigV4."""


class QuerySigner(_Signer):
    """SigV4 presigned S3 URLs, byte-identical to botocore's ``generate_presigned_url``."""

    def _locate(self, client: S3Client, bucket: str) -> tuple[str, str | None]:
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": _SENTINEL_KEY}, ExpiresIn=1
        )
        query = dict(pair.partition("=")[::2] for pair in urlsplit(url).query.split("&"))
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            return url, None
        return url.partition("?")[0], unquote(query["X-Amz-Credential"]).split("/")[2]

    def sign(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        expires: int,
        signed_at: int,
        content_type: str | None = None,
        content_length: int | None = None,
    ) -> str:
        """The presigned URL: ``method`` is ``GET`` or ``PUT``, ``signed_at``
        the signing time in whole seconds since the epoch. A PUT may bind a
        content type and length: they become signed headers, and S3 refuses a
        request whose headers differ."""
        # _presign's steps written out (and canonical_request's below): the three
        # calls cost url_for_key 5 % (presign row: 263,300 URLs/s, 279,600 without).
        endpoint, amz_date, signing = self._prepare(bucket, signed_at)
        encoded_key = quote(key, safe=_KEY_SAFE)
        query, canonical = _presigned_request(
            method, endpoint, encoded_key, amz_date, signing, expires, content_type, content_length
        )
        return f"{endpoint.base}{encoded_key}?{query}&X-Amz-Signature={signing.signature(amz_date, canonical)}"

    def canonical_request(self, method: str, bucket: str, key: str, **options: Any) -> str:
        """The SigV4 canonical request ``sign`` signs for the same arguments
        (for inspection and tests)."""
        return self._presign(method, bucket, key, options["expires"], options["signed_at"],
                             options.get("content_type"), options.get("content_length"))[1]

    def _presign(
        self,
        method: str,
        bucket: str,
        key: str,
        expires: int,
        signed_at: int,
        content_type: str | None,
        content_length: int | None,
    ) -> tuple[str, str, str, SigningKey]:
        """(URL without its signature, canonical request, X-Amz-Date, signing key)."""
        endpoint, amz_date, signing = self._prepare(bucket, signed_at)
        encoded_key = encode_key(key)
        query, canonical = _presigned_request(
            method, endpoint, encoded_key, amz_date, signing, expires, content_type, content_length
        )
        return f"{endpoint.base}{encoded_key}?{query}", canonical, amz_date, signing


def _presigned_request(
    method: str,
    endpoint: Endpoint,
    encoded_key: str,
    amz_date: str,
    signing: SigningKey,
    expires: int,
    content_type: str | None,
    content_length: int | None,
) -> tuple[str, str]:
    """(URL query string, SigV4 canonical request), exactly as botocore makes them.

    botocore writes the URL's query in insertion order (the security token
    after the signed headers) but signs it sorted by name (the token before
    them); both orders are reproduced. Header values are trimmed and their
    inner runs of spaces squeezed, as SigV4 requires.
    """
    headers = endpoint.host_header
    signed_headers = "host"
    if content_type is not None:
        headers = f"content-type:{' '.join(content_type.split())}\n" + headers
        signed_headers = "content-type;" + signed_headers
    if content_length is not None:  # sorted by name: content-length < content-type < host
        headers = f"content-length:{int(content_length)}\n" + headers
        signed_headers = "content-length;" + signed_headers
    head = (
        f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={signing.credential}"
        f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires}"
    )
    signed_param = "X-Amz-SignedHeaders=" + signed_headers.replace(";", "%3B")
    if signing.query_token is None:
        query = canonical_query = f"{head}&{signed_param}"
    else:
        query = f"{head}&{signed_param}&X-Amz-Security-Token={signing.query_token}"
        canonical_query = f"{head}&X-Amz-Security-Token={signing.query_token}&{signed_param}"
    # canonical_request's f-string written out: see QuerySigner.sign.
    canonical = (f"{method}\n{endpoint.path}{encoded_key}\n{canonical_query}\n"
                 f"{headers}\n{signed_headers}\n{UNSIGNED_PAYLOAD}")
    return query, canonical


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request signed in its headers: send ``headers`` to ``url`` with ``method``."""

    method: str
    url: str
    headers: dict[str, str]


class _Captured(Exception):
    """A request stopped before it was sent: botocore built and signed it."""


_capturing = threading.local()
_CAPTURE_ID = "trr-assets-sigv4-capture"


def _stop_captured(request: AWSPreparedRequest, **_: Any) -> None:
    """before-send handler: in a thread that is locating a bucket, stop the
    request it just built (and hand it over); any other request goes on."""
    if getattr(_capturing, "active", False):
        raise _Captured(request)


class HeaderSigner(_Signer):
    """SigV4 header signing of S3 requests with no body, byte-identical to the
    ``Authorization`` and other signed headers botocore's client sends for a
    ``head_object`` of the same key.

    botocore signs ``host``, ``x-amz-content-sha256`` (the empty body's
    hash), ``x-amz-date`` and, with temporary credentials,
    ``x-amz-security-token``; what it adds after signing (user agent,
    ``amz-sdk-*``) is unsigned, so a caller may send its own.

    The endpoint is the one botocore sends requests to, not always the one
    it presigns for (``addressing_style = "auto"`` outside us-east-1): the
    client builds, signs and drops a HEAD of the sentinel key, once per bucket.
    """

    def _locate(self, client: S3Client, bucket: str) -> tuple[str, str | None]:
        client.meta.events.register_first("before-send.s3.HeadObject", _stop_captured, unique_id=_CAPTURE_ID)
        _capturing.active = True
        try:
            client.head_object(Bucket=bucket, Key=_SENTINEL_KEY)
        except _Captured as captured:
            request = captured.args[0]
        else:  # pragma: no cover - the handler always stops the request
            raise StorageError(f"s3: locating bucket {bucket} sent a request")
        finally:
            _capturing.active = False
        authorization = request.headers.get("Authorization", b"")
        if isinstance(authorization, bytes):
            authorization = authorization.decode()
        if not authorization.startswith(ALGORITHM + " Credential="):
            return request.url, None
        return request.url, authorization.split("Credential=", 1)[1].split("/")[2]

    def sign(self, method: str, bucket: str, key: str, *, signed_at: int) -> SignedRequest:
        """The URL and headers of ``method`` on ``bucket``/``key``, signed at
        ``signed_at`` (whole seconds since the epoch; S3 accepts a request
        signed within 15 minutes of its own clock)."""
        endpoint, amz_date, signing = self._prepare(bucket, signed_at)
        encoded_key = encode_key(key)
        lines = f"x-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{amz_date}\n"
        signed_headers = "host;x-amz-content-sha256;x-amz-date"
        if signing.token is not None:
            lines += f"x-amz-security-token:{' '.join(signing.token.split())}\n"
            signed_headers += ";x-amz-security-token"
        canonical = canonical_request(
            method, endpoint.path + encoded_key, "", endpoint.host_header + lines, signed_headers, EMPTY_SHA256
        )
        headers = {
            "X-Amz-Date": amz_date,
            "X-Amz-Content-SHA256": EMPTY_SHA256,
            "Authorization": (
                f"{ALGORITHM} Credential={signing.access_key}/{signing.scope}, "
                f"SignedHeaders={signed_headers}, Signature={signing.signature(amz_date, canonical)}"
            ),
        }
        if signing.token is not None:
            headers["X-Amz-Security-Token"] = signing.token
        return SignedRequest(method=method, url=endpoint.base + encoded_key, headers=headers)
