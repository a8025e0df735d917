"""HTTP/1.1 pieces of the native HEAD client (``storage.heads``): a
response head read, a HEAD's answer shaped as botocore's ``head_object``
gives it, the reason phrase botocore reports for a bodiless error, and TLS
verified as the botocore client verifies it."""

from __future__ import annotations

import email.utils
import http
import ssl
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a test extra: annotations only
    from mypy_boto3_s3 import S3Client


class NotHttp(Exception):
    """A try failed in a way worth another (an answer that is not HTTP)."""


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, headers by lower-case name) of an HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise NotHttp(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.lower()] = value.strip()
    return int(parts[1]), headers


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


def http_date(value: str | None) -> datetime | None:
    """An HTTP date: IMF-fixdate ("Mon, 01 Jan 2024 00:00:00 GMT", what S3
    sends) by slicing, anything else by the email module; None if unreadable."""
    if not value:
        return None
    if len(value) == 29 and value[3:5] == ", " and value.endswith(" GMT") and value[8:11] in _MONTHS:
        try:
            return datetime(int(value[12:16]), _MONTHS[value[8:11]], int(value[5:7]), int(value[17:19]),
                            int(value[20:22]), int(value[23:25]), tzinfo=timezone.utc)
        except ValueError:
            pass
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def answer_of(headers: dict[str, str]) -> dict[str, Any]:
    """A 200 answer's headers as botocore's ``head_object`` gives them (the keys sync reads)."""
    metadata = {name[11:]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    answer: dict[str, Any] = {"Metadata": metadata}
    if "content-length" in headers:
        answer["ContentLength"] = int(headers["content-length"])
    if "etag" in headers:
        answer["ETag"] = headers["etag"]
    if "content-type" in headers:
        answer["ContentType"] = headers["content-type"]
    modified = http_date(headers.get("last-modified"))
    if modified is not None:
        answer["LastModified"] = modified
    return answer


def phrase(status: int) -> str:
    """The reason botocore gives for an error answer without a body (a HEAD's)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def ssl_context(client: S3Client) -> ssl.SSLContext:
    """Verify certificates as the botocore client does (its CA bundle, or not at all)."""
    verify: Any = True
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is not None:
        verify = getattr(session, "_verify", True)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        from botocore.httpsession import get_cert_path

        verify = get_cert_path(True)
    return ssl.create_default_context(cafile=verify)
