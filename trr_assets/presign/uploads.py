"""What an upload may be, and what the caller gets for it.

``Presigner.upload_url`` checks the request here before it records a row or
signs a URL: the content type against ``presign.allowed_content_types``, the
size against ``presign.max_upload_bytes`` and S3's single-PUT limit, and the
filename made safe for the last segment of the object key. Malformed
arguments raise ``ValueError``; a well-formed request the settings do not
allow raises ``UploadRefused``.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from trr_assets.errors import UploadRefused

MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3 refuses a single PUT above 5 GiB

_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """A presigned PUT for a new asset whose row is already recorded.

    The client must send ``headers`` (the signed content type and length)
    with the PUT; S3 refuses the upload otherwise. ``expires_at`` is when the
    URL stops working (UTC).
    """

    asset_id: uuid.UUID
    bucket: str
    key: str
    url: str
    headers: dict[str, str] = field(hash=False)
    expires_at: datetime


def safe_filename(filename: str, *, max_length: int = 100) -> str:
    """``filename`` made safe for the last segment of an object key.

    Only the last path component is kept; anything but letters, digits,
    ``-``, ``_`` and single dots becomes ``-`` (so no ``/``, ``\\``, ``..``,
    control or invisible formatting characters survive); the extension is
    kept (ASCII letters and digits, at most 16); an empty stem becomes
    ``file``.
    """
    if not isinstance(filename, str):
        raise ValueError("filename must be a string")
    name = re.split(r"[/\\]", unicodedata.normalize("NFC", filename))[-1]
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    stem = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", stem)).strip("-_.")[:max_length].rstrip("-_.")
    extension = re.sub(r"[^0-9A-Za-z]", "", extension)[:16]
    return (stem or "file") + ("." + extension if extension else "")


def checked_content_type(content_type: object, allowed: Iterable[str]) -> str:
    """The content type, lower-cased, if one of the ``allowed`` patterns
    (``image/png``, ``image/*``) matches it."""
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type.lower()):
        raise ValueError("content_type must be a bare type/subtype such as image/png")
    normalized = content_type.lower()
    kind = normalized.partition("/")[0]
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == normalized or (pattern.endswith("/*") and pattern[:-2] == kind):
            return normalized
    raise UploadRefused(
        f"upload refused: content type {normalized} is not allowed (presign.allowed_content_types)"
    )


def checked_size(size_bytes: object, maximum: int) -> int:
    """``size_bytes`` if it is at most ``maximum`` and fits in a single PUT."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 0:
        raise ValueError("size_bytes must be a whole number >= 0")
    if size_bytes > maximum:
        raise UploadRefused(
            f"upload refused: {size_bytes} bytes is more than presign.max_upload_bytes ({maximum})"
        )
    if size_bytes > MAX_SINGLE_PUT_BYTES:
        raise UploadRefused(f"upload refused: a single PUT carries at most {MAX_SINGLE_PUT_BYTES} bytes")
    return size_bytes
