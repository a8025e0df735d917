"""S3: the one client factory, listings, and error wrapping.

Every boto3 client trr-assets uses is made by ``make_client``, so endpoint,
region, addressing style, retries, timeouts and signature version are decided
in one place. Credentials come the standard boto3 way (environment, profile,
instance role) and are never logged. Every botocore error that leaves this
package is wrapped by ``wrap_errors`` as ``StorageError`` (or
``BucketNotFound``) with a one-line message.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple
from xml.etree import ElementTree

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.session
import botocore.utils
import structlog

from trr_assets.config import S3Settings
from trr_assets.errors import BucketNotFound, StorageError
from trr_assets.keys import KeyRange, exact_prefix

log = structlog.get_logger()

_session_lock = threading.Lock()


class ObjectInfo(NamedTuple):
    """One listed object. ``etag`` is the ETag without its quotes.

    An immutable NamedTuple, not a frozen dataclass: one per listed key, and
    it is built four times faster (see ``diff``).
    """

    key: str
    size: int
    etag: str
    last_modified: datetime


def make_client(settings: S3Settings, *, max_pool_connections: int = 32) -> Any:
    """A botocore S3 client configured from ``settings`` (SigV4, always).

    Thread-safe to use; creating one is not (boto3's default session is not),
    hence the lock.
    """
    config = botocore.config.Config(
        signature_version="s3v4",
        region_name=settings.region,
        # botocore's "max_attempts" counts retries only; s3.max_attempts
        # counts every try, the first included, which is "total_max_attempts".
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=max_pool_connections,
    )
    with _session_lock:
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        session = boto3.session.Session(botocore_session=core, region_name=settings.region)
        client = session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)
    _use_fast_listing_parser(client)
    return client


def parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser with a fast path for ISO 8601.

    Every object of a listing page carries its LastModified as ISO 8601;
    botocore parses it with dateutil, which is most of the cost of a page
    (measured: 102 ms for a 1,000-key page, 22 ms with this). Anything else
    (HTTP dates in headers, epoch numbers) goes to botocore's own parser.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    return botocore.utils.parse_timestamp(value)


# Listing pages, parsed fast.
#
# botocore parses a 1,000-key ListObjectsV2 page twice: once whole, to see
# whether a 200 answer is an error document in disguise, then by walking the
# response shape node by node in Python (~25 ms of a page's ~35 ms of client
# CPU, measured). Sync and reconcile list from many threads under one
# interpreter lock, so that CPU is what bounds a sharded listing. The parser
# below is compiled from the same output shape and gives the same dict
# (tests/test_storage_listing.py checks it against botocore's own parser); it
# runs on the ``before-parse`` event, puts its result where botocore merges
# handler results, and hands botocore an empty page to parse. Anything it is
# not sure of (an error document, a truncated body, a repeated scalar, a shape
# it cannot compile) is left untouched for botocore, which then behaves
# exactly as without it.

_EMPTY_PAGE = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></ListBucketResult>'
_NAMESPACE = re.compile(r"\{.*\}")


class _Unsure(Exception):
    """The fast parser cannot vouch for botocore's answer: let botocore parse."""


def _scalar(type_name: str, timestamp: Callable[[str], Any]) -> Callable[[str | None], Any]:
    if type_name in ("string", "character"):
        return lambda text: text if text is not None else ""
    if type_name in ("integer", "long"):
        return lambda text: int(text if text is not None else "")
    if type_name == "boolean":
        return lambda text: text == "true"
    if type_name == "timestamp":
        return lambda text: timestamp(text if text is not None else "")
    raise _Unsure(type_name)


class _Member(NamedTuple):
    name: str
    convert: Callable[[str | None], Any] | None  # a scalar's converter; None for a structure
    fields: dict[str, _Member] | None  # a structure's members, by XML name
    repeated: bool  # a flattened list: one element per item


def _compile(shape: Any, timestamp: Callable[[str], Any]) -> dict[str, _Member]:
    """A structure's body members by XML element name (botocore's rules)."""
    table: dict[str, _Member] = {}
    for name, member in shape.members.items():
        where = member.serialization
        if where.get("location") or where.get("eventheader"):
            continue  # from the headers: botocore still parses those
        if where.get("xmlAttribute") or where.get("xmlNamespace"):
            raise _Unsure(name)
        repeated = member.type_name == "list"
        if repeated and not where.get("flattened"):
            raise _Unsure(name)
        item = member.member if repeated else member
        xml_name = (item.serialization.get("name") if repeated else None) or where.get("name") or name
        if item.type_name == "structure":
            table[xml_name] = _Member(name, None, _compile(item, timestamp), repeated)
        else:
            table[xml_name] = _Member(name, _scalar(item.type_name, timestamp), None, repeated)
    return table


_UNKNOWN = _Member("", None, None, False)  # an element the model does not know


def _member(table: dict[str, _Member], tag: str) -> _Member:
    """The member for an element's tag. The tag, namespace and all, is added
    to the table on first sight, so the namespace is stripped once, not per
    element."""
    member = table.get(tag)
    if member is None:
        member = table[tag] = table.get(_NAMESPACE.sub("", tag), _UNKNOWN)
    return member


def _parse_structure(node: ElementTree.Element, table: dict[str, _Member]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for child in node:
        member = table.get(child.tag) or _member(table, child.tag)
        if member is _UNKNOWN:
            continue  # botocore ignores such elements too
        if member.fields is None:
            value = member.convert(child.text)  # type: ignore[misc]
        else:
            value = _parse_structure(child, member.fields)
        if member.repeated:
            parsed.setdefault(member.name, []).append(value)
        elif member.name in parsed:
            raise _Unsure(member.name)  # botocore would turn a repeated scalar into a list
        else:
            parsed[member.name] = value
    return parsed


class _ListingParser:
    """One client's ``before-parse`` handler for ListObjectsV2 answers.

    Registered for every S3 operation (``before-parse.s3.*``), because only a
    handler there can run before botocore's own; it lets the others pass.
    """

    def __init__(self, table: dict[str, _Member]) -> None:
        self._table = table

    def parse(self, body: bytes) -> dict[str, Any] | None:
        """The page as botocore would parse it, or None when unsure."""
        try:
            root = ElementTree.fromstring(body)
            if _NAMESPACE.sub("", root.tag) != "ListBucketResult":
                return None  # an error document, answered with 200
            return _parse_structure(root, self._table)
        except (_Unsure, ElementTree.ParseError, ValueError, TypeError):
            return None

    def __call__(self, operation_model: Any, response_dict: dict[str, Any],
                 customized_response_dict: dict[str, Any], **_: Any) -> None:
        body = response_dict.get("body")
        if operation_model.name != "ListObjectsV2" or response_dict.get("status_code") != 200 or not isinstance(body, bytes) or not body:
            return
        parsed = self.parse(body)
        if parsed is not None:
            customized_response_dict.update(parsed)
            response_dict["body"] = _EMPTY_PAGE


def _use_fast_listing_parser(client: Any) -> None:
    """Parse ``client``'s listing pages with ``_ListingParser`` (see above).

    It must run before botocore's check for errors hidden in a 200 answer,
    which parses the whole page again: that check is moved behind it, on this
    client only. Should botocore rename it, the check stays where it is and
    only the saving is lost.
    """
    shape = client.meta.service_model.operation_model("ListObjectsV2").output_shape
    try:
        table = _compile(shape, parse_timestamp)
    except _Unsure:
        return
    events = client.meta.events
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is not None:
        events.unregister("before-parse.s3.*", check)
    events.register_first("before-parse.s3.*", _ListingParser(table), unique_id="trr-assets-listing-parser")
    if check is not None:
        events.register_first("before-parse.s3.*", check)


def strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


_MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@contextmanager
def wrap_errors(action: str, bucket: str | None = None) -> Iterator[None]:
    """Turn botocore errors into one-line ``StorageError`` / ``BucketNotFound``."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise wrapped(exc, action, bucket) from exc


def wrapped(exc: Exception, action: str, bucket: str | None = None) -> StorageError:
    """The one-line ``StorageError`` (or ``BucketNotFound``) for a botocore error."""
    where = f" (bucket {bucket})" if bucket else ""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in _MISSING_BUCKET_CODES and bucket and action.startswith(("list", "check bucket")):
            return BucketNotFound(f"s3: bucket {bucket} does not exist or is not visible")
        return StorageError(f"s3: {action}{where}: {code}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError(f"s3: {action}{where}: no AWS credentials found")
    # Some messages (parameter validation) hold the detail on the lines after
    # the first: keep them, on one line.
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return StorageError(f"s3: {action}{where}: {detail}")


_MISSING_OBJECT_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD one object: S3's answer, or None when the object does not exist.

    A plain try/except rather than ``wrap_errors``: sync HEADs every new
    object, and the context manager cost more than the rest of the call
    against an in-memory S3.
    """
    try:
        return client.head_object(Bucket=bucket, Key=key)  # type: ignore[no-any-return]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        if error_code(exc) in _MISSING_OBJECT_CODES:
            return None
        raise wrapped(exc, "head object", bucket) from exc


def list_objects(
    client: Any,
    bucket: str,
    *,
    prefix: str = "",
    start_at: str | None = None,
    stop_before: str | None = None,
    page_size: int = 1000,
) -> Iterator[ObjectInfo]:
    """The objects of ``bucket`` under ``prefix`` with ``start_at <= key < stop_before``.

    In S3's order (byte order of the UTF-8 key, which is code-point order of
    the Python string). A failed page raises ``StorageError``: a listing is
    never silently cut short.
    """
    narrow = exact_prefix(KeyRange(start_at, stop_before)) if start_at is not None else None
    if narrow is not None and narrow.startswith(prefix):
        # The range is exactly the keys under a longer prefix: list that, and
        # S3 stops at the range's end instead of a page running past it.
        prefix, start_at, stop_before = narrow, None, None
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if start_at is not None and start_at > prefix:
        # StartAfter is exclusive: start just below start_at. "shows/e" plus
        # the highest code point sorts after every real key under "shows/e",
        # so S3 does not send those again; any key beyond it but below
        # start_at is dropped below.
        params["StartAfter"] = start_at[:-1] + chr(ord(start_at[-1]) - 1) + "\U0010ffff"
    while True:
        with wrap_errors("list objects", bucket):
            page = client.list_objects_v2(**params)
        for item in page.get("Contents", ()):
            key = item["Key"]
            if start_at is not None and key < start_at:
                continue
            if stop_before is not None and key >= stop_before:
                return
            yield ObjectInfo(key, int(item["Size"]), strip_etag(item.get("ETag")), item["LastModified"])
        if not page.get("IsTruncated"):
            return
        params["ContinuationToken"] = page["NextContinuationToken"]
        params.pop("StartAfter", None)


def check_bucket(client: Any, bucket: str) -> None:
    """Raise ``BucketNotFound`` unless ``bucket`` exists and is reachable."""
    with wrap_errors("check bucket", bucket):
        client.head_bucket(Bucket=bucket)
