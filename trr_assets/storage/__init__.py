"""S3: the one client factory, every S3 call trr-assets makes, and error wrapping.

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
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions
import botocore.session
import botocore.utils
import structlog

from trr_assets.config import S3Settings
from trr_assets.errors import BucketNotFound, StorageError
from trr_assets.keys import KeyRange, exact_prefix, split_points
from trr_assets.records import ObjectInfo, object_info
from trr_assets.storage import listing_parser

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a test extra: annotations only
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CopySourceTypeDef,
        DeleteObjectOutputTypeDef,
        DeleteObjectsOutputTypeDef,
        HeadObjectOutputTypeDef,
        ObjectIdentifierTypeDef,
    )
else:
    S3Client = Any

log = structlog.get_logger()

_RetryMode = Literal["standard", "adaptive", "legacy"]  # config checks the values
_AddressingStyle = Literal["auto", "path", "virtual"]

_session_lock = threading.Lock()


def make_client(settings: S3Settings, *, max_pool_connections: int | None = None) -> S3Client:
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
    listing_parser.install(client, parse_timestamp)
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


def head_object(client: S3Client, bucket: str, key: str) -> HeadObjectOutputTypeDef | None:
    """HEAD one object: S3's answer, or None when the object does not exist.

    A plain try/except rather than ``wrap_errors``: sync HEADs every new
    object, and the context manager cost more than the rest of the call
    against an in-memory S3.
    """
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        if error_code(exc) in _MISSING_OBJECT_CODES:
            return None
        raise wrapped(exc, "head object", bucket) from exc


# --- objects: read, copy, delete ----------------------------------------------

_SINGLE_COPY_LIMIT = 5 * 1024**3  # CopyObject's limit; larger objects need a multipart copy
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed"})


def get_object_body(client: S3Client, bucket: str, key: str, *, action: str = "get object") -> StreamingBody:
    """GET one object: its body, a stream (read it inside ``wrap_errors``: a
    read can fail too)."""
    with wrap_errors(action, bucket):
        return client.get_object(Bucket=bucket, Key=key)["Body"]


def get_object_bytes(client: S3Client, bucket: str, key: str, *, action: str = "get object") -> bytes:
    """GET one object: its whole body."""
    with wrap_errors(action, bucket):
        return get_object_body(client, bucket, key, action=action).read()


def copy_if_unchanged(client: S3Client, bucket: str, key: str, target: str, *, etag: str, size: int) -> bool:
    """Copy ``key`` to ``target`` in ``bucket`` if it still has ``etag``
    (metadata kept); False when it changed meanwhile."""
    source: CopySourceTypeDef = {"Bucket": bucket, "Key": key}
    try:
        with wrap_errors("copy object to quarantine", bucket):
            if size <= _SINGLE_COPY_LIMIT:
                client.copy_object(
                    Bucket=bucket, Key=target, CopySource=source,
                    CopySourceIfMatch=f'"{etag}"', MetadataDirective="COPY",
                )
            else:
                client.copy(source, bucket, target, ExtraArgs={"CopySourceIfMatch": f'"{etag}"'})
    except StorageError as exc:
        if error_code(exc.__cause__ or exc) in _PRECONDITION_CODES:
            return False
        raise
    return True


def delete_object(
    client: S3Client, bucket: str, key: str, *, version_id: str | None = None
) -> DeleteObjectOutputTypeDef:
    """DeleteObject: ``key`` (one version of it, with ``version_id``); S3's answer."""
    with wrap_errors("delete object", bucket):
        if version_id is None:
            return client.delete_object(Bucket=bucket, Key=key)
        return client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)


def delete_objects(
    client: S3Client, bucket: str, objects: Sequence[ObjectIdentifierTypeDef]
) -> DeleteObjectsOutputTypeDef:
    """One DeleteObjects request (``{"Key", "VersionId"?}`` each, at most
    1,000): S3's answer, ``Deleted`` and ``Errors``."""
    with wrap_errors("delete objects", bucket):
        return client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": False})


def object_versions(client: S3Client, bucket: str, key: str) -> Iterator[str]:
    """The version ids (delete markers included) of exactly ``key``."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        with wrap_errors("list object versions", bucket):
            page = client.list_object_versions(**params)
        for item in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]:
            if item["Key"] == key:
                yield item["VersionId"]
        # Listings are in key order and ``key`` sorts first among the keys it
        # prefixes: once the listing has moved past it, it is done.
        if not page.get("IsTruncated") or page.get("NextKeyMarker") != key:
            return
        params["KeyMarker"] = page["NextKeyMarker"]
        params["VersionIdMarker"] = page["NextVersionIdMarker"]


def put_object(client: S3Client, bucket: str, key: str, body: bytes, *, content_type: str) -> None:
    with wrap_errors("put object", bucket):
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def create_bucket(client: S3Client, bucket: str) -> None:
    with wrap_errors("create bucket", bucket):
        client.create_bucket(Bucket=bucket)


# --- listings --------------------------------------------------------------------


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
    client: S3Client,
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
    client: S3Client,
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
    client: S3Client,
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


def check_bucket(client: S3Client, bucket: str) -> None:
    """Raise ``BucketNotFound`` unless ``bucket`` exists and is reachable."""
    with wrap_errors("check bucket", bucket):
        client.head_bucket(Bucket=bucket)


# --- request metrics -----------------------------------------------------------

RequestObserver = Callable[[str, str, float], None]  # (operation, outcome, seconds)
_STARTED = "trr_assets_started"
_observers: weakref.WeakKeyDictionary[Any, RequestObserver] = weakref.WeakKeyDictionary()


def request_observer(client: Any) -> RequestObserver | None:
    """The observer ``observe_requests`` gave ``client``: requests that bypass
    botocore (``storage_heads``) report to it themselves."""
    return _observers.get(client)


def request_outcome(status: int | None) -> str:
    """One word for an S3 answer: ok, not_found, throttled, client_error,
    server_error, or network_error when none came."""
    if status is None:
        return "network_error"
    if status < 400:
        return "ok"
    if status == 404:
        return "not_found"
    if status in (429, 503):
        return "throttled"
    return "client_error" if status < 500 else "server_error"


def observe_requests(client: Any, observer: RequestObserver) -> None:
    """Call ``observer(operation, outcome, seconds)`` after every API call of ``client``.

    Hooked on botocore's events, so every call is seen, whoever makes it: one
    observation per call (its retries included), after its last answer, or
    with ``network_error`` when no answer came. The observer must not raise.
    """

    def started(context: dict[str, Any], **_: Any) -> None:
        context[_STARTED] = time.monotonic()

    def answered(model: Any, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        observer(model.name, request_outcome(http_response.status_code), _elapsed(context))

    def failed(context: dict[str, Any], event_name: str, **_: Any) -> None:
        # after-call-error.s3.<Operation>: the event's name is all that names the call
        observer(event_name.rsplit(".", 1)[-1], request_outcome(None), _elapsed(context))

    _observers[client] = observer
    events = client.meta.events
    events.register("before-call.s3", started, unique_id="trr-assets-metrics-start")
    events.register("after-call.s3", answered, unique_id="trr-assets-metrics-answer")
    events.register("after-call-error.s3", failed, unique_id="trr-assets-metrics-error")


def _elapsed(context: dict[str, Any]) -> float:
    start = context.get(_STARTED)
    return time.monotonic() - start if start is not None else 0.0


# --- bucket settings (doctor) ----------------------------------------------------


def bucket_versioning(client: Any, bucket: str) -> str:
    """"Enabled", "Suspended", or "" for a bucket that never had versioning."""
    with wrap_errors("read bucket versioning", bucket):
        return str(client.get_bucket_versioning(Bucket=bucket).get("Status", ""))


def bucket_lifecycle_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The bucket's lifecycle rules (an empty list when it has none)."""
    try:
        answer = client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise wrapped(exc, "read bucket lifecycle rules", bucket) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise wrapped(exc, "read bucket lifecycle rules", bucket) from exc
    return list(answer.get("Rules", []))


def bucket_notifications(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The bucket's event notifications to SQS queues and SNS topics, each
    ``{"arn", "events", "kind"}``."""
    with wrap_errors("read bucket notifications", bucket):
        answer = client.get_bucket_notification_configuration(Bucket=bucket)
    found = [{"arn": c.get("QueueArn", ""), "events": list(c.get("Events", [])), "kind": "queue"}
             for c in answer.get("QueueConfigurations", [])]
    found += [{"arn": c.get("TopicArn", ""), "events": list(c.get("Events", [])), "kind": "topic"}
              for c in answer.get("TopicConfigurations", [])]
    return found
