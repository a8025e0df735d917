"""Presigned URLs for web servers: RLS-checked, batched, cache-friendly, fast.

The rows decide visibility: a URL is made only for an asset whose row exists
and, given a caller's JWT claims, only when Row Level Security lets that
caller select it. The check runs in the database the way PostgREST runs a
request: in one transaction, ``set local role`` to the claims' role and
``request.jwt.claims`` to the claims, select, end the transaction (which
resets both). The pool's connection user owns the tables and so bypasses
RLS; the role switch is what makes RLS apply. Without claims the caller is
the service itself.

The checks of what a caller hands in are beside this module: ``claims``
(the claims' role, ids) and ``uploads`` (content type, size, filename, and
the ``UploadGrant`` returned).

URLs are SigV4 query-signed by ``sigv4.QuerySigner`` rather than by
botocore (byte for byte the same URL, many times faster); the S3 client and
its credentials still come from boto3 (``storage.make_client``).

Importing this module is cheap: boto3, botocore, psycopg and psycopg_pool
are imported on first use, and the DB pool and the S3 client are made then,
once, and shared by every thread.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog

from trr_assets import logs
from trr_assets.config import SIGV4_MAX_EXPIRES_SECONDS, Settings, load_settings
from trr_assets.errors import (
    AssetNotFound,
    ConfigError,
    TrrAssetsError,
    UploadRefused,
)
from trr_assets.presign.claims import claims_json, claims_role, parse_uuid
from trr_assets.presign.uploads import UploadGrant, checked_content_type, checked_size, safe_filename
from trr_assets.sigv4 import QuerySigner

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from trr_assets.storage import S3Client
    from trr_assets.storage.regions import BucketClients

__all__ = [
    "AssetNotFound",
    "MAX_BATCH",
    "Presigner",
    "QuerySigner",
    "UploadGrant",
    "UploadRefused",
    "safe_filename",
    "signing_window",
]

log = structlog.get_logger()

MAX_BATCH = 1000  # ids per get_urls call

_METHODS = {"get": "GET", "put": "PUT", "GET": "GET", "PUT": "PUT"}


# --- signing time ------------------------------------------------------------


def signing_window(now: float, expires: int, window: int) -> tuple[int, int]:
    """(signing time, X-Amz-Expires) for a URL that must live ``expires`` seconds.

    With a cache window the signing time is ``now`` rounded down to a multiple
    of ``window``, and X-Amz-Expires is ``expires + window``: constant over
    the window, so every URL for one key made in the window is the same
    (browsers and CDNs can cache it), and it outlives ``now + expires``
    wherever ``now`` falls in the window. SigV4 caps X-Amz-Expires at 7 days,
    so the window shrinks to ``604800 - expires`` when needed (to nothing at
    ``expires = 604800``): the lifetime is never cut short.
    """
    second = int(now)
    window = min(window, SIGV4_MAX_EXPIRES_SECONDS - expires)
    if window <= 1:
        return second, expires
    return second - second % window, expires + window


# --- the presigner -------------------------------------------------------------


class Presigner:
    """Presigned URLs for the assets a caller may see, and uploads it may make.

    No I/O in the constructor: the DB pool and the S3 client are made on
    first use, once, and shared by all threads. ``close()`` (or ``with``)
    releases them.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        logs.quiet_unless_configured()  # a library prints nothing of its own accord
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._signer: QuerySigner | None = None
        self._client: S3Client | None = None
        self._buckets: BucketClients | None = None
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Presigner:
        """A presigner with the settings found as the CLI finds them."""
        return cls(load_settings(path))

    def __enter__(self) -> Presigner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool and the S3 client; the presigner cannot be used after."""
        with self._lock:
            self._closed = True
            pool, client, buckets = self._pool, self._client, self._buckets
            self._pool = self._signer = self._client = self._buckets = None
        if pool is not None:
            pool.close()
        if buckets is not None:
            buckets.close()
        if client is not None:
            client.close()

    # -- reading -------------------------------------------------------------

    def get_url(self, asset_id: str | uuid.UUID, claims: Mapping[str, Any] | None = None) -> str:
        """A presigned GET for one asset the caller may see.

        ``AssetNotFound`` when there is no such row, when RLS hides it from
        the caller, and also when the id is not a UUID or the claims name a
        role other than anon, authenticated or service_role: a web server maps
        the one exception to 404, and no URL ever leaves.
        """
        try:
            wanted = parse_uuid(asset_id, "asset id")
            if claims is not None:
                claims_role(claims)
        except ValueError as exc:
            raise AssetNotFound(f"no visible asset: {exc}") from None
        rows = self._select("presign_find_asset", {"id": wanted}, claims)
        if not rows:
            raise AssetNotFound(f"no visible asset with id {wanted}")
        _, bucket, key = rows[0]
        return self.url_for_key(bucket, key)

    def get_urls(
        self, asset_ids: Iterable[str | uuid.UUID], claims: Mapping[str, Any] | None = None
    ) -> dict[Any, str]:
        """Presigned GETs for the assets among ``asset_ids`` the caller may see.

        One query for up to 1,000 ids. Keyed by the ids as given (strings or
        UUIDs, in the order given); ids with no visible row are left out. A
        malformed id, more than 1,000 ids, or claims naming a role other than
        the API roles raise ``ValueError``.
        """
        if isinstance(asset_ids, (str, bytes)):
            raise ValueError("asset_ids must be a collection of ids, not one string")
        given = list(asset_ids)
        if len(given) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} asset ids per call, got {len(given)}")
        wanted = [(item, parse_uuid(item, "asset id")) for item in given]
        if claims is not None:
            claims_role(claims)
        if not wanted:
            return {}
        rows = self._select("presign_find_assets", {"ids": list({u for _, u in wanted})}, claims)
        # One signing time for the whole page: the URLs are consistent and the
        # per-URL work is the signature alone.
        signer, signed_at, x_expires = self._signing_now(None)
        urls = {asset: signer.sign("GET", bucket, key, expires=x_expires, signed_at=signed_at)
                for asset, bucket, key in rows}
        return {item: urls[u] for item, u in wanted if u in urls}

    def url_for_key(
        self,
        bucket: str,
        key: str,
        method: str = "get",
        expires: int | None = None,
        *,
        content_type: str | None = None,
        content_length: int | None = None,
    ) -> str:
        """A presigned URL for any object: no row, no RLS check. Service code only.

        ``method`` is ``get`` or ``put``; ``expires`` defaults to
        ``presign.expires_seconds`` and must be within 1..604800. A PUT may
        bind ``content_type`` and ``content_length`` (signed headers).
        """
        return self._sign(bucket, key, method, expires, content_type, content_length)[0]

    # -- uploads -------------------------------------------------------------

    def upload_url(
        self,
        *,
        show_id: str | uuid.UUID,
        filename: str,
        content_type: str,
        size_bytes: int,
        owner_id: str | uuid.UUID | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> UploadGrant:
        """Record a new asset row and return a presigned PUT for its object.

        The key is ``shows/{show_id}/{uuid}-{safe filename}``. The PUT's
        signature binds the content type and the length, so a client cannot
        upload anything else under it. Refused (``UploadRefused``, no row
        written): a size over ``presign.max_upload_bytes``, a content type
        outside ``presign.allowed_content_types``, a caller RLS does not let
        insert the row (with the shipped policies, anyone but the service
        role), a show that does not exist. Malformed arguments: ``ValueError``.
        """
        show = parse_uuid(show_id, "show_id")
        owner = None if owner_id is None else parse_uuid(owner_id, "owner_id")
        presign = self.settings.presign
        normalized_type = checked_content_type(content_type, presign.allowed_content_types)
        size = checked_size(size_bytes, presign.max_upload_bytes)
        if claims is not None:
            claims_role(claims)
        bucket = self._upload_bucket()
        key = f"shows/{show}/{uuid.uuid4()}-{safe_filename(filename)}"
        # Sign before writing: if signing fails (no credentials), no row is
        # left behind. The URL leaves only once the row is committed, so the
        # object can never exist without its row.
        url, expires_at = self._sign(bucket, key, "put", None, normalized_type, size)
        asset_id = self._record_upload(
            {
                "show_id": show,
                "bucket": bucket,
                "key": key,
                "content_type": normalized_type,
                "size_bytes": size,
                "owner_id": owner,
            },
            claims,
        )
        log.info("presign_upload_recorded", asset_id=str(asset_id), bucket=bucket, key=key, size_bytes=size)
        return UploadGrant(
            asset_id=asset_id,
            bucket=bucket,
            key=key,
            url=url,
            headers={"Content-Type": normalized_type, "Content-Length": str(size)},
            expires_at=datetime.fromtimestamp(expires_at, timezone.utc),
        )

    def _upload_bucket(self) -> str:
        bucket = self.settings.presign.upload_bucket or next(iter(self.settings.s3.buckets), "")
        if not bucket:
            raise ConfigError("config: presign.upload_bucket is empty and s3.buckets lists no bucket")
        return bucket

    def _record_upload(self, row: dict[str, Any], claims: Mapping[str, Any] | None) -> uuid.UUID:
        import psycopg

        from trr_assets import db

        try:
            with db.wrap_errors("presign: record the upload"):
                with self._connection_pool().connection() as conn, conn.transaction():
                    if claims is not None:
                        self._act_as(conn, claims)
                    inserted = conn.execute(db.query("presign_record_upload"), row).fetchone()
        except TrrAssetsError as exc:
            cause = exc.__cause__
            if isinstance(cause, psycopg.errors.InsufficientPrivilege):
                reason = f"upload refused: the caller may not add assets to show {row['show_id']}"
            elif isinstance(cause, psycopg.errors.ForeignKeyViolation):
                reason = f"upload refused: no show {row['show_id']}"
            elif claims is not None and isinstance(cause, psycopg.DataError):
                reason = "upload refused: the database rejected the caller's claims"
            else:
                raise
            log.info("presign_upload_refused", reason=reason)
            raise UploadRefused(reason) from exc
        assert inserted is not None
        return inserted[0]

    # -- internals -----------------------------------------------------------

    def _sign(
        self,
        bucket: str,
        key: str,
        method: str,
        expires: int | None,
        content_type: str | None,
        content_length: int | None,
    ) -> tuple[str, int]:
        """(URL, the second it expires)."""
        verb = _METHODS.get(method) if type(method) is str else None
        if verb is None:
            raise ValueError(f"method must be get or put, got {method!r}")
        if verb == "GET" and (content_type is not None or content_length is not None):
            raise ValueError("content_type and content_length bind PUT requests only")
        if type(bucket) is not str or type(key) is not str or not bucket or not key:
            raise ValueError("bucket and key must be non-empty strings")
        signer, signed_at, x_expires = self._signing_now(expires)
        url = signer.sign(
            verb,
            bucket,
            key,
            expires=x_expires,
            signed_at=signed_at,
            content_type=content_type,
            content_length=content_length,
        )
        return url, signed_at + x_expires

    def _signing_now(self, expires: int | None) -> tuple[QuerySigner, int, int]:
        """(signer, signing time, X-Amz-Expires) for URLs made now."""
        lifetime = self.settings.presign.expires_seconds if expires is None else expires
        if type(lifetime) is not int or not 1 <= lifetime <= SIGV4_MAX_EXPIRES_SECONDS:
            raise ValueError(f"expires must be a whole number of seconds from 1 to {SIGV4_MAX_EXPIRES_SECONDS}")
        signed_at, x_expires = signing_window(self._clock(), lifetime, self.settings.presign.cache_window_seconds)
        return self._signer or self._make_signer(), signed_at, x_expires

    def _select(self, query_name: str, params: dict[str, Any], claims: Mapping[str, Any] | None) -> list[Any]:
        import psycopg

        from trr_assets import db

        with db.wrap_errors("presign: look up assets"):
            with self._connection_pool().connection() as conn:
                if claims is None:
                    return conn.execute(db.query(query_name), params).fetchall()
                try:
                    with conn.transaction():
                        self._act_as(conn, claims)
                        return conn.execute(db.query(query_name), params).fetchall()
                except psycopg.DataError as exc:
                    # A claim the policies cannot read (a ``sub`` that is not
                    # a UUID makes auth.uid() fail) hides every row: the
                    # caller is nobody the policies know.
                    log.info("presign_claims_rejected", sqlstate=exc.sqlstate)
                    return []

    def _act_as(self, conn: psycopg.Connection[Any], claims: Mapping[str, Any]) -> None:
        """Within the open transaction, become the claims' caller as PostgREST
        does; both settings end with the transaction."""
        from psycopg import sql

        from trr_assets import db

        role = claims_role(claims)
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(db.query("presign_set_claims"), {"claims": claims_json(claims)})

    def _connection_pool(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            self._check_open()
            if self._pool is None:
                from trr_assets import db

                pool = db.make_pool(self.settings.database, name="trr-assets presign")
                db.probe(pool)  # a database that is down fails the first call at once, with the cause
                with db.wrap_errors("presign: open the connection pool"):
                    pool.open(wait=False)
                self._pool = pool
                log.debug("presign_pool_opened")
            return self._pool

    def _make_signer(self) -> QuerySigner:
        with self._lock:
            self._check_open()
            if self._signer is None:
                from trr_assets import storage
                from trr_assets.storage.regions import BucketClients

                # Each bucket's URLs are signed for the region it lives in.
                self._client = storage.make_client(self.settings.s3)
                self._buckets = BucketClients(self.settings.s3, self._client)
                self._signer = QuerySigner(self._client, client_for_bucket=self._buckets.client_for)
            return self._signer

    def _check_open(self) -> None:
        if self._closed:
            raise TrrAssetsError("presign: the presigner is closed")

    def locate(self, asset_id: uuid.UUID) -> tuple[str, str]:
        """(bucket, key) of an asset, as the service sees it (no RLS check;
        service code only). ``AssetNotFound`` when there is no such row."""
        rows = self._select("presign_find_asset", {"id": asset_id}, None)
        if not rows:
            raise AssetNotFound(f"no asset with id {asset_id}")
        return rows[0][1], rows[0][2]
