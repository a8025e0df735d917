"""Which region each bucket lives in, and an S3 client for that region.

A presigned URL (or a request signed outside botocore) must be signed for
the region its bucket lives in: S3 redirects a botocore API call made to the
wrong region, but it rejects a URL signed for the wrong one. The region of a
bucket is ``s3.bucket_regions[bucket]`` when the table names it, else asked
of S3 once (``bucket_region``) and cached for the life of this
object. Buckets of the configured region use the main client; each other
region gets one client of its own, made like the main one.
"""

from __future__ import annotations

import dataclasses
import threading

import botocore.exceptions
import structlog

from trr_assets import storage
from trr_assets.config import S3Settings
from trr_assets.errors import StorageError
from trr_assets.storage import S3Client
from trr_assets.storage.wrapping import MISSING_BUCKET_CODES, error_code, wrapped

log = structlog.get_logger()


def bucket_region(client: S3Client, bucket: str) -> str:
    """The region ``bucket`` lives in, asked of S3 with one cheap call.

    HeadBucket answers with the region in ``x-amz-bucket-region``, on success
    and on most refusals (403, a redirect from another region), whatever the
    endpoint's addressing style; where that header is missing (some
    S3-compatible stores), GetBucketLocation. A region that cannot be found
    is a one-line ``StorageError``.
    """
    what = f"s3: cannot find the region of bucket {bucket}"
    try:
        headers = client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
    except botocore.exceptions.ClientError as exc:
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if not headers.get("x-amz-bucket-region") and error_code(exc) in MISSING_BUCKET_CODES:
            raise StorageError(f"{what}: it does not exist or is not visible") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"{what}: {str(wrapped(exc, 'head bucket')).removeprefix('s3: ')}") from exc
    region = headers.get("x-amz-bucket-region")
    if region:
        return str(region)
    try:
        location = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise StorageError(f"{what}: {str(wrapped(exc, 'get bucket location')).removeprefix('s3: ')}") from exc
    # No constraint is us-east-1; "EU" is the old name of eu-west-1.
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, str(location))


class BucketClients:
    """Per-bucket regions and per-region clients. Thread-safe."""

    def __init__(self, settings: S3Settings, client: S3Client) -> None:
        self._settings = settings
        self._client = client
        # The client's own region (free to read; configured_region may read the AWS config files).
        self._default_region = client.meta.region_name or storage.configured_region(settings)
        self._regions: dict[str, str] = dict(settings.bucket_regions)
        self._clients: dict[str, S3Client] = {self._default_region: client}
        self._lock = threading.Lock()

    def region_of(self, bucket: str) -> str:
        """The region ``bucket`` lives in (configured, else discovered once)."""
        region = self._regions.get(bucket)
        if region is not None:
            return region
        with self._lock:
            region = self._regions.get(bucket)
            if region is None:
                region = bucket_region(self._client, bucket)
                log.info("bucket_region_discovered", bucket=bucket, region=region)
                self._regions[bucket] = region
        return region

    def learn(self, bucket: str, region: str) -> None:
        """Record where ``bucket`` lives, as S3 said in answer to a request."""
        with self._lock:
            self._regions[bucket] = region

    def client_if_known(self, bucket: str) -> S3Client:
        """The client of ``bucket``'s region if that is known (configured or
        learnt), else the main client: asks S3 nothing."""
        return self.client_for(bucket) if bucket in self._regions else self._client

    def client_for(self, bucket: str) -> S3Client:
        """The client whose region is ``bucket``'s."""
        region = self.region_of(bucket)
        client = self._clients.get(region)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = storage.make_client(dataclasses.replace(self._settings, region=region))
                self._clients[region] = client
        return client

    def close(self) -> None:
        """Close the clients made here (not the main client, which the caller owns)."""
        with self._lock:
            made = [c for c in self._clients.values() if c is not self._client]
            self._clients = {self._default_region: self._client}
        for client in made:
            client.close()
