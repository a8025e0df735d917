"""What one reconcile run covers, shared by its passes: the listing's
(``reconcile``) and the versions' (``reconcile.versions``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trr_assets.config import Settings
from trr_assets.storage import S3Client

Sink = Callable[[dict[str, Any]], None]  # takes each finding as it is found, one call at a time


@dataclass(frozen=True)
class RunScope:
    """The settings and S3 client of a run, the buckets and the prefix it
    looks under, the cutoff (anything changed after it is too young to judge),
    where its findings go, and the flag that stops it early."""

    settings: Settings
    client: S3Client
    buckets: list[str]
    prefix: str
    cutoff: datetime
    sink: Sink | None
    stop: threading.Event | None = None
