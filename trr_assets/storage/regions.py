"""Which region each bucket lives in, and an S3 client for that region.

A presigned URL (or a request signed outside botocore) must be signed for
the region its bucket lives in: S3 redirects a botocore API call made to the
wrong region, but it rejects a URL signed for the wrong one. The region of a
bucket is ``s3.bucket_regions[bucket]`` when the table names it, else asked
of S3 once (``storage.bucket_region``) and cached for the life of this
object. Buckets of the configured region use the main client; each other
region gets one client of its own, made like the main one.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import structlog

from trr_assets import storage
from trr_assets.config import S3Settings

log = structlog.get_logger()


class BucketClients:
    """Per-bucket regions and per-region clients. Thread-safe."""

    def __init__(self, settings: S3Settings, client: Any) -> None:
        self._settings = settings
        self._client = client
        self._default_region = storage.configured_region(settings)
        self._regions: dict[str, str] = dict(settings.bucket_regions)
        self._clients: dict[str, Any] = {self._default_region: client}
        self._lock = threading.Lock()

    def region_of(self, bucket: str) -> str:
        """The region ``bucket`` lives in (configured, else discovered once)."""
        region = self._regions.get(bucket)
        if region is not None:
            return region
        with self._lock:
            region = self._regions.get(bucket)
            if region is None:
                region = storage.bucket_region(self._client, bucket)
                log.info("bucket_region_discovered", bucket=bucket, region=region)
                self._regions[bucket] = region
        return region

    def client_for(self, bucket: str) -> Any:
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
