"""botocore's errors, worded once: every one that leaves ``storage`` is a
one-line ``StorageError`` (or ``BucketNotFound``) made here.

Part of ``storage`` (the package re-exports these names: ``storage.wrap_errors``,
``storage.wrapped``, ``storage.error_code``); its own module so that the
package's other modules (listings, versions, regions) word errors the same
way without importing the package they belong to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import botocore.exceptions

from trr_assets.errors import BucketNotFound, StorageError

MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})


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
        if code in MISSING_BUCKET_CODES and bucket and action.startswith(("list", "check bucket")):
            return BucketNotFound(f"s3: bucket {bucket} does not exist or is not visible")
        return StorageError(f"s3: {action}{where}: {code}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError(f"s3: {action}{where}: no AWS credentials found")
    # Some messages (parameter validation) hold the detail on the lines after
    # the first: keep them, on one line.
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return StorageError(f"s3: {action}{where}: {detail}")

