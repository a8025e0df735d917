"""S3: the one client factory, listings, and error wrapping.

Every boto3 client trr-assets uses is made by ``make_client``, so endpoint,
region, addressing style, retries, timeouts and signature version are decided
in one place. Credentials come the standard boto3 way (environment, profile,
instance role) and are never logged. Every botocore error that leaves this
package is wrapped by ``wrap_errors`` as ``StorageError`` (or
``BucketNotFound``) with a one-line message.
"""

from __future__ import annotations

import email.utils
import functools
import os
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypeVar, cast
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
from trr_assets.keys import KeyRange, exact_prefix, split_points

log = structlog.get_logger()

_RetryMode = Literal["standard", "adaptive", "legacy"]  # config checks the values
_AddressingStyle = Literal["auto", "path", "virtual"]

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


# An ObjectInfo built by tuple.__new__ in C (NamedTuple's own __new__ is a
# Python function): one per listed key.
object_info: Callable[[tuple[str, int, str, datetime]], ObjectInfo] = functools.partial(
    tuple.__new__, ObjectInfo  # type: ignore[arg-type]
)


def make_client(settings: S3Settings, *, max_pool_connections: int | None = None) -> Any:
    """A botocore S3 client configured from ``settings`` (SigV4, always).

    Thread-safe to use; creating one is not (boto3's default session is not),
    hence the lock. Its connection pool has room, by default, for a run's
    listings (``list_concurrency``, as many again for split shards, see
    ``ListingSplits``) and its HEAD requests at once.
    """
    if max_pool_connections is None:
        max_pool_connections = max(32, 2 * settings.list_concurrency + settings.head_concurrency)
    region = configured_region(settings)
    config = botocore.config.Config(
        signature_version="s3v4",
        region_name=region,
        # botocore's "max_attempts" counts retries only; s3.max_attempts
        # counts every try, the first included, which is "total_max_attempts".
        retries={"mode": cast(_RetryMode, settings.retry_mode), "total_max_attempts": settings.max_attempts},
        s3={"addressing_style": cast(_AddressingStyle, settings.addressing_style)},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_pool_connections=max_pool_connections,
    )
    with _session_lock:
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        session = boto3.session.Session(botocore_session=core, region_name=region)
        client = session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)
    _use_fast_listing_parser(client)
    return client


def configured_region(settings: S3Settings) -> str:
    """The region clients are made for: ``s3.region`` when set (the file, or
    ``TRR_ASSETS_S3_REGION``), else the boto3 way (``AWS_REGION``,
    ``AWS_DEFAULT_REGION``, the profile's ``region``), else us-east-1."""
    if settings.region:
        return settings.region
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    with _session_lock:
        # AWS_DEFAULT_REGION, else the region of AWS_PROFILE's (or the default) profile.
        region = botocore.session.get_session().get_config_variable("region")
    return str(region) if region else "us-east-1"


def bucket_region(client: Any, bucket: str) -> str:
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
        if not headers.get("x-amz-bucket-region") and error_code(exc) in _MISSING_BUCKET_CODES:
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


def parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser with fast paths for ISO 8601 and HTTP dates.

    Every object of a listing page carries its LastModified as ISO 8601;
    botocore parses it with dateutil, which is most of the cost of a page
    (measured: 102 ms for a 1,000-key page, 22 ms with this). Every HEAD
    answer carries one as an HTTP date (RFC 9110's IMF-fixdate, "Wed, 26
    Nov 2026 08:12:56 GMT"): 120 us with dateutil, 8 us here, out of a
    HEAD's one to two milliseconds of CPU. Anything else (other shapes,
    epoch numbers) goes to botocore's own parser.
    """
    if isinstance(value, str):
        if len(value) == 29 and value[3] == "," and value.endswith(" GMT"):
            try:
                return email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                pass
        else:
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
# (tests/storage/test_storage_listing.py checks it against botocore's own parser); it
# runs on the ``before-parse`` event, puts its result where botocore merges
# handler results, and hands botocore an empty page to parse. Anything it is
# not sure of (an error document, a truncated body, a repeated scalar, a shape
# it cannot compile) is left untouched for botocore, which then behaves
# exactly as without it.

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
    """One client's ``before-parse`` handler for listing answers
    (ListObjectsV2, ListObjectVersions).

    Registered for every S3 operation (``before-parse.s3.*``), because only a
    handler there can run before botocore's own; it lets the others pass.
    """

    def __init__(self, tables: dict[str, tuple[str, dict[str, _Member]]]) -> None:
        self._tables = tables  # operation name -> (root element, its table)

    def parse(self, body: bytes, operation: str = "ListObjectsV2") -> dict[str, Any] | None:
        """The page as botocore would parse it, or None when unsure."""
        root_name, table = self._tables[operation]
        try:
            root = ElementTree.fromstring(body)
            if _NAMESPACE.sub("", root.tag) != root_name:
                return None  # an error document, answered with 200
            return _parse_structure(root, table)
        except (_Unsure, ElementTree.ParseError, ValueError, TypeError):
            return None

    def __call__(self, operation_model: Any, response_dict: dict[str, Any],
                 customized_response_dict: dict[str, Any], **_: Any) -> None:
        body = response_dict.get("body")
        if operation_model.name not in self._tables or response_dict.get("status_code") != 200:
            return
        if not isinstance(body, bytes) or not body:
            return
        parsed = self.parse(body, operation_model.name)
        if parsed is not None:
            customized_response_dict.update(parsed)
            response_dict["body"] = _EMPTY_PAGES[operation_model.name]


# The listings parsed fast: operation name -> the root element of its answer.
_FAST_LISTINGS = {"ListObjectsV2": "ListBucketResult", "ListObjectVersions": "ListVersionsResult"}
_EMPTY_PAGES = {
    name: f'<{root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></{root}>'.encode()
    for name, root in _FAST_LISTINGS.items()
}


def _use_fast_listing_parser(client: Any) -> None:
    """Parse ``client``'s listing pages with ``_ListingParser`` (see above).

    It must run before botocore's check for errors hidden in a 200 answer,
    which parses the whole page again: that check is moved behind it, on this
    client only. Should botocore rename it, the check stays where it is and
    only the saving is lost.
    """
    tables = {}
    for name, root in _FAST_LISTINGS.items():
        shape = client.meta.service_model.operation_model(name).output_shape
        try:
            tables[name] = (root, _compile(shape, parse_timestamp))
        except _Unsure:
            continue
    if not tables:
        return
    events = client.meta.events
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is not None:
        events.unregister("before-parse.s3.*", check)
    events.register_first("before-parse.s3.*", _ListingParser(tables), unique_id="trr-assets-listing-parser")
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


def get_object_body(client: Any, bucket: str, key: str, *, action: str = "get object") -> Any:
    """An object's body, a stream to read (errors while reading it are the caller's to wrap)."""
    with wrap_errors(action, bucket):
        return client.get_object(Bucket=bucket, Key=key)["Body"]


def get_object_bytes(client: Any, bucket: str, key: str, *, action: str = "get object") -> bytes:
    """An object's whole body."""
    with wrap_errors(action, bucket):
        return get_object_body(client, bucket, key, action=action).read()  # type: ignore[no-any-return]


class ListingSplits:
    """How many listings a run may add by splitting shards (see ``list_objects``).

    Shared by every shard of a run: a shard splits only while a slot is free,
    so the requests in flight stay within the run's listings plus
    ``extra_listings``.
    """

    def __init__(self, *, extra_listings: int) -> None:
        self._slots = threading.Semaphore(max(0, extra_listings))

    def take(self) -> bool:
        return self._slots.acquire(blocking=False)

    def give_back(self) -> None:
        self._slots.release()


def list_objects(
    client: Any,
    bucket: str,
    *,
    prefix: str = "",
    start_at: str | None = None,
    stop_before: str | None = None,
    page_size: int = 1000,
    splits: ListingSplits | None = None,
) -> Iterator[ObjectInfo]:
    """The objects of ``bucket`` under ``prefix`` with ``start_at <= key < stop_before``.

    In S3's order (byte order of the UTF-8 key, which is code-point order of
    the Python string). A failed page raises ``StorageError``: a listing is
    never silently cut short.

    With ``splits``, a listing whose first page shows more than a page still
    to come lists the rest as parts of about a page each, at once, as many
    as there are free slots (``keys.split_points`` places the boundaries):
    the first part goes on here, each other one in a thread of its own, at
    most two pages ahead of use, yielded in order. A shard that holds more
    keys than its neighbours then takes no more round trips than they do.
    """
    prefix, start_at, stop_before = narrowed(prefix, start_at, stop_before)
    for page in _pages(client, bucket, prefix, start_at, stop_before, page_size, splits):
        yield from page


def narrowed(prefix: str, start_at: str | None, stop_before: str | None) -> tuple[str, str | None, str | None]:
    """A listing's (prefix, start_at, stop_before), with a range that is
    exactly the keys under a longer prefix turned into that prefix: S3 then
    stops at the range's end instead of a page running past it."""
    narrow = exact_prefix(KeyRange(start_at, stop_before)) if start_at is not None else None
    if narrow is not None and narrow.startswith(prefix):
        return narrow, None, None
    return prefix, start_at, stop_before


def just_below(key: str) -> str:
    """A marker for an exclusive start (StartAfter, KeyMarker) that lists from
    ``key``: "shows/e" plus the highest code point sorts after every real key
    under "shows/e", so S3 does not send those again; any key beyond it but
    below ``key`` is cut by ``clip``."""
    return key[:-1] + chr(ord(key[-1]) - 1) + "\U0010ffff"


_Keyed = TypeVar("_Keyed", bound=tuple[Any, ...])


def clip(items: list[_Keyed], start_at: str | None, stop_before: str | None) -> tuple[list[_Keyed], bool]:
    """A page's items (key first, in key order) cut to ``start_at <= key <
    stop_before``, and whether the range ended within the page. Only a
    page's ends can be out of range: the common page is left as it is."""
    if start_at is not None and items and items[0][0] < start_at:
        items = [i for i in items if i[0] >= start_at]
    if stop_before is not None and items and items[-1][0] >= stop_before:
        return [i for i in items if i[0] < stop_before], True
    return items, False


def _pages(
    client: Any,
    bucket: str,
    prefix: str,
    start_at: str | None,
    stop_before: str | None,
    page_size: int,
    splits: ListingSplits | None,
    token: str | None = None,
) -> Generator[list[ObjectInfo], None, None]:
    """``list_objects``, a page at a time; ``token`` continues a listing."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if token is not None:
        params["ContinuationToken"] = token
    elif start_at is not None and start_at > prefix:
        # StartAfter is exclusive: start just below start_at (see just_below).
        params["StartAfter"] = just_below(start_at)
    # Only a new listing's first page may split it. Later pages add little
    # to the estimate, and a part split off splits only on its own first
    # page, so a wrong guess (keys bunched where the page did not show it)
    # costs a few requests once, not a few per page.
    may_split = splits is not None and token is None
    while True:
        with wrap_errors("list objects", bucket):
            page = client.list_objects_v2(**params)
        contents = page.get("Contents", ())
        # One comprehension for the page (botocore gives Size as an int);
        # keys out of the range, at most the ends of a page, are cut after.
        objects = [
            object_info((item["Key"], item["Size"], strip_etag(item.get("ETag")), item["LastModified"]))
            for item in contents
        ]
        objects, ended = clip(objects, start_at, stop_before)
        if objects:
            yield objects
        if ended or not page.get("IsTruncated"):
            return
        token = params["ContinuationToken"] = page["NextContinuationToken"]
        params.pop("StartAfter", None)
        if may_split and splits is not None and contents:
            bounds = _split(splits, contents, stop_before, prefix, page_size)
            if bounds:
                yield from _split_listing(client, bucket, prefix, stop_before, page_size, splits, token, bounds)
                return
        may_split = False


_MOST_PARTS = 64  # a listing split at once into at most this many parts, plus its own


def _split(splits: ListingSplits, contents: Any, stop_before: str | None, prefix: str, page_size: int) -> list[str]:
    """Boundaries for what is left after ``contents``, a split slot taken for each."""
    estimate = functools.partial(split_points, contents[0]["Key"], contents[-1]["Key"], stop_before, prefix,
                                 listed=len(contents), page_size=page_size)
    wanted = len(estimate(most=_MOST_PARTS))
    taken = 0
    while taken < wanted and splits.take():
        taken += 1
    bounds = estimate(most=taken) if taken else []
    for _ in range(taken - len(bounds)):
        splits.give_back()
    return bounds


def _split_listing(
    client: Any,
    bucket: str,
    prefix: str,
    stop_before: str | None,
    page_size: int,
    splits: ListingSplits,
    token: str,
    bounds: list[str],
) -> Iterator[list[ObjectInfo]]:
    """What is left of a listing, cut at ``bounds``: the first part goes on
    from ``token`` here; the others are fetched at once, ahead, a thread (and
    a slot, taken by ``_split``) each, and yielded in order after it."""
    ahead = [
        _Ahead(functools.partial(_pages, client, bucket, prefix, start, stop, page_size, splits), splits).start()
        for start, stop in zip(bounds, [*bounds[1:], stop_before], strict=True)
    ]
    try:
        yield from _pages(client, bucket, prefix, None, bounds[0], page_size, splits, token)
        for part in ahead:
            yield from part
    finally:
        for part in ahead:
            part.close()


class _Ahead:
    """A listing's pages, fetched by a thread of their own ahead of use.

    At most ``_AHEAD`` pages wait: memory stays flat however far the reader
    lags. An error reaches the reader where the failed page would have been.
    The split slot is given back when the thread ends.
    """

    _AHEAD = 2

    def __init__(self, pages: Callable[[], Generator[list[ObjectInfo], None, None]], splits: ListingSplits) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self._AHEAD)
        self._closed = threading.Event()
        self._splits = splits
        self._thread = threading.Thread(target=self._fetch, args=(pages,), name="trr-list-ahead", daemon=True)

    def start(self) -> _Ahead:
        self._thread.start()
        return self

    def _fetch(self, pages: Callable[[], Generator[list[ObjectInfo], None, None]]) -> None:
        try:
            listing = pages()
            try:
                for page in listing:
                    if not self._put(("page", page)):
                        return
            finally:
                listing.close()  # and any listing it split off in turn
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self._put(("error", exc))
        finally:
            self._splits.give_back()

    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue ``item`` unless the reader has gone; False when it has."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list[ObjectInfo]]:
        while True:
            kind, value = self._queue.get()
            if kind == "page":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def close(self) -> None:
        """The reader is done (or gave up): the thread stops at its next page."""
        self._closed.set()


def check_bucket(client: Any, bucket: str) -> None:
    """Raise ``BucketNotFound`` unless ``bucket`` exists and is reachable."""
    with wrap_errors("check bucket", bucket):
        client.head_bucket(Bucket=bucket)
