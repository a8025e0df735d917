"""moto's S3 over HTTP on 127.0.0.1, for tests whose child processes (the CLI,
the worker) must share S3 with the test: in-process moto is not shared
across processes.

Fixtures: ``moto_endpoint`` (one server per session) and ``s3_server`` (that
server reset, with the test bucket, for one test). Helpers: ``MotoServer`` /
``moto_server`` (a server of a test's own, which it may stop and start),
``s3_client``, ``moto_auth`` (moto's IAM check on).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.s3 import TEST_BUCKET, make_settings
from trr_assets import storage
from trr_assets.config import S3Settings, Settings


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
        """Test settings (``make_settings``) pointed at this server."""
        s3 = {"endpoint_url": self.endpoint, "addressing_style": "path", **sections.pop("s3", {})}
        return make_settings(db_url, s3=s3, **sections)

    def keys(self, bucket: str = TEST_BUCKET) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", ())}

    def body(self, key: str, bucket: str = TEST_BUCKET) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def put(self, key: str, body: bytes = b"data", *, bucket: str = TEST_BUCKET) -> str:
        """PUT an object; return its ETag without quotes."""
        reply = self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
        return reply["ETag"].strip('"')  # type: ignore[no-any-return]


def _moto_api(endpoint: str, path: str, data: bytes = b"") -> None:
    request = urllib.request.Request(endpoint + path, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass


@pytest.fixture
def s3_server(moto_endpoint: str, aws_env: None) -> S3Server:
    """The session's moto server, emptied, with the test bucket created."""
    _moto_api(moto_endpoint, "/moto-api/reset")
    client = s3_client(moto_endpoint)
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


class MotoServer:
    """moto's S3 server on 127.0.0.1; can be stopped and started again on its port.

    The objects live in this process (moto's backends), so they outlast a restart.
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server of one test on a free 127.0.0.1 port; yields its endpoint URL."""
    server = MotoServer()
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    """A client of the product's own making (``storage.make_client``) for ``endpoint``."""
    return storage.make_client(S3Settings(endpoint_url=endpoint, addressing_style="path"))
